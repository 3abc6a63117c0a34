"""The registry under racing processes and kill -9, and its CLI's error handling."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import run_cli, snapshot

import artifactstore.registry.registry
from artifactstore import Conflict, Store
from artifactstore.demo import adapter_history, write_bundle

HISTORY = adapter_history(layers=2, scale=16)

RACER = textwrap.dedent("""
    import json, random, sys
    from artifactstore import Conflict, Store
    store, seed = Store(sys.argv[1]), int(sys.argv[2])
    rng, won, lost = random.Random(seed), 0, 0
    for _ in range(15):
        version = rng.choice(["v1.0.0", "v1.1.0", "v1.1.1"])
        try:
            if rng.random() < 0.5:
                store.stage(f"acme/support@{version}", actor=f"racer{seed}")
            else:
                store.promote(f"acme/support@{version}", actor=f"racer{seed}")
            won += 1
        except Conflict:
            lost += 1
        except Exception as exc:  # "already at that version" is a refusal, not a race
            if "already" not in str(exc):
                raise
    print(json.dumps({"won": won, "lost": lost}))
""")


def pushed_store(tmp_path) -> Store:
    store = Store.init(tmp_path / "store")
    for version in HISTORY[:3]:
        store.push(write_bundle(version, tmp_path / "bundles" / version.name), f"acme/support@{version.name}")
    return store


def test_racing_pointer_moves_never_lose_an_update(tmp_path):
    store = pushed_store(tmp_path)
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(store.path), str(seed)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for seed in range(6)]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        results.append(json.loads(out))
    won = sum(r["won"] for r in results)
    assert won > 0
    moves = [e for e in store.log("acme/support") if e.action in ("stage", "promote")]
    assert len({(e.seq) for e in moves}) == len(moves)
    # every successful command is in the log exactly once: a stage is one entry, a promote one or two
    assert len({(e.at, e.actor) for e in moves}) == won
    for pointer in ("staging", "production"):
        chain = [e for e in moves if e.pointer == pointer]
        assert all(a.to == b.from_ for a, b in zip(chain, chain[1:])), f"a lost update on {pointer}"
        assert store.state("acme/support").pointers.get(pointer) == (chain[-1].to if chain else None)
    assert store.verify().ok


def _kill_repeatedly(args: list[str], store: Store, attempts: int = 6) -> None:
    for attempt in range(attempts):
        proc = subprocess.Popen([sys.executable, "-m", "artifactstore", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.15 + 0.08 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report = Store(store.path).verify()
        assert report.ok, report.problems


@pytest.mark.parametrize("move", ["promote", "rollout"])
def test_a_pointer_in_a_ref_means_what_it_names_in_the_state_the_move_changes(tmp_path, monkeypatch, move):
    """`promote m@staging` (and `rollout start m@staging`) change the state staging was resolved
    in: if another process restages in between, the move fails with Conflict instead of putting
    the version staging used to name into production (or the canary)."""
    store = pushed_store(tmp_path)
    store.promote("acme/support@v1.0.0")
    store.stage("acme/support@v1.1.0")
    resolve = artifactstore.registry.registry._version_in

    def restaged_meanwhile(state, ref):
        version = resolve(state, ref)
        if ref.target == "staging" and not (tmp_path / "raced").exists():
            (tmp_path / "raced").touch()
            Store(store.path).stage("acme/support@v1.1.1", actor="other")  # another process
        return version

    monkeypatch.setattr(artifactstore.registry.registry, "_version_in", restaged_meanwhile)
    with pytest.raises(Conflict):
        if move == "promote":
            store.promote("acme/support@staging")
        else:
            store.start_rollout("acme/support@staging")
    after = Store(store.path).state("acme/support")
    assert (after.pointer("staging"), after.pointer("production"), after.pointer("canary")) == \
        ("v1.1.1", "v1.0.0", None)
    assert Store(store.path).log("acme/support")[-1].actor == "other"


def test_kill_during_push_leaves_no_half_version(tmp_path):
    store = pushed_store(tmp_path)
    bundle = write_bundle(HISTORY[3], tmp_path / "next")
    _kill_repeatedly(["push", str(bundle), "acme/support@v1.2.0", "--store", str(store.path)], store)
    state = Store(store.path).state("acme/support")
    assert set(state.versions) <= {"v1.0.0", "v1.1.0", "v1.1.1", "v1.2.0"}
    result = Store(store.path).push(bundle, "acme/support@v1.2.0")
    assert Store(store.path).show("acme/support@v1.2.0")["bundle"] == result.bundle
    assert Store(store.path).verify().ok


def test_kill_during_pointer_moves_leaves_old_or_new(tmp_path):
    store = pushed_store(tmp_path)
    store.promote("acme/support@v1.0.0")
    for target in ("v1.1.0", "v1.1.1"):
        _kill_repeatedly(["promote", f"acme/support@{target}", "--store", str(store.path)], store, attempts=3)
        production = Store(store.path).state("acme/support").pointers["production"]
        assert production in ("v1.0.0", "v1.1.0", "v1.1.1")


def test_registry_cli_round_trip_and_one_line_errors(tmp_path):
    store = pushed_store(tmp_path)
    env = {"ARTIFACTSTORE_STORE": str(store.path), "ARTIFACTSTORE_ACTOR": "jane@agency"}
    assert run_cli("promote", "acme/support@v1.0.0", "--reason", "launch", env=env).returncode == 0
    moved = run_cli("promote", "acme/support@v1.1.0", "--json", env=env)
    assert json.loads(moved.stdout)["rollback_target"] == "v1.0.0"
    rolled = run_cli("rollback", "acme/support", "--reason", "3am", env=env)
    assert rolled.returncode == 0 and "acme/support@production: v1.1.0 -> v1.0.0" in rolled.stdout
    log = json.loads(run_cli("log", "acme/support", "--json", env=env).stdout)["entries"]
    assert log[-2]["actor"] == "jane@agency" and log[-2]["reason"] == "3am"
    assert "v1.0.0" in run_cli("ls", env=env).stdout
    assert "production: v1.0.0" in run_cli("registry", "export", env=env).stdout
    assert "## Model Update" in run_cli("changelog", "acme/support@v1.0.0", "acme/support@v1.1.0", env=env).stdout
    assert json.loads(run_cli("show", "acme/support@production", "--json", env=env).stdout)["version"] == "v1.0.0"
    assert run_cli("get", "acme/support@production", tmp_path / "out", env=env).returncode == 0
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "bundles" / "v1.0.0")

    before = snapshot(store.path)
    cases = [
        (("rollback", "acme/support"), "no rollback target"),
        (("promote", "acme/support@v9.0.0"), "no version v9.0.0"),
        (("promote", "acme/support@v1.1.0", "--expect", "v1.1.1"), "not v1.1.1 as expected"),
        (("stage", "acme/support@prod"), "unknown pointer 'prod'"),
        (("push", str(tmp_path / "bundles" / "v1.1.0"), "acme/support@v1.1.1"), "already exists"),
        (("push", str(tmp_path / "bundles" / "v1.1.0"), "acme/support@v1.2"), "not a version"),
        (("show", "Acme/support@v1.0.0"), "invalid client name"),
        (("log", "acme/nothing"), "no model acme/nothing"),
        (("canary", "acme/support@v1.1.0", "--percent", "150"), "150 is not in the range 0<=x<=100"),
    ]
    for args, message in cases:
        result = run_cli(*args, env=env)
        lines = result.stderr.strip().splitlines()
        usage = "--percent" in args  # an option's value out of range is a usage error (cli.md)
        assert result.returncode == (2 if usage else 1) and len(lines) == 1 and message in lines[0], \
            (args, result.stderr)
    assert snapshot(store.path) == before


def test_an_actor_or_reason_that_is_not_utf8_is_refused_before_any_write(tmp_path):
    store = Store.init(tmp_path / "store")
    bundle = write_bundle(HISTORY[0], tmp_path / "bundles" / "v1.0.0")
    before = snapshot(store.path)
    pushed = run_cli("push", bundle, "acme/support@v1.0.0", "--store", store.path,
                     env={"ARTIFACTSTORE_ACTOR": "ci\udcff"})  # the byte 0xff, as Python sees it
    assert pushed.returncode == 1 and pushed.stderr.count("\n") == 1 and "--by" in pushed.stderr
    assert snapshot(store.path) == before
    store.push(bundle, "acme/support@v1.0.0")
    moved = run_cli("promote", "acme/support@v1.0.0", "--store", store.path, "--reason", "ok\udcff")
    assert moved.returncode == 1 and "--reason" in moved.stderr and "Traceback" not in moved.stderr
    assert store.state("acme/support").pointer("production") is None


def test_a_version_number_past_18_digits_is_refused_in_one_line(tmp_path):
    from artifactstore import InvalidParameter
    from artifactstore.registry.refs import SemVer, parse_version

    store = Store.init(tmp_path / "store")
    bundle = write_bundle(HISTORY[0], tmp_path / "bundle")
    huge = "v" + "1" * 5000 + ".0.0"  # past 4,300 digits Python's int() itself refuses
    for args in (("push", bundle, f"acme/support@{huge}"), ("show", f"acme/support@{huge}")):
        result = run_cli(*args, "--store", store.path)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "a version's numbers have at most 18 digits" in result.stderr
    assert parse_version("v999999999999999999.0.1") == SemVer(10 ** 18 - 1, 0, 1)
    with pytest.raises(InvalidParameter, match="at most 18 digits"):
        parse_version("v1.1000000000000000000.0")
    with pytest.raises(InvalidParameter, match="v1.999999999999999999.0 has no next minor version"):
        parse_version("v1.999999999999999999.0").bump("minor")


def test_a_version_in_a_running_rollout_is_not_deleted(tmp_path, monkeypatch):
    from fleet_helpers import MODEL, hours, push_versions, set_now, with_policy

    store = Store.init(tmp_path / "store")
    push_versions(store, tmp_path, count=3)
    with_policy(store, tmp_path)
    store.promote(f"{MODEL}@v1.0.0", reason="launch")
    set_now(monkeypatch, hours(0))
    store.start_rollout(f"{MODEL}@v1.1.0", reason="go")
    # the canary moved by hand (forced): no pointer names the rolled-out version any more
    store.set_canary(f"{MODEL}@v1.1.1", 10, force=True, reason="hand test")
    before = snapshot(store.path)
    with pytest.raises(Conflict, match=f"{MODEL}@v1.1.0 is in {MODEL}'s running rollout: abort the rollout first"):
        store.delete(f"{MODEL}@v1.1.0", reason="data removal")
    assert snapshot(store.path) == before
    store.abort_rollout(MODEL, reason="done")
    assert "v1.1.0" not in store.delete(f"{MODEL}@v1.1.0", reason="data removal").versions
