"""The fleet: smoke tests in bundles, the follower's pick(key), heartbeats, automatic rollback after a smoke
failure (three real follower processes), drills and status."""

import dataclasses
import json
import threading
from datetime import timedelta

import pytest
from conftest import run_cli
from fleet_helpers import (
    HISTORY,
    MODEL,
    answer,
    kill,
    push_version,
    push_versions,
    report,
    set_now,
    smoke_lines,
    start_follower,
    stop,
    wait_until,
    with_policy,
)
from test_hooks import Receiver

from artifactstore import InvalidInput, InvalidParameter, Store
from artifactstore.clock import now, parse_time
from artifactstore.content.pack import pack_key
from artifactstore.demo import write_bundle
from artifactstore.ids import format_id
from artifactstore.registry.bundle import SmokeTest, load_bundle
from artifactstore.registry.drills import swap_for_drill
from artifactstore.registry.refs import ModelName
from artifactstore.registry.routing import route
from artifactstore.serving import Follower
from artifactstore.serving.smoke import check_output


@pytest.fixture
def live(store, tmp_path):
    """acme/support: v1.0.0 and v1.1.0 with smoke tests, v1.0.0 in production."""
    push_versions(store, tmp_path)
    with_policy(store, tmp_path)
    store.promote(f"{MODEL}@v1.0.0", actor="jane", reason="launch")
    return store


# -- smoke tests in a bundle ---------------------------------------------------------------------


def test_a_bundle_may_carry_smoke_tests_checked_like_its_other_files(tmp_path):
    bundle = write_bundle(HISTORY[0], tmp_path / "b")
    assert load_bundle(bundle).smoke_tests == ()
    (bundle / "smoke_tests.jsonl").write_text(smoke_lines(0, 5) + "\n")
    tests = load_bundle(bundle).smoke_tests
    assert len(tests) == 5 and tests[0].name == "probe-0" and tests[0].tolerance == 1e-6
    (bundle / "smoke_tests.jsonl").write_text('{"input": "hi", "expected": "hello", "contains": "he"}\n'
                                              '{"input": "hi"}\n{"input": "hi", "matches": "("}\n'
                                              '{"input": "hi", "contains": "x", "tolerance": 1}\nnot json\n'
                                              '{"input": "hi", "expected": 1, "colour": "red"}\n')
    with pytest.raises(InvalidInput) as error:
        load_bundle(bundle)
    message = str(error.value)
    for expected in ("smoke_tests.jsonl line 1: (top level): Value error, give exactly one of expected, contains, "
                     "matches (not expected, contains)", "line 2: (top level): Value error, give exactly one",
                     "line 3: (top level): Value error, matches: not a regular expression",
                     "line 4: (top level): Value error, tolerance goes with expected",
                     "line 5: not valid JSON", "line 6: colour: unknown field (refused, not ignored)"):
        assert expected in message
    (bundle / "smoke_tests.jsonl").write_text('{"input": 1, "expected": 1}\n' * 101)
    with pytest.raises(InvalidInput, match="101 tests; give 1 to 100"):
        load_bundle(bundle)


@pytest.mark.parametrize("test, output, why", [
    ({"input": 1, "expected": {"a": [1, 2.0]}}, {"a": [1, 2]}, None),
    ({"input": 1, "expected": 0.5, "tolerance": 0.01}, 0.505, None),
    ({"input": 1, "expected": 0.5}, 0.505, "expected 0.5, got 0.505"),
    ({"input": 1, "expected": True}, 1, "expected true, got 1"),
    ({"input": 1, "contains": ["refund", "days"]}, "a refund within 30 days", None),
    ({"input": 1, "contains": "refund"}, "no idea", "'no idea' does not contain 'refund'"),
    ({"input": 1, "matches": r"\d+ days"}, "within 30 days", None),
    ({"input": 1, "contains": "30 días"}, {"answer": "Tiene 30 días para devolverlo."}, None),
    ({"input": 1, "matches": r"\d+ 日"}, ["30 日以内"], None),
    ({"input": 1, "contains": "Tage"}, {"a": "nö"}, """'{"a": "nö"}' does not contain 'Tage'"""),
])
def test_an_output_is_checked_against_its_test(test, output, why):
    assert check_output(SmokeTest.model_validate(test), output) == why


# -- the follower --------------------------------------------------------------------------------


def test_pick_routes_each_key_like_route_and_keeps_both_versions_resident(live):
    live.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    live.set_canary(f"{MODEL}@v1.1.0", 50, reason="a wider split for the test", force=True)
    with Follower(live, f"{MODEL}@production", poll_interval=0.001, smoke_function=answer) as follower:
        state = live.state(MODEL)
        keys = [f"user-{i}" for i in range(400)]
        picked = [follower.pick(key).version for key in keys]
        assert picked == [route(state, "production", key) for key in keys]
        assert 120 < picked.count("v1.1.0") < 280 and {"v1.0.0", "v1.1.0"} <= set(follower.resident)
        assert follower.current.version == "v1.0.0" and follower.canary.version == "v1.1.0"
        assert follower.smoke["v1.1.0"].ok and follower.smoke["v1.1.0"].tests == 5
        live.abort_rollout(MODEL, actor="jane", reason="enough")
        wait_until(lambda: follower.canary is None, what="the canary gone")
        assert {follower.pick(key).version for key in keys} == {"v1.0.0"}


def test_a_failing_smoke_test_keeps_the_old_version_and_without_a_node_changes_nothing(live, tmp_path):
    errors = []
    bad = write_bundle(HISTORY[2], tmp_path / "bad")
    (bad / "smoke_tests.jsonl").write_text(smoke_lines(0))  # v1.0.0's expected outputs: v1.1.1's weights differ
    live.push(bad, f"{MODEL}@v1.1.1")
    with Follower(live, f"{MODEL}@production", poll_interval=0.001, smoke_function=answer,
                  on_error=errors.append) as follower:
        live.promote(f"{MODEL}@v1.1.1", actor="jane")
        wait_until(lambda: errors, what="the smoke failure")
        assert follower.current.version == "v1.0.0" and not follower.smoke["v1.1.1"].ok
        assert "v1.1.1 failed the smoke check (" in errors[0] and "tests failed" in errors[0]
    assert live.state(MODEL).pointer("production") == "v1.1.1", "a follower without a node name reports nothing"


def test_a_look_another_thread_takes_after_stop_does_not_bring_the_node_back(live):
    """stop() waits for a look another thread is taking (an admin endpoint's refresh, say), and a
    look after it writes no heartbeat: a node stopped on purpose stays out of the fleet."""
    follower = Follower(live, f"{MODEL}@production", node="srv-1").start()
    wait_until(lambda: live.fleet(MODEL).heartbeats, what="the heartbeat")
    live.promote(f"{MODEL}@v1.1.0", actor="jane", reason="retrain")
    looking = threading.Thread(target=follower.refresh, kwargs={"force": True})
    looking.start()
    follower.stop()
    looking.join()
    follower.refresh(force=True)
    assert live.fleet(MODEL).heartbeats == []


def test_stop_from_a_callback_of_a_look_returns(live):
    """An alert handler that takes the node out of the fleet when a smoke check fails calls stop()
    from inside the look: it must return, and leave no heartbeat."""
    stopped = []

    def on_error(message: str) -> None:
        follower.stop()
        stopped.append(message)

    follower = Follower(live, f"{MODEL}@production", node="srv-1", on_error=on_error,
                        smoke_check=lambda candidate: candidate.version != "v1.1.0")
    live.promote(f"{MODEL}@v1.1.0", actor="jane", reason="retrain")
    looking = threading.Thread(target=follower.refresh, daemon=True)
    looking.start()
    looking.join(30)
    assert not looking.is_alive() and stopped and live.fleet(MODEL).heartbeats == []


def test_a_node_that_fails_the_new_production_rolls_the_registry_back_with_its_evidence(live, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("SMOKE_BROKEN_FOR", "v1.1.0")
    receiver = Receiver()
    try:
        with_policy(live, tmp_path, f"gate: {{required: false}}\nreview: {{required: false}}\n"
                                    f"hooks:\n  - {{name: ops, url: '{receiver.url}'}}\n")
        with Follower(live, f"{MODEL}@production", poll_interval=0.001, smoke_function=answer, node="srv-9",
                      heartbeat_interval=0.05) as follower:
            live.promote(f"{MODEL}@v1.1.0", actor="jane", reason="retrain")
            wait_until(lambda: live.state(MODEL).pointer("production") == "v1.0.0", what="the rollback")
            assert follower.current.version == "v1.0.0"
            wait_until(lambda: live.fleet(MODEL).heartbeats[0].state == live.state(MODEL).id, what="the heartbeat")
            heartbeat = live.fleet(MODEL).heartbeats[0]
            assert heartbeat.serving == "v1.0.0" and heartbeat.smoke["v1.1.0"]["ok"] is False
            assert not any("smoke" in a for a in live.status(MODEL)["alerts"]), "v1.1.0 is named by nothing now"
        assert live.fleet(MODEL).heartbeats == [], "a node stopped on purpose leaves the fleet"
        wait_until(lambda: len(receiver.received) == 2, what="the hook events")
    finally:
        receiver.close()
    entry = next(e for e in reversed(live.log(MODEL)) if e.action == "rollback" and e.pointer == "production")
    assert entry.actor == "node:srv-9" and entry.from_ == "v1.1.0" and entry.to == "v1.0.0"
    assert entry.evidence["node"] == "srv-9" and "5 of 5 tests failed" in entry.evidence["smoke"]
    assert "node srv-9's smoke check failed v1.1.0" in entry.reason
    assert sorted(receiver.events()) == ["promoted", "rolled_back"]  # the node may be quicker than the promote's hook
    rolled = next(r["event"] for r in receiver.received if r["event"]["event"] == "rolled_back")
    assert rolled["evidence"]["node"] == "srv-9"


def test_with_on_failure_keep_the_node_keeps_the_old_version_and_status_shows_the_disagreement(live, tmp_path,
                                                                                             monkeypatch):
    with_policy(live, tmp_path, "gate: {required: false}\nreview: {required: false}\nsmoke: {on_failure: keep}\n")
    monkeypatch.setenv("SMOKE_BROKEN_FOR", "v1.1.0")
    with Follower(live, f"{MODEL}@production", poll_interval=0.001, smoke_function=answer, node="srv-1"):
        live.promote(f"{MODEL}@v1.1.0", actor="jane")
        wait_until(lambda: live.fleet(MODEL).heartbeats[0].state == live.state(MODEL).id, what="the heartbeat")
        assert live.state(MODEL).pointer("production") == "v1.1.0", "keep: the registry is not moved"
        alerts = live.status(MODEL)["alerts"]
        assert alerts[0] == "node srv-1 serves v1.0.0 (canary None), the registry says production v1.1.0 (canary None)"
        assert alerts[1].startswith("node srv-1: smoke check failed v1.1.0: 5 of 5 tests failed: probe-0: expected")
        assert alerts[1].endswith("; and 3 more")


def test_a_node_that_fails_the_canary_aborts_the_rollout(live, monkeypatch):
    monkeypatch.setenv("SMOKE_BROKEN_FOR", "v1.1.0")
    with Follower(live, f"{MODEL}@production", poll_interval=0.001, smoke_function=answer, node="srv-1"):
        live.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
        wait_until(lambda: live.state(MODEL).rollout is None, what="the abort")
    state = live.state(MODEL)
    assert state.canary is None and state.pointer("production") == "v1.0.0"
    assert state.entries[-1].action == "rollout-abort" and state.entries[-1].evidence["node"] == "srv-1"


def test_a_node_that_fails_a_hand_made_canary_ends_it_with_its_evidence_and_an_event(live, monkeypatch):
    from artifactstore.registry.hooks import events_of

    monkeypatch.setenv("SMOKE_BROKEN_FOR", "v1.1.0")
    follower = Follower(live, f"{MODEL}@production", smoke_function=answer, node="srv-1")
    live.set_canary(f"{MODEL}@v1.1.0", 10, actor="jane", reason="try it")
    follower.refresh()
    state = live.state(MODEL)
    entry = state.entries[-1]
    assert state.canary is None and (entry.action, entry.actor, entry.from_) == ("canary", "node:srv-1", "v1.1.0")
    assert entry.evidence["node"] == "srv-1" and entry.evidence["version"] == "v1.1.0"
    assert [(e["event"], e["version"]) for e in events_of(live.registry, state)] == [("canary_aborted", "v1.1.0")]


def test_a_replaced_production_stays_resident_for_keep_loaded(live, tmp_path, monkeypatch):
    with_policy(live, tmp_path, "gate: {required: false}\nreview: {required: false}\nkeep_loaded: 1h\n")
    third = write_bundle(HISTORY[2], tmp_path / "third")
    live.push(third, f"{MODEL}@v1.1.1")
    set_now(monkeypatch, parse_time("2026-11-26T00:00:00Z", "t"))
    with Follower(live, f"{MODEL}@production", keep_newest=0) as follower:
        live.promote(f"{MODEL}@v1.1.0")
        follower.refresh()
        live.promote(f"{MODEL}@v1.1.1")
        follower.refresh()
        assert set(follower.resident) == {"v1.0.0", "v1.1.0", "v1.1.1"}  # v1.0.0: replaced less than 1 h ago
        set_now(monkeypatch, parse_time("2026-11-26T02:00:00Z", "t"))
        follower.refresh(force=True)
        assert set(follower.resident) == {"v1.1.0", "v1.1.1"}  # the rollback target stays


def test_the_follower_gathers_its_servers_metrics_for_the_analysis(live, monkeypatch):
    set_now(monkeypatch, parse_time("2026-11-26T00:00:00Z", "t"))
    live.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    with Follower(live, f"{MODEL}@production", smoke_function=answer, node="srv-1") as follower:
        for i in range(2000):
            served = follower.pick(f"user-{i}")
            follower.observe(served.version, 100.0 + i % 7, error=i % 250 == 0)
        set_now(monkeypatch, parse_time("2026-11-26T01:00:00Z", "t"))
        assert follower.flush_metrics() == 2
    ticked = live.rollout_tick(MODEL)
    assert ticked.decision == "hold" and ticked.measured[0]["outcome"] == "pass", ticked.measured


METRICS_START = parse_time("2026-11-26T00:00:00Z", "t")


def failing_metrics_writes(live, monkeypatch, failure):
    """A node's follower, and a switch: on(), the metrics writes of the store go through ``failure(write,
    key, data)``; off(), they work again."""
    set_now(monkeypatch, METRICS_START)
    follower = Follower(live, f"{MODEL}@production", smoke_function=answer, node="srv-1")
    follower.refresh()
    backend, write = live.registry.backend, live.registry.backend.write

    def failing(key, data):
        if key.startswith("metrics/"):
            failure(write, key, data)
        else:
            write(key, data)

    return follower, (lambda: monkeypatch.setattr(backend, "write", failing),
                      lambda: monkeypatch.setattr(backend, "write", write))


def counted_requests(live) -> dict[str, int]:
    from artifactstore.registry.metrics import aggregate, records_in_window

    records, _ = records_in_window(live.registry, ModelName.parse(MODEL), METRICS_START,
                                   METRICS_START + timedelta(hours=1))
    return {version: traffic.requests for version, traffic in aggregate(records).items()}


def test_metrics_a_failed_write_left_are_written_by_the_next_flush_once(live, monkeypatch):
    def disk_full(write, key, data):
        raise OSError(28, "No space left on device")

    follower, (fail, work) = failing_metrics_writes(live, monkeypatch, disk_full)
    for _ in range(100):
        follower.observe("v1.0.0", 100.0)
    fail()
    set_now(monkeypatch, METRICS_START + timedelta(minutes=10))
    with pytest.raises(OSError, match="No space left"):
        follower.flush_metrics()
    work()
    for _ in range(50):
        follower.observe("v1.0.0", 200.0)
    set_now(monkeypatch, METRICS_START + timedelta(minutes=20))
    assert follower.flush_metrics() == 2 and follower.flush_metrics() == 0
    assert counted_requests(live) == {"v1.0.0": 150}


def test_metrics_of_a_stored_write_are_counted_once_when_a_version_it_names_is_deleted(live, monkeypatch):
    """A write that stored its batch and then failed is written again without the records of a version
    deleted since: each record is a batch of its own, so the others stay the same bytes, stored once."""
    def stored_then_timed_out(write, key, data):
        write(key, data)
        raise TimeoutError("the PUT's answer did not come back")

    follower, (fail, work) = failing_metrics_writes(live, monkeypatch, stored_then_timed_out)
    for _ in range(100):
        follower.observe("v1.0.0", 100.0)
        follower.observe("v1.1.0", 100.0)
    fail()
    set_now(monkeypatch, METRICS_START + timedelta(minutes=10))
    with pytest.raises(TimeoutError):
        follower.flush_metrics()
    work()
    live.delete(f"{MODEL}@v1.1.0", actor="jane", reason="withdrawn")
    set_now(monkeypatch, METRICS_START + timedelta(minutes=20))
    follower.flush_metrics()
    assert counted_requests(live) == {"v1.0.0": 100}


def test_heartbeats_and_an_automatic_rollback_on_a_shared_store(s3_bucket, tmp_path, monkeypatch):
    store = Store.init(s3_bucket, cache=tmp_path / "cache")
    push_versions(store, tmp_path)
    with_policy(store, tmp_path)
    store.promote(f"{MODEL}@v1.0.0")
    monkeypatch.setenv("SMOKE_BROKEN_FOR", "v1.1.0")
    with Follower(store, f"{MODEL}@production", poll_interval=0.05, smoke_function=answer, node="srv-1"):
        store.promote(f"{MODEL}@v1.1.0")
        wait_until(lambda: store.state(MODEL).pointer("production") == "v1.0.0", what="the rollback")
        wait_until(lambda: store.fleet(MODEL).heartbeats[0].state == store.state(MODEL).id, what="the heartbeat")
        assert store.fleet(MODEL).heartbeats[0].serving == "v1.0.0"


def never(loaded, known_input):
    """The inference of a node whose environment is broken (a bad driver): every answer is garbage."""
    return -1.0


def production_moves(store) -> list[tuple[str, str | None, str | None]]:
    return [(e.action, e.from_, e.to) for e in store.log(MODEL) if e.pointer == "production"]


def test_a_node_that_serves_nothing_never_rolls_production_back(store, tmp_path, caplog):
    push_versions(store, tmp_path, count=4)
    with_policy(store, tmp_path)
    for version in HISTORY[:4]:
        store.promote(f"{MODEL}@{version.name}", actor="jane")
    moves = production_moves(store)
    follower = Follower(store, f"{MODEL}@production", smoke_function=never, node="srv-new")
    for _ in range(3):  # each look fails production again
        follower.refresh(force=True)
    state = store.state(MODEL)
    assert (state.pointer("production"), state.pointer("rollback_target")) == ("v1.2.0", "v1.1.1")
    assert production_moves(store) == moves, "a node that serves nothing has nothing to roll back to"
    with pytest.raises(InvalidParameter, match="v1.2.0 failed the smoke check"):
        follower.current
    heartbeat = store.fleet(MODEL).heartbeats[0]
    assert heartbeat.serving is None and heartbeat.smoke["v1.2.0"]["ok"] is False
    assert "the node serves nothing" in caplog.text


def test_a_node_that_lags_behind_the_rollback_target_does_not_roll_back(live, tmp_path, monkeypatch):
    push_version(live, tmp_path, 2)  # v1.1.1
    monkeypatch.setenv("SMOKE_BROKEN_FOR", "v1.1.1")
    follower = Follower(live, f"{MODEL}@production", smoke_function=answer, node="srv-1")
    live.promote(f"{MODEL}@v1.1.0", actor="jane")
    live.promote(f"{MODEL}@v1.1.1", actor="jane")  # before the node looked again: it still serves v1.0.0
    follower.refresh()
    assert follower.current.version == "v1.0.0" and follower.smoke["v1.1.1"].ok is False
    assert live.state(MODEL).pointer("production") == "v1.1.1", \
        "rolling back to v1.1.0 would not make the registry agree with a node that serves v1.0.0"


def test_a_node_does_not_roll_back_a_version_a_person_rolled_back_to(live, tmp_path, monkeypatch):
    push_version(live, tmp_path, 2)  # v1.1.1
    monkeypatch.setenv("SMOKE_BROKEN_FOR", "v1.1.0")
    follower = Follower(live, f"{MODEL}@production", smoke_function=answer, node="srv-1")  # serves v1.0.0
    live.promote(f"{MODEL}@v1.1.0", actor="jane")
    live.promote(f"{MODEL}@v1.1.1", actor="jane")
    live.rollback(MODEL, actor="oncall", reason="v1.1.1 is bad")  # to v1.1.0; the target is now v1.0.0
    live.stage(f"{MODEL}@v1.1.1", actor="ci")  # a later change: the rollback is no longer the state's last entry
    moves = production_moves(live)
    follower.refresh()
    assert follower.current.version == "v1.0.0" and follower.smoke["v1.1.0"].ok is False
    state = live.state(MODEL)
    assert (state.pointer("production"), state.pointer("rollback_target")) == ("v1.1.0", "v1.0.0")
    assert production_moves(live) == moves, "one node's smoke check does not undo a person's rollback"


def test_a_node_does_not_roll_back_a_version_a_drill_restored(live, monkeypatch):
    monkeypatch.setenv("SMOKE_BROKEN_FOR", "v1.0.0")
    live.promote(f"{MODEL}@v1.1.0", actor="jane")
    follower = Follower(live, f"{MODEL}@production", smoke_function=answer, node="srv-1")  # serves v1.1.0
    swap_for_drill(live.registry, ModelName.parse(MODEL), production="v1.1.0", target="v1.0.0", actor="oncall",
                   reason="drill")
    follower.refresh()
    assert follower.current.version == "v1.1.0" and follower.smoke["v1.0.0"].ok is False
    state = live.state(MODEL)
    assert (state.pointer("production"), state.pointer("rollback_target")) == ("v1.0.0", "v1.1.0"), \
        "the drill rolls forward itself, with its own swap that keeps the rollback target"


@pytest.mark.parametrize("refusal", ["smoke check", "base model", "load"])
def test_a_refused_production_still_takes_the_registrys_canary(live, tmp_path, monkeypatch, refusal):
    with_policy(live, tmp_path, "gate: {required: false}\nreview: {required: false}\nsmoke: {on_failure: keep}\n")
    refused = HISTORY[3] if refusal == "load" else HISTORY[2]  # v1.2.0 has weights of its own to damage
    if refusal == "base model":
        refused = dataclasses.replace(refused, name="v2.0.0", base_model="mistralai/Mistral-7B-Instruct-v0.3")
    bundle = write_bundle(refused, tmp_path / "refused")
    (bundle / "smoke_tests.jsonl").write_text(smoke_lines(0 if refusal == "smoke check" else 2))
    live.push(bundle, f"{MODEL}@{refused.name}")
    if refusal == "load":
        damage_a_chunk_of_only(live, f"{MODEL}@{refused.name}", [f"{MODEL}@v1.0.0", f"{MODEL}@v1.1.0"])
    live.set_canary(f"{MODEL}@v1.1.0", 50, actor="jane")
    follower = Follower(live, f"{MODEL}@production", smoke_function=answer, node="srv-1")
    keys = [f"user-{i}" for i in range(200)]
    assert {follower.pick(key).version for key in keys} == {"v1.0.0", "v1.1.0"}

    live.set_canary(f"{MODEL}@v1.1.0", 0, actor="jane", reason="end it")
    live.promote(f"{MODEL}@{refused.name}", actor="jane")
    follower.refresh()
    assert follower.current.version == "v1.0.0" and refused.name in follower.last_error, "production is refused"
    assert follower.canary is None and {follower.pick(key).version for key in keys} == {"v1.0.0"}
    assert live.fleet(MODEL).heartbeats[0].canary is None

    live.set_canary(f"{MODEL}@v1.1.0", 50, actor="jane", reason="again")
    follower.refresh()
    assert follower.current.version == "v1.0.0" and follower.canary.version == "v1.1.0"
    assert [follower.pick(key).version for key in keys] == [
        "v1.1.0" if route(live.state(MODEL), "production", key) == "v1.1.0" else "v1.0.0" for key in keys]


def damage_a_chunk_of_only(store, ref: str, others: list[str]) -> None:
    """Flip a byte, in its pack, of a chunk of ``ref``'s weights that ``others``' weights lack: loads
    of ``ref`` fail on it, the others' do not."""
    def weight_chunks(of: str) -> list[bytes]:
        tree = store.content.read_manifest(store.resolve(of))
        weights = next(entry.file for entry in tree.entries if entry.path.endswith(".safetensors"))
        return [chunk for chunk, _ in store.content.read_manifest(format_id(weights)).chunks]

    shared = {chunk for other in others for chunk in weight_chunks(other)}
    chunk = next(chunk for chunk in weight_chunks(ref) if chunk not in shared)
    location = store.content.index[chunk]
    path = store.content.home.path(pack_key(location.pack))
    data = bytearray(path.read_bytes())
    data[location.offset + location.length // 2] ^= 0x40
    path.chmod(0o644)
    path.write_bytes(data)


# -- real follower processes ---------------------------------------------------------------------


def fleet_agrees(store, version: str, nodes: int = 3):
    """Every node serves ``version`` and has seen the registry's current state."""
    state = store.state(MODEL)
    beats = store.fleet(MODEL).heartbeats
    return len(beats) == nodes and all(b.serving == version and b.state == state.id for b in beats)


def test_a_smoke_failure_on_one_of_three_followers_rolls_back_and_all_three_serve_the_old_version(live):
    followers = [start_follower(live.path, f"srv-{n}", broken_for="v1.1.0" if n == 2 else "") for n in (1, 2, 3)]
    try:
        wait_until(lambda: fleet_agrees(live, "v1.0.0"), what="three nodes on v1.0.0")
        live.promote(f"{MODEL}@v1.1.0", actor="jane", reason="retrain")
        wait_until(lambda: live.state(MODEL).pointer("production") == "v1.0.0", what="the rollback")
        wait_until(lambda: fleet_agrees(live, "v1.0.0"), what="three nodes back on v1.0.0")
        smoke = {b.node: b.smoke.get("v1.1.0", {}).get("ok") for b in live.fleet(MODEL).heartbeats}
        assert smoke["srv-2"] is False
    finally:
        stop(followers)
    rollbacks = [e for e in live.log(MODEL) if e.action == "rollback" and e.pointer == "production"]
    assert len(rollbacks) == 1 and rollbacks[0].actor == "node:srv-2" and rollbacks[0].evidence["version"] == "v1.1.0"
    assert live.fleet(MODEL).heartbeats == [], "stopped nodes leave the fleet"


def test_smoke_failures_on_every_node_at_once_make_one_rollback(live):
    followers = [start_follower(live.path, f"srv-{n}", broken_for="v1.1.0") for n in (1, 2, 3)]
    try:
        wait_until(lambda: fleet_agrees(live, "v1.0.0"), what="three nodes on v1.0.0")
        live.promote(f"{MODEL}@v1.1.0", actor="jane", reason="retrain")
        wait_until(lambda: all(b.smoke.get("v1.1.0", {}).get("ok") is False for b in live.fleet(MODEL).heartbeats),
                   what="every node's failure")
        wait_until(lambda: fleet_agrees(live, "v1.0.0"), what="three nodes on v1.0.0")
    finally:
        stop(followers)
    assert [(e.action, e.pointer) for e in live.log(MODEL)].count(("rollback", "production")) == 1


def test_a_drill_with_three_followers_is_timed_recorded_and_shown_and_flagged_when_old(live, tmp_path, monkeypatch):
    live.promote(f"{MODEL}@v1.1.0", actor="jane")
    with pytest.raises(InvalidParameter, match="no serving node reports"):
        live.drill(MODEL)
    receiver = Receiver()
    with_policy(live, tmp_path, f"gate: {{required: false}}\nreview: {{required: false}}\n"
                                f"hooks:\n  - {{name: ops, url: '{receiver.url}'}}\n")
    followers = [start_follower(live.path, f"srv-{n}") for n in (1, 2, 3)]
    try:
        wait_until(lambda: fleet_agrees(live, "v1.1.0"), what="three nodes on v1.1.0")
        done = run_cli("drill", MODEL, "--store", live.path, "--by", "oncall", "--reason", "monthly")
        assert done.returncode == 0, done.stderr
        assert "drill PASSED: rollback v1.1.0 -> v1.0.0 confirmed by 3 of 3 nodes in" in done.stdout
        wait_until(lambda: receiver.events() == ["drill_passed"], what="the drill event")
        wait_until(lambda: fleet_agrees(live, "v1.1.0"), what="three nodes back on v1.1.0")
        status = live.status(MODEL)
        assert status["alerts"] == [] and status["drill"]["passed"] and len(status["drill"]["nodes"]) == 3
        assert status["drill"]["seconds"] <= status["drill"]["max_seconds"]
        assert {n["node"] for n in status["nodes"] if n["agrees"] and not n["stale"]} == {"srv-1", "srv-2", "srv-3"}
        shown = run_cli("status", MODEL, "--store", live.path)
        assert "last drill:" in shown.stdout and "passed" in shown.stdout and "alerts: 0" in shown.stdout
    finally:
        kill(followers)  # as a crash would: their heartbeats stay, and turn stale
        receiver.close()
    state = live.state(MODEL)
    assert (state.pointer("production"), state.pointer("rollback_target")) == ("v1.1.0", "v1.0.0")
    drills = [e for e in live.log(MODEL) if e.action == "drill"]
    assert [(e.pointer, e.from_, e.to) for e in drills] == [
        ("production", "v1.1.0", "v1.0.0"), ("rollback_target", "v1.0.0", "v1.1.0"),
        ("production", "v1.0.0", "v1.1.0"), ("rollback_target", "v1.1.0", "v1.0.0"), (None, "v1.1.0", "v1.0.0")]
    later = now() + timedelta(days=31)
    set_now(monkeypatch, later)
    alerts = live.status(MODEL)["alerts"]
    assert any("older than the policy's 30d" in a for a in alerts)
    assert sum("stale, not counted" in a for a in alerts) == 3
    shown = json.loads(run_cli("status", MODEL, "--json", "--store", live.path,
                               env={"ARTIFACTSTORE_NOW": later.isoformat()}).stdout)
    assert shown["drill"]["overdue"] and all(n["stale"] for n in shown["nodes"])
    refused = run_cli("drill", MODEL, "--store", live.path, env={"ARTIFACTSTORE_NOW": later.isoformat()})
    assert refused.returncode == 1 and refused.stderr.startswith("error: no serving node reports on acme/support")


def test_status_without_fleet_or_drill_says_what_is_missing(live):
    alerts = live.status(MODEL)["alerts"]
    assert alerts == ["no rollback target: a rollback has nowhere to go",
                      "no rollback drill recorded (the policy asks for one every 30d)"]
    assert live.status(MODEL)["nodes"] == [] and live.status(MODEL)["rollout"] is None


def test_a_drill_fails_when_a_node_refuses_the_rollback_target_and_the_drill_rolls_forward_itself(live, tmp_path):
    live.promote(f"{MODEL}@v1.1.0", actor="jane")
    receiver = Receiver()
    with_policy(live, tmp_path, f"gate: {{required: false}}\nreview: {{required: false}}\n"
                                f"hooks:\n  - {{name: ops, url: '{receiver.url}', events: [drill_passed, drill_failed]}}\n")

    def broken_for_v1_0_0(loaded, known_input):
        return -1.0 if loaded.version == "v1.0.0" else answer(loaded, known_input)

    try:
        with Follower(live, f"{MODEL}@production", poll_interval=0.001, smoke_function=answer, node="srv-a"), \
                Follower(live, f"{MODEL}@production", poll_interval=0.001, smoke_function=broken_for_v1_0_0,
                         node="srv-b"):
            drilled = live.drill(MODEL, actor="oncall", max_seconds=1)
            assert not drilled.passed and drilled.seconds is None and "srv-b" in drilled.unconfirmed
            assert "rolled forward to v1.1.0" in drilled.note
            assert live.status(MODEL)["drill"]["passed"] is False
            assert any("the last drill" in a and "failed" in a for a in live.status(MODEL)["alerts"])
        wait_until(lambda: receiver.events() == ["drill_failed"], what="the drill event")
    finally:
        receiver.close()
    state = live.state(MODEL)
    assert (state.pointer("production"), state.pointer("rollback_target")) == ("v1.1.0", "v1.0.0"), \
        "the drill's own swap back keeps the rollback target"
    assert [e.action for e in live.log(MODEL) if e.pointer == "production"][-2:] == ["drill", "drill"], \
        "srv-b only reported: a node does not roll back what a drill restored"
    assert "srv-b" in receiver.received[0]["event"]["drill"]["unconfirmed"]


def test_verify_names_a_missing_measurement(live, monkeypatch):
    set_now(monkeypatch, parse_time("2026-11-26T00:00:00Z", "t"))
    live.start_rollout(f"{MODEL}@v1.1.0", actor="jane")
    report(live, 1)
    set_now(monkeypatch, parse_time("2026-11-26T01:00:00Z", "t"))
    live.rollout_tick(MODEL)
    assert live.verify().ok
    measurement = live.state(MODEL).rollout["measurement"]
    live.backend.delete(f"registry/objects/{measurement[3:5]}/{measurement[3:]}.json")
    problems = live.verify().problems
    assert len(problems) == 1 and measurement in problems[0]


@pytest.mark.parametrize("bad", [{"at": "yesterday"}, {"at": 5}, {"interval": "5"}, {"interval": float("nan")},
                                 {"interval": 1e300},
                                 {"smoke": {"v1.0.0": None}}, {"smoke": {"v1.0.0": {"detail": "no ok"}}},
                                 {"resident": "v1.0.0"}, {"serving": 1}])
def test_a_heartbeat_with_a_bad_field_is_unreadable_and_status_shows_the_rest(live, bad):
    from artifactstore.registry.fleet import Heartbeat, heartbeat_key, read_fleet, write_heartbeat

    good = Heartbeat("srv-1", MODEL, "production", now().isoformat(), 5.0, "v1.0.0", None, None, ["v1.0.0"],
                     {"v1.0.0": {"ok": True, "at": "x", "tests": 0, "failed": [], "detail": "no tests"}}, None, None,
                     None)
    write_heartbeat(live.registry, good)
    broken = dataclasses.asdict(good) | {"kind": "heartbeat", "node": "srv-2"} | bad
    key = heartbeat_key(ModelName.parse(MODEL), "srv-2")
    live.registry.backend.write(key, json.dumps(broken, allow_nan=True).encode())
    fleet = read_fleet(live.registry, MODEL)
    assert [h.node for h in fleet.heartbeats] == ["srv-1"] and fleet.unreadable == [key]
    for not_an_object in (b"null", b'"x"', b"[]", b"5"):
        live.registry.backend.write(key, not_an_object)
        assert read_fleet(live.registry, MODEL).unreadable == [key]
    live.registry.backend.write(key, json.dumps(broken, allow_nan=True).encode())
    status = live.status(MODEL)
    assert f"{key}: heartbeat unreadable" in status["alerts"] and [n["node"] for n in status["nodes"]] == ["srv-1"]


def test_a_metrics_record_at_either_end_of_the_calendar_is_judged_not_a_traceback():
    from pydantic import ValidationError

    from artifactstore.registry.metrics import MetricsRecord

    fields = {"version": "v1.0.0", "node": "srv-1", "requests": 1}
    last = MetricsRecord.model_validate(fields | {"start": "9999-12-31T22:00:00Z", "end": "9999-12-31T23:30:00Z"})
    assert last.end_time == parse_time("9999-12-31T23:30:00Z", "end")
    with pytest.raises(ValidationError, match="end must follow start by at most a day"):
        MetricsRecord.model_validate(fields | {"start": "9999-12-29T22:00:00Z", "end": "9999-12-31T23:30:00Z"})
    with pytest.raises(ValidationError, match="outside the years 1 to 9999 in UTC"):
        MetricsRecord.model_validate(fields | {"start": "0001-01-01T00:00:00+01:00", "end": "0001-01-01T00:30:00Z"})


def test_a_rollout_started_while_a_node_ends_a_failed_canary_is_left_to_its_own_abort(live, tmp_path, monkeypatch):
    """The node read no rollout, then one took the canary: its move is refused by the rollout's rule,
    which the node logs (the rollout's next tick or its own smoke check acts), instead of failing."""
    from artifactstore.registry.fleet import act_on_smoke_failure

    with_policy(live, tmp_path, "gate: {required: false}\nreview: {required: false}\n")
    live.set_canary(f"{MODEL}@v1.1.0", 10, actor="jane")
    registry, read = live.registry, live.registry.state

    def rollout_starts_meanwhile(model):
        state = read(model)
        monkeypatch.setattr(registry, "state", read)
        live.start_rollout(f"{MODEL}@v1.1.0", actor="bob")
        return state

    monkeypatch.setattr(registry, "state", rollout_starts_meanwhile)
    assert act_on_smoke_failure(registry, ModelName.parse(MODEL), "srv-1", "v1.1.0", "canary", "5 of 5 failed",
                                serving="v1.0.0") is None
    assert live.state(MODEL).rollout is not None and live.state(MODEL).canary["version"] == "v1.1.0"


def test_a_person_moving_production_just_before_the_drill_rolls_forward_fails_the_drill_and_records_it(
        live, tmp_path, monkeypatch):
    """The drill checks production, then swaps it back; a person's move in between makes that swap
    lose its compare-and-swap. The drill then fails and is recorded, and the person's move stands."""
    import artifactstore.release.drill as drills
    from artifactstore.registry.fleet import Heartbeat, write_heartbeat

    with_policy(live, tmp_path, "gate: {required: false}\nreview: {required: false}\n")
    live.promote(f"{MODEL}@v1.1.0", actor="jane")
    write_heartbeat(live.registry, Heartbeat("srv-1", MODEL, "production", now().isoformat(), 5.0, "v1.1.0", None,
                                             None, ["v1.1.0"], {}, None, None, None))
    swap = drills.swap_for_drill

    def person_moves_first(registry, model, *, production, **kwargs):
        if production == "v1.0.0":  # the swap back
            live.rollback(MODEL, to="v1.1.0", actor="oncall", reason="done waiting")
        return swap(registry, model, production=production, **kwargs)

    monkeypatch.setattr(drills, "swap_for_drill", person_moves_first)
    drilled = live.drill(MODEL, actor="ops", max_seconds=0.2)
    assert not drilled.passed and "moved during the drill: not rolled forward" in drilled.note
    assert live.status(MODEL)["drill"]["passed"] is False
    assert [e.actor for e in live.log(MODEL) if e.pointer == "production"][-2:] == ["ops", "oncall"]


def test_an_automatic_rollback_quoting_a_multi_line_error_is_made_with_the_error_on_one_line(live, tmp_path):
    """A server's inference raised an error whose text spans lines: the rollback it triggers must
    not fail for it (the audit log keeps it escaped, on one line)."""
    from artifactstore.registry.fleet import act_on_smoke_failure

    with_policy(live, tmp_path, "gate: {required: false}\nreview: {required: false}\n")
    live.promote(f"{MODEL}@v1.1.0", actor="jane")
    detail = "1 of 1 tests failed: probe-0: RuntimeError: CUDA error\nout of memory\x1b[0m"
    rolled = act_on_smoke_failure(live.registry, ModelName.parse(MODEL), "srv-1", "v1.1.0", "production", detail,
                                  serving="v1.0.0")
    assert rolled is not None and rolled.pointer("production") == "v1.0.0"
    assert live.log(MODEL)[-1].reason.endswith("RuntimeError: CUDA error\\nout of memory\\x1b[0m")
