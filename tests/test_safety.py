"""Crash, concurrency and permission safety of put, through real processes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_tree, random_bytes, snapshot

import artifactstore.content.put
from artifactstore import InvalidInput, Store, StoreError
from artifactstore.backends.local import LocalBackend
from artifactstore.cli import main
from artifactstore.content.condemned import CONDEMNED_KEY
from artifactstore.content.pending import STALE_SECONDS, boot_id, pid_namespace


def start_put(source, store_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "artifactstore", "put", str(source), "--store", str(store_path),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory):
    """About 96 MiB in three files: a put writes several packs."""
    root = tmp_path_factory.mktemp("big")
    return make_tree(root, {f"part{i}.safetensors": random_bytes(32 << 20, 100 + i) for i in range(3)})


def test_kill_after_first_pack_then_retry_reuses_it(tmp_path, big_bundle):
    store = Store.init(tmp_path / "store")
    proc = start_put(big_bundle, store.path)
    deadline = time.monotonic() + 60
    while not list((store.path / "packs").rglob("*.pack")):
        assert proc.poll() is None, "put finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Store(store.path).verify().ok
    assert Store(store.path).stats().trees == 0, "a killed put must not publish its tree"
    assert list((store.path / "pending").iterdir()), "the killed put's marker says where to look"
    retry = Store(store.path).put(big_bundle)
    assert retry.new_bytes <= retry.logical_bytes - (32 << 20), "the retry should reuse the published pack"
    assert not list((store.path / "pending").iterdir()), "its process is gone: the marker goes"
    assert Store(store.path).verify().ok
    Store(store.path).get(retry.id, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(big_bundle)


def test_kill_at_random_moments_leaves_a_verifiable_store(tmp_path, big_bundle):
    store = Store.init(tmp_path / "store")
    rng = random.Random(7)
    for _ in range(4):
        proc = start_put(big_bundle, store.path)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report = Store(store.path).verify()
        assert report.ok, report.problems
    final = Store(store.path).put(big_bundle)
    assert Store(store.path).verify().ok
    assert final.logical_bytes == 96 << 20


def test_concurrent_puts_into_one_store(tmp_path):
    shared = random_bytes(20 << 20, 11)
    a = make_tree(tmp_path / "a", {"w": shared + random_bytes(5 << 20, 12), "x": random_bytes(1 << 20, 13)})
    b = make_tree(tmp_path / "b", {"w": random_bytes(4 << 20, 14) + shared})
    store = Store.init(tmp_path / "store")
    procs = [start_put(src, store.path) for src in (a, b, a, b)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    reopened = Store(store.path)
    assert reopened.verify().ok
    for src, (out, _) in zip((a, b), outputs):
        object_id = __import__("json").loads(out)["id"]
        reopened.get(object_id, tmp_path / f"out-{src.name}")
        assert snapshot(tmp_path / f"out-{src.name}") == snapshot(src)


def test_unreadable_file_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    bundle = make_tree(tmp_path / "bundle", {"ok": random_bytes(100_000, 15), "secret": b"s"})
    secret = bundle / "secret"
    os.chmod(secret, 0)
    if os.geteuid() == 0:  # root reads anything: make the kernel's refusal for mode 000 explicit
        real_open = os.open

        def refuse_unreadable(path, flags, *args, **kwargs):
            if os.fspath(path) == os.fspath(secret):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse_unreadable)
    store = Store.init(tmp_path / "store")
    before = snapshot(store.path)
    monkeypatch.setattr(sys, "argv", ["artifactstore", "put", str(bundle), "--store", str(store.path)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"error: cannot read {secret}: Permission denied"]
    assert snapshot(store.path) == before


def test_a_file_changing_during_put_is_refused_and_stores_nothing(store, tmp_path, monkeypatch):
    source = tmp_path / "weights.bin"
    source.write_bytes(random_bytes(3_000_000, 9))
    hash_chunks = artifactstore.content.put._hash_chunks

    def hash_then_change(data, offsets, first, last):
        hashed = hash_chunks(data, offsets, first, last)
        if first == 0:  # a training job still writing its checkpoint
            with open(source, "r+b") as f:
                f.seek(100)
                f.write(b"changed!")
        return hashed

    before = snapshot(store.path)
    monkeypatch.setattr(artifactstore.content.put, "_hash_chunks", hash_then_change)
    with pytest.raises(InvalidInput, match="weights.bin: the input changed while it was being stored"):
        store.put(source)
    monkeypatch.setattr(artifactstore.content.put, "_hash_chunks", hash_chunks)
    assert snapshot(store.path) == before and store.verify().ok
    assert Store(store.path).get(Store(store.path).put(source).id, tmp_path / "out") is None
    assert (tmp_path / "out").read_bytes() == source.read_bytes()


def test_a_file_changing_in_a_later_block_is_refused_and_verify_stays_clean(store, tmp_path, monkeypatch):
    """The blocks after the one whose bytes changed are not stored: a pack that took the changed
    block's bytes but not all of its chunks is never sealed, nor published. What an earlier block
    filled may stay, whole and unreferenced, as after a crash (a retry reuses it): verify stays clean."""
    put = artifactstore.content.put
    source = tmp_path / "weights.bin"
    source.write_bytes(random_bytes(5 * put.CUT_BLOCK, 10))
    hash_chunks, changed_at = put._hash_chunks, put.CUT_BLOCK + 1000  # in the second block

    def hash_then_change(data, offsets, first, last):
        hashed = hash_chunks(data, offsets, first, last)
        if offsets[first] <= changed_at < offsets[last]:
            with open(source, "r+b") as f:
                f.seek(changed_at)
                f.write(b"changed!")
        return hashed

    before = snapshot(store.path)
    monkeypatch.setattr(put, "_hash_chunks", hash_then_change)
    monkeypatch.setattr(put, "TARGET_SIZE", 4 << 20)  # the next block would fill the pack the changed one broke
    with pytest.raises(InvalidInput, match="weights.bin: the input changed while it was being stored"):
        store.put(source)
    added = set(snapshot(store.path)) - set(before)
    assert all(key.startswith(("packs/", "guards/", "pending/")) for key in added) and store.verify().ok
    [marker] = [key for key in added if key.startswith("pending/")]
    assert json.loads((store.path / marker).read_bytes())["ended"], "the failed session says it ended"


def test_a_stored_chunk_changing_during_put_is_refused(store, tmp_path, monkeypatch):
    """The file id, its chunks' ids and the bytes stored describe one content: a chunk the store
    holds already that changes after it was hashed (before the file's digest read it) fails the put."""
    stored, fresh = random_bytes(2_000_000, 20), random_bytes(1_000_000, 21)
    (tmp_path / "old").write_bytes(stored)
    store.put(tmp_path / "old")
    source = tmp_path / "weights.bin"
    source.write_bytes(stored + fresh)  # starts with stored chunks: they are not written again
    hash_chunks = artifactstore.content.put._hash_chunks

    def hash_then_change(data, offsets, first, last):
        hashed = hash_chunks(data, offsets, first, last)
        if first == 0:
            with open(source, "r+b") as f:
                f.seek(100)
                f.write(b"changed!")
        return hashed

    before = snapshot(store.path)
    monkeypatch.setattr(artifactstore.content.put, "_hash_chunks", hash_then_change)
    with pytest.raises(InvalidInput, match="weights.bin: the input changed while it was being stored"):
        store.put(source)
    assert snapshot(store.path) == before and store.verify().ok


def test_a_pack_whose_append_failed_halfway_takes_nothing_more_and_is_never_sealed(tmp_path):
    from artifactstore.backends.local import LocalBackend
    from artifactstore.content.guard import checksum
    from artifactstore.content.pack import PackWriter
    from artifactstore.errors import StoreError
    from artifactstore.ids import digest

    writer = PackWriter(LocalBackend(tmp_path), guarded=True)
    good, bad = random_bytes(1000, 1), random_bytes(1000, 2)
    # the second chunk's bytes are not the ones hashed: seen once the write ended, at the latest by settle
    writer.add_run(good + bad, [(digest(good), 1000, checksum(good)), (digest(bad), 1000, checksum(bad) ^ 1)])
    with pytest.raises(InvalidInput, match="input changed"):
        writer.settle()
    for more in (lambda: writer.add(digest(good), good), lambda: writer.pad(10), writer.seal):
        with pytest.raises(StoreError, match="last append failed"):
            more()
    writer.discard()


def test_a_run_is_checked_after_its_write_ends_not_while_the_disk_writes_it(tmp_path, monkeypatch):
    """A pack's long writes run on a thread of their own while the put prepares the next run; the
    check that the bytes written are those hashed waits for the write. Here the input changes
    while its write is under way (the write sees the new bytes): the pack is refused, not sealed."""
    import mmap
    import threading

    from artifactstore.content.guard import checksum
    from artifactstore.content.pack import PackWriter
    from artifactstore.ids import digest

    source = mmap.mmap(-1, 1 << 20)  # page-aligned memory: written straight, as a put's mapped file
    source[:] = random_bytes(1 << 20, 3)
    hashed = (digest(source), 1 << 20, checksum(source))
    writing, changed = threading.Event(), threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(fd, view, offset):
        if threading.current_thread() is not threading.main_thread():
            writing.set()
            changed.wait(5)
        return real_pwrite(fd, view, offset)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    writer = PackWriter(LocalBackend(tmp_path), guarded=True, cached=False)
    writer.add_run(source, [hashed])
    assert writing.wait(5), "the write runs on the writer's thread"
    source[100:108] = b"changed!"
    changed.set()
    with pytest.raises(InvalidInput, match="input changed"):
        writer.seal()
    writer.discard()
    assert list(LocalBackend(tmp_path).list("tmp")) == []


def test_a_run_written_straight_is_checked_after_its_write_even_when_the_next_run_is_staged(
        store, tmp_path, monkeypatch):
    """A short run (here a file's last chunk) goes through the staging buffer, with nothing left to
    the writer's thread: the run before it, still being written, must not be checked early. The
    input changes while that write goes on; the put is refused, not stored damaged."""
    import threading

    from artifactstore.backends import local
    from artifactstore.content import chunking

    middle = random_bytes(1 << 20, 41)
    cuts = chunking.cut(middle, **chunking.DEFAULT_PARAMS.as_kwargs())
    middle = middle[:sum(cuts[:-2]) + 100]  # ends with a short chunk after a cut point
    (tmp_path / "middle").write_bytes(middle)
    store.put(tmp_path / "middle")  # its chunks are stored: the file's runs are its head and its tail
    source = tmp_path / "weights.bin"
    source.write_bytes(random_bytes(1 << 20, 42) + middle + random_bytes(300, 43))
    real_write_at = local._DirectAppends._write_at

    def change_while_writing(self, view, offset):
        if threading.current_thread().name.startswith("direct-write") and offset == 0:
            time.sleep(0.2)  # the storer has moved on to the staged tail meanwhile
            with open(source, "r+b") as f:
                f.seek(8192)
                f.write(b"\xff" * 4096)
        real_write_at(self, view, offset)

    monkeypatch.setattr(local._DirectAppends, "_write_at", change_while_writing)
    with pytest.raises(InvalidInput, match="the input changed while it was being stored"):
        store.put(source)
    assert Store(store.path).verify().ok


def recorded_keys(monkeypatch, method: str) -> list[str]:
    """The key (or prefix) of every call of a local backend's ``method`` from now on."""
    keys: list[str] = []
    real = getattr(LocalBackend, method)

    def recording(self, key, *args, **kwargs):
        keys.append(key)
        return real(self, key, *args, **kwargs)
    monkeypatch.setattr(LocalBackend, method, recording)
    return keys


def test_a_put_lists_the_packs_only_where_a_session_left_a_marker(store, tmp_path, monkeypatch):
    """Looking for packs a failed session never indexed lists every pack of the store, which grows
    with its history: a put does it only after a session that published packs left its marker."""
    put = artifactstore.content.put
    source = make_tree(tmp_path / "a", {"w": random_bytes(12 << 20, 30)})
    store.put(source)
    assert not (store.path / "pending").exists() or not list((store.path / "pending").iterdir())
    prefixes = recorded_keys(monkeypatch, "list")
    store.put(make_tree(tmp_path / "b", {"w": random_bytes(12 << 20, 31)}))
    assert "packs" not in prefixes, "no marker: nothing to look for"

    monkeypatch.setattr(put, "TARGET_SIZE", 4 << 20)  # several packs, the first published before the failure
    real_hash = put._hash_chunks

    def fail_late(data, offsets, first, last):
        if offsets[first] >= 16 << 20:
            raise OSError(28, "No space left on device")
        return real_hash(data, offsets, first, last)
    monkeypatch.setattr(put, "_hash_chunks", fail_late)
    failing = make_tree(tmp_path / "c", {"w": random_bytes(24 << 20, 32)})
    with pytest.raises(OSError):
        store.put(failing)
    [marker] = (store.path / "pending").iterdir()
    assert json.loads(marker.read_bytes())["ended"]
    monkeypatch.setattr(put, "_hash_chunks", real_hash)
    prefixes.clear()
    retry = Store(store.path).put(failing)
    assert "packs" in prefixes
    assert retry.new_bytes <= retry.logical_bytes - (4 << 20), "the retry reuses what the failed put published"
    assert not list((store.path / "pending").iterdir()), "an ended session's marker goes once its packs are indexed"
    assert Store(store.path).verify().ok


def write_marker(store: Store, name: str, age: float = 0, **fields) -> Path:
    marker = {"boot": boot_id(), "ended": False, "host": os.uname().nodename, "pid": os.getpid(),
              "pid_namespace": pid_namespace(), "started": time.time(), **fields}
    path = store.path / "pending" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(json.dumps(marker).encode() if "raw" not in fields else fields["raw"])
    os.utime(path, (time.time() - age,) * 2)
    return path


def test_a_put_removes_the_markers_of_finished_sessions_only(store, tmp_path):
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    old = STALE_SECONDS + 60
    finished = [
        write_marker(store, "dead", pid=gone),  # a process of this boot and PID namespace that is gone
        write_marker(store, "ended", ended=True, host="elsewhere"),
        write_marker(store, "stale", host="elsewhere", age=old),  # by the store's clock...
        write_marker(store, "old-damaged", raw=b"\xff{", age=old),
        write_marker(store, "old-huge-pid", pid=2**40, age=old),
    ]
    kept = [
        write_marker(store, "alive"),  # this process: it may still publish
        write_marker(store, "elsewhere", host="elsewhere", started=time.time() - old),  # ...not the writer's
        write_marker(store, "other-boot", pid=gone, boot="another boot"),
        write_marker(store, "other-namespace", pid=gone, pid_namespace=1),  # a container on this host
        write_marker(store, "young-damaged", raw=b"not json"),
        write_marker(store, "young-huge-pid", pid=2**40),
    ]
    store.put(make_tree(tmp_path / "a", {"w": random_bytes(1 << 20, 33)}))
    assert {p.name for p in (store.path / "pending").iterdir()} == {p.name for p in kept}
    assert not any(p.exists() for p in finished)


def test_a_marker_that_cannot_be_removed_fails_no_put(store, tmp_path, monkeypatch):
    """Removing a marker is best effort: one left behind costs later puts a listing of the packs."""
    write_marker(store, "ended", ended=True)
    real_unlink = Path.unlink

    def refuse_in_pending(path, missing_ok=False):
        if path.parent.name == "pending":
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", refuse_in_pending)
    source = make_tree(tmp_path / "a", {"w": random_bytes(4 << 20, 34)})
    put = store.put(source)
    assert len(list((store.path / "pending").iterdir())) == 2, "the ended one stays, and the put's own, marked ended"
    monkeypatch.setattr(Path, "unlink", real_unlink)
    Store(store.path).get(put.id, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(source)
    Store(store.path).put(make_tree(tmp_path / "b", {"w": random_bytes(1 << 20, 35)}))
    assert not list((store.path / "pending").iterdir()), "the next put removes both: the session is over"


def test_a_put_indexes_again_the_packs_of_a_damaged_index_file(store, tmp_path):
    """gc refuses while an index file is damaged and says a put re-indexes its packs: with no
    marker anywhere, a put still lists the packs when the index it read skipped a damaged file."""
    first = store.put(make_tree(tmp_path / "a", {"w": random_bytes(300_000, 36)})).id
    before = set((store.path / "index").iterdir())
    second = store.put(make_tree(tmp_path / "b", {"w": random_bytes(300_000, 37)})).id
    [damaged] = set((store.path / "index").iterdir()) - before
    data = bytearray(damaged.read_bytes())
    data[20] ^= 0xFF
    damaged.write_bytes(bytes(data))
    Store(store.path).put(make_tree(tmp_path / "c", {"w": random_bytes(300_000, 38)}))
    for object_id, name in ((first, "a"), (second, "b")):
        Store(store.path).get(object_id, tmp_path / f"out-{name}")
        assert snapshot(tmp_path / f"out-{name}") == snapshot(tmp_path / name)


def test_a_put_reads_the_condemned_list_a_bounded_number_of_times(store, tmp_path, monkeypatch):
    """Every manifest a put finds stored already is checked against gc's condemned list, which was
    read again for each (a GET per file of a bundle on object storage); now once for them all."""
    files = {f"f{i}.json": random_bytes(2_000, 40 + i) for i in range(12)}
    store.put(make_tree(tmp_path / "a", files))
    store.gc(grace="1h")  # writes the condemned list
    read_keys = recorded_keys(monkeypatch, "read")
    store.put(make_tree(tmp_path / "b", {**files, "new.json": random_bytes(2_000, 60)}))
    assert read_keys.count(CONDEMNED_KEY) <= 3, read_keys.count(CONDEMNED_KEY)


def refuse_marker_writes(monkeypatch) -> list[bool]:
    """From the moment the returned flag is set, writing a session marker fails as on a full disk."""
    refusing = [False]
    real_write = LocalBackend.write

    def write(self, key, data):
        if refusing[0] and key.startswith("pending/"):
            raise OSError(28, "No space left on device")
        return real_write(self, key, data)
    monkeypatch.setattr(LocalBackend, "write", write)
    return refusing


def test_a_marker_that_cannot_be_written_publishes_no_pack(store, tmp_path, monkeypatch):
    """The marker comes before the first pack: if it cannot be written, the put fails with nothing
    published and no temporary file left."""
    refuse_marker_writes(monkeypatch)[0] = True
    before = snapshot(store.path)
    with pytest.raises(OSError, match="No space left"):
        store.put(make_tree(tmp_path / "a", {"w": random_bytes(6 << 20, 41)}))
    assert snapshot(store.path) == before
    assert not list((store.path / "tmp").iterdir())


def test_a_failed_put_whose_marker_cannot_say_so_keeps_it_open(store, tmp_path, monkeypatch):
    """A failed session that cannot mark its marker ended raises its own error, and leaves the
    marker open: later puts keep indexing what it published (a retry reuses it) while its process
    lives, and an unreadable marker is left alone."""
    put = artifactstore.content.put
    refusing = refuse_marker_writes(monkeypatch)
    monkeypatch.setattr(put, "TARGET_SIZE", 4 << 20)
    real_hash = put._hash_chunks

    def fail_late(data, offsets, first, last):
        if offsets[first] >= 16 << 20:
            deadline = time.monotonic() + 30
            while not list(store.path.glob("pending/*")):  # the first pack's publisher writes it
                assert time.monotonic() < deadline
                time.sleep(0.01)
            refusing[0] = True  # the marker was written; now its rewrite fails too
            raise OSError(5, "Input/output error")
        return real_hash(data, offsets, first, last)
    monkeypatch.setattr(put, "_hash_chunks", fail_late)
    failing = make_tree(tmp_path / "a", {"w": random_bytes(24 << 20, 42)})
    with pytest.raises(OSError, match="Input/output error"):
        store.put(failing)
    [marker] = (store.path / "pending").iterdir()
    assert not json.loads(marker.read_bytes())["ended"]

    refusing[0] = False
    monkeypatch.setattr(put, "_hash_chunks", real_hash)
    real_read = LocalBackend.read

    def unreadable_marker(self, key):
        if key.startswith("pending/"):
            raise StoreError(f"cannot read {key}: Input/output error")
        return real_read(self, key)
    monkeypatch.setattr(LocalBackend, "read", unreadable_marker)
    retry = Store(store.path).put(failing)
    assert retry.new_bytes <= retry.logical_bytes - (4 << 20), "the retry reuses what the failed put published"
    assert marker.exists(), "neither judged finished (this process lives) nor readable: it stays"
    monkeypatch.setattr(LocalBackend, "read", real_read)
    assert Store(store.path).verify().ok
