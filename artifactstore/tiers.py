"""Two tiers: the hot set on local disk, everything else in object storage.

The hot set of a model is its newest ``keep_hot`` versions plus every version a pointer or pin
names; objects stored without the registry (plain ``put``) are always hot. A pack is hot when it
holds a chunk of the hot set. ``tier`` moves packs so that the hot tier holds exactly the hot
packs: a pack leaves the hot tier only after its cold copy was uploaded and read back intact, so
no step ever deletes the only copy, and a killed ``tier`` is finished by running it again.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import blake3

from .errors import CorruptObject, InvalidParameter, NotFound
from .guard import guard_key
from .ids import format_id
from .index import index_id_from_key
from .manifest import FileManifest, TreeManifest
from .pack import decode_trailer, pack_key

Progress = Callable[[int], None]
MERGE_GAP = 1 << 20  # read over a gap this small rather than issue another request
MAX_RANGE = 16 << 20


@dataclass
class TierReport:
    dry_run: bool
    hot_versions: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    bytes_evicted: int = 0
    bytes_to_cold: int = 0
    fetched_chunks: int = 0
    bytes_from_cold: int = 0
    rehomed_bytes: int = 0


@dataclass(frozen=True)
class PullReport:
    id: str
    logical_bytes: int
    transferred_bytes: int
    chunks_fetched: int
    chunks_total: int


def check_pack(data: bytes, pack_id: bytes, where: str) -> None:
    """Raise CorruptObject unless ``data`` is exactly the pack named ``pack_id``."""
    trailer_id, entries = decode_trailer(data, len(data), where)
    if trailer_id != pack_id:
        raise CorruptObject(f"{where}: trailer does not hash to the pack's name")
    view = memoryview(data)
    for e in entries:
        if blake3.blake3(view[e.offset:e.offset + e.length]).digest() != e.chunk:
            raise CorruptObject(f"{where}: chunk {format_id(e.chunk)} is damaged")


class TierOperations:
    """Tiering and pulls, mixed into ``Store`` (which provides the hot and cold backends)."""

    def hot_versions(self) -> list[str]:
        """``client/model@version`` of every version in the hot set."""
        hot = []
        for model in self.models():
            state = self.state(model)
            keep = set(state.sorted_versions()[-self.keep_hot:] if self.keep_hot else [])
            keep.update(state.pointers.values())
            keep.update(state.pins)
            if state.canary:
                keep.add(state.canary["version"])
            hot.extend(f"{model}@{v}" for v in state.sorted_versions() if v in keep)
        return hot

    def _hot_chunks(self, hot_versions: list[str]) -> set[bytes]:
        """Chunks of the hot versions' bundles and of everything stored outside the registry."""
        version_bundles = {self._record(self.state(m), v)["bundle"] for m in self.models()
                           for v in self.state(m).versions}
        trees, files = {}, {}
        for object_id, manifest in self.manifests():
            (trees if isinstance(manifest, TreeManifest) else files)[format_id(object_id)] = manifest
        hot_trees = {self.resolve(ref) for ref in hot_versions} | (set(trees) - version_bundles)
        listed = {format_id(e.file) for t in trees.values() for e in t.entries}
        hot_files = {format_id(e.file) for t in hot_trees for e in trees[t].entries} | (set(files) - listed)
        return {chunk for f in hot_files for chunk, _ in files[f].chunks}

    def tier(self, *, dry_run: bool = False, progress: Progress = lambda _: None) -> TierReport:
        """Make the hot tier hold exactly the hot set; move everything else to the cold tier.

        A local pack with no hot chunk is evicted; one whose hot chunks are under half its bytes
        has them copied into a new hot pack first, then is evicted; hot chunks with no local copy
        are fetched from the cold tier into new hot packs. Copies are written and indexed before
        any eviction, and every eviction uploads, reads back and compares first.
        """
        if self.cold is None:
            raise InvalidParameter(f"{self.path} has no cold tier: create the store with `init --cold URL`")
        report = TierReport(dry_run, hot_versions=self.hot_versions())
        hot_chunks = self._hot_chunks(report.hot_versions)
        local = self.hot_packs
        rehome, evict = [], []
        for pack_id in sorted(local & set(self.index.pack_entries)):
            entries = self.index.pack_entries[pack_id]
            hot_bytes = sum(e.length for e in entries if e.chunk in hot_chunks)
            if hot_bytes * 2 < sum(e.length for e in entries):
                evict.append(pack_id)
                rehome.extend((e.chunk, e.length) for e in entries if e.chunk in hot_chunks)
        staying = local - set(evict)
        fetch = [(c, self.index[c].length) for c in sorted(hot_chunks)
                 if not any(loc.pack in staying for loc in self.index.all_locations(c))]
        rehomed = {c for c, _ in rehome}
        fetch = [(c, n) for c, n in fetch if c not in rehomed]
        report.rehomed_bytes = sum(n for _, n in rehome)
        report.bytes_from_cold = sum(n for _, n in fetch)
        report.fetched_chunks = len(fetch)
        for pack_id in evict:
            key = pack_key(pack_id)
            size = self.hot.size(key)
            report.evicted.append(format_id(pack_id))
            report.bytes_evicted += size
            if not self.cold.exists(key) or self.cold.size(key) != size:
                report.uploaded.append(format_id(pack_id))
                report.bytes_to_cold += size
        if dry_run:
            return report
        self._copy_into_hot([(c, n, self.hot) for c, n in rehome] + [(c, n, self.cold) for c, n in fetch],
                            progress)
        for pack_id in evict:
            key = pack_key(pack_id)
            size = self.hot.size(key)
            self._evict(key, pack_id, upload=format_id(pack_id) in report.uploaded)
            progress(size)
        if not self.shared:  # a shared store's index already lives in the bucket
            for key in self.backend.list("index"):
                if index_id_from_key(key) and not self.cold.exists(key):
                    self.cold.write(key, self.backend.read(key))
        self.forget_hot_packs()
        return report

    def _copy_into_hot(self, chunks: list[tuple[bytes, int, object]], progress: Progress) -> int:
        """Write chunks (read from the given tier, each checked) into new hot packs; bytes copied."""
        if not chunks:
            return 0
        session = self.new_put_session(restore=True)
        copied = 0
        try:
            for source in {id(tier): tier for _, _, tier in chunks}.values():
                wanted = sorted(((self._location_in(source, c), c) for c, _, tier in chunks if tier is source),
                                key=lambda item: (item[0].pack, item[0].offset))
                for chunk, data in _read_chunks(source, wanted):
                    if blake3.blake3(data).digest() != chunk:
                        raise CorruptObject(f"the copy of chunk {format_id(chunk)} being moved is damaged")
                    session.add(chunk, data)
                    copied += len(data)
                    progress(len(data))
            session.commit()
        except BaseException:
            session.abort()
            self._index = None  # it may name packs the session sealed but never published
            raise
        self.forget_hot_packs()
        return copied

    def _location_in(self, tier, chunk: bytes):
        """A location of ``chunk`` in a pack that ``tier`` holds."""
        locations = self.index.all_locations(chunk)
        if tier is self.hot:
            return next(loc for loc in locations if loc.pack in self.hot_packs)
        return next((loc for loc in locations if loc.pack not in self.hot_packs), locations[0])

    def _evict(self, key: str, pack_id: bytes, upload: bool) -> None:
        data = self.hot.read(key)
        check_pack(data, pack_id, f"hot {key}")
        if upload:
            self.cold.write(key, data)
        if blake3.blake3(self.cold.read(key)).digest() != blake3.blake3(data).digest():
            raise CorruptObject(f"cold {key}: the uploaded copy does not read back intact; kept the hot copy")
        self.hot.delete(guard_key(pack_id))
        self.hot.delete(key)

    def pull(self, ref: str, *, progress: Progress = lambda _: None) -> PullReport:
        """Bring a version (or any object) into the hot tier, fetching only chunks not already hot."""
        object_id = self.resolve(ref)
        manifest = self.read_manifest(object_id)
        files = [manifest] if isinstance(manifest, FileManifest) else \
            [self.read_manifest(format_id(e.file)) for e in manifest.entries]
        wanted = {}
        for f in files:
            wanted.update(f.chunks)
        missing = [(c, n) for c, n in wanted.items() if self.hot_location(c) is None]
        if missing and self.cold is None:
            raise NotFound(f"{len(missing)} chunks of {ref} are in no tier")
        transferred = self._copy_into_hot([(c, n, self.cold) for c, n in missing], progress)
        return PullReport(object_id, sum(wanted.values()), transferred, len(missing), len(wanted))


def _read_chunks(tier, wanted: list) -> Iterator[tuple[bytes, memoryview]]:
    """(chunk, bytes) for ``wanted`` = [(location, chunk)] sorted by pack and offset: chunks that lie
    close together in one pack are fetched by one ranged read, all ranges concurrently."""
    runs: list[tuple[bytes, int, int, list]] = []  # pack, start, end, [(location, chunk)]
    for location, chunk in wanted:
        end = location.offset + location.length
        if runs and runs[-1][0] == location.pack and location.offset - runs[-1][2] <= MERGE_GAP \
                and end - runs[-1][1] <= MAX_RANGE:
            pack, start, _, members = runs[-1]
            runs[-1] = (pack, start, end, members)
            members.append((location, chunk))
        else:
            runs.append((location.pack, location.offset, end, [(location, chunk)]))
    blobs = tier.read_ranges([(pack_key(pack), start, end - start) for pack, start, end, _ in runs])
    for (pack, start, end, members), blob in zip(runs, blobs):
        if len(blob) != end - start:
            raise CorruptObject(f"{pack_key(pack)} is shorter than its index says")
        view = memoryview(blob)
        for location, chunk in members:
            yield chunk, view[location.offset - start:location.offset - start + location.length]
