"""Index files and the in-memory chunk index built from them.

Layout (docs/format.md): ``"ARTIDX01" P:u32`` then per pack ``pack-digest:32
N:u32`` and N records ``chunk-digest:32 offset:u64 length:u32``. An index file
is named by the BLAKE3 of its bytes.
"""

import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..backends import Backend, written_since
from ..errors import CorruptObject, NotFound
from ..ids import DIGEST_SIZE, digest
from .pack import PackEntry

MAGIC = b"ARTIDX01"
HEADER = struct.Struct("<8sI")
PACK_HEADER = struct.Struct("<32sI")
RECORD = struct.Struct("<32sQI")
# RECORD as the fields of a numpy record, to keep an index file's records in arrays (not a dtype:
# this module is imported by commands that never load numpy)
_RECORD_ARRAY = [("chunk", "V32"), ("offset", "<u8"), ("length", "<u4")]


if TYPE_CHECKING:
    import numpy as np


class Location(NamedTuple):
    pack: bytes
    offset: int
    length: int


@dataclass
class LocationArrays:
    """One location of each of some chunks, as arrays (int64): its pack (a number in ``packs``; -1
    for a chunk given none), the offset in the pack, and the length (-1 for a chunk given none)."""

    packs: list[bytes]
    pack: "np.ndarray"
    offset: "np.ndarray"
    length: "np.ndarray"

    @classmethod
    def none(cls, count: int) -> "LocationArrays":
        """``count`` chunks, none given a location yet."""
        import numpy as np

        return cls([], np.full(count, -1, np.int64), np.zeros(count, np.int64), np.full(count, -1, np.int64))

    @classmethod
    def of(cls, count: int, given: dict[int, Location]) -> "LocationArrays":
        """``count`` chunks, the location of some ``given`` by number."""
        found = cls.none(count)
        numbers: dict[bytes, int] = {}
        at = list(given)
        found.pack[at] = [numbers.setdefault(location.pack, len(numbers)) for location in given.values()]
        found.offset[at] = [location.offset for location in given.values()]
        found.length[at] = [location.length for location in given.values()]
        found.packs = list(numbers)
        return found

    def location(self, k: int) -> Location:
        return Location(self.packs[self.pack[k]], int(self.offset[k]), int(self.length[k]))

    def put(self, k: int, location: Location) -> None:
        if location.pack not in self.packs:
            self.packs.append(location.pack)
        self.pack[k], self.offset[k], self.length[k] = self.packs.index(location.pack), location.offset, location.length


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
    return [(pack_id, [PackEntry(c, o, n) for c, o, n in RECORD.iter_unpack(data[start:start + count * RECORD.size])])
            for pack_id, start, count in index_sections(data, where)]


def index_id_from_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    try:
        index_id = bytes.fromhex(name.removesuffix(".idx"))
    except ValueError:
        return None
    return index_id if len(index_id) == DIGEST_SIZE and key == index_key(index_id) else None


class ChunkIndex:
    """Where every stored chunk lies: the union of all index files.

    A chunk stored twice (two concurrent writers, or a pull into the hot tier) has one location,
    the first listed, and others (``all_locations``).

    The records of the files read are kept as they were read, sorted by chunk id, until something
    needs every pack's entries at once (a put, gc, tier, stats): a reader that locates a few
    thousand chunks (a load) then pays a binary search per chunk instead of building a dict of
    every chunk in the store, which grows with the history. Lookups see exactly what the dict
    would: the first location listed wins, and a pack listed twice counts once.
    """

    def __init__(self) -> None:
        self._locations: dict[bytes, Location] = {}
        self._alternates: dict[bytes, list[Location]] = {}
        self._pack_entries: dict[bytes, list[PackEntry]] = {}
        self._unsorted: _Records | None = None  # records read but not put into the dicts yet
        self._sorting = threading.RLock()
        # one reader of index files at a time: a file another thread has listed as read but not
        # added yet would otherwise be skipped, and its chunks called missing
        self._reading = threading.Lock()
        self.skipped: list[str] = []  # index files that failed their check when loaded
        self.generation = 0  # counts the packs added: a location may have changed when it does
        self._read: dict[int, set[str]] = {}  # id of a backend -> the keys of its index files read

    @property
    def pack_entries(self) -> dict[bytes, list[PackEntry]]:
        self._sort_in()
        return self._pack_entries

    @property
    def locations(self) -> dict[bytes, Location]:
        """Every chunk's first location."""
        self._sort_in()
        return self._locations

    @property
    def packs(self) -> set[bytes]:
        unsorted = self._unsorted.packs if self._unsorted is not None else []
        return set(self._pack_entries).union(unsorted)

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        with self._sorting:  # a read_files meanwhile would list the pack a second time
            self._sort_in()
            if pack_id in self._pack_entries:
                return
            self.generation += 1
            self._add(pack_id, list(entries))

    def _add(self, pack_id: bytes, entries: list[PackEntry]) -> None:
        self._pack_entries[pack_id] = entries
        for e in entries:
            location = Location(pack_id, e.offset, e.length)
            known = self._locations.setdefault(e.chunk, location)
            if known is not location:
                self._alternates.setdefault(e.chunk, []).append(location)

    def _sort_in(self) -> None:
        """Put the records read into the dicts (in the order read, as if each pack had been added).
        They are searched until the dicts hold them all: another thread (a follower beside the
        server's loads) looking a chunk up meanwhile still finds it."""
        with self._sorting:
            unsorted = self._unsorted
            if unsorted is not None:
                for pack_id, entries in unsorted.pack_entries():
                    self._add(pack_id, entries)
                self._unsorted = None

    def all_locations(self, chunk: bytes) -> list[Location]:
        """Every location of ``chunk``, the first listed first; empty when none is known."""
        unsorted = self._searched()
        return self._in_dicts(chunk, unsorted.locations(chunk) if unsorted is not None else [])

    def all_locations_of(self, chunks: list[bytes]) -> tuple[LocationArrays, dict[int, list[Location]]]:
        """``all_locations`` of each chunk, the records not sorted in searched for all of them at
        once (a load locates every chunk of a file: thousands). A chunk with one location has it
        in the arrays: a ``Location`` made for each would cost a fresh load more than the search.
        Every other chunk (several copies, one in the dicts while records are not sorted in yet,
        or one not known) has none there, and all its locations (perhaps none) by its number."""
        unsorted, sorted_in = self._unsorted, self._locations
        if unsorted is None:  # every record in the dicts (a long-lived store)
            alone = {k: first for k, chunk in enumerate(chunks)
                     if (first := sorted_in.get(chunk)) is not None and chunk not in self._alternates}
            found = LocationArrays.of(len(chunks), alone)
        else:
            rows = unsorted.rows_of(chunks)
            if sorted_in:  # the dicts list a chunk's locations first
                rows[[k for k, chunk in enumerate(chunks) if chunk in sorted_in]] = -1
            found = unsorted.location_arrays(rows)
        rest = (found.pack < 0).nonzero()[0].tolist()
        return found, {k: self._in_dicts(chunks[k], unsorted.locations(chunks[k]) if unsorted is not None else [])
                       for k in rest}

    def _in_dicts(self, chunk: bytes, records: list[Location]) -> list[Location]:
        """The chunk's locations in the dicts, then those of ``records`` (from the records not
        sorted in) they lack: while another thread sorts the records in, the dicts may hold some."""
        first = self._locations.get(chunk)
        known = [first, *self._alternates.get(chunk, ())] if first is not None else []
        return known + [location for location in records if location not in known]

    def get(self, chunk: bytes) -> Location | None:
        unsorted = self._searched()
        first = self._locations.get(chunk)
        return first if first is not None or unsorted is None else next(iter(unsorted.locations(chunk)), None)

    def _searched(self) -> "_Records | None":
        """The records not sorted in, to be searched once more. Once the searches have cost about
        what sorting them in costs (a quarter as many as there are records: a search costs a few
        times what decoding a record does), they are sorted in: a process that looks many chunks up
        (a server loading version after version) ends with the dicts."""
        unsorted = self._unsorted
        if unsorted is not None:
            unsorted.searches += 1
            if unsorted.searches > len(unsorted) // 4:
                self._sort_in()
                return self._unsorted  # None, unless another thread has read files since
        return unsorted

    def __contains__(self, chunk: bytes) -> bool:
        return self.get(chunk) is not None

    def __getitem__(self, chunk: bytes) -> Location:
        location = self.get(chunk)
        if location is None:
            raise KeyError(chunk)
        return location

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
        with self._reading:
            return self._read_files(backend)

    def _read_files(self, backend: Backend) -> tuple[int, bool]:
        keys = list(backend.list("index"))
        seen = self._read.setdefault(id(backend), set())
        vanished = not seen.issubset(keys)
        new = [key for key in keys if key not in seen]
        read: list[tuple[bytes, list[tuple[bytes, int, int]]]] = []
        for key in new:
            try:
                data = backend.read(key)
            except NotFound:  # replaced by gc since the listing
                vanished = True
                continue
            seen.add(key)
            try:
                if index_id_from_key(key) != digest(data):
                    raise CorruptObject(f"{key}: its bytes do not match its name")
                read.append((data, index_sections(data, key)))
            except CorruptObject:
                self.skipped.append(key)
        with self._sorting:  # not while another thread sorts the records in: they would be lost
            known = self.packs
            sections = []
            for data, listed in read:
                for pack_id, start, count in listed:
                    if pack_id not in known:
                        known.add(pack_id)
                        sections.append((data, pack_id, start, count))
            if sections:
                self.generation += len(sections)
                self._unsorted = _Records.of(sections, self._unsorted)
        return len(new), vanished

    def mark_read(self, backend: Backend, key: str) -> None:
        """Record that the index already holds what ``key`` of ``backend`` lists (a file this
        process wrote), so that ``read_files`` does not read it back."""
        self._read.setdefault(id(backend), set()).add(key)


class _Records:
    """Index records as read, in arrays, searchable by chunk id: the first 8 bytes of a chunk id
    (a BLAKE3 digest, so as good as random) sorted, with a stable sort, so that the records of one
    chunk stay in the order read."""

    def __init__(self, packs: list[bytes], pack_of, records, key_order, keys):
        self.packs, self._pack_of, self._records, self._key_order, self._keys = packs, pack_of, records, key_order, keys
        self.searches = 0

    def __len__(self) -> int:
        return len(self._records)

    @classmethod
    def of(cls, sections: list[tuple[bytes, bytes, int, int]], before: "_Records | None") -> "_Records":
        """The records of ``sections`` (data, pack id, offset of its first record, record count),
        after those of ``before``."""
        import numpy as np

        record_array = np.dtype(_RECORD_ARRAY)
        read = np.frombuffer(b"".join(data[start:start + count * RECORD.size] for data, _, start, count in sections),
                             dtype=record_array)
        owners = np.repeat(np.arange(len(sections), dtype=np.int32), [count for *_, count in sections])
        packs = [pack_id for _, pack_id, _, _ in sections]
        if before is None:
            records, pack_of = read, owners
        else:
            records = np.concatenate([before._records, read])
            pack_of = np.concatenate([before._pack_of, owners + len(before.packs)])
            packs = before.packs + packs
        keys = np.ascontiguousarray(records.view(np.uint8).reshape(-1, RECORD.size)[:, :8]).view("<u8").ravel()
        key_order = np.argsort(keys, kind="stable")
        return cls(packs, pack_of, records, key_order, keys[key_order])

    def locations(self, chunk: bytes) -> list[Location]:
        key = int.from_bytes(chunk[:8], "little")
        at, found = int(self._keys.searchsorted(key)), []
        while at < len(self._keys) and self._keys[at] == key:
            record = self._records[self._key_order[at]]
            if record["chunk"].tobytes() == chunk:
                found.append(Location(self.packs[self._pack_of[self._key_order[at]]], int(record["offset"]),
                                      int(record["length"])))
            at += 1
        return found

    def rows_of(self, chunks: list[bytes]) -> "np.ndarray":
        """The row of each chunk's record where it is the one record with its first 8 bytes (a
        chunk stored once: the usual case), else -1; searched for all of them at once."""
        import numpy as np

        if not len(self._keys):
            return np.full(len(chunks), -1, np.int64)
        wanted = np.frombuffer(b"".join(chunks), np.uint8).reshape(-1, DIGEST_SIZE)
        keys = np.ascontiguousarray(wanted[:, :8]).view("<u8").ravel()
        first = self._keys.searchsorted(keys, "left")
        single = self._keys.searchsorted(keys, "right") - first == 1
        rows = self._key_order[np.minimum(first, len(self._keys) - 1)]
        matches = single & (self._records["chunk"][rows] == wanted.view(f"V{DIGEST_SIZE}").ravel())
        return np.where(matches, rows, -1)

    def location_arrays(self, rows: "np.ndarray") -> LocationArrays:
        """The location of the record at each of ``rows`` (none for -1), its packs numbered anew:
        a load opens each of ``packs``."""
        import numpy as np

        found = LocationArrays.none(len(rows))
        listed = rows >= 0
        numbers, found.pack[listed] = np.unique(self._pack_of[rows[listed]], return_inverse=True)
        records = self._records[rows[listed]]
        found.offset[listed], found.length[listed] = records["offset"], records["length"]
        found.packs = [self.packs[number] for number in numbers.tolist()]
        return found

    def pack_entries(self) -> Iterable[tuple[bytes, list[PackEntry]]]:
        """Each pack's entries, in the order read."""
        import numpy as np

        ends = np.cumsum(np.bincount(self._pack_of, minlength=len(self.packs))).tolist()
        rows = self._records.tolist()
        for pack_id, start, end in zip(self.packs, [0, *ends], ends):  # a pack's records are contiguous
            yield pack_id, [PackEntry(c, o, n) for c, o, n in rows[start:end]]


def index_sections(data: bytes, where: str) -> list[tuple[bytes, int, int]]:
    """Check an index file's layout and find its packs: (pack id, offset of its first record, record
    count) each, without decoding the records."""
    try:
        magic, pack_count = HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise CorruptObject(f"{where}: bad index magic")
        pos, sections = HEADER.size, []
        for _ in range(pack_count):
            pack_id, count = PACK_HEADER.unpack_from(data, pos)
            pos += PACK_HEADER.size
            sections.append((pack_id, pos, count))
            pos += count * RECORD.size
            if pos > len(data):
                raise CorruptObject(f"{where}: truncated index")
    except struct.error:
        raise CorruptObject(f"{where}: truncated index") from None
    if pos != len(data):
        raise CorruptObject(f"{where}: trailing bytes after the last pack")
    return sections


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
