"""Two tiers: the hot set on local disk, everything else in object storage.

The hot set of a model is its newest ``keep_hot`` versions plus every version a pointer or pin
names; objects stored without the registry (plain ``put``) are always hot. A pack is hot when it
holds a chunk of the hot set. ``tier`` moves packs so that the hot tier holds exactly the hot
packs: a pack leaves the hot tier only after its cold copy was uploaded and read back intact, so
no step ever deletes the only copy, and a killed ``tier`` is finished by running it again.
"""

from dataclasses import dataclass, field

import blake3

from ..content.fetch import copy_into_hot, make_hot
from ..content.guard import guard_key
from ..content.index import index_id_from_key
from ..content.manifest import FileManifest
from ..content.pack import decode_trailer, pack_key
from ..content.store import ContentStore
from ..errors import CorruptObject, InvalidParameter
from ..ids import format_id
from ..monitoring.arrays import MonitoringArrays
from ..progress import Progress, no_progress
from .roots import ContentGraph, Roots, hot_chunks, hot_monitoring, live_monitoring


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
    monitoring_to_cold: list[str] = field(default_factory=list)  # versions whose monitoring data moved
    monitoring_to_hot: list[str] = field(default_factory=list)
    monitoring_bytes: int = 0


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


def tier(content: ContentStore, roots: Roots, *, dry_run: bool = False, progress: Progress = no_progress) -> TierReport:
    """Make the hot tier hold exactly the hot set of ``roots``; move everything else to the cold tier.

    A local pack with no hot chunk is evicted; one whose hot chunks are under half its bytes
    has them copied into a new hot pack first, then is evicted; hot chunks with no local copy
    are fetched from the cold tier into new hot packs. Copies are written and indexed before
    any eviction, and every eviction uploads, reads back and compares first.
    """
    cold = content.cold
    if cold is None:
        raise InvalidParameter(f"{content.path} has no cold tier: add one with `artifactstore config set cold URL`")
    report = TierReport(dry_run, hot_versions=roots.hot_versions)
    hot = hot_chunks(roots, ContentGraph.read(content))
    index = content.index
    local = content.hot_packs
    rehome: list[tuple[bytes, int]] = []
    evict: list[bytes] = []
    for pack_id in sorted(local & set(index.pack_entries)):
        entries = index.pack_entries[pack_id]
        hot_bytes = sum(e.length for e in entries if e.chunk in hot)
        if hot_bytes * 2 < sum(e.length for e in entries):
            evict.append(pack_id)
            rehome.extend((e.chunk, e.length) for e in entries if e.chunk in hot)
    staying = local - set(evict)
    fetch = [(c, index[c].length) for c in sorted(hot)
             if not any(loc.pack in staying for loc in index.all_locations(c))]
    rehomed = {c for c, _ in rehome}
    fetch = [(c, n) for c, n in fetch if c not in rehomed]
    report.rehomed_bytes = sum(n for _, n in rehome)
    report.bytes_from_cold = sum(n for _, n in fetch)
    report.fetched_chunks = len(fetch)
    for pack_id in evict:
        key = pack_key(pack_id)
        size = content.hot.size(key)
        report.evicted.append(format_id(pack_id))
        report.bytes_evicted += size
        if not cold.exists(key) or cold.size(key) != size:
            report.uploaded.append(format_id(pack_id))
            report.bytes_to_cold += size
    _tier_monitoring(content, roots, report)
    if dry_run:
        return report
    copy_into_hot(content, [(c, n, content.hot) for c, n in rehome] + [(c, n, cold) for c, n in fetch], progress)
    for pack_id in evict:
        key = pack_key(pack_id)
        size = content.hot.size(key)
        _evict(content, key, pack_id, upload=format_id(pack_id) in report.uploaded)
        progress(size)
    if not content.shared:  # a shared store's index already lives in the bucket
        for key in content.home.list("index"):
            if index_id_from_key(key) and not cold.exists(key):
                cold.write(key, content.home.read(key))
    content.rescan_hot_tier()
    return report


def _tier_monitoring(content: ContentStore, roots: Roots, report: TierReport) -> None:
    """Move the monitoring data of live versions with them: into the cold tier when the version
    leaves the hot set, back when it returns. Data of the hot set stays in the store (it is being
    appended to); a record for a cold version appends in the cold tier. Deleted versions' data is gc's."""
    arrays = MonitoringArrays(content)
    cold = arrays.cold
    if cold is None:
        return
    with arrays.writing():
        for stored in arrays.stored_versions(arrays.store):
            if not live_monitoring(roots, stored):
                continue
            if hot_monitoring(roots, stored):
                if cold.has_root(stored.path) and not report.dry_run:
                    arrays.delete(cold, stored.path)  # a stale copy: a move back stopped before deleting it
                continue
            report.monitoring_to_cold.append(stored.key)
            if not report.dry_run:
                report.monitoring_bytes += arrays.move(stored.path, arrays.store, cold)
        for stored in arrays.stored_versions(cold):
            if live_monitoring(roots, stored) and hot_monitoring(roots, stored) and \
                    not arrays.store.has_root(stored.path):
                report.monitoring_to_hot.append(stored.key)
                if not report.dry_run:
                    report.monitoring_bytes += arrays.move(stored.path, cold, arrays.store)


def pull(content: ContentStore, object_id: str, *, progress: Progress = no_progress) -> PullReport:
    """Bring a stored object (a version's bundle, say) into the hot tier, fetching only chunks not
    already hot."""
    manifest = content.read_manifest(object_id)
    files = [manifest] if isinstance(manifest, FileManifest) else \
        [content.read_manifest(format_id(e.file)) for e in manifest.entries]
    wanted: dict[bytes, int] = {}
    for f in files:
        if isinstance(f, FileManifest):
            wanted.update(f.chunks)
    fetched, transferred = make_hot(content, wanted.items(), progress=progress)
    return PullReport(object_id, sum(wanted.values()), transferred, fetched, len(wanted))


def _evict(content: ContentStore, key: str, pack_id: bytes, upload: bool) -> None:
    cold = content.cold
    assert cold is not None
    data = content.hot.read(key)
    check_pack(data, pack_id, f"hot {key}")
    if upload:
        cold.write(key, data)
    if blake3.blake3(cold.read(key)).digest() != blake3.blake3(data).digest():
        raise CorruptObject(f"cold {key}: the uploaded copy does not read back intact; kept the hot copy")
    content.hot.delete(guard_key(pack_id))
    content.hot.delete(key)
