"""Objects in a dict: a backend for tests and for trying the library without touching a disk.

It keeps every promise of the protocol (atomic writes, compare-and-swap refs, modification times)
so that the backend contract suite can run it beside the real ones.
"""

import threading
import time
from collections.abc import Iterator

from ..errors import Conflict, NotFound
from ..ids import digest
from . import BufferedWriter, Capabilities


class MemoryBackend:
    """Objects as bytes in memory, lost when the process ends."""

    def __init__(self, name: str = "memory"):
        self.name = name
        self.capabilities = Capabilities(local_directory=None, conditional_writes=True, concurrent_ranges=False)
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"memory://{self.name}"

    def _get(self, key: str) -> tuple[bytes, float]:
        try:
            return self._objects[key]
        except KeyError:
            raise NotFound(f"object {key} is missing from {self.describe()}") from None

    def read(self, key: str) -> bytes:
        return self._get(key)[0]

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self._get(key)[0][offset:offset + length]

    def read_ranges(self, requests: list[tuple[str, int, int]]) -> list[bytes]:
        return [self.read_range(key, offset, length) for key, offset, length in requests]

    def write(self, key: str, data: bytes) -> None:
        self._objects[key] = (bytes(data), time.time())

    def open_writer(self, *, cached: bool = True) -> BufferedWriter:
        return BufferedWriter(self)

    def exists(self, key: str) -> bool:
        return key in self._objects

    def size(self, key: str) -> int:
        return len(self._get(key)[0])

    def modified(self, key: str) -> float:
        return self._get(key)[1]

    def list(self, prefix: str) -> Iterator[str]:
        under = f"{prefix}/" if prefix else ""
        yield from sorted(key for key in list(self._objects) if key.startswith(under))

    def delete(self, key: str) -> None:
        self._objects.pop(key, None)

    def read_ref(self, key: str) -> tuple[bytes | None, str | None]:
        found = self._objects.get(key)
        return (None, None) if found is None else (found[0], digest(found[0]).hex())

    def swap_ref(self, key: str, data: bytes, expected: str | None) -> str:
        with self._lock:
            if self.read_ref(key)[1] != expected:
                raise Conflict(f"{key} changed concurrently")
            self.write(key, data)
        return digest(data).hex()
