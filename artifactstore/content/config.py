"""``artifactstore.json``: the store's format version, chunker parameters and tiers (docs/format.md).

The file is read strictly: a key this code does not know, or a missing one, is refused naming the
file, because a store read with a damaged setting (a cold tier silently dropped, say) would do
the wrong thing without a word.
"""

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import ArtifactStoreError, StoreError
from .chunking import ChunkerParams

CONFIG_KEY = "artifactstore.json"
# 2: packs may hold padding entries; 3: model states may name a version map (docs/format.md).
# Older versions are read, and upgraded before the first write that they would misread.
FORMAT_VERSION = 3
DEFAULT_KEEP_HOT = 3
_TOP_KEYS = {"format", "version", "chunker"}
_TIER_KEYS = {"cold", "keep_hot"}
_CHUNKER_KEYS = {"min_size", "avg_size", "max_size", "normalization", "seed"}


_CHANGE_KEYS = {"at", "actor", "reason", "setting", "from", "to"}
SETTINGS = ("cold", "keep_hot")  # what `config set` changes


@dataclass(frozen=True)
class StoreConfig:
    version: int
    chunker: ChunkerParams
    cold: str | None = None  # an absolute directory or an fsspec URL
    keep_hot: int = DEFAULT_KEEP_HOT
    # every `config set`, oldest first: {"at", "actor", "reason", "setting", "from", "to"}; kept in
    # the file it changed, so that a change and its record are one atomic write
    changes: tuple[dict[str, Any], ...] = ()

    def encode(self) -> bytes:
        obj: dict[str, Any] = {"format": "artifactstore", "version": self.version, "chunker": asdict(self.chunker),
                               "tiers": {"cold": self.cold, "keep_hot": self.keep_hot}}
        if self.changes:
            obj["changes"] = list(self.changes)
        return json.dumps(obj, sort_keys=True, indent=1).encode()

    def upgraded(self) -> "StoreConfig":
        return replace(self, version=FORMAT_VERSION)

    @classmethod
    def decode(cls, data: bytes, where: str) -> "StoreConfig":
        try:
            obj = json.loads(data)
        except ValueError:
            raise StoreError(f"{where} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: expected a JSON object")
        if obj.get("format") != "artifactstore":
            raise StoreError(f"{where}: not an artifactstore configuration (format {obj.get('format')!r})")
        if obj.get("version") not in range(1, FORMAT_VERSION + 1):
            raise StoreError(f"{where}: unsupported store format: {obj.get('version')!r}")
        _check_keys(where, "", obj, required=_TOP_KEYS, allowed=_TOP_KEYS | {"tiers", "changes"})
        changes = obj.get("changes", [])
        if not isinstance(changes, list) or not all(isinstance(c, dict) and set(c) == _CHANGE_KEYS for c in changes):
            raise StoreError(f"{where}: changes must be a list of {{{', '.join(sorted(_CHANGE_KEYS))}}}")
        chunker = _section(where, obj, "chunker", _CHUNKER_KEYS)
        try:
            params = ChunkerParams(**chunker)
        except ArtifactStoreError as exc:
            raise StoreError(f"{where}: chunker: {exc}") from None
        if "tiers" not in obj:  # written before tiers existed: one tier
            return cls(obj["version"], params, changes=tuple(changes))
        tiers = _section(where, obj, "tiers", _TIER_KEYS)
        cold, keep_hot = tiers["cold"], tiers["keep_hot"]
        if cold is not None and (not isinstance(cold, str) or not cold):
            raise StoreError(f"{where}: tiers.cold must be null or a directory or URL, not {cold!r}")
        if type(keep_hot) is not int or keep_hot < 0:
            raise StoreError(f"{where}: tiers.keep_hot must be a whole number >= 0, not {keep_hot!r}")
        return cls(obj["version"], params, cold, keep_hot, tuple(changes))


def _section(where: str, obj: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
    section = obj[name]
    if not isinstance(section, dict):
        raise StoreError(f"{where}: {name} must be a JSON object")
    _check_keys(where, f"{name}.", section, required=keys, allowed=keys)
    return section


def _check_keys(where: str, prefix: str, obj: dict[str, Any], *, required: set[str], allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise StoreError(f"{where}: unknown setting {prefix}{unknown[0]!r} (damaged, or written by a newer "
                         "artifactstore)")
    missing = sorted(required - set(obj))
    if missing:
        raise StoreError(f"{where}: setting {prefix}{missing[0]!r} is missing")
