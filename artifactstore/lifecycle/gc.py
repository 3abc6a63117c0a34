"""Garbage collection in two phases.

A pack or manifest that nothing live uses is first *condemned* (listed in ``gc/condemned.json``
with the time), and deleted by a later run only if it is still unused and was condemned more than
the grace period ago. Writers never deduplicate against condemned packs, so a push that starts
after the condemnation writes its own copies; a push that started before it has committed within
the grace period (the grace period must exceed the longest push), and the next run sees that
version and spares what it uses. Each run marks from every version of every model, the pointers
and pins, and every object stored outside the registry; if the registry moved while it marked, it
marks again, keeping the union of what every pass found live (if the registry never holds
still, the union after the last pass is used: anything it misses is only condemned, and the next
run spares it). Objects younger than the grace period are never touched.
"""

import time
from dataclasses import dataclass, field
from datetime import timedelta

from ..backends import written_since
from ..clock import now, parse_duration, parse_time
from ..content.condemned import condemned_records, condemned_times, write_condemned
from ..content.guard import guard_key
from ..content.index import ChunkIndex, IndexFiles
from ..content.lease import LEASE_SECONDS, Lease, lease_holder
from ..content.manifest import manifest_key
from ..content.pack import pack_id_from_key, pack_key
from ..content.store import ContentStore
from ..errors import CorruptObject, InvalidParameter, StoreError
from ..ids import digest, format_id, parse_id
from ..monitoring.arrays import MonitoringArrays
from ..progress import Progress, no_progress
from ..registry.fleet import forget_silent_nodes
from ..registry.hooks import expire_delivered
from ..registry.metrics import MAX_WINDOW, batches_before
from ..registry.registry import Registry
from ..registry.rollout import rollout_of
from .roots import ContentGraph, live_model, live_monitoring, live_objects, read_roots

MARK_ATTEMPTS = 20
# A canary analysis reads records whose windows span up to a day (metrics.MAX_WINDOW), filed by the
# hour they end: a shorter retention could take a window's records while it is measured.
MIN_TELEMETRY_RETENTION = timedelta(days=2)


@dataclass
class Manifests:
    """What every manifest names: tree key -> its files' keys, file key -> its chunks."""

    trees: dict[str, set[str]] = field(default_factory=dict)
    files: dict[str, set[bytes]] = field(default_factory=dict)


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    live_chunks: int = 0
    condemned_packs: list[str] = field(default_factory=list)
    condemned_manifests: list[str] = field(default_factory=list)
    deleted_packs: list[str] = field(default_factory=list)
    deleted_manifests: list[str] = field(default_factory=list)
    spared: list[str] = field(default_factory=list)
    reclaimed_bytes: int = 0
    pending_bytes: int = 0
    repacked_bytes: int = 0
    mark_passes: int = 0
    deleted_monitoring: list[str] = field(default_factory=list)  # "<place> <client>/<model>[/<version>]"
    expired_metrics_batches: int = 0  # with a telemetry retention period: metrics batches older than it
    forgotten_nodes: list[str] = field(default_factory=list)  # "<client>/<model> <node>" silent for longer
    expired_hook_deliveries: int = 0  # with a telemetry retention period: delivery log records older than it


def collect_garbage(content: ContentStore, registry: Registry, *, dry_run: bool = False, grace: str = "1h",
                    progress: Progress = no_progress, keep_telemetry: str | None = None) -> GcReport:
    """Condemn what nothing uses; delete what was condemned more than ``grace`` ago and is still unused.
    With ``keep_telemetry``, also delete the serving telemetry older than that (``_expire_telemetry``)."""
    grace_seconds = parse_duration(grace)
    retention = None if keep_telemetry is None else parse_duration(keep_telemetry)
    if retention is not None and retention < MIN_TELEMETRY_RETENTION.total_seconds():
        raise InvalidParameter(f"--keep-telemetry {keep_telemetry} is too short: a canary analysis reads up to a "
                               f"day back; keep at least {MIN_TELEMETRY_RETENTION.days}d")
    report = GcReport(dry_run, grace_seconds)
    with content.maintenance_lock() as lease:
        if lease is None:
            holder = lease_holder(content.home)
            raise StoreError(f"another gc (or an index consolidation) is running on {content.location}" + (
                f": the store's maintenance lease is held by {holder}, and lapses {LEASE_SECONDS // 60} minutes "
                f"after its last renewal" if holder else ""))
        live_keys, live_chunks, manifests = _mark(content, registry, report)
        # Then the store's index files (every pack, condemned ones included), and a shared store's
        # cache's, which list this machine's copies of packs. After the mark: a push's index file
        # is durable before its version is, so every live chunk is listed unless something is
        # damaged (read before, a push landing in between made gc refuse to run).
        homes = [IndexFiles.read(tier) for tier in {id(t): t for t in (content.home, content.hot)}.values()]
        index = homes[0].index
        for home in homes:
            if home.index.skipped:
                raise StoreError(f"index file {home.index.skipped[0]} is damaged: gc would take its packs for "
                                 "garbage. Run `artifactstore verify`, then any put (which re-indexes those "
                                 "packs), then gc")
        unindexed = next((c for c in live_chunks if c not in index), None)
        if unindexed is not None:
            raise StoreError(f"live chunk {format_id(unindexed)} is in no index: run `artifactstore verify`; "
                             "gc deletes nothing until every live chunk is indexed")
        report.live_chunks = len(live_chunks)
        _sweep(content, report, homes, live_keys, live_chunks, manifests, progress, lease)
        _collect_monitoring(content, registry, report)
        if retention is not None:
            _expire_telemetry(registry, report, timedelta(seconds=retention))
    return report


def _expire_telemetry(registry: Registry, report: GcReport, retention: timedelta) -> None:
    """Delete metrics batches of hours that ended more than ``retention`` ago, except those of a
    model whose rollout is still running and may measure them, the heartbeats of nodes silent for
    longer, and the hook delivery log's records as old (a rollout's measurement records keep what
    it judged; a node that comes back writes its heartbeat again; the audit log keeps every event)."""
    expired_before, silent_since = now() - retention, time.time() - retention.total_seconds()
    for model in registry.models():
        before = expired_before
        rollout = rollout_of(registry.state(model))
        if rollout is not None:
            before = min(before, parse_time(rollout.started, "rollout start") - MAX_WINDOW)
        # the heartbeats first: a node that comes back while thousands of batches go keeps its own
        silent = forget_silent_nodes(registry, model, silent_since, report.dry_run)
        report.forgotten_nodes += [f"{model} {node}" for node in silent]
        expired = batches_before(registry, model, before)
        if not report.dry_run:
            for key in expired:
                registry.backend.delete(key)
        report.expired_metrics_batches += len(expired)
    report.expired_hook_deliveries = len(expire_delivered(registry, silent_since, report.dry_run))


def _collect_monitoring(content: ContentStore, registry: Registry, report: GcReport) -> None:
    """Delete the monitoring data of deleted versions and of models without versions, and what a
    delete or move that stopped halfway left (keys under a version without its root there).

    Nothing re-uses monitoring data, so it needs no grace period. The roots are read after the
    listing: a version whose data was listed existed before, so a version pushed meanwhile is safe.
    """
    arrays = MonitoringArrays(content)
    with arrays.writing():
        listed = [(place, arrays.stored_versions(place), arrays.stored_prefixes(place), arrays.stored_models(place))
                  for place in arrays.places]
        roots = read_roots(registry, 0)
        for place, stored, prefixes, models in listed:
            dead_models = {m for m in models if not live_model(roots, m)}
            doomed = {f"{m.client}/{m.model}" for m in dead_models}
            doomed |= {s.path for s in stored if s.model not in dead_models and not live_monitoring(roots, s)}
            doomed |= {p for p in prefixes - {s.path for s in stored} if p.rsplit("/", 1)[0] not in doomed}
            for path in sorted(doomed):
                if not report.dry_run:
                    arrays.delete(place, path)
                report.deleted_monitoring.append(f"{place.name} {path}")


def _mark(content: ContentStore, registry: Registry, report: GcReport) -> tuple[set[str], set[bytes], Manifests]:
    """(live manifest keys, live chunks, what every manifest names), marked until the registry
    held still during a pass, keeping the union of every pass.

    A condemned file manifest that no tree lists any more (a gc deleted the dead tree that
    listed it, then stopped) is not taken for one stored without the registry, unless a put
    wrote it again after its condemnation: its modification time is no longer the one gc
    recorded (times from the same clock, the backend's, so no clock skew can mislead it).
    """
    condemned = condemned_records(content.home)

    def abandoned(object_id: str) -> bool:
        key = manifest_key(parse_id(object_id))
        if key not in condemned:
            return False
        when, modified = condemned[key]
        # a record from before modification times were kept: compare with the condemnation time
        return content.home.modified(key) == modified if modified is not None else \
            content.home.modified(key) <= when

    def key(object_id: str) -> str:
        return manifest_key(parse_id(object_id))

    bundles_of: dict[str, str] = {}
    live_keys: set[str] = set()
    live_chunks: set[bytes] = set()
    manifests = Manifests()
    for report.mark_passes in range(1, MARK_ATTEMPTS + 1):
        roots = read_roots(registry, 0, bundles_of)
        graph = ContentGraph.read(content)
        trees, files, chunks = live_objects(roots, graph, abandoned)
        live_keys |= {key(i) for i in trees | files}
        live_chunks |= chunks
        manifests.trees.update({key(t): {key(format_id(e.file)) for e in tree.entries}
                                for t, tree in graph.trees.items()})
        manifests.files.update({key(f): {c for c, _ in manifest.chunks} for f, manifest in graph.files.items()})
        if registry.ref_tokens() == roots.tokens:
            break
    return live_keys, live_chunks, manifests


def _sweep(content: ContentStore, report: GcReport, homes: list[IndexFiles], live_keys: set[str],
           live_chunks: set[bytes], manifests: Manifests, progress: Progress, lease: Lease) -> None:
    now = time.time()
    index = homes[0].index
    old, written_at = {}, {}
    tiers = [(content.home, ["packs", "manifests"])] + \
        ([(content.cold, ["packs"])] if content.cold is not None and not content.shared else [])
    for tier, prefixes in tiers:
        for key in (k for prefix in prefixes for k in tier.list(prefix)):
            modified = tier.modified(key)
            if key not in old and now - modified > report.grace_seconds:
                old[key] = tier.size(key)
                if tier is content.home:
                    written_at[key] = modified
    condemned = condemned_times(content.home)
    copies = _sparse_pack_copies(index, old, live_chunks, set(condemned))
    report.repacked_bytes = sum(n for _, n in copies)
    if not report.dry_run:
        _repack(content, index, copies)
    # a dry run reports what the run would do: the chunks it would copy out of sparse packs get new
    # homes then, so those packs are homes of nothing
    homed = live_chunks - {c for c, _ in copies} if report.dry_run else live_chunks
    keep = _packs_to_keep(index, homed, {p for p in map(pack_id_from_key, condemned) if p})
    dead = {pack_key(p) for p in index.pack_entries if pack_key(p) in old and p not in keep}
    dead |= {k for k in old if k.startswith("manifests/") and k not in live_keys}
    dead |= {k for k in old if k.startswith("packs/") and pack_id_from_key(k) not in index.pack_entries}
    report.spared = sorted(k for k in condemned if k not in dead)
    due = _without_referenced({k for k in dead if k in condemned and now - condemned[k] >= report.grace_seconds},
                              manifests, index)
    newly = dead - set(condemned)
    for key in sorted(newly):
        (report.condemned_packs if key.startswith("packs/") else report.condemned_manifests).append(key)
        report.pending_bytes += old[key]
    if not report.dry_run:
        lease.renew()  # still this machine's since the index files were read, or nothing is deleted
    if not report.dry_run and due:
        due = _delete(content, due, homes, set(manifests.trees), progress, old, written_at, lease)
    elif not report.dry_run:
        for home in homes:  # nothing to delete: still leave one index file where there were several
            if len(home.modified) > 1:
                content.replace_index_files(home)
        content.forget_index()
    for key in sorted(due):
        (report.deleted_packs if key.startswith("packs/") else report.deleted_manifests).append(key)
        report.reclaimed_bytes += old[key]
    if report.dry_run:
        return
    remaining = {k: record for k, record in condemned_records(content.home).items() if k in dead and k not in due}
    remaining.update({k: [now, written_at.get(k)] for k in newly})
    write_condemned(content.home, remaining)


def _sparse_pack_copies(index: ChunkIndex, old: dict[str, int], live_chunks: set[bytes],
                        condemned: set[str]) -> list[tuple[bytes, int]]:
    """(chunk, length) of the live chunks to copy out of old packs that are mostly garbage, so that
    those packs become wholly unused (chunks with a copy elsewhere need none)."""
    copies: list[tuple[bytes, int]] = []
    for pack_id, entries in index.pack_entries.items():
        key = pack_key(pack_id)
        live = [e for e in entries if e.chunk in live_chunks]
        # chunk bytes only: a pack's trailer and padding are no garbage to reclaim
        if key not in old or key in condemned or not live or \
                2 * sum(e.length for e in live) >= sum(e.length for e in entries):
            continue
        copies.extend((e.chunk, e.length) for e in live
                      if all(loc.pack == pack_id for loc in index.all_locations(e.chunk)))
    return copies


def _repack(content: ContentStore, index: ChunkIndex, copies: list[tuple[bytes, int]]) -> None:
    """Copy ``copies`` into new packs (each chunk checked), indexed."""
    if not copies:
        return
    with content.pack_session(restore=True, target=content.home) as session:
        for chunk, length in copies:
            data = content.read_pack(index[chunk].pack, index[chunk].offset, length)
            if digest(data) != chunk:
                raise CorruptObject(f"chunk {format_id(chunk)} in {pack_key(index[chunk].pack)} is damaged: "
                                    "run `artifactstore verify --repair` before gc")
            session.add(chunk, data)
    for pack_id, entries in session.finished:
        index.add_pack(pack_id, entries)
    content.forget_index()


def _delete(content: ContentStore, keys: set[str], homes: list[IndexFiles], tree_keys: set[str],
            progress: Progress, sizes: dict[str, int], written_at: dict[str, float], lease: Lease) -> set[str]:
    """Delete referrers before what they refer to, so that a gc killed at any moment leaves a
    store that verifies: tree manifests, then file manifests, then in each place with index
    files one without the doomed packs replaces those read after the mark, then the packs.

    Pushes write into the store while this runs. Anything written again since the sweep read
    its time (a push re-using a condemned pack or manifest, or re-writing an index file with
    the same content) is left alone; a push that re-writes a pack also writes an index file
    listing it.
    """
    keys = {k for k in keys if not written_since(content.home, k, written_at)}
    manifests = sorted((k for k in keys if k.startswith("manifests/")), key=lambda k: (k not in tree_keys, k))
    deleted = {k for k in manifests if _delete_unused(content, k, written_at, sizes, progress, lease)}
    packs = sorted(k for k in keys if k.startswith("packs/"))
    doomed = {pack_id_from_key(k) for k in packs}
    lease.renew()
    for home in homes:
        content.replace_index_files(home, frozenset(p for p in doomed if p))
    deleted |= {k for k in packs if _delete_unused(content, k, written_at, sizes, progress, lease)}
    content.forget_index()
    content.rescan_hot_tier()
    return deleted


def _delete_unused(content: ContentStore, key: str, written_at: dict[str, float], sizes: dict[str, int],
                   progress: Progress, lease: Lease) -> bool:
    """Delete a pack from every tier, or a manifest; False if a push wrote it again a moment ago."""
    lease.renew_if_due()
    if written_since(content.home, key, written_at):
        return False
    pack_id = pack_id_from_key(key)
    if pack_id is not None:
        content.hot.delete(guard_key(pack_id))
    for tier in {id(t): t for t in (content.home, content.hot, content.cold) if t is not None}.values():
        if tier is content.home or key.startswith("packs/"):
            tier.delete(key)
    progress(sizes[key])
    return True


def _without_referenced(due: set[str], manifests: Manifests, index: ChunkIndex) -> set[str]:
    """``due`` less what a manifest that stays still names: the files of a tree that is not due,
    and the last copy of a chunk of a file that is not due. A dead tree or file younger than the
    grace period is not due yet; what it names waits for it, so no store state is one that
    ``verify`` would reject."""
    due = due - {f for tree, listed in manifests.trees.items() if tree not in due for f in listed}
    doomed = {pack_id_from_key(k) for k in due if k.startswith("packs/")}
    for file, chunks in manifests.files.items():
        if file in due:
            continue
        for chunk in chunks:
            homes = [loc.pack for loc in index.all_locations(chunk)] if chunk in index else []
            if homes and doomed.issuperset(homes):
                doomed.discard(homes[0])
                due.discard(pack_key(homes[0]))
    return due


def _packs_to_keep(index: ChunkIndex, live_chunks: set[bytes], condemned: set[bytes]) -> set[bytes]:
    """One home per live chunk: a pack already kept, else the densest pack that is not condemned;
    every other pack holding only copies is unused."""
    density = {p: sum(e.chunk in live_chunks for e in entries) / max(len(entries), 1)
               for p, entries in index.pack_entries.items()}
    keep: set[bytes] = set()
    for chunk in live_chunks:
        if chunk not in index:
            continue
        packs = [loc.pack for loc in index.all_locations(chunk)]
        if not keep.isdisjoint(packs):
            continue
        keep.add(max(packs, key=lambda p: (p not in condemned, density[p])))
    return keep
