"""``pending/<session>.json``: a marker for each pack session that publishes into the store.

A session publishes its packs before the index file that lists them, so a session that dies in
between leaves packs no index lists. A put indexes such packs so that a retry reuses them, which
takes reading the list of every pack: with markers, a put does that only when a marker is there
(docs/format.md, Index files). A session writes its marker before its first pack and deletes it
once its index file is durable; a session that fails says so in its marker; a put that finds
markers indexes the unindexed packs, then deletes the markers of sessions that will publish
nothing more.
"""

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from functools import cache

from ..backends import Backend
from ..errors import NotFound, StoreError

PENDING_PREFIX = "pending"
# A marker whose owner cannot be asked (another machine) counts as finished after this long. If
# its session was in fact alive and dies later, its unindexed packs are left to gc: a retry then
# writes them again, and nothing is lost.
STALE_SECONDS = 24 * 3600


@cache
def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None  # not Linux: a process id is only compared within one boot where the boot is known


@dataclass(frozen=True)
class Marker:
    host: str
    boot: str | None
    pid: int
    started: float
    ended: bool

    def encode(self) -> bytes:
        return json.dumps({"boot": self.boot, "ended": self.ended, "host": self.host, "pid": self.pid,
                           "started": self.started}, sort_keys=True, separators=(",", ":")).encode()

    def finished(self, now: float) -> bool:
        """Whether the session will publish no more packs: it said so, it is a process of this
        machine's current boot that is gone, or it is older than STALE_SECONDS."""
        if self.ended or now - self.started >= STALE_SECONDS:
            return True
        if self.host != socket.gethostname() or self.boot is None or self.boot != boot_id():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False


def decode_marker(data: bytes) -> Marker:
    fields = json.loads(data)
    return Marker(str(fields["host"]), fields["boot"], int(fields["pid"]), float(fields["started"]),
                  bool(fields["ended"]))


class SessionMarker:
    """The marker of one session: ``write`` before its first pack is published, ``remove`` after
    its index file is durable, ``end`` when it fails (what it published stays unindexed)."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.key = f"{PENDING_PREFIX}/{secrets.token_hex(16)}.json"
        self._marker: Marker | None = None

    def write(self) -> None:
        if self._marker is None:
            marker = Marker(socket.gethostname(), boot_id(), os.getpid(), time.time(), ended=False)
            self._backend.write(self.key, marker.encode())
            self._marker = marker

    def remove(self) -> None:
        if self._marker is not None:
            self._backend.delete(self.key)
            self._marker = None

    def end(self) -> None:
        if self._marker is not None:
            try:
                self._backend.write(self.key, Marker(**{**vars(self._marker), "ended": True}).encode())
            except (StoreError, OSError):
                pass  # the marker stays open: puts look for unindexed packs until this process is gone


def pending_markers(backend: Backend) -> list[str]:
    return list(backend.list(PENDING_PREFIX))


def finished_markers(backend: Backend, keys: list[str]) -> list[str]:
    """Those of ``keys`` whose sessions will publish no more packs; a marker that cannot be read
    counts by its age."""
    now = time.time()
    finished = []
    for key in keys:
        try:
            done = decode_marker(backend.read(key)).finished(now)
        except NotFound:
            continue  # its session removed it
        except (ValueError, KeyError, TypeError):
            try:
                done = now - backend.modified(key) >= STALE_SECONDS
            except NotFound:
                continue
        if done:
            finished.append(key)
    return finished
