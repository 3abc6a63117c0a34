"""Index files and the in-memory chunk index built from them.

Layout (docs/format.md): ``"ARTIDX01" P:u32`` then per pack ``pack-digest:32
N:u32`` and N records ``chunk-digest:32 offset:u64 length:u32``. An index file
is named by the BLAKE3 of its bytes.
"""

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ..backends import Backend, written_since
from ..errors import CorruptObject, NotFound
from ..ids import DIGEST_SIZE, digest
from .pack import PackEntry

MAGIC = b"ARTIDX01"
HEADER = struct.Struct("<8sI")
PACK_HEADER = struct.Struct("<32sI")
RECORD = struct.Struct("<32sQI")


class Location(NamedTuple):
    pack: bytes
    offset: int
    length: int


def index_key(index_id: bytes) -> str:
    return f"index/{index_id.hex()}.idx"


def encode_index(packs: Iterable[tuple[bytes, list[PackEntry]]]) -> bytes:
    packs = list(packs)
    parts = [HEADER.pack(MAGIC, len(packs))]
    for pack_id, entries in packs:
        parts.append(PACK_HEADER.pack(pack_id, len(entries)))
        parts.extend(RECORD.pack(e.chunk, e.offset, e.length) for e in entries)
    return b"".join(parts)


def decode_index(data: bytes, where: str) -> list[tuple[bytes, list[PackEntry]]]:
    try:
        magic, pack_count = HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise CorruptObject(f"{where}: bad index magic")
        pos, packs = HEADER.size, []
        for _ in range(pack_count):
            pack_id, count = PACK_HEADER.unpack_from(data, pos)
            pos += PACK_HEADER.size
            end = pos + count * RECORD.size
            if end > len(data):
                raise CorruptObject(f"{where}: truncated index")
            entries = [PackEntry(c, o, n) for c, o, n in RECORD.iter_unpack(data[pos:end])]
            packs.append((pack_id, entries))
            pos = end
    except struct.error:
        raise CorruptObject(f"{where}: truncated index") from None
    if pos != len(data):
        raise CorruptObject(f"{where}: trailing bytes after the last pack")
    return packs


def index_id_from_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    try:
        index_id = bytes.fromhex(name.removesuffix(".idx"))
    except ValueError:
        return None
    return index_id if len(index_id) == DIGEST_SIZE and key == index_key(index_id) else None


class ChunkIndex:
    """Where every stored chunk lies: the union of all index files.

    A chunk stored twice (two concurrent writers, or a pull into the hot tier) has one
    location in ``locations`` and the others in ``alternates``.
    """

    def __init__(self) -> None:
        self.locations: dict[bytes, Location] = {}
        self.alternates: dict[bytes, list[Location]] = {}
        self.pack_entries: dict[bytes, list[PackEntry]] = {}
        self.skipped: list[str] = []  # index files that failed their check when loaded
        self.generation = 0  # counts the packs added: a location may have changed when it does
        self._read: dict[int, set[str]] = {}  # id of a backend -> the keys of its index files read

    @property
    def packs(self) -> set[bytes]:
        return set(self.pack_entries)

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        if pack_id in self.pack_entries:
            return
        self.generation += 1
        self.pack_entries[pack_id] = entries = list(entries)
        for e in entries:
            location = Location(pack_id, e.offset, e.length)
            known = self.locations.setdefault(e.chunk, location)
            if known is not location:
                self.alternates.setdefault(e.chunk, []).append(location)

    def merge(self, other: "ChunkIndex") -> None:
        for pack_id, entries in other.pack_entries.items():
            self.add_pack(pack_id, entries)

    def all_locations(self, chunk: bytes) -> list[Location]:
        return [self.locations[chunk], *self.alternates.get(chunk, ())]

    def __contains__(self, chunk: bytes) -> bool:
        return chunk in self.locations

    def __getitem__(self, chunk: bytes) -> Location:
        return self.locations[chunk]

    @classmethod
    def load(cls, backend: Backend) -> "ChunkIndex":
        index = cls()
        index.read_files(backend)
        return index

    def read_files(self, backend: Backend) -> tuple[int, bool]:
        """Add the index files of ``backend`` not read yet; (how many were new, whether a file read
        before has gone). A file goes only when gc replaces the files it read with one merged file,
        and the packs it listed may be gone with it: the caller should then load a fresh index.

        A damaged file is skipped (``verify`` names it): its packs then count as unindexed, and the
        next put indexes them again from their trailers."""
        keys = list(backend.list("index"))
        seen = self._read.setdefault(id(backend), set())
        vanished = not seen.issubset(keys)
        new = [key for key in keys if key not in seen]
        for key in new:
            try:
                data = backend.read(key)
            except NotFound:  # replaced by gc since the listing
                vanished = True
                continue
            seen.add(key)
            if index_id_from_key(key) != digest(data):
                self.skipped.append(key)
                continue
            try:
                listed = decode_index(data, key)
            except CorruptObject:
                self.skipped.append(key)
                continue
            for pack_id, entries in listed:
                self.add_pack(pack_id, entries)
        return len(new), vanished

    def mark_read(self, backend: Backend, key: str) -> None:
        """Record that the index already holds what ``key`` of ``backend`` lists (a file this
        process wrote), so that ``read_files`` does not read it back."""
        self._read.setdefault(id(backend), set()).add(key)


def write_index(backend: Backend, packs: list[tuple[bytes, list[PackEntry]]]) -> str:
    """Publish an index file listing ``packs``; returns its key."""
    data = encode_index(packs)
    key = index_key(digest(data))
    backend.write(key, data)  # even if it exists: a fresh write tells gc it is in use
    return key


@dataclass
class IndexFiles:
    """The index files of one place (the store, or a shared store's cache) as read at one moment."""

    tier: Backend
    index: ChunkIndex
    modified: dict[str, float]  # key -> modification time when read

    @classmethod
    def read(cls, tier: Backend) -> "IndexFiles":
        modified = {key: tier.modified(key) for key in tier.list("index")}
        index = cls(tier, ChunkIndex(), modified)
        index.index.read_files(tier)
        return index

    def replace(self, drop: frozenset[bytes] = frozenset()) -> tuple[str | None, list[str]]:
        """Write one index file listing every pack the files read list, except ``drop``, then delete
        the files read, except any written again since. Returns the new file's key (None: no pack
        left) and the keys deleted. Callers hold the maintenance lock: a gc deleting packs
        meanwhile could leave the new file listing packs that are gone."""
        kept = [(p, e) for p, e in self.index.pack_entries.items() if p not in drop]
        new_key = write_index(self.tier, kept) if kept else None
        deleted = [key for key in sorted(set(self.modified) - {new_key}) if not written_since(self.tier, key, self.modified)]
        for key in deleted:
            self.tier.delete(key)
        return new_key, deleted
