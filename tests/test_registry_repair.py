"""A damaged ref or newest state: verify names it, verify --repair rebuilds the ref from the newest
intact state, names what was lost and records the repair in the audit log (issue 8, items 3 and 4)."""

import json

import pytest
from conftest import run_cli

from artifactstore import Conflict, CorruptObject, Store
from artifactstore.content.manifest import canonical_json
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.ids import parse_id
from artifactstore.registry.registry import Registry
from artifactstore.registry.repair import REPAIR
from artifactstore.registry.state import VERSION_CONTEXT, AuditEntry, ModelState, object_key, ref_key

HISTORY = adapter_history(layers=2, scale=16)
VERSIONS = ("v1.0.0", "v1.1.0", "v1.1.1")
MODEL = "acme/support"
REF = "registry/refs/acme/support.json"


def pushed_store(location, tmp_path, cache=None) -> Store:
    """acme/support with three versions pushed, v1.1.0 then v1.1.1 promoted: entries 1-3 are the
    pushes, 4 the first promote, 5-6 the second (production and rollback_target)."""
    store = Store.init(location, cache=cache)
    for version in HISTORY[:3]:
        store.push(write_bundle(version, tmp_path / "bundles" / version.name), f"{MODEL}@{version.name}")
    store.promote(f"{MODEL}@v1.1.0", actor="ci@agency")
    store.promote(f"{MODEL}@v1.1.1", actor="ci@agency")
    return store


@pytest.fixture(params=["local", "s3"])
def either_store(request, tmp_path) -> Store:
    """The pushed store in a local directory, or shared in a real S3 bucket."""
    if request.param == "s3":
        return pushed_store(f"{request.getfixturevalue('s3_bucket')}/shared", tmp_path, cache=tmp_path / "cache")
    return pushed_store(tmp_path / "store", tmp_path)


@pytest.fixture
def store(tmp_path) -> Store:
    return pushed_store(tmp_path / "store", tmp_path)


def damage(store: Store, key: str, how: str) -> None:
    """Overwrite a stored object (ref or state) with damaged bytes, as a disk or a careless hand would."""
    data = bytearray(store.backend.read(key))
    if how == "truncate":
        data = data[:len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how == "flip-hex":  # a bit flip that leaves a character that is not a hex digit
        position = data.index(b"b3:") + 10
        data[position] = ord("p") if chr(data[position]) in "0123456789" else ord("x")
    elif how == "flip-valid":  # a bit flip inside a hex digit that leaves another hex digit: "1" <-> "0"
        position = data.index(b"b3:") + 3 + next(i for i, c in enumerate(data[data.index(b"b3:") + 3:]) if c in b"01")
        data[position] ^= 1
    elif how == "flip-json":  # a bit flip inside a text field: still JSON, no longer its id
        position = data.index(b'"actor":"') + len(b'"actor":"')
        data[position] ^= 0x01
    store.backend.write(key, bytes(data))


def state_key(state_id: str) -> str:
    return object_key(parse_id(state_id))


def loads_every_version(store: Store) -> None:
    for version in VERSIONS:
        tensors = store.load(f"{MODEL}@{version}")
        expected = next(v for v in HISTORY if v.name == version).tensors
        assert {name: t.tobytes() for name, t in tensors.items()} == {name: t.tobytes() for name, t in expected.items()}


@pytest.mark.parametrize("how", ["truncate", "empty", "flip-hex", "flip-valid"])
def test_a_damaged_ref_is_rebuilt_and_nothing_is_lost(either_store, how):
    store = either_store
    head = store.state(MODEL)
    damage(store, REF, how)
    with pytest.raises(CorruptObject, match=REF):
        store.log(MODEL)
    report = store.verify()
    assert not report.ok and any(REF in p for p in report.problems)

    report = store.verify(repair=True)
    assert report.ok, report.problems
    [line] = report.repaired
    assert REF in line and "nothing lost" in line and f"from the state {head.id} (entry 6)" in line
    log = store.log(MODEL)
    assert [e.seq for e in log] == list(range(1, 8))
    assert log[-1].action == REPAIR and "nothing lost" in log[-1].reason and REF in log[-1].reason
    repaired = store.state(MODEL)
    assert repaired.parent == head.id and (repaired.versions, repaired.pointers) == (head.versions, head.pointers)
    loads_every_version(store)
    store.pin(f"{MODEL}@v1.0.0")  # transactions go on from the repaired ref
    assert store.verify().ok


@pytest.mark.parametrize("how", ["truncate", "empty"])
def test_a_damaged_newest_state_loses_only_its_own_transaction(either_store, how):
    store = either_store
    lost = store.state(MODEL)
    damage(store, state_key(lost.id), how)
    with pytest.raises(CorruptObject, match="does not match its id"):
        store.log(MODEL)
    report = store.verify()
    assert not report.ok and any(state_key(lost.id) in p for p in report.problems)

    report = store.verify(repair=True)
    assert report.ok, report.problems
    [line] = report.repaired
    assert f"{REF} names {lost.id}, which is damaged; rebuilt from the state" in line
    assert "(entry 4): entries from 5 on, that state's transaction, are lost" in line
    if how == "empty":
        assert f"the parent of {lost.id} could not be read" in line
    log = store.log(MODEL)
    assert [(e.seq, e.action) for e in log] == [(1, "push"), (2, "push"), (3, "push"), (4, "promote"), (5, REPAIR)]
    assert "entries from 5 on" in log[-1].reason and lost.id in log[-1].reason
    # the state before the lost promote: v1.1.0 in production, every version there
    assert store.state(MODEL).pointers == {"production": "v1.1.0"}
    loads_every_version(store)
    assert store.verify().ok


def test_a_flipped_bit_that_keeps_a_state_readable_names_the_exact_entries(store):
    lost = store.state(MODEL)
    damage(store, state_key(lost.id), "flip-json")
    report = store.verify(repair=True)
    assert report.ok, report.problems
    assert "(entry 4): entries 5–6, that state's transaction, are lost" in report.repaired[0]
    assert "entries 5–6" in store.log(MODEL)[-1].reason


def test_a_ref_naming_a_missing_state_is_rebuilt_from_the_newest_state_before_it(store):
    lost = store.state(MODEL)
    store.backend.delete(state_key(lost.id))
    report = store.verify(repair=True)
    assert report.ok, report.problems
    assert f"{REF} names {lost.id}, which is missing; rebuilt from the state" in report.repaired[0]
    assert "entries from 5 on, that state's transaction, are lost" in report.repaired[0]
    loads_every_version(store)


def test_a_ref_naming_another_models_state_is_refused_named_by_verify_and_rebuilt(store, tmp_path):
    store.push(write_bundle(HISTORY[0], tmp_path / "other"), "acme/other@v1.0.0")
    own, other = store.state(MODEL), store.state("acme/other")
    store.backend.write(REF, store.backend.read(ref_key(other.model)))
    damaged = f"{REF}: names state {other.id}, which is a state of acme/other, not of {MODEL}"
    with pytest.raises(CorruptObject, match=damaged):
        store.ls(MODEL)
    with pytest.raises(CorruptObject, match=damaged):
        store.promote(f"{MODEL}@v1.0.0")
    assert store.backend.read(REF) == store.backend.read(ref_key(other.model))  # nothing written into it
    assert f"registry {MODEL}: {damaged}" in store.verify().problems
    report = store.verify(repair=True)
    assert report.ok, report.problems
    assert f"{REF} names {other.id}, which is a state of acme/other; rebuilt from the state {own.id}" \
        in report.repaired[0]
    assert store.state(MODEL).versions == own.versions and store.state(MODEL).parent == own.id
    loads_every_version(store)


def test_a_ref_naming_another_models_state_is_named_so_though_that_states_versions_map_is_gone(store, tmp_path):
    store.push(write_bundle(HISTORY[0], tmp_path / "other"), "acme/other@v1.0.0")
    other = store.state("acme/other")
    store.backend.write(REF, store.backend.read(ref_key(other.model)))
    store.backend.delete(object_key(parse_id(other.versions_id)))
    with pytest.raises(CorruptObject, match=f"{REF}: names state {other.id}, which is a state of acme/other"):
        Store(store.path).state(MODEL)


def test_a_malformed_ref_is_named_and_verify_checks_the_other_models(tmp_path):
    store = Store.init(tmp_path / "store")
    for model in ("acme/a", "acme/b", "acme/c"):
        store.push(write_bundle(HISTORY[0], tmp_path / model), f"{model}@v1.0.0")
    for model in ("acme/a", "acme/c"):
        damage(store, ref_key(store.state(model).model), "flip-hex")
    with pytest.raises(CorruptObject, match="registry/refs/acme/a.json: malformed ref"):
        store.state("acme/a")
    result = run_cli("verify", "--store", store.path)
    assert result.returncode == 1 and "Traceback" not in result.stderr and not result.stderr, result.stderr
    assert "registry acme/a: registry/refs/acme/a.json: malformed ref (not a content id" in result.stdout
    assert "registry acme/c: registry/refs/acme/c.json: malformed ref" in result.stdout
    assert "acme/b" not in result.stdout
    assert store.load("acme/b@v1.0.0")


def test_cli_verify_repair_rebuilds_the_ref_prints_what_was_lost_and_exits_0(tmp_path):
    store = Store.init(tmp_path / "store")
    for version in HISTORY[:2]:
        store.push(write_bundle(version, tmp_path / version.name), f"{MODEL}@{version.name}")
    store.promote(f"{MODEL}@v1.1.0")
    damage(store, state_key(store.state(MODEL).id), "truncate")
    assert run_cli("log", MODEL, "--store", store.path).returncode == 1

    result = run_cli("verify", "--repair", "--store", store.path, env={"ARTIFACTSTORE_ACTOR": "ops@agency"})
    assert result.returncode == 0, result.stdout + result.stderr
    repaired, ok = result.stdout.splitlines()
    assert repaired.startswith(f"repaired: registry {MODEL}: {REF} names b3:")
    assert "entries from 3 on" in repaired and ok == "ok"
    log = run_cli("log", MODEL, "--store", store.path, "--json")
    assert log.returncode == 0
    last = json.loads(log.stdout)["entries"][-1]
    assert (last["seq"], last["action"], last["actor"]) == (3, REPAIR, "ops@agency")
    assert run_cli("verify", "--store", store.path).returncode == 0


def test_a_model_with_no_intact_state_cannot_be_repaired(tmp_path):
    store = Store.init(tmp_path / "store")
    store.push(write_bundle(HISTORY[0], tmp_path / "v1"), f"{MODEL}@v1.0.0")
    store.push(write_bundle(HISTORY[0], tmp_path / "other"), "acme/other@v1.0.0")
    damage(store, state_key(store.state(MODEL).id), "truncate")
    damage(store, REF, "empty")
    before = store.path.joinpath(REF).read_bytes()

    result = run_cli("verify", "--repair", "--store", store.path)
    assert result.returncode == 1
    assert (f"registry {MODEL}: {REF} is damaged and cannot be rebuilt: no intact state of the model was found"
            in result.stdout)
    assert store.path.joinpath(REF).read_bytes() == before
    assert "acme/other" not in result.stdout


def test_a_damaged_middle_state_leaves_the_ref_alone(store):
    middle = list(store.states(MODEL))[2][0]  # the state of the third push
    damage(store, state_key(middle), "truncate")
    head = store.state(MODEL)
    report = store.verify(repair=True)
    assert not report.ok and not report.repaired
    assert any(middle in p and "does not match its id" in p for p in report.problems)
    assert store.state(MODEL).id == head.id
    loads_every_version(store)  # every state holds the whole model: versions and pointers


def test_a_missing_ref_is_found_and_rebuilt(store):
    head = store.state(MODEL)
    store.backend.delete(REF)
    assert store.models() == []
    report = store.verify()
    assert report.problems == [f"registry {MODEL}: {REF} is missing, but committed states of the model exist"]
    report = store.verify(repair=True)
    assert report.ok, report.problems
    assert f"{REF} is missing; rebuilt from the state {head.id} (entry 6): nothing lost" in report.repaired[0]
    loads_every_version(store)


def test_an_interrupted_first_push_is_not_taken_for_a_model(tmp_path):
    store = Store.init(tmp_path / "store")
    store.push(write_bundle(HISTORY[0], tmp_path / "v1"), "acme/ghost@v1.0.0")
    store.backend.delete("registry/refs/acme/ghost.json")  # as if killed before the swap
    report = store.verify(repair=True)
    assert report.ok and not report.repaired and store.models() == []


def lose_a_race(store: Store) -> str:
    """A real lost compare-and-swap: while a promote runs, another writer stages first. Returns the
    id of the losing promote's state, which is stored but never referenced."""
    def stage_first(registry, current, transition):
        if transition.pointer == "production":
            store.stage(f"{MODEL}@v1.0.0", reason="won the race")

    def state_ids() -> set[str]:
        return {"b3:" + key.rsplit("/", 1)[1].removesuffix(".json") for key in store.backend.list("registry/objects")}

    before = state_ids()
    with pytest.raises(Conflict):
        Registry(store.content, rules=[stage_first]).promote(f"{MODEL}@v1.0.0", reason="lost the race")
    [orphan] = state_ids() - before - {state_id for state_id, _ in store.states(MODEL)}
    return orphan


def test_a_state_that_lost_a_race_is_not_taken_for_the_head(store):
    orphan = lose_a_race(store)
    assert store.registry.read_state_object(orphan).seq == 8  # a promote over v1.1.1: two entries
    store.pin(f"{MODEL}@v1.1.0")  # the winner's chain goes on: stage is 7, pin 8
    head = store.state(MODEL)
    damage(store, REF, "empty")
    report = store.verify(repair=True)
    assert report.ok, report.problems
    assert f"from the state {head.id} (entry 8): nothing lost" in report.repaired[0]
    assert "1 other state(s) that no state follows were left out" in report.repaired[0]
    assert [e.action for e in store.log(MODEL)][-3:] == ["stage", "pin", REPAIR]


def test_a_race_the_ref_cannot_settle_is_reported_as_a_choice(store):
    orphan = lose_a_race(store)
    winner = store.state(MODEL)
    damage(store, REF, "empty")
    report = store.verify(repair=True)
    assert report.ok, report.problems
    # a stage (entry 7) and a promote (entries 7-8) from the same state, and nothing to tell which
    # one the ref moved to: the longer one is taken, and the report says so, naming the other
    assert f"from the state {orphan} (entry 8)" in report.repaired[0]
    assert f"there was a choice: {winner.id} (entry 7, stage) has the same parent" in report.repaired[0]


def test_a_truncated_ref_still_picks_the_winner_of_a_race(store):
    lose_a_race(store)
    winner = store.state(MODEL)
    damage(store, REF, "truncate")  # about 30 of the id's 64 hex digits stay legible
    report = store.verify(repair=True)
    assert report.ok, report.problems
    assert f"from the state {winner.id} (entry 7): nothing lost" in report.repaired[0]
    assert store.log(MODEL)[-2].reason == "won the race"


def test_verify_names_a_ref_set_back_over_committed_states_but_not_a_lost_race(store, monkeypatch):
    lose_a_race(store)  # the loser's state follows the state that the winner (a stage, entry 7) replaced
    winner = store.state(MODEL)

    def killed(*_):
        raise Conflict("killed between its write and its swap")

    with monkeypatch.context() as patched:  # a promote whose state follows the head and was never committed
        patched.setattr(store.backend, "swap_ref", killed)
        with pytest.raises(Conflict):
            store.promote(f"{MODEL}@v1.0.0")
    assert store.verify().ok, "a state that merely follows the head proves nothing"

    first_promote, _ = list(store.registry.trail(MODEL))[2]
    store.backend.write(REF, canonical_json({"state": first_promote}))  # the ref set back by hand: entries 5-7 gone
    assert store.log(MODEL)[-1].seq == 4
    # the killed promote names the winner as its parent, so the ref once named the winner
    assert store.verify().problems == [
        f"registry {MODEL}: {REF} names {first_promote} (entry 4), but {winner.id} (entry 7), which follows it, was "
        "committed: the ref was set back, and the entries from 5 on are gone from the log"]


def unlinked_versions_maps(store: Store, how: str) -> tuple[list[ModelState], list[AuditEntry]]:
    """Delete or damage the versions map of the newest state (the third push's, which the promotes
    share) and the second push's; returns the states above the first push's and the audit log."""
    states = [state for _, state in store.states(MODEL)][:-1]
    for map_id in dict.fromkeys(state.versions_id for state in states):
        key = object_key(parse_id(map_id))
        if how == "missing":
            store.backend.delete(key)
        else:
            damage(store, key, how)
    return states, store.log(MODEL)


@pytest.mark.parametrize("how", ["missing", "truncate"])
def test_a_missing_or_damaged_versions_map_is_named_and_rebuilt_exactly(store, how):
    head, first_push = store.state(MODEL), list(store.states(MODEL))[-1][0]
    record = json.loads(store.backend.read(object_key(parse_id(head.versions["v1.1.1"]))))
    # a push of v1.1.1 that lost its race leaves a record of the same version: the map's id tells them apart
    store.registry.write_object(canonical_json(record | {"created_by": "lost@race"}), VERSION_CONTEXT)
    states, log = unlinked_versions_maps(store, how)

    problems = Store(store.path).verify().problems
    said = "is missing" if how == "missing" else "is damaged (registry object"
    assert any(p.startswith(f"registry {MODEL}: versions map {head.versions_id} of state {head.id} {said}")
               for p in problems), problems
    assert not any("malformed model state" in p for p in problems), "the state itself is intact"

    report = Store(store.path).verify(repair=True)
    assert report.ok, report.problems
    [line] = report.repaired
    assert f"versions map {head.versions_id} of state {head.id} {said}" in line
    assert f"rebuilt exactly (it hashes to its id) from the versions map of the state {first_push}" in line
    repaired = Store(store.path)
    assert repaired.log(MODEL) == log, "nothing was lost: no repair state is written"
    assert repaired.state(MODEL) == head and [s for _, s in repaired.states(MODEL)][:-1] == states
    loads_every_version(repaired)


def test_a_versions_map_that_cannot_be_rebuilt_is_named_and_the_ref_left_alone(store):
    head = store.state(MODEL)
    store.backend.delete(object_key(parse_id(head.versions["v1.1.1"])))
    _, log = unlinked_versions_maps(store, "missing")
    ref = store.backend.read(REF)

    report = Store(store.path).verify(repair=True)
    assert not report.ok and not report.repaired
    assert (f"registry {MODEL}: versions map {head.versions_id} of state {head.id} is missing and cannot be rebuilt: "
            f"no version record of {MODEL}@v1.1.1 (entry 3) is in the store") in report.problems[0]
    assert "the ref is left alone" in report.problems[0]
    assert store.backend.read(REF) == ref and Store(store.path).log(MODEL) == log
