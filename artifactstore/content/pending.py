"""``pending/<session>.json``: a marker for each pack session that publishes into the store.

A session publishes its packs before the index file that lists them, so a session that dies in
between leaves packs no index lists. A put indexes such packs so that a retry reuses them, which
takes reading the list of every pack: with markers, a put does that only when a marker is there
(docs/format.md, Index files). A session writes its marker before its first pack and deletes it
once its index file is durable; a session that fails says so in its marker; a put that finds
markers indexes the unindexed packs, then deletes the markers of sessions that will publish
nothing more. Markers only save work: a marker lost or deleted early costs a retry the reuse of
what a dead session wrote, never data, so removing one is best effort.
"""

import json
import os
import time
from dataclasses import dataclass, replace
from functools import cache

from ..backends import Backend
from ..errors import ArtifactStoreError
from .manifest import canonical_json

PENDING_PREFIX = "pending"
# A marker whose owner cannot be asked (another machine) counts as finished once the object is
# this old (by the store's clock). If its session was in fact alive and dies later, its unindexed
# packs are left to gc: a retry then writes them again, and nothing is lost.
STALE_SECONDS = 24 * 3600
MAX_PID = 2**31 - 1


@cache
def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None  # not Linux: no process id is ever asked about


@cache
def pid_namespace() -> int | None:
    """The inode of this process's PID namespace: containers of one host share its host name (with
    host networking) and boot id, but not their process ids."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@dataclass(frozen=True)
class Marker:
    host: str
    boot: str | None
    pid_namespace: int | None
    pid: int
    started: float  # seconds since the epoch, by the writer's clock: for people reading it
    ended: bool

    def encode(self) -> bytes:
        return canonical_json({"boot": self.boot, "ended": self.ended, "host": self.host, "pid": self.pid,
                               "pid_namespace": self.pid_namespace, "started": self.started})

    def finished(self) -> bool:
        """Whether the session said it will publish no more packs, or is a process of this machine's
        current boot and PID namespace that is gone (the marker's age is the caller's to judge)."""
        if self.ended:
            return True
        here = (os.uname().nodename, boot_id(), pid_namespace())
        if None in here or (self.host, self.boot, self.pid_namespace) != here:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        return False


def decode_marker(data: bytes) -> Marker:
    fields = json.loads(data)
    boot, namespace, pid = fields["boot"], fields["pid_namespace"], fields["pid"]
    if not (isinstance(boot, str | None) and (namespace is None or type(namespace) is int)
            and type(pid) is int and 0 < pid <= MAX_PID):
        raise ValueError("malformed marker")
    return Marker(str(fields["host"]), boot, namespace, pid, float(fields["started"]), fields["ended"] is True)


class SessionMarker:
    """The marker of one session: ``write`` before its first pack is published, ``remove`` after
    its index file is durable, ``end`` when it fails (what it published stays unindexed)."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.key = f"{PENDING_PREFIX}/{os.urandom(16).hex()}.json"
        self._marker: Marker | None = None

    def write(self) -> None:
        if self._marker is None:
            marker = Marker(os.uname().nodename, boot_id(), pid_namespace(), os.getpid(), time.time(), ended=False)
            self._backend.write(self.key, marker.encode())
            self._marker = marker

    def remove(self) -> None:
        """After the session's index file is durable; a marker that cannot go is marked ended."""
        if self._marker is not None:
            if not remove_marker(self._backend, self.key):
                self.end()
            self._marker = None

    def end(self) -> None:
        if self._marker is not None:
            try:
                self._backend.write(self.key, replace(self._marker, ended=True).encode())
            except (ArtifactStoreError, OSError):
                pass  # the marker stays open: puts look for unindexed packs until this process is gone


def remove_marker(backend: Backend, key: str) -> bool:
    """Delete a marker, best effort (one left behind costs later puts a listing, never data);
    whether it went."""
    try:
        backend.delete(key)
    except (ArtifactStoreError, OSError):
        return False
    return True


def pending_markers(backend: Backend) -> list[str]:
    return list(backend.list(PENDING_PREFIX))


def finished_markers(backend: Backend, keys: list[str]) -> list[str]:
    """Those of ``keys`` whose sessions will publish no more packs: finished by what they say, or
    STALE_SECONDS old by the store's clock (a marker that does not parse counts by its age alone).
    One that cannot be read now (gone: its session removed it) is not."""
    now = time.time()
    finished = []
    for key in keys:
        try:
            data, written = backend.read(key), backend.modified(key)
        except (ArtifactStoreError, OSError):
            continue
        try:
            done = decode_marker(data).finished()
        except (ValueError, KeyError, TypeError):
            done = False
        if done or now - written >= STALE_SECONDS:
            finished.append(key)
    return finished
