"""A directory store's cold tier is a place of its own: not the store, not another store, and not
another store's cold tier, whose gc would delete packs this store still needs (format.md, "Cold
tier marker")."""

import json
from pathlib import Path

from ..backends import Backend, is_url, open_backend, probe
from ..backends.remote import mask_url
from ..errors import InvalidParameter, NotFound
from .config import CONFIG_KEY

COLD_MARKER = "cold-tier.json"


def claim_cold_tier(cold: str, store_root: Path) -> str:
    """The cold tier ``cold`` (a directory or URL) as the configuration keeps it, once checked to be
    free for the directory store at ``store_root``, writable, and marked as this store's."""
    if not cold.strip():
        raise InvalidParameter("the cold tier must be a directory or URL, not an empty value")
    home = store_root.resolve()
    if not is_url(cold):
        place = Path(cold).resolve()
        if place == home or home in place.parents or place in home.parents:
            raise InvalidParameter(f"the cold tier {place} must be a directory of its own, not the store's "
                                   f"{home}, one inside it or one that holds it")
        cold = str(place)
    backend = open_backend(cold)
    if backend.exists(CONFIG_KEY):
        raise InvalidParameter(f"{mask_url(cold)} is a store: a cold tier must be a place of its own")
    owner = _owner(backend)
    if owner is not None and owner != str(home):
        raise InvalidParameter(f"{mask_url(cold)} is the cold tier of the store at {owner}: two stores' gc would "
                               "delete each other's packs there")
    probe(backend)
    backend.write(COLD_MARKER, json.dumps({"kind": "cold-tier", "store": str(home)}, sort_keys=True).encode())
    return cold


def release_cold_tier(cold: str, store_root: Path) -> None:
    """Remove the marker of a cold tier the store no longer uses (it holds no packs of ours)."""
    backend = open_backend(cold)
    if _owner(backend) == str(store_root.resolve()):
        try:
            backend.delete(COLD_MARKER)
        except NotFound:
            pass


def _owner(backend: Backend) -> str | None:
    """The store a cold tier's marker names; None where it has none (or an unreadable one, which
    a store that wrote it would not have left)."""
    try:
        marker = json.loads(backend.read(COLD_MARKER))
    except (NotFound, ValueError):
        return None
    store = marker.get("store") if isinstance(marker, dict) else None
    return store if isinstance(store, str) else None
