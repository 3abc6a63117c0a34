"""The store-wide change marker of a shared store: written after every ref swap, polled by followers
instead of each model's ref (issue 13, "Serving fleets")."""

import json
import logging
import threading
import time

import pytest
from conftest import run_cli

from artifactstore import Store, StoreError
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.registry.changes import CHANGES_KEY
from artifactstore.registry.state import ref_key
from artifactstore.serving import Follower

HISTORY = adapter_history(layers=2, scale=4)
SUPPORT = "acme/support"
OTHER = "acme/other"


@pytest.fixture
def writer(s3_bucket, tmp_path) -> Store:
    """A shared store with two versions of two models, v1.0.0 of each in production."""
    store = Store.init(f"{s3_bucket}/store", cache=tmp_path / "cache-writer")
    bundles = {version.name: write_bundle(version, tmp_path / "bundles" / version.name) for version in HISTORY[:2]}
    for model in (SUPPORT, OTHER):
        for name, bundle in bundles.items():
            store.push(bundle, f"{model}@{name}")
        store.promote(f"{model}@v1.0.0")
    return store


def marker(store: Store) -> dict:
    return json.loads(store.backend.read(CHANGES_KEY))


def server_store(writer: Store, tmp_path, name: str = "server") -> Store:
    """The same bucket opened as another machine would: its own Store, backend and cache."""
    return Store(writer.location, cache=tmp_path / f"cache-{name}")


def count_reads(store: Store) -> list[str]:
    """The keys of every read the store's backend makes from now on (the calls to the bucket)."""
    backend, reads = store.backend, []
    for method in ("read", "read_range", "read_ref"):
        original = getattr(backend, method)
        setattr(backend, method, lambda key, *args, _original=original: (reads.append(key), _original(key, *args))[1])
    original_ranges = backend.read_ranges
    backend.read_ranges = lambda requests: (reads.extend(key for key, _, _ in requests), original_ranges(requests))[1]
    return reads


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def test_every_swap_rewrites_the_marker_after_it(writer, tmp_path):
    written = [marker(writer)]
    assert set(written[0]) == {"at", "model", "state", "write"}
    assert written[0]["model"] == OTHER and written[0]["state"] == writer.state(OTHER).id
    for move in (lambda: writer.promote(f"{SUPPORT}@v1.1.0"), lambda: writer.rollback(SUPPORT),
                 lambda: writer.push(write_bundle(HISTORY[2], tmp_path / "next"), SUPPORT, bump="auto")):
        move()
        written.append(marker(writer))
        assert written[-1]["model"] == SUPPORT and written[-1]["state"] == writer.state(SUPPORT).id
    assert len({w["write"] for w in written}) == len(written), "every write has bytes of its own (its own ETag)"


def test_a_follower_sees_a_promote_from_another_process_through_the_marker(writer, tmp_path):
    """With the slow check of the ref far longer than the test, only the marker can wake it."""
    with Follower(server_store(writer, tmp_path), f"{SUPPORT}@production", poll_interval=0.05,
                  ref_check_interval=3600) as follower:
        assert follower.current.version == "v1.0.0"
        run_cli("promote", f"{SUPPORT}@v1.1.0", "--store", writer.location, check=True)
        follower.wait_for("v1.1.0", timeout=30)
        run_cli("rollback", SUPPORT, "--store", writer.location, check=True)
        follower.wait_for("v1.0.0", timeout=30)


def test_a_follower_reads_only_its_own_ref_when_another_model_moved(writer, tmp_path):
    server = server_store(writer, tmp_path)
    follower = Follower(server, f"{SUPPORT}@production", poll_interval=0.05, ref_check_interval=3600)
    reads = count_reads(server)
    with follower:
        wait_until(lambda: ref_key(follower.model) in reads, "its first look")
        reads.clear()
        writer.promote(f"{OTHER}@v1.1.0")
        wait_until(lambda: ref_key(follower.model) in reads, "a look at its ref after the marker changed")
        looked = len(reads)
        wait_until(lambda: reads[looked:].count(CHANGES_KEY) >= 3, "three more polls of the marker")
        assert set(reads) == {CHANGES_KEY, ref_key(follower.model)}, "no state, record or other ref read"
        assert reads.count(ref_key(follower.model)) == 1, "the ref is read once, when the marker moved"
        assert follower.current.version == "v1.0.0"


def test_followers_of_one_store_share_one_poll_of_the_marker(writer, tmp_path):
    server = server_store(writer, tmp_path)
    followers = [Follower(server, f"{model}@production", poll_interval=0.05, ref_check_interval=3600)
                 for model in (SUPPORT, OTHER)]
    reads = count_reads(server)
    with followers[0], followers[1]:
        wait_until(lambda: all(ref_key(f.model) in reads for f in followers), "the first looks")
        reads.clear()
        wait_until(lambda: reads.count(CHANGES_KEY) >= 6, "six polls of the marker")
        marker_threads = [t for t in threading.enumerate() if t.name.startswith("change marker of")]
        assert len(marker_threads) == 1
        assert set(reads) == {CHANGES_KEY}, "while nothing moves, no ref is read"
    assert not [t for t in threading.enumerate() if t.name.startswith("change marker of")], "stopped with them"


def test_a_lost_marker_write_is_caught_by_the_slow_look_at_the_ref(writer, tmp_path):
    """A writer whose marker write is lost (or a writer of a version that writes none): the follower
    finds the move on its slow look at its own ref."""
    write = writer.backend.write
    writer.backend.write = lambda key, data: None if key == CHANGES_KEY else write(key, data)
    with Follower(server_store(writer, tmp_path), f"{SUPPORT}@production", poll_interval=0.05,
                  ref_check_interval=0.3) as follower:
        before = marker(writer)
        writer.promote(f"{SUPPORT}@v1.1.0")
        assert marker(writer) == before, "the marker is stale"
        follower.wait_for("v1.1.0", timeout=30)


def test_a_failed_marker_write_does_not_fail_the_swap(writer, caplog):
    write = writer.backend.write

    def refusing_the_marker(key: str, data: bytes) -> None:
        if key == CHANGES_KEY:
            raise StoreError(f"{writer.location}: {key}: access denied")
        write(key, data)

    writer.backend.write = refusing_the_marker
    with caplog.at_level(logging.WARNING, logger="artifactstore.registry.changes"):
        state = writer.promote(f"{SUPPORT}@v1.1.0")
    assert state.pointer("production") == "v1.1.0"
    assert Store(writer.location).state(SUPPORT).pointer("production") == "v1.1.0", "committed"
    assert marker(writer)["model"] == OTHER, "the marker is stale"
    assert "change marker registry/changes was not written" in caplog.text


def test_gc_and_verify_leave_the_marker_alone(writer, tmp_path):
    writer.promote(f"{SUPPORT}@v1.1.0")
    written = writer.backend.read(CHANGES_KEY)
    report = writer.verify()
    assert report.ok, report.problems
    writer.gc(grace="0s")
    writer.gc(grace="0s")
    assert writer.backend.read(CHANGES_KEY) == written
    assert writer.verify().ok


def test_a_repaired_ref_rewrites_the_marker(writer):
    key = ref_key(writer.state(SUPPORT).model)
    writer.backend.write(key, b'{"state":"b3:00')  # a truncated ref, as a careless hand would leave it
    before = marker(writer)
    report = writer.verify(repair=True)
    assert report.ok and report.repaired, report.problems
    after = marker(writer)
    assert after != before and after["model"] == SUPPORT and after["state"] == writer.state(SUPPORT).id


def test_a_local_store_has_no_marker(store, tmp_path):
    store.push(write_bundle(HISTORY[0], tmp_path / "bundle"), f"{SUPPORT}@v1.0.0")
    store.promote(f"{SUPPORT}@v1.0.0")
    assert not store.backend.exists(CHANGES_KEY), "its followers watch the ref's file itself"


def test_a_follower_whose_interval_changed_still_stops_the_watch(writer, tmp_path):
    follower = Follower(server_store(writer, tmp_path), f"{SUPPORT}@production", poll_interval=0.05,
                        ref_check_interval=3600)
    with follower:
        follower.poll_interval = 0.2  # public: a server may tune it while it runs
    assert follower.last_error is None
    assert not [t for t in threading.enumerate() if t.name.startswith("change marker of")]
