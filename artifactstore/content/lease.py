"""``gc/lease``: the maintenance lease of a shared store, which gc and index merges of every machine take.

A local store's maintenance lock is an ``flock`` in its directory, which every process that can
write the store shares. The machines of a shared store share no file system: there the lock is
one object in the store, taken, renewed and given back by conditional writes (``swap_ref``). While
one machine holds it, no other gc runs and no other put merges index files, so no index file is
written from a read that another collector's deletes have made stale.

A holder renews the lease before work that must not overlap another machine's (gc, before it
deletes) and every LEASE_RENEWAL while it deletes; a renewal fails if another machine took the
lease meanwhile, and the holder then stops before deleting anything more. A lease that nobody
renewed for LEASE_SECONDS (its holder died) is free, by the store's clock, as session markers are
judged (pending.py).
"""

import json
import os
import socket
import time

from ..backends import Backend
from ..errors import Conflict, NotFound, StoreError
from .manifest import canonical_json

LEASE_KEY = "gc/lease"
LEASE_SECONDS = 3600
LEASE_RENEWAL = 300  # seconds between renewals of a holder that works on


class Lease:
    """What holding maintenance gives: ``renew()`` before work no other machine may overlap."""

    def renew(self) -> None:
        """A lock only this machine's processes share needs no renewal."""

    def renew_if_due(self) -> None:
        """``renew`` where the last renewal is old enough to need it."""


class StoreLease(Lease):
    """The lease object of a shared store, held by this process."""

    def __init__(self, backend: Backend, token: str):
        self._backend, self._token = backend, token
        self._renewed = time.monotonic()

    @classmethod
    def take(cls, backend: Backend) -> "StoreLease | None":
        """The lease, or None while another holder's is in force."""
        data, token = backend.read_ref(LEASE_KEY)
        if data is not None and holder_of(backend, data) is not None:
            return None
        try:
            return cls(backend, backend.swap_ref(LEASE_KEY, _claim(), token))
        except Conflict:  # another machine took it between the read and the write
            return None

    def renew(self) -> None:
        try:
            self._token = self._backend.swap_ref(LEASE_KEY, _claim(), self._token)
        except Conflict:
            raise StoreError("another machine took the store's maintenance lease while this one worked (it was not "
                             f"renewed for {LEASE_SECONDS} s): stopped before deleting anything more; run gc "
                             "again") from None
        self._renewed = time.monotonic()

    def renew_if_due(self) -> None:
        if time.monotonic() - self._renewed >= LEASE_RENEWAL:
            self.renew()

    def release(self) -> None:
        """Give the lease back, unless another holder has it already (then it is theirs)."""
        try:
            self._backend.swap_ref(LEASE_KEY, canonical_json({"released": True}), self._token)
        except Conflict:
            pass


def lease_holder(backend: Backend) -> str | None:
    """Who holds the store's lease now, if anyone: for messages."""
    data, _ = backend.read_ref(LEASE_KEY)
    return None if data is None else holder_of(backend, data)


def holder_of(backend: Backend, data: bytes) -> str | None:
    """Who holds a lease object of these bytes, or None when it is free: given back, unreadable, or
    not renewed for LEASE_SECONDS by the store's clock."""
    try:
        claim = json.loads(data)
        if claim.get("released") or time.time() - backend.modified(LEASE_KEY) >= LEASE_SECONDS:
            return None
        return f"{claim['holder']} (renewed at {claim['renewed']})"
    except (ValueError, KeyError, TypeError, AttributeError, NotFound):  # NotFound: given back and gone
        return None


def _claim() -> bytes:
    """A claim's bytes, never the same twice: a token is a hash of them (an ETag), and a claim equal
    to another holder's would let a renewal pass over that holder's take."""
    return canonical_json({"holder": f"{socket.gethostname()} pid {os.getpid()}", "nonce": os.urandom(8).hex(),
                           "renewed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
