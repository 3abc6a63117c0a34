"""File and tree manifests: canonical JSON naming the chunks of a file and the files of a tree."""

import json
from dataclasses import dataclass

from ..errors import CorruptObject, InvalidInput
from ..ids import DIGEST_SIZE, format_id, parse_id


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_key(object_id: bytes) -> str:
    hex_id = object_id.hex()
    return f"manifests/{hex_id[:2]}/{hex_id}.json"


def check_relative_path(path: str) -> None:
    """Refuse a tree path that is not a plain relative path (it could escape on get)."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or "\x00" in path
            or any(part in ("", ".", "..") for part in parts)):
        raise InvalidInput(f"unsafe path in tree: {path!r}")


@dataclass(frozen=True)
class FileManifest:
    size: int
    chunks: list[tuple[bytes, int]]

    def encode(self) -> bytes:
        return canonical_json(
            {"kind": "file", "size": self.size, "chunks": [[c.hex(), n] for c, n in self.chunks]})


@dataclass(frozen=True)
class TreeEntry:
    path: str
    size: int
    file: bytes


@dataclass(frozen=True)
class TreeManifest:
    entries: list[TreeEntry]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def encode(self) -> bytes:
        return canonical_json({"kind": "tree", "entries": [
            {"path": e.path, "size": e.size, "file": format_id(e.file)} for e in self.entries]})


def decode_manifest(data: bytes, where: str) -> FileManifest | TreeManifest:
    """Parse and validate a manifest; any departure from docs/format.md is CorruptObject."""
    try:
        obj = json.loads(data)
        if data != canonical_json(obj):
            raise ValueError("not canonical JSON")
        if obj["kind"] == "file":
            return _decode_file(obj)
        if obj["kind"] == "tree":
            return _decode_tree(obj)
        raise ValueError(f"unknown kind {obj['kind']!r}")
    except (ValueError, KeyError, TypeError, InvalidInput) as exc:
        raise CorruptObject(f"{where}: malformed manifest ({exc})") from None


def _decode_file(obj: dict) -> FileManifest:
    if set(obj) != {"kind", "size", "chunks"}:
        raise ValueError("unexpected fields")
    chunks = []
    for hex_digest, length in obj["chunks"]:
        chunk = bytes.fromhex(hex_digest)
        if len(chunk) != DIGEST_SIZE or type(length) is not int or length <= 0:
            raise ValueError("bad chunk entry")
        chunks.append((chunk, length))
    size = obj["size"]
    if type(size) is not int or size != sum(n for _, n in chunks):
        raise ValueError("size does not match the chunk lengths")
    return FileManifest(size, chunks)


def _decode_tree(obj: dict) -> TreeManifest:
    if set(obj) != {"kind", "entries"}:
        raise ValueError("unexpected fields")
    entries = []
    for item in obj["entries"]:
        if set(item) != {"path", "size", "file"} or type(item["size"]) is not int or item["size"] < 0:
            raise ValueError("bad tree entry")
        check_relative_path(item["path"])
        entries.append(TreeEntry(item["path"], item["size"], parse_id(item["file"])))
    paths = [e.path for e in entries]
    if paths != sorted(set(paths)):
        raise ValueError("paths not sorted or not unique")
    files = set(paths)
    for path in paths:
        parts = path.split("/")
        if any("/".join(parts[:i]) in files for i in range(1, len(parts))):
            raise ValueError(f"{path!r} lies under a file")
    return TreeManifest(entries)
