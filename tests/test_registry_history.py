"""Costs that do not grow with history: a state names its versions map (a pointer move writes a
small state), the audit log is read without any versions map, and what gc and show needed the
history for is kept in the current state. Stores written before version maps are read and
carried over by their next transaction."""

import json
from dataclasses import replace

import pytest
from conftest import run_cli

from artifactstore import Conflict, HistoryDamaged, Store
from artifactstore.content.manifest import canonical_json
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.ids import parse_id
from artifactstore.registry.registry import Registry
from artifactstore.registry.state import STATE_CONTEXT, VERSION_MAP_CONTEXT, AuditEntry, object_key, ref_key

HISTORY = adapter_history(layers=2, scale=16)


@pytest.fixture
def pushed(store, tmp_path):
    for version in HISTORY[:4]:
        store.push(write_bundle(version, tmp_path / "bundles" / version.name), f"acme/support@{version.name}")
    return store


def state_bytes(store: Store, state_id: str) -> bytes:
    return store.registry.read_object(state_id, STATE_CONTEXT)


def test_a_pointer_move_writes_a_small_state_naming_the_same_versions_map(pushed):
    before = pushed.state("acme/support")
    moved = pushed.promote("acme/support@v1.1.0")
    assert moved.versions_id == before.versions_id is not None
    assert json.loads(state_bytes(pushed, moved.id))["versions"] == before.versions_id
    assert pushed.state("acme/support").versions == before.versions
    assert not any(record.encode() in state_bytes(pushed, moved.id) for record in before.versions.values()), \
        "the state does not grow with the versions"
    assert json.loads(pushed.backend.read("artifactstore.json"))["version"] == 3


def test_the_audit_log_reads_no_versions_map_and_a_limit_reads_only_what_it_shows(pushed, monkeypatch):
    for _ in range(3):
        pushed.promote("acme/support@v1.1.0")
        pushed.rollback("acme/support", to="v1.0.0") if pushed.state("acme/support").pointer("rollback_target") \
            else pushed.promote("acme/support@v1.0.0")
    everything = pushed.log("acme/support")
    reads = []
    registry = Registry(pushed.content)
    read_object = registry.read_object
    monkeypatch.setattr(registry, "read_object", lambda object_id, context: (reads.append(context),
                                                                          read_object(object_id, context))[1])
    assert registry.log("acme/support") == everything
    assert VERSION_MAP_CONTEXT not in reads
    reads.clear()
    assert registry.log("acme/support", limit=2) == everything[-2:]
    assert len(reads) <= 3, "the current state to find the head, then only the states holding two entries"


def test_show_reads_the_deployment_from_the_state(pushed, monkeypatch):
    pushed.promote("acme/support@v1.0.0", actor="jane")
    pushed.promote("acme/support@v1.1.0", actor="ops")
    monkeypatch.setattr(type(pushed.registry), "log", lambda *a, **k: pytest.fail("show read the log"))
    shown = pushed.show("acme/support@v1.0.0")
    assert shown["deployed_by"] == "jane" and shown["deployed_at"] is not None
    assert pushed.show("acme/support@v1.2.0")["deployed_at"] is None


def rewrite_before_version_maps(store: Store) -> None:
    """Write the model's whole chain again the way states were written before version maps (versions
    inline, nothing kept for gc or show), as a store from the previous release has it."""
    registry = store.registry
    chain = [state for _, state in registry.states("acme/support")][::-1]
    parent = None
    for state in chain:
        old = replace(state, versions_id=None, retired=(), deployments={}, deleted=None, parent=parent)
        parent = registry.write_object(old.encode(), STATE_CONTEXT)
    data, token = store.backend.read_ref(ref_key(chain[-1].model))
    store.backend.swap_ref(ref_key(chain[-1].model), canonical_json({"state": parent}), token)


def test_a_store_from_before_version_maps_is_read_collected_and_carried_over(pushed, tmp_path):
    pushed.promote("acme/support@v1.1.0", actor="jane")
    retired_bundle = pushed.version_record("acme/support@v1.0.0")["bundle"]
    pushed.delete("acme/support@v1.0.0")
    rewrite_before_version_maps(pushed)
    old = Store(pushed.path)
    head = old.state("acme/support")
    assert not head.map_era and head.retired == ()
    assert old.show("acme/support@v1.1.0")["deployed_by"] == "jane", "from the log, as before"
    assert retired_bundle in old.roots().retired, "gc reads the history of a store from before"
    with pytest.raises(Conflict, match="v1.0.0 was deleted"):
        old.push(write_bundle(HISTORY[3], tmp_path / "other"), "acme/support@v1.0.0")
    moved = old.promote("acme/support@v1.1.1")
    assert moved.map_era and moved.retired == (retired_bundle,) and moved.deployments["v1.1.0"]["by"] == "jane"
    assert moved.deleted == {"v1.0.0": retired_bundle}
    assert retired_bundle in Store(pushed.path).roots().retired
    for _ in range(2):
        Store(pushed.path).gc(grace="0s")
    final = Store(pushed.path)
    assert final.verify().ok
    final.get(final.resolve("acme/support@v1.2.0"), tmp_path / "out")
    assert not final.content.home.exists(f"manifests/{retired_bundle[3:5]}/{retired_bundle[3:]}.json")


def test_a_store_from_before_deleted_numbers_were_kept_reads_them_from_its_history(pushed, tmp_path):
    """States of the previous release name their versions maps but keep no deleted numbers: the
    history tells them, once; the next transaction keeps them in its state."""
    deleted_bundle = pushed.version_record("acme/support@v1.1.1")["bundle"]
    pushed.delete("acme/support@v1.1.1")
    head = pushed.state("acme/support")
    assert json.loads(state_bytes(pushed, head.id))["deleted"] == {"v1.1.1": deleted_bundle}
    before = pushed.registry.write_object(replace(head, deleted=None).encode(), STATE_CONTEXT)
    pushed.backend.write(ref_key(head.model), canonical_json({"state": before}))
    old = Store(pushed.path)
    assert old.state("acme/support").deleted is None and "deleted" not in json.loads(state_bytes(old, before))
    other = write_bundle(HISTORY[4], tmp_path / "other")
    with pytest.raises(Conflict, match="v1.1.1 was deleted"):
        old.push(other, "acme/support@v1.1.1")
    assert old.push(other, "acme/support", bump="auto").version == "v1.2.1"
    assert old.state("acme/support").deleted == {"v1.1.1": deleted_bundle}
    assert old.verify().ok


def test_a_damaged_old_state_of_a_store_from_before_deleted_numbers_stops_no_rollback(pushed, tmp_path):
    """Only a push or a delete reads the history for the deleted numbers a previous release's state
    does not keep; a damaged state in it ends what can be known (the numbers found are refused), and
    the numbers stay unknown in the states written."""
    pushed.promote("acme/support@v1.0.0")
    pushed.promote("acme/support@v1.1.0")
    pushed.delete("acme/support@v1.1.1")
    head = pushed.state("acme/support")
    before = pushed.registry.write_object(replace(head, deleted=None).encode(), STATE_CONTEXT)
    pushed.backend.write(ref_key(head.model), canonical_json({"state": before}))
    oldest = [state_id for state_id, _ in pushed.registry.states("acme/support")][-1]
    path = pushed.path / object_key(parse_id(oldest))
    path.chmod(0o644)
    path.write_bytes(b"damaged")
    old = Store(pushed.path)
    assert old.rollback("acme/support", reason="3am").pointer("production") == "v1.0.0"
    other = write_bundle(HISTORY[4], tmp_path / "other")
    with pytest.raises(Conflict, match="v1.1.1 was deleted"):
        old.push(other, "acme/support@v1.1.1")
    assert old.push(other, "acme/support", bump="auto").version == "v1.2.1"
    assert old.state("acme/support").deleted is None, "the history does not read to its start"


def test_log_limit_on_the_command_line(pushed):
    from conftest import run_cli

    pushed.promote("acme/support@v1.1.0")
    shown = json.loads(run_cli("log", "acme/support", "--limit", "2", "--json", "--store", pushed.path).stdout)
    assert [e["seq"] for e in shown["entries"]] == [e.seq for e in pushed.log("acme/support")[-2:]]
    refused = run_cli("log", "acme/support", "--limit", "0", "--store", pushed.path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr


def test_a_damaged_state_in_the_middle_leaves_the_newer_log_readable(pushed):
    """The head is the ref's business (verify --repair); a damaged older state loses only what is
    older than it, and the log says so instead of showing nothing."""
    pushed.promote("acme/support@v1.0.0")
    pushed.promote("acme/support@v1.1.0")
    newest_two = list(pushed.registry.trail("acme/support"))[:2]  # the promotes' states: their entries stay
    readable = sorted(e.seq for _, made in newest_two for e in made)
    middle = pushed.registry.read_state_object(newest_two[1][0]).parent  # the last push's state
    pushed.backend.write(object_key(parse_id(middle)), b'{"damaged": true}')
    with pytest.raises(HistoryDamaged) as caught:
        Store(pushed.path).log("acme/support")
    assert [e.seq for e in caught.value.entries] == readable
    assert f"reads only down to entry {readable[0]}" in str(caught.value) and middle in str(caught.value)
    assert [e.seq for e in Store(pushed.path).log("acme/support", limit=2)] == readable[-2:]
    assert Store(pushed.path).state("acme/support").pointer("production") == "v1.1.0"

    shown = run_cli("log", "acme/support", "--store", pushed.path)
    assert shown.returncode == 1 and shown.stderr.count("\n") == 1 and "error: acme/support: the audit" in shown.stderr
    assert [int(line.split()[0]) for line in shown.stdout.splitlines()] == readable
    as_json = run_cli("log", "acme/support", "--json", "--store", pushed.path)
    printed = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and len(printed["entries"]) == len(readable) and middle in printed["damaged"]


def commit_forged(store: Store, **changes) -> str:
    """Put in place by hand a state made from the current one with ``changes``, its parent the
    current one, as a forger would: every link and id is sound."""
    head = store.state("acme/support")
    forged = store.registry.write_object(replace(head, parent=head.id, id=None, **changes).encode(), STATE_CONTEXT)
    store.backend.write(ref_key(head.model), canonical_json({"state": forged}))
    return forged


def forged_entry(store: Store, action: str, pointer: str | None, to: str) -> AuditEntry:
    """An audit entry numbered after the current state's."""
    return AuditEntry(store.state("acme/support").seq + 1, "2026-03-10T14:30:00.000000Z", "mallory", action,
                      pointer, None, to, "")


@pytest.mark.parametrize("forgery", ["no entry", "seq", "pointer", "map", "push", "deleted"])
def test_verify_names_a_state_its_audit_entries_do_not_account_for(pushed, forgery):
    head = pushed.state("acme/support")
    pin = forged_entry(pushed, "pin", "pins", "v1.0.0")
    pinned = {"entries": (pin,), "seq": pin.seq, "pins": ("v1.0.0",)}
    second_push_map = [s for _, s in pushed.states("acme/support")][2].versions_id
    changes, expected = {
        "no entry": ({"entries": (), "pointers": {"production": "v1.0.0"}},
                     ["has no audit entry: every transaction records at least one",
                      "has production v1.0.0, but its parent and its audit entries make it unset"]),
        "seq": (pinned | {"seq": pin.seq + 1}, [f"has seq {pin.seq + 1}, but its last audit entry is {pin.seq}"]),
        "pointer": (pinned | {"pointers": {"production": "v1.0.0"}},
                    ["has production v1.0.0, but its parent and its audit entries make it unset"]),
        "map": (pinned | {"versions_id": second_push_map},
                [f"names the versions map {second_push_map}, but no audit entry of it pushes or deletes a version "
                 f"(its parent names {head.versions_id})"]),
        "push": ({"entries": (forged_entry(pushed, "push", None, "v1.3.0"),), "seq": head.seq + 1},
                 [f"has no version v1.3.0, which its audit entry {head.seq + 1} pushed"]),
        "deleted": (pinned | {"deleted": {"v1.0.0": pushed.resolve("acme/support@v1.0.0")}},
                    ["has version v1.0.0, and keeps it among its deleted versions too"]),
    }[forgery]
    forged = commit_forged(pushed, **changes)
    problems = Store(pushed.path).verify().problems
    named = f"registry acme/support: state {forged} "
    assert [p.removeprefix(named) for p in problems if p.startswith(named)] == expected, problems
