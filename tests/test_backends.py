"""The backend contract: every backend keeps the same promises, checked by one suite.

Like zarr-python's ``StoreTests``: each backend (a local directory, a directory through fsspec,
S3 on a real S3-protocol server, memory) runs every test here. A backend that declares it has no
conditional writes must refuse ref swaps clearly; the others must compare-and-swap.
"""

import os
import uuid

import pytest
from conftest import direct_io_taken, resident_pages

from artifactstore.backends import Backend, open_backend, probe
from artifactstore.backends.local import LocalBackend
from artifactstore.backends.memory import MemoryBackend
from artifactstore.backends.remote import FsspecBackend
from artifactstore.errors import Conflict, NotFound, StoreError

KINDS = ["local", "fsspec-directory", "s3", "memory"]
REF = "registry/refs/acme/support.json"


@pytest.fixture(params=KINDS)
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return LocalBackend(tmp_path / "store")
    if request.param == "fsspec-directory":
        return FsspecBackend(f"file://{tmp_path}/store")
    if request.param == "s3":
        return FsspecBackend(f"{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex[:8]}")
    return MemoryBackend()


def test_every_object_method_round_trips(backend):
    objects = {"packs/cd/cd02.pack": b"two", "packs/ab/ab01.pack": b"one", "index/x.idx": b"idx",
               "packs-other/y": b"not under packs/", "artifactstore.json": b"{}"}
    for key, data in objects.items():
        backend.write(key, data)
    assert backend.read("packs/ab/ab01.pack") == b"one"
    assert backend.exists("packs/cd/cd02.pack")
    assert not backend.exists("packs/cd") and not backend.exists("packs/zz/zz99.pack")
    assert backend.size("packs/cd/cd02.pack") == 3
    assert list(backend.list("packs")) == ["packs/ab/ab01.pack", "packs/cd/cd02.pack"]
    assert list(backend.list("index")) == ["index/x.idx"]
    assert list(backend.list("nothing")) == []
    backend.write("packs/ab/ab01.pack", b"replaced")  # a whole new object under the key
    assert backend.read("packs/ab/ab01.pack") == b"replaced"
    backend.delete("packs/ab/ab01.pack")
    backend.delete("packs/ab/ab01.pack")  # deleting what is gone is not an error
    assert list(backend.list("packs")) == ["packs/cd/cd02.pack"]


def test_modification_times_are_the_backends_clock(backend):
    backend.write("manifests/aa/x.json", b"{}")
    first = backend.modified("manifests/aa/x.json")
    assert isinstance(first, float) and abs(first - __import__("time").time()) < 3600
    with pytest.raises(NotFound):
        backend.modified("manifests/aa/none.json")


def test_ranged_reads(backend):
    data = os.urandom(300_000)
    backend.write("packs/aa/big.pack", data)
    assert backend.read_range("packs/aa/big.pack", 1000, 5000) == data[1000:6000]
    assert backend.read_range("packs/aa/big.pack", len(data) - 12, 12) == data[-12:]
    requests = [("packs/aa/big.pack", 3000 * i, 1000 + i) for i in range(8)]
    assert backend.read_ranges(requests) == [data[o:o + n] for _, o, n in requests]
    assert backend.read_ranges([]) == []


def test_missing_keys_are_not_found(backend):
    with pytest.raises(NotFound, match="packs/no/such.pack"):
        backend.read("packs/no/such.pack")
    with pytest.raises(NotFound):
        backend.read_range("packs/no/such.pack", 0, 10)
    with pytest.raises(NotFound):
        backend.size("packs/no/such.pack")
    backend.write("packs/aa/here.pack", b"here")
    with pytest.raises(NotFound, match="packs/no/such.pack"):
        backend.read_ranges([("packs/aa/here.pack", 0, 2), ("packs/no/such.pack", 0, 2)])
    assert not backend.exists("packs/no/such.pack")
    assert backend.read_ref("registry/refs/no/such.json") == (None, None)


@pytest.mark.parametrize("cached", [True, False])
def test_a_writer_publishes_whole_or_nothing(backend, cached):
    writer = backend.open_writer(cached=cached)
    writer.write(b"abc")
    writer.write(memoryview(b"def"))
    assert not backend.exists("packs/ab/w.pack")
    writer.publish("packs/ab/w.pack")
    assert backend.read("packs/ab/w.pack") == b"abcdef"
    discarded = backend.open_writer()
    discarded.write(b"never")
    discarded.discard()
    assert list(backend.list("packs")) == ["packs/ab/w.pack"]


def test_refs_compare_and_swap_where_the_backend_says_it_can(backend):
    assert backend.read_ref(REF) == (None, None)
    if not backend.capabilities.conditional_writes:
        with pytest.raises(StoreError, match="conditional writes"):
            backend.swap_ref(REF, b'{"state":"1"}', None)
        return
    first = backend.swap_ref(REF, b'{"state":"1"}', None)
    assert backend.read_ref(REF) == (b'{"state":"1"}', first)
    with pytest.raises(Conflict):
        backend.swap_ref(REF, b'{"state":"other"}', None)  # create when it exists
    second = backend.swap_ref(REF, b'{"state":"2"}', first)
    assert second != first
    with pytest.raises(Conflict):
        backend.swap_ref(REF, b'{"state":"stale"}', first)
    assert backend.read_ref(REF) == (b'{"state":"2"}', second)
    backend.delete(REF)
    with pytest.raises(Conflict):
        backend.swap_ref(REF, b'{"state":"3"}', second)  # update of a ref that is gone


def test_a_local_directory_is_declared_and_true(backend):
    directory = backend.capabilities.local_directory
    backend.write("packs/ab/f.pack", b"bytes")
    if directory is not None:
        assert (directory / "packs" / "ab" / "f.pack").read_bytes() == b"bytes"


def test_a_probe_leaves_nothing_behind(backend):
    probe(backend)
    assert list(backend.list("tmp")) == []


def test_describe_names_the_place_without_secrets(backend):
    described = backend.describe()
    assert described and "testing" not in described


def test_open_backend_picks_by_location(tmp_path):
    assert isinstance(open_backend(str(tmp_path)), LocalBackend)
    assert open_backend(f"file://{tmp_path}").capabilities.local_directory == tmp_path
    with pytest.raises(StoreError, match="nosuchprotocol"):
        open_backend("nosuchprotocol://x")


def test_a_large_local_write_starts_its_writeback_and_stays_exact(tmp_path):
    """Writes of a MiB or more ask the kernel to start writing them back (a hint, Linux only): the
    object is still exactly what was written, whole, and only after publish."""
    import sys

    from artifactstore.backends import local

    assert (local._writeback_starter() is not None) == (sys.platform == "linux")
    backend = LocalBackend(tmp_path)
    parts = [os.urandom(local.WRITEBACK_MIN_BYTES + 7), os.urandom(100), os.urandom(3 * local.WRITEBACK_MIN_BYTES)]
    writer = backend.open_writer()
    for part in parts:
        writer.write(part)
    assert not backend.exists("packs/big")
    writer.publish("packs/big")
    assert backend.read("packs/big") == b"".join(parts)


def uncached_writes(writer, rng, pieces: int) -> bytes:
    """Random writes of every kind a pack writer makes: mapped file bytes in step with the object's
    offset modulo a page (a put's), mapped bytes out of step, plain bytes; from none to several
    MiB (more than the staging buffer), and runs that end inside a block. Returns them joined."""
    import mmap

    from artifactstore.backends import local

    source = mmap.mmap(-1, 8 << 20)
    source.write(rng.randbytes(8 << 20))
    view = memoryview(source)
    written = bytearray()
    for _ in range(pieces):
        length = rng.choice([0, 1, 63, 4095, 4096, 4097, local.STAGING_BYTES + 5000, rng.randrange(1, 3 << 20)])
        kind = rng.choice(["in step", "out of step", "bytes"])
        if kind == "bytes":
            data = rng.randbytes(length)
        else:
            start = len(written) % local.DIRECT_BLOCK + rng.randrange(0, 64) * local.DIRECT_BLOCK
            start += 0 if kind == "in step" else rng.randrange(1, local.DIRECT_BLOCK)
            data = view[start:start + length]
        writer.write(data)
        written += data
    return bytes(written)


@pytest.mark.parametrize("seed", range(4))
def test_an_uncached_local_writer_writes_around_the_page_cache_and_stays_exact(tmp_path, seed):
    """``cached=False``: direct I/O where the file system takes it, and the object is exactly what
    was written whatever the sizes and memory alignment of the writes; only its last partial block
    passes through the page cache."""
    import random

    backend = LocalBackend(tmp_path / "store")
    writer = backend.open_writer(cached=False)
    expected = uncached_writes(writer, random.Random(seed), 12)
    writer.publish("packs/ab/direct.pack")
    assert backend.read("packs/ab/direct.pack") == expected  # from the disk, where the cache lacks it


def test_direct_writes_leave_the_page_cache_alone(tmp_path):
    """Where the file system takes direct I/O, an uncached object's pages but the last stay out of
    the page cache; where it does not, the writer went through the cache."""
    import mmap

    backend = LocalBackend(tmp_path / "store")
    data = mmap.mmap(-1, 4 << 20)
    data.write(os.urandom(4 << 20))
    for cached in (True, False):
        writer = backend.open_writer(cached=cached)
        writer.write(memoryview(data)[: (4 << 20) - 100])
        writer.publish(f"packs/ab/{cached}.pack")
    assert all(resident_pages(backend.path("packs/ab/True.pack")))
    resident = resident_pages(backend.path("packs/ab/False.pack"))
    if direct_io_taken(tmp_path):
        assert not any(resident[:-1]) and resident[-1]  # the last page was written through the cache
    else:
        assert all(resident)
    for cached in (True, False):
        assert backend.read(f"packs/ab/{cached}.pack") == data[: (4 << 20) - 100]


def test_a_local_writer_goes_through_the_page_cache_where_direct_io_is_refused(tmp_path, monkeypatch):
    """A file system that refuses O_DIRECT when the file is opened (tmpfs before 6.6, some FUSE),
    or only when a write uses it: the writer writes through the page cache, exactly."""
    import fcntl
    import random

    backend = LocalBackend(tmp_path / "store")
    real_open, real_pwrite = os.open, os.pwrite

    def refusing_open(path, flags, mode=0o777):
        fd = real_open(path, flags & ~os.O_DIRECT, mode)  # made, then refused: as the kernel does
        if flags & os.O_DIRECT:
            os.close(fd)
            raise OSError(22, "Invalid argument")
        return fd

    monkeypatch.setattr(os, "open", refusing_open)
    writer = backend.open_writer(cached=False)
    expected = uncached_writes(writer, random.Random(7), 6)
    writer.publish("packs/ab/opened.pack")
    assert backend.read("packs/ab/opened.pack") == expected
    monkeypatch.setattr(os, "open", real_open)

    def refusing_pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    writer = backend.open_writer(cached=False)
    expected = uncached_writes(writer, random.Random(8), 6)
    writer.publish("packs/ab/written.pack")
    assert backend.read("packs/ab/written.pack") == expected

    def failing_pwrite(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", failing_pwrite)
    writer = backend.open_writer(cached=False)
    with pytest.raises(OSError, match="No space"):
        writer.write(os.urandom(1 << 20))
    writer.discard()
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert list(backend.list("tmp")) == []


def test_direct_io_refused_at_write_time_on_both_threads_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    """The writer's thread and the caller's staged write may both meet the refusal: whichever
    clears O_DIRECT second must write through the page cache too, not fail the put."""
    import fcntl
    import threading

    from artifactstore import Store
    from artifactstore.backends import local

    source = tmp_path / "f"
    source.write_bytes(os.urandom(24 << 20))
    real_pwrite, both = os.pwrite, threading.Barrier(2, timeout=2)

    def refusing_pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & local.O_DIRECT:
            try:
                both.wait()  # the other thread meets it too before either clears O_DIRECT
            except threading.BrokenBarrierError:
                pass
            raise OSError(22, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    store = Store.init(tmp_path / "store")
    put = store.put(source)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    store.get(put.id, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == source.read_bytes() and Store(store.path).verify().ok


def test_small_uncached_writes_reach_the_disk_a_staging_buffer_at_a_time(tmp_path, monkeypatch):
    """Writes shorter than a block (a bundle's small files, padding, a trailer) are gathered, not
    written a block at a time, each waiting on the disk."""
    from artifactstore.backends import local

    real_pwrite, calls = os.pwrite, []
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: calls.append(len(data)) or real_pwrite(fd, data, offset))
    backend = LocalBackend(tmp_path / "store")
    writer = backend.open_writer(cached=False)
    pieces = [os.urandom(700) for _ in range(2000)]
    for piece in pieces:
        writer.write(piece)
    writer.publish("packs/ab/small.pack")
    assert backend.read("packs/ab/small.pack") == b"".join(pieces)
    assert len(calls) <= 1_400_000 // local.STAGING_BYTES + 2


def test_a_writer_whose_publish_failed_closes_nothing_of_anyone_else(tmp_path):
    """A publish that fails after its file was closed (the rename, say), then the discard a caller
    makes: the descriptor is closed once, not again under a number another file now holds."""
    backend = LocalBackend(tmp_path / "store")
    (tmp_path / "store" / "packs" / "ab" / "taken.pack").mkdir(parents=True)  # a directory: the rename fails
    for cached in (True, False):
        writer = backend.open_writer(cached=cached)
        writer.write(os.urandom(10_000))
        with pytest.raises(OSError):
            writer.publish("packs/ab/taken.pack")
        with open(tmp_path / "other", "wb") as other:  # may take the number the writer's file had
            writer.discard()
            other.write(b"still open")
    assert (tmp_path / "other").read_bytes() == b"still open"
    assert list(backend.list("tmp")) == []


def test_a_local_delete_is_durable_when_it_returns(tmp_path, monkeypatch):
    """gc deletes index files before the packs they list: a power cut must not bring one back."""
    backend = LocalBackend(tmp_path)
    backend.write("index/a.idx", b"listing")
    synced = []
    fsync = os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    backend.delete("index/a.idx")
    backend.delete("index/a.idx")  # gone already: nothing to make durable
    assert not backend.exists("index/a.idx") and synced == [str(tmp_path / "index")]
