"""Objects as files under a directory: atomic by temp file, fsync and rename; refs under a file lock."""

import errno
import fcntl
import mmap
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from ..errors import Conflict, NotFound, StoreError
from ..ids import digest
from ..native import _mapping
from . import Capabilities

# A writer asks the kernel to start writing each large write back at once (Linux's
# sync_file_range), so that the disk works while the writer computes what comes next and the
# fsync at publish waits for the last writes only: a put's new packs otherwise reached the disk
# in one burst per pack, each fsync waiting for all of it. Durability still comes from the fsync.
WRITEBACK_MIN_BYTES = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2

# A writer opened with ``cached=False`` writes with direct I/O (O_DIRECT) where the file system
# takes it: whole blocks go from the caller's memory to the disk without a copy into the page
# cache. That copy was a quarter of a put's CPU on this project's machine, and the pages it
# filled pushed out what the machine's loads had cached. Each block is written whole, at a block
# offset, from memory aligned to a block: a put's mapped input file is, where its chunks keep their
# file offset modulo a page in the pack (content/put.py); other bytes, and short writes, are
# gathered in aligned memory first. The last partial block is written through the page cache at
# publish, as is everything where direct I/O is refused. The long writes from the caller's memory
# run on a thread of the writer's, one after the other, so that the disk is never idle while the
# caller prepares the next: it is the caller's to keep that memory until ``settle`` says they are done.
DIRECT_BLOCK = 4096
STAGING_BYTES = 1 << 20
O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux (and some BSDs) only

T = TypeVar("T")
_READ: Future = Future()  # a write that left nothing to the writer's thread: its data was read at once
_READ.set_result(None)


@lru_cache(maxsize=1)
def _writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, looked up on the first large write (ctypes is no import of every command)."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _in_directory(operation: Callable[[], T], directory: Path) -> T:
    """``operation``, run again after making ``directory`` if it failed for want of it (making
    it first on every call cost a small write, such as a promote's, a tenth of its time)."""
    try:
        return operation()
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        return operation()


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:  # a write may be short (a nearly full disk, a signal)
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _DirectAppends:
    """Appends to a file opened with O_DIRECT (DIRECT_BLOCK): the caller's memory written straight
    where it is aligned and long enough, by a thread of its own (``settle`` waits for those
    writes), the rest gathered in an aligned staging buffer of STAGING_BYTES and written a buffer
    at a time (small writes do not each wait on the disk)."""

    def __init__(self, fd: int):
        self._fd = fd
        self._written = 0  # bytes in the file or being written there: whole blocks
        self._staging: mmap.mmap | None = None  # the bytes after them, at its start
        self._staged = 0
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()  # its writes, oldest first

    def write(self, view: memoryview) -> None:
        """Append ``view``: its long aligned part by the writer's thread, the rest staged (read now).
        Each call adds one entry to what ``settle`` counts, a finished one where nothing was left to
        the thread, so that ``settle(keep)`` waits for every call but the ``keep`` newest."""
        submitted: Future = _READ
        while view:
            to_block = -self._staged % DIRECT_BLOCK  # what completes the staged partial block
            if len(view) - to_block >= DIRECT_BLOCK and (_mapping.buffer_address(view) + to_block) % DIRECT_BLOCK == 0:
                self._stage(view[:to_block])
                self._write_staged()
                whole = (len(view) - to_block) // DIRECT_BLOCK * DIRECT_BLOCK
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(1, thread_name_prefix="direct-write")
                submitted = self._writer.submit(self._write_at, view[to_block:to_block + whole], self._written)
                self._written += whole
                view = view[to_block + whole:]
            else:
                view = view[self._stage(view):]
                if self._staged == STAGING_BYTES:
                    self._write_staged()
        self._pending.append(submitted)

    def settle(self, keep: int = 0) -> None:
        """Wait until at most the ``keep`` newest writes from the caller's memory are still going on;
        raises the first error of those that ended."""
        while len(self._pending) > keep:
            self._pending.popleft().result()

    def _stage(self, view: memoryview) -> int:
        """Copy what fits of ``view`` into the staging buffer; returns how much did."""
        if self._staging is None:
            self._staging = mmap.mmap(-1, STAGING_BYTES)
        taken = min(len(view), STAGING_BYTES - self._staged)
        self._staging[self._staged:self._staged + taken] = view[:taken]
        self._staged += taken
        return taken

    def _write_staged(self) -> None:
        """Write the staged whole blocks; keep the partial one."""
        whole = self._staged // DIRECT_BLOCK * DIRECT_BLOCK
        if not whole:
            return
        assert self._staging is not None
        with memoryview(self._staging) as staging:
            self._write_at(staging[:whole], self._written)
        self._written += whole
        self._staging.move(0, whole, self._staged - whole)
        self._staged -= whole

    def _write_at(self, view: memoryview, offset: int) -> None:
        try:
            _pwrite_all(self._fd, view, offset)
        except OSError as exc:
            # A file system may refuse direct I/O only when it is used, or a short write (a full
            # disk) may leave the rest unaligned: write through the page cache from here on. The
            # writer's thread and the caller's staged writes may both meet it: each retries.
            if exc.errno != errno.EINVAL:
                raise
            self._through_page_cache()
            _pwrite_all(self._fd, view, offset)

    def _through_page_cache(self) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~O_DIRECT)

    def finish(self) -> None:
        """Write what is staged, the last partial block through the page cache (its length is not
        a block's)."""
        self.settle()
        self._write_staged()
        self._through_page_cache()
        if self._staging is not None:
            with memoryview(self._staging) as staging:
                self._write_at(staging[:self._staged], self._written)
        self.close()

    def close(self) -> None:
        for write in self._pending:  # they read the caller's memory and write to the descriptor
            write.exception()
        self._pending.clear()
        if self._writer is not None:
            self._writer.shutdown()
        if self._staging is not None:
            try:
                self._staging.close()
            except BufferError:
                pass  # a failed write's traceback still holds a view of it: it closes when that goes


class LocalWriter:
    """A temporary file in the store's tmp/ that becomes an object by rename; ``cached=False``:
    written with direct I/O where the file system takes it (DIRECT_BLOCK)."""

    def __init__(self, backend: "LocalBackend", *, cached: bool = True):
        self._backend = backend
        self._path = backend.root / "tmp" / f"w-{os.urandom(8).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd, direct = _in_directory(lambda: _open_new(self._path, flags, direct=not cached), self._path.parent)
        self._file = os.fdopen(fd, "wb", buffering=0)  # closes its descriptor once, and when dropped
        self._direct = _DirectAppends(fd) if direct else None
        self._size = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        if self._direct is not None:
            self._direct.write(view)
            return
        start, length = self._size, len(view)
        _pwrite_all(self._file.fileno(), view, start)
        self._size += length
        if length >= WRITEBACK_MIN_BYTES and (start_writeback := _writeback_starter()) is not None:
            start_writeback(self._file.fileno(), start, length, _SYNC_FILE_RANGE_WRITE)  # a hint: errors ignored

    def settle(self, keep: int = 0) -> None:
        if self._direct is not None:
            self._direct.settle(keep)

    def publish(self, key: str) -> None:
        with self._file:
            if self._direct is not None:
                self._direct.finish()
            os.fsync(self._file.fileno())
        target = self._backend.path(key)
        _in_directory(lambda: os.replace(self._path, target), target.parent)
        _fsync_dir(target.parent)

    def discard(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self._file.close()
        self._path.unlink(missing_ok=True)


def _open_new(path: Path, flags: int, *, direct: bool) -> tuple[int, bool]:
    """Create ``path`` with O_DIRECT if ``direct`` and the file system takes it, else without:
    (descriptor, whether O_DIRECT is on)."""
    if direct and O_DIRECT:
        try:
            return os.open(path, flags | O_DIRECT, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            flags &= ~os.O_EXCL  # the refusal may come after the file was made (its name is ours)
    return os.open(path, flags, 0o600), False


class LocalBackend:
    """Objects as files under a directory; atomic by temp file, fsync and rename."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.capabilities = Capabilities(local_directory=self.root, conditional_writes=True, concurrent_ranges=False)

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from the store at {self.root}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path(key)}: {exc.strerror}") from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self.path(key), "rb", buffering=0) as f:
                return os.pread(f.fileno(), length, offset)
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from the store at {self.root}") from None

    def read_ranges(self, requests: list[tuple[str, int, int]]) -> list[bytes]:
        return [self.read_range(key, offset, length) for key, offset, length in requests]

    def open_writer(self, *, cached: bool = True) -> LocalWriter:
        return LocalWriter(self, cached=cached)

    def write(self, key: str, data: bytes) -> None:
        writer = self.open_writer()
        try:
            writer.write(data)
            writer.publish(key)
        except BaseException:
            writer.discard()
            raise

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from the store at {self.root}") from None

    def modified(self, key: str) -> float:
        try:
            return self.path(key).stat().st_mtime
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from the store at {self.root}") from None

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under a directory prefix, recursively, in sorted order."""
        base = self.path(prefix)
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                yield f"{rel}/{name}"

    def delete(self, key: str) -> None:
        """Remove an object, durably: gc deletes index files before the packs they list, an order a
        power cut must not undo (an index file back from the dead would list a deleted pack)."""
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def read_ref(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None, None
        return data, digest(data).hex()

    def swap_ref(self, key: str, data: bytes, expected: str | None) -> str:
        """Compare-and-swap under an exclusive lock on ``<key>.lock``; the write itself is atomic."""
        target = self.path(key)
        with _in_directory(lambda: open(target.with_name(target.name + ".lock"), "a+b"), target.parent) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _, current = self.read_ref(key)
            if current != expected:
                raise Conflict(f"{key} changed concurrently")
            self.write(key, data)
        return digest(data).hex()
