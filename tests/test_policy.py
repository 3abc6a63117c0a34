"""Release policies: the file's validation, storing and showing it, and changing it under a race."""

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import run_cli, snapshot
from test_gate import push

from artifactstore import Conflict, InvalidInput, InvalidParameter
from artifactstore.registry.policy import POLICY_CONTEXT, read_policy_file
from artifactstore.registry.refs import ModelName
from artifactstore.registry.state import ModelState

SEED_POLICY = """\
# the seeds' pipeline: stage 1 (eval gate) and stage 2 (human review)
gate:
  defaults: {max_drop_points: 2}
  metrics:
    accuracy: {floor: 0.9}
    hallucination_rate: {direction: lower, ceiling: 0.03}
review:
  min_samples: 20
"""


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(SEED_POLICY)
    return path


@pytest.mark.parametrize("text, message", [
    ("canaries:\n  steps: []\n", "policy.yaml: canaries: unknown field (refused, not ignored)"),
    ("canary:\n  steps: []\n", "policy.yaml: canary: Value error, a plan must end at 100% after at least one"),
    ("canary:\n  steps: [{percent: 10, hold: 24h}, {percent: 50, hold: 24h}]\n", "a plan must end at 100%"),
    ("canary:\n  steps: [{percent: 50, hold: 1h}, {percent: 10, hold: 1h}, {percent: 100}]\n",
     "each step must send more traffic than the one before: [50, 10, 100]"),
    ("canary:\n  steps: [{percent: 10, hold: 1h}, {percent: 100, hold: 1h}]\n", "the final 100% step completes"),
    ("canary:\n  steps: [{percent: 10, hold: 1 day}, {percent: 100}]\n", "canary.steps[0].hold: String should match"),
    ("canary:\n  analysis: {interval: 30s}\n", "interval 30s is shorter than a minute"),
    ("canary:\n  analysis: {metrics: {error_rate: {}}}\n", "metrics.error_rate: give a floor, a ceiling or a limit"),
    ("canary:\n  analysis: {metrics: {output_psi: {max_drop: 0.1}}}\n", "give it a ceiling, not a limit relative"),
    ("canary:\n  analysis: {failure_limit: -1}\n", "canary.analysis.failure_limit: Input should be greater than"),
    ("smoke: {on_failure: shrug}\n", "smoke.on_failure: Input should be 'rollback' or 'keep'"),
    ("keep_loaded: a week\n", "keep_loaded: String should match pattern"),
    ("drill: {every: 30d, max_seconds: 0}\n", "drill.max_seconds: Input should be greater than 0"),
    ("gate:\n  metrics:\n    accuracy: {drection: higher}\n",
     "policy.yaml: gate.metrics.accuracy.drection: unknown field (refused, not ignored)"),
    ("review:\n  min_samples: '20'\n", "policy.yaml: review.min_samples: Input should be a valid integer"),
    ("review:\n  min_samples: 0\n", "policy.yaml: review.min_samples: Input should be greater than or equal to 1"),
    ("review:\n  required: yes please\n", "policy.yaml: review.required: Input should be a valid boolean"),
    ("gate: !!python/object/apply:os.system ['true']\n", "policy.yaml: line 1: !!python/object/apply:os.system is not "
                                                         "JSON data"),
    ("gate:\n  metrics:\n    accuracy: {max_drop: 1, max_drop_points: 2}\n",
     "policy.yaml: gate.metrics.accuracy: Value error, give one of max_drop_points, max_drop, not several"),
    ("gate:\n  metrics:\n    accuracy: {floor: 0.9, ceiling: 0.5}\n", "floor 0.9 is above ceiling 0.5"),
    ("gate:\n  metrics:\n    accuracy: {direction: up}\n", "gate.metrics.accuracy.direction: Input should be "
                                                             "'higher' or 'lower'"),
    ("gate:\n  metrics:\n    .accuracy: {}\n", "policy.yaml: gate.metrics..accuracy.[key]: String should match"),
    ("hooks:\n  - {name: a, url: 'http://x', command: [echo]}\n", "hooks[0]: Value error, give a url or a command"),
    ("hooks:\n  - {name: a, url: 'ftp://x'}\n", "policy.yaml: hooks[0].url: String should match pattern"),
    ("hooks:\n  - {name: a, url: 'http://x', events: [deployed]}\n", "hooks[0].events[0]: Input should be"),
    ("hooks:\n  - {name: a, url: 'http://x'}\n  - {name: a, command: [cat]}\n", "hook names must differ: a"),
    ("hooks:\n  - {name: a, command: [cat], env_headers: {X-Token: TOKEN}}\n", "env_headers go with a url"),
    ("- gate\n", "policy.yaml: (top level): Input should be a valid dictionary"),
    ("gate: {required: true\n", "policy.yaml: not valid YAML (line 2"),
])
def test_a_bad_policy_file_is_refused_in_one_line_and_changes_nothing(store, tmp_path, text, message):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as error:
        read_policy_file(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    before = snapshot(store.path)
    result = run_cli("policy", "set", "acme/support", path, "--by", "lead", "--store", store.path)
    assert result.returncode == 1 and result.stderr.startswith("error: policy.yaml: ")
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert snapshot(store.path) == before


def test_a_missing_policy_file_is_named(store, tmp_path):
    result = run_cli("policy", "set", "acme/support", tmp_path / "nope.yaml", "--store", store.path)
    assert result.returncode == 1 and result.stderr == "error: nope.yaml: missing\n"
    (tmp_path / "a-directory").mkdir()
    for path, said in ((tmp_path / "a-directory", "a-directory"), ("/dev/null", "null")):
        result = run_cli("policy", "set", "acme/support", path, "--store", store.path)
        assert result.returncode == 1 and result.stderr == f"error: {said}: not a regular file\n"


def test_set_and_show_a_policy(store, tmp_path, policy_file):
    push(store, tmp_path, "v1.0.0", {"accuracy": 0.95})
    assert store.policy("acme/support")["policy"] is None
    state = store.set_policy("acme/support", policy_file, actor="lead", reason="the seeds' pipeline")
    assert state.policy.startswith("b3:") and store.state("acme/support").policy == state.policy
    entry = state.entries[-1]
    assert (entry.action, entry.pointer, entry.from_, entry.to, entry.actor, entry.reason) == \
        ("policy", None, None, state.policy, "lead", "the seeds' pipeline")
    stored = json.loads(store.registry.read_object(state.policy, POLICY_CONTEXT))
    assert stored["kind"] == "release-policy" and stored["policy"]["review"] == {"required": True, "min_samples": 20}
    shown = store.policy("acme/support")
    assert shown["policy"] == state.policy and shown["set_by"] == "lead" and shown["reason"] == "the seeds' pipeline"
    assert shown["settings"]["gate"]["metrics"]["accuracy"]["floor"] == 0.9
    assert shown["settings"]["gate"]["unlisted"] == "check"  # defaults written out: what the policy means
    with pytest.raises(InvalidParameter, match="policy is already b3:"):
        store.set_policy("acme/support", policy_file)  # the same settings, however written, are the same policy

    human = run_cli("policy", "show", "acme/support", "--store", store.path)
    assert human.returncode == 0 and human.stdout.startswith(f"# acme/support: policy {state.policy}\n# set by lead")
    assert "floor: 0.9" in human.stdout and "null" not in human.stdout
    as_json = json.loads(run_cli("policy", "show", "acme/support", "--json", "--store", store.path).stdout)
    assert as_json == shown
    assert store.verify().ok


def test_expect_guards_a_policy_change(store, tmp_path, policy_file):
    push(store, tmp_path, "v1.0.0", {"accuracy": 0.95})
    first = store.set_policy("acme/support", policy_file, expect="none").policy
    other = tmp_path / "other.yaml"
    other.write_text("review: {min_samples: 30}\n")
    before = snapshot(store.path)
    with pytest.raises(Conflict, match="policy is b3:.*, not none as expected"):
        store.set_policy("acme/support", other, expect="none")
    with pytest.raises(Conflict, match="not b3:0000"):
        store.set_policy("acme/support", other, expect="b3:" + "0" * 64)
    with pytest.raises(InvalidParameter, match="--expect takes a policy id"):
        store.set_policy("acme/support", other, expect="v1.0.0")
    assert snapshot(store.path) == before
    changed = run_cli("policy", "set", "acme/support", other, "--expect", first, "--by", "lead", "--json",
                      "--store", store.path)
    assert changed.returncode == 0, changed.stderr
    report = json.loads(changed.stdout)
    assert report["previous"] == first and report["policy"] == store.state("acme/support").policy != first


def test_a_policy_can_come_before_the_first_push(store, tmp_path, policy_file):
    store.set_policy("baker/legal-review", policy_file, actor="lead")
    assert store.state("baker/legal-review").versions == {}
    push(store, tmp_path, "v1.0.0", {"accuracy": 0.95}, model="baker/legal-review")
    assert store.state("baker/legal-review").policy is not None and store.verify().ok


def test_states_written_before_policies_read_as_having_none():
    old = {"kind": "model-state", "client": "acme", "model": "support", "versions": {}, "pointers": {},
           "canary": None, "pins": [], "seq": 0, "parent": None, "entries": []}
    encoded = json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
    state = ModelState.decode(encoded, "old state", lambda _: pytest.fail("inline versions read no map"))
    assert state.policy is None and state.checks == {}
    assert state.encode() == encoded  # a state without a policy keeps the bytes it had
    assert ModelState(ModelName("acme", "support"), policy="b3:" + "1" * 64).encode() != encoded


RACER = textwrap.dedent("""
    import os, sys, time
    from artifactstore import Conflict, Store
    store_path, policy, expect, start = sys.argv[1:5]
    while not os.path.exists(start):
        time.sleep(0.001)
    try:
        Store(store_path).set_policy("acme/support", policy, expect=expect, actor=os.path.basename(policy))
        print("won")
    except Conflict as exc:
        print("lost:", exc)
""")


def test_policy_changes_racing_from_two_processes_exactly_one_wins(store, tmp_path, policy_file):
    push(store, tmp_path, "v1.0.0", {"accuracy": 0.95})
    current = store.set_policy("acme/support", policy_file).policy
    for round_ in range(3):
        start = tmp_path / f"start-{round_}"
        files = []
        for racer in ("a", "b"):
            files.append(tmp_path / f"{racer}{round_}.yaml")
            files[-1].write_text(f"review: {{min_samples: {21 + round_ * 2 + (racer == 'b')}}}\n")
        racers = [subprocess.Popen([sys.executable, "-c", RACER, str(store.path), str(f), current, str(start)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
        start.touch()
        outcomes = []
        for racer in racers:
            out, err = racer.communicate(timeout=120)
            assert racer.returncode == 0, err
            outcomes.append(out)
        assert sorted(o.split(":")[0].strip() for o in outcomes) == ["lost", "won"], outcomes
        winner = files[[o.strip() == "won" for o in outcomes].index(True)]
        state = store.state("acme/support")
        assert state.entries[-1].action == "policy" and state.entries[-1].actor == winner.name
        assert state.entries[-1].from_ == current and read_policy_file(winner).encode() == \
            store.registry.read_object(state.policy, POLICY_CONTEXT)
        current = state.policy
    policy_moves = [e for e in store.log("acme/support") if e.action == "policy"]
    assert len(policy_moves) == 4 and store.verify().ok  # the first set and one per round


@pytest.mark.parametrize("hook, field", [
    ("{name: 'x/../../../../escaped', url: 'http://x'}", "hooks[0].name"),
    ('{name: "relay\\n", url: \'http://x\'}', "hooks[0].name"),
    ("{name: relay, url: 'http://x', env_headers: {'X-A: injected': TOKEN}}", "hooks[0].env_headers.X-A: injected.[key]"),
    ("{name: relay, url: 'http://x', env_headers: {X-Token: 'TOKEN; echo'}}", "hooks[0].env_headers.X-Token"),
])
def test_hook_names_headers_and_variables_are_matched_whole(tmp_path, hook, field):
    """Each rule holds for the whole text: one valid character somewhere in it is not enough."""
    path = tmp_path / "policy.yaml"
    path.write_text(f"hooks:\n  - {hook}\n")
    with pytest.raises(InvalidInput) as error:
        read_policy_file(path)
    assert f"policy.yaml: {field}: String should match pattern" in str(error.value)
