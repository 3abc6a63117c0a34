"""Adapter directories on local disk: a checkout, and a cache of them that inference servers share.

A server that loads adapters from paths (vLLM, PEFT) needs each version as a directory. The
``AdapterCache`` keeps one directory per bundle under one root: written once, atomically (staged
beside it and renamed into place), reused by every name that means the same bundle, and removed
least recently used first when the cache outgrows its size limit. A server may read an adapter's
files again long after it first loaded them (vLLM reloads an adapter it evicted from memory), so
a directory handed out is held, by a shared ``flock`` on its lock file, for as long as the process
that took it lives; eviction skips held directories, so the limit is exceeded rather than a served
adapter deleted.
"""

import fcntl
import os
import re
import secrets
import shutil
import threading
from pathlib import Path

from ..content.store import ContentStore
from ..errors import InvalidInput, InvalidParameter, NotFound
from ..ids import parse_id
from ..progress import Progress, no_progress
from .load import WEIGHTS_DIR

ENTRY = re.compile(r"[0-9a-f]{64}")
SIZE = re.compile(r"(\d+)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def check_out(content: ContentStore, bundle_id: str, dest: str | os.PathLike, *, label: str | None = None,
              progress: Progress = no_progress) -> Path:
    """Write a bundle's ``adapter_weights/`` as an adapter directory at ``dest`` (which must not
    exist); all or nothing."""
    tree = content.subtree(bundle_id, WEIGHTS_DIR)
    if not tree.entries:
        raise NotFound(f"{label or bundle_id} has no {WEIGHTS_DIR} to check out")
    return content.materialize(tree, dest, progress)


def parse_size(text: str) -> int:
    """Bytes from ``10737418240``, ``10GiB``, ``512M``, ``2T`` (powers of 1024)."""
    match = SIZE.fullmatch(text.strip())
    if match is None:
        raise InvalidParameter(f"not a size: {text!r} (expected bytes, or a number with K, M, G or T, e.g. 20GiB)")
    return int(match[1]) * UNITS[(match[2] or "")[:1].upper()]


class AdapterCache:
    """Checked-out adapters under ``directory``, one per bundle, within ``max_bytes`` where it can."""

    def __init__(self, content: ContentStore, directory: str | os.PathLike, max_bytes: int):
        if max_bytes <= 0:
            raise InvalidParameter(f"the adapter cache size must be positive, not {max_bytes}")
        self.content = content
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._held: dict[str, int] = {}  # entry name -> descriptor of its lock file, locked shared
        self._lock = threading.Lock()

    def path(self, bundle_id: str) -> Path:
        return self.directory / parse_id(bundle_id).hex()

    def get(self, bundle_id: str, *, label: str | None = None) -> Path:
        """The adapter directory of ``bundle_id``, checked out unless it is here already; held for
        this process's life. Evicts other directories if the cache is over its size."""
        entry = self.path(bundle_id)
        self._hold(entry.name)
        try:
            if entry.is_dir():
                os.utime(entry)  # its last use: what eviction orders by
            else:
                try:
                    check_out(self.content, bundle_id, entry, label=label)
                except (InvalidInput, OSError):
                    if not entry.is_dir():  # else a concurrent checkout of the same bundle finished first
                        raise
        except BaseException:
            self._release(entry.name)
            raise
        self.evict()
        return entry

    def evict(self) -> list[str]:
        """Remove least recently used directories that no process holds until the cache is within
        its size; the names removed."""
        entries = []
        for item in os.scandir(self.directory):
            if ENTRY.fullmatch(item.name) and item.is_dir(follow_symlinks=False):
                entries.append((item.stat().st_mtime_ns, item.name, _tree_bytes(item.path)))
        total = sum(size for _, _, size in entries)
        removed = []
        for _, name, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if name not in self._held and self._remove(name):
                total -= size
                removed.append(name)
        return removed

    def close(self) -> None:
        """Let other processes evict what this one held."""
        with self._lock:
            for fd in self._held.values():
                os.close(fd)
            self._held.clear()

    def _lock_path(self, name: str) -> Path:
        return self.directory / f"{name}.lock"

    def _hold(self, name: str) -> None:
        with self._lock:
            if name not in self._held:
                self._held[name] = self._open_locked(name, fcntl.LOCK_SH)

    def _release(self, name: str) -> None:
        """Stop holding ``name``; its lock file goes too if it names no directory (a failed checkout)."""
        with self._lock:
            held = self._held.pop(name, None)
        if held is not None:
            os.close(held)
        try:
            fd = self._open_locked(name, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        try:
            if not (self.directory / name).exists():
                self._lock_path(name).unlink()
        finally:
            os.close(fd)

    def _open_locked(self, name: str, operation: int) -> int:
        """A descriptor of the entry's lock file, locked. An evictor unlinks the file while it holds
        it exclusively; a lock taken on a file that is no longer at its path is taken again."""
        path = self._lock_path(name)
        while True:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write access
            try:
                fcntl.flock(fd, operation)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _remove(self, name: str) -> bool:
        try:
            fd = self._open_locked(name, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process serves it
        try:
            entry = self.directory / name
            trash = self.directory / f".{name}.evicted-{secrets.token_hex(8)}"
            try:
                os.rename(entry, trash)  # gone from its name at once, never half-deleted there
            except FileNotFoundError:
                return False
            self._lock_path(name).unlink()
        finally:
            os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)
        return True


def _tree_bytes(path: str) -> int:
    return sum(os.lstat(os.path.join(directory, name)).st_size
               for directory, _, names in os.walk(path) for name in names)
