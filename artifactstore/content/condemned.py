"""``gc/condemned.json``: the objects garbage collection is about to delete (docs/format.md).

gc writes it; writers read it, because a put must never deduplicate against a pack that gc will
delete, and must re-write a condemned manifest it needs (which makes it young again).
"""

import json

from ..backends import Backend
from .pack import pack_id_from_key

CONDEMNED_KEY = "gc/condemned.json"


def condemned_records(backend: Backend) -> dict[str, list]:
    """key -> [when it was condemned, its modification time then (None for a cold pack)]."""
    if not backend.exists(CONDEMNED_KEY):
        return {}
    records = json.loads(backend.read(CONDEMNED_KEY))
    return {key: record if isinstance(record, list) else [record, None]  # a bare time: written before
            for key, record in records.items()}                          # the times were recorded


def condemned_times(backend: Backend) -> dict[str, float]:
    """Condemned object keys and when they were condemned."""
    return {key: record[0] for key, record in condemned_records(backend).items()}


def condemned_packs(backend: Backend) -> set[bytes]:
    return {p for p in map(pack_id_from_key, condemned_records(backend)) if p}


def write_condemned(backend: Backend, records: dict[str, list]) -> None:
    backend.write(CONDEMNED_KEY, json.dumps(records, sort_keys=True, indent=0).encode())
