"""Objects as files under a directory: atomic by temp file, fsync and rename; refs under a file lock."""

import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, TypeVar

from ..errors import Conflict, NotFound, StoreError
from ..ids import digest
from . import Capabilities

# A writer asks the kernel to start writing each large write back at once (Linux's
# sync_file_range), so that the disk works while the writer computes what comes next and the
# fsync at publish waits for the last writes only: a put's new packs otherwise reached the disk
# in one burst per pack, each fsync waiting for all of it. Durability still comes from the fsync.
WRITEBACK_MIN_BYTES = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2

T = TypeVar("T")


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


class LocalWriter:
    """A temporary file in the store's tmp/ that becomes an object by rename."""

    def __init__(self, backend: "LocalBackend"):
        self._backend = backend
        self._path = backend.root / "tmp" / f"w-{os.urandom(8).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = _in_directory(lambda: os.open(self._path, flags, 0o600), self._path.parent)
        self._file: BinaryIO = os.fdopen(fd, "wb", buffering=0)
        self._size = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        start, length = self._size, len(view)
        while view:  # an unbuffered write may be short (a nearly full disk, a signal)
            view = view[self._file.write(view):]
        self._size += length
        if length >= WRITEBACK_MIN_BYTES and (start_writeback := _writeback_starter()) is not None:
            start_writeback(self._file.fileno(), start, length, _SYNC_FILE_RANGE_WRITE)  # a hint: errors ignored

    def publish(self, key: str) -> None:
        os.fsync(self._file.fileno())
        self._file.close()
        target = self._backend.path(key)
        _in_directory(lambda: os.replace(self._path, target), target.parent)
        _fsync_dir(target.parent)

    def discard(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


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

    def open_writer(self) -> LocalWriter:
        return LocalWriter(self)

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
        self.path(key).unlink(missing_ok=True)

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
