import json
from dataclasses import replace

import pytest
import yaml
from conftest import run_cli, snapshot

from artifactstore import Conflict, CorruptObject, InvalidInput, InvalidParameter, NotFound
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.registry.refs import Ref

HISTORY = adapter_history(layers=2, scale=16)  # v1.0.0 … v1.2.1, tiny tensors
BY_NAME = {v.name: v for v in HISTORY}


@pytest.fixture
def bundles(tmp_path):
    return {v.name: write_bundle(v, tmp_path / "bundles" / v.name) for v in HISTORY}


@pytest.fixture
def pushed(store, bundles):
    """acme/support with v1.0.0, v1.1.0 and v1.1.1 pushed."""
    for name in ("v1.0.0", "v1.1.0", "v1.1.1"):
        store.push(bundles[name], f"acme/support@{name}", actor="ci@agency")
    return store


def test_push_records_every_field_and_resolves_everywhere(pushed, bundles, tmp_path):
    info = pushed.show("acme/support@v1.1.0")
    assert info["version"] == "v1.1.0" and info["change"] == "minor" and info["previous"] == "v1.0.0"
    assert info["created_by"] == "ci@agency" and info["created_at"].endswith("Z")
    assert info["base_model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert info["training_data_hash"].startswith("b3:") and info["eval_scores"]["accuracy"] == 0.942
    assert info["inference_config"]["temperature"] == 0.3 and info["training_config"]["rank"] == 16
    weights = bundles["v1.1.0"] / "adapter_weights" / "adapter_model.safetensors"
    assert info["adapter_hash"] == "b3:" + __import__("blake3").blake3(weights.read_bytes()).hexdigest()
    assert pushed.resolve("acme/support@v1.1.0") == info["bundle"]
    assert pushed.resolve("acme/support@latest") == pushed.resolve("acme/support@v1.1.1")
    pushed.get(pushed.resolve("acme/support@v1.1.0"), tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(bundles["v1.1.0"])
    assert pushed.verify().ok


def test_bump_auto_follows_the_versioning_rules(store, bundles):
    got = [store.push(bundles[v.name], "acme/support", bump="auto").version for v in HISTORY]
    # a re-save with new safetensors metadata leaves every tensor identical: a patch
    assert got == ["v1.0.0", "v1.1.0", "v1.1.1", "v1.2.0", "v1.2.1"]
    assert [store.show(f"acme/support@{v}")["change"] for v in got] == ["initial", "minor", "patch", "minor", "patch"]


def _store_with_base(store, bundles):
    for name in ("v1.0.0", "v1.1.0"):
        store.push(bundles[name], f"acme/support@{name}")
    return bundles["v1.1.1"] / "adapter_weights" / "adapter_model.safetensors"


def test_a_push_of_unchanged_weights_takes_the_tensors_of_its_base_and_hashes_the_file_once(
        store, bundles, monkeypatch):
    from artifactstore.content import put as put_module
    from artifactstore.registry import bundle as bundle_module

    weights = _store_with_base(store, bundles)
    hashed_sizes = []
    take_id = put_module._id_if_probably_stored

    def counted(data, *args):
        hashed_sizes.append(len(data))
        return take_id(data, *args)

    def refuse(path):
        raise AssertionError(f"{path}: hashed tensor by tensor")

    monkeypatch.setattr(put_module, "_id_if_probably_stored", counted)
    monkeypatch.setattr(bundle_module, "hash_weights", refuse)
    assert store.push(bundles["v1.1.1"], "acme/support@v1.1.1").change == "patch"
    assert hashed_sizes.count(weights.stat().st_size) == 1  # by the check; the put took its id
    new, base = store.show("acme/support@v1.1.1"), store.show("acme/support@v1.1.0")
    assert new["tensors"] == base["tensors"] and new["adapter_hash"] == base["adapter_hash"]
    # a retrain is hashed tensor by tensor, as before
    with pytest.raises(AssertionError, match="hashed tensor by tensor"):
        store.push(bundles["v1.2.0"], "acme/support@v1.2.0")


def test_weights_that_change_between_the_check_and_the_put_are_stored_as_checked_or_refused(
        store, bundles, monkeypatch, tmp_path):
    from artifactstore.content.store import ContentStore

    weights = _store_with_base(store, bundles)
    checked = weights.read_bytes()
    take_id = ContentStore.stored_file_id

    def then(change):
        def stored_file_id(self, path):
            found = take_id(self, path)
            change(path)
            return found
        return stored_file_id

    # the same size, other bytes: the version stores the bytes its check read
    monkeypatch.setattr(ContentStore, "stored_file_id", then(lambda path: path.write_bytes(checked[:-1] + b"!")))
    store.push(bundles["v1.1.1"], "acme/support@v1.1.1")
    store.get(store.resolve("acme/support@v1.1.1"), tmp_path / "out")
    assert (tmp_path / "out" / "adapter_weights" / "adapter_model.safetensors").read_bytes() == checked
    # grown: the put stores other bytes than those checked, and the push records nothing
    weights.write_bytes(checked)
    monkeypatch.setattr(ContentStore, "stored_file_id", then(lambda path: path.write_bytes(checked + b"!")))
    with pytest.raises(InvalidInput, match="changed while it was being stored"):
        store.push(bundles["v1.1.1"], "acme/support", bump="auto")
    assert store.ls("acme/support")[0]["versions"] == ["v1.1.1", "v1.1.0", "v1.0.0"]


WEIGHTS = "adapter_weights/adapter_model.safetensors"


@pytest.mark.parametrize("path, change", [
    (WEIGHTS, lambda bundle, other: (bundle / WEIGHTS).write_bytes((other / WEIGHTS).read_bytes())),
    ("inference_config.yaml", lambda bundle, _: (bundle / "inference_config.yaml").write_text("t: .nan\nt: 1\n")),
    ("metadata.yaml", lambda bundle, _: (bundle / "metadata.yaml").write_text("adapter_hash: b3:00\n")),
    ("changelog.md", lambda bundle, _: (bundle / "changelog.md").unlink()),
    ("eval_samples.jsonl", lambda bundle, _: (bundle / "eval_samples.jsonl").write_text('{"inputs": [1]}\n')),
])
def test_a_file_that_changes_after_its_check_is_refused_before_any_version_names_it(
        store, tmp_path, monkeypatch, path, change):
    bundle = write_bundle(BY_NAME["v1.0.0"], tmp_path / "bundle", eval_samples='{"inputs": {"length": 3}}\n')
    other = write_bundle(BY_NAME["v1.1.0"], tmp_path / "other")
    put = store.content.put

    def put_while_the_bundle_changes(root, **options):  # a training job still writing it, a concurrent cp
        change(bundle, other)
        return put(root, **options)

    monkeypatch.setattr(store.content, "put", put_while_the_bundle_changes)
    with pytest.raises(InvalidInput, match=f"{bundle / path}: the input changed while it was being stored"):
        store.push(bundle, "acme/support@v1.0.0")
    with pytest.raises(NotFound, match="no model acme/support"):
        store.show("acme/support@v1.0.0")
    assert store.verify().ok


def test_a_version_pushed_below_another_must_leave_that_ones_number_true(store, tmp_path):
    store.push(write_bundle(HISTORY[0], tmp_path / "a"), "acme/support@v1.0.0")
    store.push(write_bundle(replace(BY_NAME["v1.1.0"], name="v1.2.0"), tmp_path / "b"), "acme/support@v1.2.0")
    before = snapshot(store.path)
    # a minor bump over v1.0.0, but with v1.2.0's very content v1.2.0 would be a minor bump of nothing
    with pytest.raises(InvalidParameter, match=r"v1.1.0 would come right before v1.2.0, a minor bump over it, but "
                                               r"from v1.1.0 to v1.2.0 the weights and inference config are "
                                               r"identical: push it under another number"):
        store.push(write_bundle(BY_NAME["v1.1.0"], tmp_path / "c"), "acme/support@v1.1.0")
    assert snapshot(store.path) == before
    store.push(write_bundle(replace(BY_NAME["v1.2.0"], name="v1.1.0"), tmp_path / "d"), "acme/support@v1.1.0")
    assert store.ls("acme/support")[0]["versions"] == ["v1.2.0", "v1.1.0", "v1.0.0"]


@pytest.mark.parametrize("bundle, label, message", [
    ("v1.2.0", "v1.1.2", "the adapter weights changed (14 of 28 tensors differ): push it as v1.2.0"),
    ("v1.1.1", "v1.2.0", "the weights and inference config are identical: push it as v1.1.2"),
    ("v1.2.0", "v2.0.0", "push it as v1.2.0"),
    ("v1.2.0", "v1.3.1", "not a valid bump over v1.1.1"),
])
def test_mislabelled_versions_are_refused_and_change_nothing(pushed, bundles, bundle, label, message):
    before = snapshot(pushed.path)
    with pytest.raises(InvalidParameter, match=message.replace("(", r"\(").replace(")", r"\)")):
        pushed.push(bundles[bundle], f"acme/support@{label}")
    assert snapshot(pushed.path) == before


def test_base_model_change_needs_a_major_version(pushed, bundles, tmp_path):
    version = replace(BY_NAME["v1.1.1"], name="v2.0.0", base_model="meta-llama/Llama-3.1-8B-Instruct")
    bundle = write_bundle(version, tmp_path / "new-base")
    with pytest.raises(InvalidParameter, match="the base model changed: push it as v2.0.0"):
        pushed.push(bundle, "acme/support@v1.1.2")
    assert pushed.push(bundle, "acme/support@v2.0.0").change == "major"


def test_versions_are_immutable(pushed, bundles):
    again = pushed.push(bundles["v1.1.0"], "acme/support@v1.1.0")
    assert not again.created and again.new_bytes == 0
    before = snapshot(pushed.path)
    with pytest.raises(Conflict, match="already exists with different content"):
        pushed.push(bundles["v1.2.0"], "acme/support@v1.1.0")
    assert snapshot(pushed.path) == before


def test_bad_bundles_are_named_field_by_field(store, bundles):
    bundle = bundles["v1.0.0"]
    (bundle / "metadata.yaml").write_text(yaml.safe_dump({"adapter_hash": "sha256:00", "change_description": ""}))
    (bundle / "eval_results.json").write_text('{"accuracy": "high"}')
    (bundle / "training_data.hash").write_text("md5:abc")
    (bundle / "changelog.md").unlink()
    before = snapshot(store.path)
    with pytest.raises(InvalidInput) as error:
        store.push(bundle, "acme/support@v1.0.0")
    message = str(error.value)
    for expected in ("metadata.yaml: adapter_hash: computed by the store", "metadata.yaml: base_model: Field required",
                     "metadata.yaml: change_description: String should have at least 1 character",
                     "eval_results.json: accuracy", "training_data.hash: expected", "changelog.md: missing"):
        assert expected in message
    assert "\n" not in message
    assert snapshot(store.path) == before


def test_malformed_weights_are_refused(store, bundles):
    (bundles["v1.0.0"] / "adapter_weights" / "adapter_model.safetensors").write_bytes(b"\x05\x00\x00")
    with pytest.raises(InvalidInput, match="adapter_model.safetensors"):
        store.push(bundles["v1.0.0"], "acme/support@v1.0.0")


@pytest.mark.parametrize("ref", ["acme/support@v1.2", "acme/support@1.2.3", "acme/support@v01.2.3",
                                 "Acme/support@v1.0.0", "acme@v1.0.0", "acme/sup/port@v1.0.0",
                                 "acme/support@prod", "acme/support", "b3:1234", "../x/y@v1.0.0"])
def test_bad_refs_are_refused(ref):
    with pytest.raises(InvalidParameter):
        Ref.parse(ref)


def test_promote_rollback_and_the_audit_log(pushed):
    pushed.promote("acme/support@v1.0.0", actor="jane", reason="first release")
    state = pushed.promote("acme/support@v1.1.0", actor="jane", reason="monthly retrain")
    assert state.pointers == {"production": "v1.1.0", "rollback_target": "v1.0.0"}
    assert pushed.resolve("acme/support@production") == pushed.resolve("acme/support@v1.1.0")
    state = pushed.rollback("acme/support", actor="oncall", reason="garbage outputs at 3am")
    assert state.pointers == {"production": "v1.0.0"}
    with pytest.raises(InvalidParameter, match="no rollback target"):
        pushed.rollback("acme/support")
    pushed.rollback("acme/support", to="v1.1.1", reason="skip the bad one")
    log = pushed.log("acme/support")
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    moves = [(e.action, e.pointer, e.from_, e.to) for e in log if e.action != "push"]
    assert moves == [
        ("promote", "production", None, "v1.0.0"),
        ("promote", "production", "v1.0.0", "v1.1.0"),
        ("promote", "rollback_target", None, "v1.0.0"),
        ("rollback", "production", "v1.1.0", "v1.0.0"),
        ("rollback", "rollback_target", "v1.0.0", None),
        ("rollback", "production", "v1.0.0", "v1.1.1"),
    ]
    assert log[-3].actor == "oncall" and log[-3].reason == "garbage outputs at 3am"
    assert pushed.show("acme/support@v1.0.0")["deployed_by"] == "oncall"
    assert pushed.verify().ok


def test_ending_a_canary_needs_the_canarys_version(pushed):
    pushed.set_canary("acme/support@v1.1.1", 20)
    before = snapshot(pushed.path)
    with pytest.raises(InvalidParameter, match="acme/support's canary is v1.1.1, not v1.1.0"):
        pushed.set_canary("acme/support@v1.1.0", 0)
    assert snapshot(pushed.path) == before
    assert pushed.set_canary("acme/support@canary", 0).canary is None


def test_stage_canary_pins_and_guards(pushed):
    pushed.stage("acme/support@v1.1.1")
    pushed.promote("acme/support@v1.1.0")
    state = pushed.set_canary("acme/support@staging", 10)
    assert state.canary == {"version": "v1.1.1", "percent": 10}
    assert pushed.resolve("acme/support@canary") == pushed.resolve("acme/support@v1.1.1")
    state = pushed.promote("acme/support@canary", expect="v1.1.0")
    assert state.canary is None and state.pointers["production"] == "v1.1.1"
    before = snapshot(pushed.path)
    with pytest.raises(Conflict, match="production is v1.1.1, not v1.0.0 as expected"):
        pushed.rollback("acme/support", expect="v1.0.0")
    with pytest.raises(InvalidParameter, match="already v1.1.1"):
        pushed.promote("acme/support@v1.1.1")
    with pytest.raises(NotFound, match="no version v9.0.0"):
        pushed.promote("acme/support@v9.0.0")
    with pytest.raises(NotFound, match="no model acme/other"):
        pushed.promote("acme/other@v1.0.0")
    with pytest.raises(InvalidParameter, match="between 0 and 100"):
        pushed.set_canary("acme/support@v1.0.0", 101)
    assert snapshot(pushed.path) == before
    assert pushed.pin("acme/support@v1.0.0").pins == ("v1.0.0",)
    with pytest.raises(InvalidParameter, match="already pinned"):
        pushed.pin("acme/support@v1.0.0")
    assert pushed.unpin("acme/support@v1.0.0").pins == ()


def test_tampering_with_the_audit_log_is_detected(pushed):
    pushed.promote("acme/support@v1.0.0", reason="ok")
    pushed.promote("acme/support@v1.1.0", reason="ok")
    state = pushed.state("acme/support")
    oldest_parent = list(pushed.states("acme/support"))[-2][0]
    path = pushed.path / "registry" / "objects" / oldest_parent[3:5] / f"{oldest_parent[3:]}.json"
    obj = json.loads(path.read_bytes())
    obj["entries"][0]["actor"] = "mallory"
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")))
    with pytest.raises(CorruptObject, match="does not match its id"):
        pushed.log("acme/support")
    report = pushed.verify()
    assert not report.ok and any("acme/support" in p for p in report.problems)
    assert state.seq == 6


def test_export_lineage_diff_and_changelog(pushed, bundles):
    pushed.push(bundles["v1.2.0"], "acme/support@v1.2.0")
    pushed.push(bundles["v1.0.0"], "baker/legal-review@v1.0.0")
    pushed.promote("acme/support@v1.1.1")
    pushed.promote("acme/support@v1.2.0")
    pushed.stage("baker/legal-review@v1.0.0")
    exported = yaml.safe_load(pushed.export_registry())
    assert exported["clients"]["acme"]["models"]["support"] == {
        "production": "v1.2.0", "staging": None,
        "available_versions": ["v1.2.0", "v1.1.1", "v1.1.0", "v1.0.0"], "rollback_target": "v1.1.1"}
    assert exported["clients"]["baker"]["models"]["legal-review"]["staging"] == "v1.0.0"

    data_hash = pushed.show("acme/support@v1.0.0")["training_data_hash"]
    assert [e["ref"] for e in pushed.lineage(training_data=data_hash)] == [
        "acme/support@v1.0.0", "baker/legal-review@v1.0.0"]
    adapter = pushed.show("acme/support@v1.1.0")["adapter_hash"]
    assert [e["ref"] for e in pushed.lineage(adapter=adapter)] == ["acme/support@v1.1.0", "acme/support@v1.1.1"]
    assert len(pushed.lineage(base_model="meta-llama/Meta-Llama-3-8B-Instruct")) == 5
    with pytest.raises(InvalidParameter):
        pushed.lineage()

    d = pushed.diff("acme/support@v1.1.1", "acme/support@v1.2.0")
    assert d["tensor_summary"]["changed"]["count"] == 14 and d["tensor_summary"]["unchanged"]["count"] == 14
    assert not d["base_model"]["changed"]
    patch = pushed.diff("acme/support@v1.1.0", "acme/support@v1.1.1")
    assert patch["inference_config"] == {"temperature": {"from": 0.3, "to": 0.2}}
    assert patch["tensor_summary"]["changed"]["count"] == 0

    text = pushed.changelog("acme/support@v1.1.1", "acme/support@v1.2.0")
    assert text.startswith("## Model Update: acme/support v1.2.0")
    assert "| Metric | Previous (v1.1.1) | Updated (v1.2.0) |" in text and "| accuracy | 94.2% | 94.2% |" in text
    assert "- retrain of the upper half of the layers" in text and "tensors" not in text, "no technical lines"
    assert "Previous version (v1.1.1) is available for instant rollback" in text


def test_a_changelogs_type_is_the_change_from_a_to_b_across_skipped_versions(pushed):
    # v1.1.1 changed only the inference config over v1.1.0, but its weights differ from v1.0.0's
    assert "**Type:** Configuration update" in pushed.changelog("acme/support@v1.1.0", "acme/support@v1.1.1")
    assert "**Type:** Retraining" in pushed.changelog("acme/support@v1.0.0", "acme/support@v1.1.1")


@pytest.fixture
def five(store, bundles):
    """acme/support with all five versions of the demo history."""
    for name in bundles:
        store.push(bundles[name], f"acme/support@{name}")
    return store


def targets(store) -> tuple:
    state = store.state("acme/support")
    return state.pointer("production"), state.pointer("rollback_target")


def test_the_rollback_target_after_the_first_promote_is_none_and_rollback_says_what_to_do(five):
    five.promote("acme/support@v1.0.0")
    assert targets(five) == ("v1.0.0", None)
    with pytest.raises(InvalidParameter, match=r"v1.0.0 is the first version it had in production.*--to VERSION"):
        five.rollback("acme/support")


def test_each_rollback_goes_one_production_further_back(five):
    for version in ("v1.0.0", "v1.1.0", "v1.2.0"):
        five.promote(f"acme/support@{version}")
    assert targets(five) == ("v1.2.0", "v1.1.0")
    five.rollback("acme/support")
    assert targets(five) == ("v1.1.0", "v1.0.0"), "a second rollback goes further back, not forward to the bad one"
    five.rollback("acme/support")
    assert targets(five) == ("v1.0.0", None)
    five.promote("acme/support@v1.2.0")
    assert targets(five) == ("v1.2.0", "v1.0.0")


def test_a_drill_leaves_the_production_chain_as_it_was(five):
    from artifactstore.registry.drills import swap_for_drill
    from artifactstore.registry.refs import ModelName

    for version in ("v1.0.0", "v1.1.0", "v1.1.1"):
        five.promote(f"acme/support@{version}")
    chain = five.state("acme/support").predecessors
    model = ModelName.parse("acme/support")
    swap_for_drill(five.registry, model, production="v1.1.1", target="v1.1.0", actor="drill", reason="monthly")
    swap_for_drill(five.registry, model, production="v1.1.0", target="v1.1.1", actor="drill", reason="monthly")
    assert five.state("acme/support").predecessors == chain
    five.rollback("acme/support")
    assert targets(five) == ("v1.1.0", "v1.0.0")  # the drill had made it v1.1.0: production's own version
    five.rollback("acme/support")
    assert targets(five) == ("v1.0.0", None)


def test_a_drill_killed_between_its_swaps_is_flagged_until_production_is_restored_and_holds_rollouts(five):
    """The drill's stand-in production is no base for a rollout (it would be compared with, and
    replaced by, the rollout), and status keeps saying so whatever changes in between."""
    from artifactstore.registry.drills import record_drill, swap_for_drill
    from artifactstore.registry.refs import ModelName

    for version in ("v1.0.0", "v1.1.0"):
        five.promote(f"acme/support@{version}")
    model = ModelName.parse("acme/support")

    def unfinished() -> list[str]:
        return [a for a in five.status("acme/support")["alerts"] if "has not finished" in a]

    swap_for_drill(five.registry, model, production="v1.1.0", target="v1.0.0", actor="drill", reason="monthly")
    five.registry.pin("acme/support@v1.1.0", actor="ops", reason="keep hot")  # an unrelated change
    [alert] = unfinished()
    assert alert.startswith("a drill moved production to v1.0.0 at ")
    before = snapshot(five.path)
    with pytest.raises(InvalidParameter, match="a drill moved acme/support's production to v1.0.0 at .* has not "
                                               "finished: start the rollout after it"):
        five.start_rollout("acme/support@v1.2.0", actor="jane")
    assert snapshot(five.path) == before
    swap_for_drill(five.registry, model, production="v1.0.0", target="v1.1.0", actor="drill", reason="monthly")
    assert unfinished() == [], "rolled forward, if not recorded yet: production is as it was"
    record_drill(five.registry, model, {"model": "acme/support", "at": "2026-11-27T00:00:00Z", "from": "v1.1.0",
                                        "to": "v1.0.0", "passed": True, "seconds": 0.1, "max_seconds": 60,
                                        "nodes": {}, "unconfirmed": [], "note": "ok"}, actor="drill", reason="done")
    assert unfinished() == []
    swap_for_drill(five.registry, model, production="v1.1.0", target="v1.0.0", actor="drill", reason="again")
    assert unfinished(), "a second drill's first swap"
    five.rollback("acme/support", to="v1.1.0", actor="oncall", reason="restored by hand")
    assert unfinished() == [] and five.start_rollout("acme/support@v1.2.0", actor="jane").rollout is not None


@pytest.mark.parametrize("limit", [float("nan"), float("inf"), 0, -1, 3600.5])
def test_a_drill_limit_must_be_a_finite_time_of_at_most_an_hour(five, limit):
    """Production stays at the rollback target until the drill ends: a limit it never reaches
    (NaN compares false with everything) would keep it there."""
    for version in ("v1.0.0", "v1.1.0"):
        five.promote(f"acme/support@{version}")
    before = snapshot(five.path)
    with pytest.raises(InvalidParameter, match="--max-seconds must be more than 0 and at most 3600"):
        five.drill("acme/support", max_seconds=limit)
    assert snapshot(five.path) == before


@pytest.mark.parametrize("who, why, kept", [
    ("mallory", "routine\n   9  2026-11-27T03:00:00  alice  promote", "routine\\n   9  2026-11-27T03:00:00  alice"),
    ("mallory\rroot", "routine", "mallory\\rroot"), ("\x1b[2Kalice", "routine", "\\x1b[2Kalice"),
    ("mallory", "approved \u202edeviL", "approved \\u202edeviL"), ("mallory", "one\u2028two", "one\\u2028two")])
def test_the_audit_log_keeps_text_that_would_forge_its_lines_escaped(five, who, why, kept):
    """A line break would start a fake entry, a carriage return or an escape sequence overwrite the
    name on a terminal, an override reverse what follows: each is kept escaped, one line of text."""
    result = run_cli("pin", "acme/support@v1.0.0", "--by", who, "--reason", why, "--store", five.path)
    assert result.returncode == 0
    log = run_cli("log", "acme/support", "--store", five.path).stdout
    assert len(log.splitlines()) == len(five.log("acme/support")) and kept in log
    entry = five.log("acme/support")[-1]
    assert kept in f"{entry.actor} {entry.reason}" and "\n" not in entry.reason + entry.actor
    five.promote("acme/support@v1.0.0", actor="mallory", reason="one line: fine ✓")
    assert five.log("acme/support")[-1].reason == "one line: fine ✓"


def test_a_rollback_ends_the_canary_and_the_staging_of_the_version_it_restores(five):
    for version in ("v1.0.0", "v1.1.0"):
        five.promote(f"acme/support@{version}")
    five.set_canary("acme/support@v1.0.0", 10)
    five.stage("acme/support@v1.0.0")
    state = five.rollback("acme/support")
    assert state.pointer("production") == "v1.0.0" and state.canary is None and state.pointer("staging") is None
    assert [(e.action, e.pointer, e.to) for e in state.entries][-2:] == [("rollback", "canary", None),
                                                                         ("rollback", "staging", None)]


def test_the_ref_signature_changes_with_the_ref_even_where_inode_time_and_size_come_back(five):
    """Two swaps within one tick of the file system's clock may reuse the inode number the ref had,
    with the same modification time and size (a ref's bytes have one length): a follower must not
    take that for "unchanged"."""
    import os

    from artifactstore.registry.refs import ModelName

    model = ModelName.parse("acme/support")
    five.promote("acme/support@v1.0.0")
    ref = five.registry.ref_file(model)
    before, stat = five.registry.ref_signature(model), ref.stat()
    keep = ref.with_name("kept")
    os.link(ref, keep)  # the inode number stays taken, to come back below
    moved = five.promote("acme/support@v1.1.0")
    with open(keep, "r+b") as f:  # the new ref's bytes in the old inode, with the old times
        f.write(ref.read_bytes())
    os.utime(keep, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(keep, ref)
    assert (ref.stat().st_ino, ref.stat().st_mtime_ns, ref.stat().st_size) == \
        (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    assert five.registry.ref_signature(model) != before and five.state("acme/support").id == moved.id


def test_a_production_chain_that_loops_never_names_the_version_itself():
    from artifactstore.registry.refs import ModelName
    from artifactstore.registry.state import ModelState

    looped = ModelState(ModelName.parse("acme/support"), predecessors={"v1.1.0": "v1.1.1", "v1.1.1": "v1.1.0"})
    assert looped.previous_production("v1.1.0", skipping="v1.1.1") is None
    assert looped.previous_production("v1.1.0") == "v1.1.1"


def test_rollback_to_a_named_version_and_an_explicit_target(five):
    for version in ("v1.0.0", "v1.1.0", "v1.1.1", "v1.2.0"):
        five.promote(f"acme/support@{version}")
    five.rollback("acme/support", to="v1.1.0")  # skip back past v1.1.1
    assert targets(five) == ("v1.1.0", "v1.0.0")
    five.promote("acme/support@v1.2.1")
    five.set_rollback_target("acme/support@v1.0.0")  # the seeds: name it explicitly
    five.rollback("acme/support")
    assert targets(five) == ("v1.0.0", None)


def test_the_production_chain_passes_over_a_deleted_version(five):
    for version in ("v1.0.0", "v1.1.0", "v1.1.1", "v1.2.0"):
        five.promote(f"acme/support@{version}")
    five.set_rollback_target("acme/support@v1.0.0")
    five.delete("acme/support@v1.1.1")
    assert five.state("acme/support").previous_production("v1.2.0") == "v1.1.0"
    five.set_rollback_target("acme/support@v1.1.0")
    five.rollback("acme/support")
    assert targets(five) == ("v1.1.0", "v1.0.0")


def test_promote_without_a_version_promotes_staging_and_clears_it(five):
    with pytest.raises(InvalidParameter, match="nothing staged"):
        five.promote("acme/support")
    five.stage("acme/support@v1.1.0")
    state = five.promote("acme/support", reason="staging looked good")
    assert state.pointer("production") == "v1.1.0" and state.pointer("staging") is None
    assert [(e.pointer, e.to) for e in state.entries] == [("production", "v1.1.0"), ("staging", None)]


def test_a_deleted_version_s_number_never_names_other_content(pushed, bundles, tmp_path):
    """A vLLM keeps a name's adapter until it restarts, and a follower may still hold the deleted
    weights: the number of a deleted version is refused to other content, and skipped by --bump auto."""
    pushed.delete("acme/support@v1.1.1", reason="wrong prompt")
    other = write_bundle(replace(BY_NAME["v1.1.1"], inference_config={"temperature": 0.1}), tmp_path / "other")
    before = snapshot(pushed.path)
    with pytest.raises(Conflict, match=r"acme/support@v1\.1\.1 was deleted, and a deleted version's number never "
                                       r"names other content .*: push it as v1\.1\.2, or with --bump auto"):
        pushed.push(other, "acme/support@v1.1.1")
    cli = run_cli("push", other, "acme/support@v1.1.1", "--store", pushed.path)
    assert cli.returncode != 0 and cli.stderr.count("\n") == 1 and "was deleted" in cli.stderr
    assert snapshot(pushed.path) == before, "refused before the first byte is written"
    with pytest.raises(NotFound, match=r"acme/support has no version v1\.1\.1 \(it was deleted\)"):
        pushed.show("acme/support@v1.1.1")
    assert pushed.push(other, "acme/support", bump="auto").version == "v1.1.2"
    # the deleted version's own bundle may come back under its number: a delete undone
    restored = pushed.push(bundles["v1.1.1"], "acme/support@v1.1.1", reason="deleted by mistake")
    assert restored.created and restored.bundle == pushed.resolve("acme/support@v1.1.1")
    assert pushed.state("acme/support").deleted == {}
    assert pushed.verify().ok


def test_a_deleted_number_is_given_back_only_to_the_tree_it_had_as_stored(pushed, tmp_path, monkeypatch):
    """A file no check covers (a tokenizer file beside the adapter) that changes between the bundle's
    identification and its storage must not let a restore bring other bytes under the number."""
    bundle = write_bundle(replace(BY_NAME["v1.1.1"], name="v1.1.2"), tmp_path / "v1.1.2")
    extra = bundle / "adapter_weights" / "special_tokens_map.json"
    extra.write_bytes(b'{"pad_token": "A"}')
    pushed.push(bundle, "acme/support@v1.1.2")
    pushed.delete("acme/support@v1.1.2")
    put = pushed.content.put

    def put_while_a_file_changes(root, **options):
        extra.write_bytes(b'{"pad_token": "B"}')
        return put(root, **options)

    monkeypatch.setattr(pushed.content, "put", put_while_a_file_changes)
    with pytest.raises(Conflict, match="the tree this push stored is not the one it had"):
        pushed.push(bundle, "acme/support@v1.1.2")
    assert "v1.1.2" in pushed.state("acme/support").deleted and pushed.verify().ok


def test_the_label_check_suggests_only_a_number_the_push_would_take(store, tmp_path):
    store.push(write_bundle(HISTORY[0], tmp_path / "a"), "acme/support@v1.0.0")
    store.push(write_bundle(replace(HISTORY[1], name="v1.2.0"), tmp_path / "b"), "acme/support@v1.2.0")
    patched = write_bundle(replace(HISTORY[2], name="v1.1.0"), tmp_path / "c")  # v1.2.0's weights, a new temperature
    # v1.1.0, the minor bump over v1.0.0, would make v1.2.0 a minor bump over the same weights
    with pytest.raises(InvalidParameter, match="no free number of a minor bump over v1.0.0 fits before the next "
                                               "version: push it with --bump auto"):
        store.push(patched, "acme/support@v1.0.1")


def test_bump_auto_and_the_label_check_pass_over_deleted_numbers(store, bundles):
    for name in ("v1.0.0", "v1.1.0"):
        store.push(bundles[name], f"acme/support@{name}")
    store.delete("acme/support@v1.1.0")
    with pytest.raises(InvalidParameter, match=r"push it as v1\.2\.0 \(a minor bump\)"):
        store.push(bundles["v1.2.0"], "acme/support@v1.0.1")  # retrained weights: v1.1.0 is gone for good
    assert store.push(bundles["v1.2.0"], "acme/support", bump="auto").version == "v1.2.0"
    with pytest.raises(InvalidParameter, match=r"and no free number of a minor bump over v1\.0\.0 fits before the "
                                               r"next version: push it with --bump auto"):
        store.push(bundles["v1.1.0"], "acme/support@v1.0.1")  # retrained weights, between v1.0.0 and v1.2.0
    for name in ("v1.0.0", "v1.2.0"):
        store.delete(f"acme/support@{name}")
    assert store.push(bundles["v1.2.1"], "acme/support", bump="auto").version == "v2.0.0", \
        "a model whose versions were all deleted starts again past them"
    assert set(store.state("acme/support").deleted) == {"v1.0.0", "v1.1.0", "v1.2.0"}
    store.delete("acme/support@v2.0.0")
    assert store.push(bundles["v1.1.1"], "acme/support", bump="auto").version == "v3.0.0", \
        "above the highest deleted major"


def test_bump_auto_numbers_the_version_and_warns_when_metadata_says_another(store, bundles):
    store.push(bundles["v1.0.0"], "acme/support", bump="auto")
    result = store.push(bundles["v1.2.0"], "acme/support", bump="auto")  # its metadata.yaml says v1.2.0
    assert result.version == "v1.1.0" and result.created
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("metadata.yaml says version v1.2.0; the store numbered it v1.1.0 (minor: ")
    assert store.version_record("acme/support@v1.1.0")["version"] == "v1.1.0"
    with pytest.raises(InvalidParameter, match="metadata.yaml says version v1.2.1, but the push is v1.1.1"):
        store.push(bundles["v1.2.1"], "acme/support@v1.1.1")
    cli = run_cli("push", bundles["v1.2.1"], "acme/support", "--bump", "auto", "--store", store.path)
    assert cli.returncode == 0 and "warning: metadata.yaml says version v1.2.1; the store numbered it v1.1.1" \
        in cli.stderr


def test_lineage_by_any_dataset_shared_tensors_and_a_clear_miss(store, bundles, tmp_path):
    extra = "sha256:" + "ab" * 32
    hashes = bundles["v1.0.0"] / "training_data.hash"
    hashes.write_text(hashes.read_text() + extra + "\n")  # trained on two datasets
    for name in ("v1.0.0", "v1.1.0", "v1.2.0"):
        store.push(bundles[name], f"acme/support@{name}")
    assert [e["ref"] for e in store.lineage(training_data=extra)] == ["acme/support@v1.0.0"]
    assert store.version_record("acme/support@v1.0.0")["training_data_hashes"][1] == extra
    assert "training_data_hashes" not in store.version_record("acme/support@v1.1.0")
    shared = store.lineage(shares_tensors_with="acme/support@v1.1.0")
    assert [(e["ref"], e["shared_tensors"], e["of"]) for e in shared] == [("acme/support@v1.2.0", 14, 28)]
    with pytest.raises(NotFound, match="no version matches --training-data"):
        store.lineage(training_data="sha256:" + "00" * 32)
    miss = run_cli("lineage", "--training-data", "nonsense", "--store", store.path)
    assert miss.returncode == 1 and miss.stderr == "error: no version matches --training-data nonsense\n"
    deleted = run_cli("delete", "acme/support@v1.1.0", "--reason", "GDPR request 42", "--store", store.path)
    assert deleted.returncode == 0
    assert "note: acme/support@v1.2.0 holds 14 of acme/support@v1.1.0's 28 tensors" in deleted.stderr


def test_the_change_log_speaks_to_the_client(store, bundles, tmp_path):
    store.push(bundles["v1.0.0"], "acme/support@v1.0.0")
    bundle = bundles["v1.1.0"]
    (bundle / "eval_results.json").write_text(json.dumps({"accuracy": 0.958, "avg_response_time_s": 0.8,
                                                         "internal_loss": 0.31}))
    (bundle / "changelog.md").write_text("## v1.1.0\n\n### What Changed\n- Improved refund answers\n"
                                         "- Fewer false escalations\n\n### Known Limitations\n"
                                         "- Still weak on bundle questions\n")
    store.push(bundle, "acme/support@v1.1.0")
    plain = store.changelog("acme/support@v1.0.0", "acme/support@v1.1.0")
    assert "- Improved refund answers\n- Fewer false escalations" in plain
    assert "| avg_response_time_s | — | 0.8 |" in plain, "a time of 0.8 s is no 80%"
    assert "### Known Limitations\n- Still weak on bundle questions" in plain
    policy = tmp_path / "policy.yaml"
    policy.write_text("display:\n  avg_response_time_s: {label: Avg response time, unit: s}\n"
                      "  accuracy: {label: Accuracy}\n  internal_loss: {hidden: true}\n"
                      "gate: {required: false}\nreview: {required: false}\n")
    store.set_policy("acme/support", policy)
    styled = store.changelog("acme/support@v1.0.0", "acme/support@v1.1.0")
    assert "| Avg response time | — | 0.8s |" in styled and "| Accuracy | 94.2% | 95.8% |" in styled
    assert "internal_loss" not in styled
    major = replace(HISTORY[1], name="v2.0.0", base_model="mistralai/Mistral-7B-v0.3")
    store.push(write_bundle(major, tmp_path / "v2.0.0"), "acme/support@v2.0.0")
    moved = store.changelog("acme/support@v1.1.0", "acme/support@v2.0.0")
    assert "Moved to a new base model, mistralai/Mistral-7B-v0.3" in moved
    assert "not an instant swap" in moved and "instant rollback" not in moved
