"""A directory store's cold tier is a place of its own: not the store, not another store, and not
another store's cold tier, whose gc would delete packs this store still needs (format.md, "Cold
tier marker").

A claim is a marker, ``cold-tier.json``, written in the cold tier with a random nonce, and the same
bytes kept in the store's directory: a cold tier is this store's when the two agree. A path alone
would not do: two machines may each have a store at the same path.
"""

import json
import os
import socket
from pathlib import Path

from ..backends import Backend, is_url, open_backend, probe
from ..backends.remote import mask_url
from ..errors import InvalidParameter, NotFound
from .config import CONFIG_KEY
from .manifest import canonical_json

COLD_MARKER = "cold-tier.json"


def claim_cold_tier(cold: str, store_root: Path) -> tuple[str, bytes]:
    """(the cold tier ``cold`` as the configuration keeps it, the claim now in its marker), once it
    is checked to be free for the directory store at ``store_root``, writable, and marked as this
    store's. A place this store has claimed already keeps its marker. The caller keeps the claim
    in the store (``keep_claim``) with the setting, or gives it up (``release``) if writing the
    setting fails."""
    if not cold.strip():
        raise InvalidParameter("the cold tier must be a directory or URL, not an empty value")
    home, place = store_root.resolve(), _local_path(cold)
    if not is_url(cold):
        cold = str(place)
    if place is not None and (place == home or home in place.parents or place in home.parents):
        raise InvalidParameter(f"the cold tier {place} must be a directory of its own, not the store's "
                               f"{home}, one inside it or one that holds it")
    backend = open_backend(cold)
    if backend.exists(CONFIG_KEY):
        raise InvalidParameter(f"{mask_url(cold)} is a store: a cold tier must be a place of its own")
    marker, ours = _read(backend), kept_claim(store_root)
    if marker is not None and marker != ours:
        raise InvalidParameter(f"{mask_url(cold)} is the cold tier of the store at {_named(marker)}: two stores' "
                               "gc would delete each other's packs there")
    probe(backend)
    if marker is None:
        marker = canonical_json({"kind": "cold-tier", "store": str(home), "host": socket.gethostname(),
                                 "claim": os.urandom(16).hex()})
        backend.write(COLD_MARKER, marker)
    return cold, marker


def keep_claim(store_root: Path, claim: bytes | None) -> None:
    """Keep (None: forget) in the store the claim its cold tier's marker holds."""
    path = store_root / COLD_MARKER
    if claim is None:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_name(f".{COLD_MARKER}.{os.getpid()}")
    temporary.write_bytes(claim)
    os.replace(temporary, path)


def kept_claim(store_root: Path) -> bytes | None:
    try:
        return (store_root / COLD_MARKER).read_bytes()
    except FileNotFoundError:
        return None


def release(cold: str, claim: bytes) -> None:
    """Remove ``cold``'s marker if it still holds ``claim`` (a place given up, or a failed claim)."""
    backend = open_backend(cold)
    if _read(backend) == claim:
        try:
            backend.delete(COLD_MARKER)
        except NotFound:
            pass


def _read(backend: Backend) -> bytes | None:
    try:
        return backend.read(COLD_MARKER)
    except NotFound:
        return None


def _named(marker: bytes) -> str:
    """Whose a marker says it is, for messages (one that does not parse names no store)."""
    try:
        claim = json.loads(marker)
        return f"{claim['store']} on {claim.get('host') or 'a machine'}"
    except (ValueError, KeyError, TypeError):
        return "(unreadable marker)"


def _local_path(cold: str) -> Path | None:
    """Where a cold tier on this machine's file system lies (a directory, or a ``local://`` or
    ``file::`` URL); None for object storage."""
    if not is_url(cold):
        return Path(cold.removeprefix("file://")).resolve()
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, root = fsspec.url_to_fs(cold)
    except (ImportError, ValueError):
        return None  # open_backend says what is wrong with it
    return Path(root).resolve() if isinstance(fs, LocalFileSystem) else None
