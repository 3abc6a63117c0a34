"""Where a store's objects live: one narrow key/value interface, several backends.

Owns: the ``Backend`` protocol and what each backend declares it can do (``Capabilities``), the
local directory backend, the fsspec/S3 backend and an in-memory one. May import: the base modules
(``errors``, ``ids``) only.

Keys are ``/``-separated relative paths such as ``packs/ab/ab12….pack``. Every write is atomic: a
reader sees the whole object or nothing. Refs are the only mutable objects: ``read_ref`` returns a
ref's bytes and a token (an ETag on object storage, the BLAKE3 of the bytes elsewhere);
``swap_ref`` replaces the ref only if its token is still ``expected`` (``None``: the ref must not
exist yet), which S3 expresses as ``If-Match`` / ``If-None-Match: *``. A backend without
conditional writes refuses ``swap_ref`` with a ``StoreError``.

Callers ask ``backend.capabilities`` what a backend can do; they never test its type.
"""

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import NotFound, StoreError


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond the common interface."""

    # Objects are plain files under this directory: they can be memory-mapped and stat'ed
    # cheaply, and pack guards are kept beside packs (guards never leave the machine).
    local_directory: Path | None
    # ``swap_ref`` is an atomic compare-and-swap, so refs (the registry) can live here.
    conditional_writes: bool
    # ``read_ranges`` issues its requests concurrently (object storage); a local backend reads
    # them one after another, which is as fast for files.
    concurrent_ranges: bool


class ObjectWriter(Protocol):
    """A new object written in pieces, published under a key known only at the end.

    ``write`` may return before it has read all of ``data``: the caller keeps ``data`` until
    ``settle`` waited for that write (``publish`` and ``discard`` wait for every write).
    """

    def write(self, data) -> None: ...
    def settle(self, keep: int = 0) -> None:
        """Wait until at most the ``keep`` newest writes may still read their data; raises the
        first error of those that ended."""
    def publish(self, key: str) -> None: ...
    def discard(self) -> None: ...


class BufferedWriter:
    """A new object built in memory and published with one ``backend.write``: for backends whose
    whole-object write is atomic (one PUT) and that have no rename to publish a file by."""

    def __init__(self, backend: "Backend"):
        self._backend = backend
        self._buffer = io.BytesIO()

    def write(self, data) -> None:
        self._buffer.write(data)

    def settle(self, keep: int = 0) -> None:
        pass  # ``write`` copied the data

    def publish(self, key: str) -> None:
        self._backend.write(key, self._buffer.getvalue())
        self._buffer.close()

    def discard(self) -> None:
        self._buffer.close()


class Backend(Protocol):
    capabilities: Capabilities

    def describe(self) -> str: ...
    def read(self, key: str) -> bytes: ...
    def read_range(self, key: str, offset: int, length: int) -> bytes: ...
    def read_ranges(self, requests: list[tuple[str, int, int]]) -> list[bytes]: ...
    def write(self, key: str, data: bytes) -> None: ...
    # cached=False: nobody here reads the object soon; a backend may write it around its caches.
    def open_writer(self, *, cached: bool = True) -> ObjectWriter: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def modified(self, key: str) -> float: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def read_ref(self, key: str) -> tuple[bytes | None, str | None]: ...
    def swap_ref(self, key: str, data: bytes, expected: str | None) -> str: ...


def probe(backend: Backend) -> None:
    """Write, read back and delete a small object: a place a store will use must take writes now,
    not fail the first push (wrong credentials, a missing bucket, a read-only directory)."""
    key = f"tmp/probe-{uuid.uuid4().hex}"
    try:
        backend.write(key, b"artifactstore probe")
        if backend.read(key) != b"artifactstore probe":
            raise StoreError(f"{backend.describe()}: an object written there reads back different")
        backend.delete(key)
    except OSError as exc:
        raise StoreError(f"{backend.describe()}: cannot write there ({exc.strerror or exc})") from None


def written_since(backend: Backend, key: str, modified: dict[str, float]) -> bool:
    """Whether ``key`` was written (again) since its modification time was read into ``modified``
    (a key that is gone was not)."""
    try:
        now = backend.modified(key)
    except NotFound:
        return False
    return modified.get(key) != now


def is_url(location: str) -> bool:
    """Whether ``location`` names object storage rather than a directory."""
    return "://" in location and not location.startswith("file://")


def open_backend(location: str) -> Backend:
    """A directory (a plain path or ``file://`` URL) or any fsspec URL such as ``s3://bucket/prefix``."""
    from .local import LocalBackend

    if is_url(location):
        from .remote import FsspecBackend

        return FsspecBackend(location)
    return LocalBackend(Path(location.removeprefix("file://")))
