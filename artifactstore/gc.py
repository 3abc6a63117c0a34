"""Garbage collection in two phases, and deletion of versions.

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

import fcntl
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .backend import Backend
from .errors import Conflict, CorruptObject, InvalidParameter, NotFound, StoreError
from .guard import guard_key
from .ids import digest, format_id, parse_id
from .index import ChunkIndex, index_key, write_index
from .manifest import TreeManifest, manifest_key
from .pack import pack_id_from_key, pack_key
from .refs import Ref
from .registry import VERSION_CONTEXT, ref_key

CONDEMNED_KEY = "gc/condemned.json"
DURATION = re.compile(r"(\d+)([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MARK_ATTEMPTS = 20

Progress = Callable[[int], None]


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``6h``, ``7d``."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidParameter(f"not a duration: {text!r} (expected a number and s, m, h or d, e.g. 6h)")
    return int(match.group(1)) * UNITS[match.group(2)]


@dataclass
class IndexFiles:
    """The index files of one place (the store, or a shared store's cache) as gc read them."""

    tier: Backend
    index: ChunkIndex
    modified: dict[str, float]  # key -> modification time

    @classmethod
    def read(cls, tier: Backend) -> "IndexFiles":
        modified = {key: tier.modified(key) for key in tier.list("index")}
        return cls(tier, ChunkIndex.load(tier), modified)


@dataclass
class Manifests:
    """What every manifest names: tree key -> its files' keys, file key -> its chunks."""

    trees: dict[str, set[str]]
    files: dict[str, set[bytes]]


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


class GcOperations:
    """``gc`` and ``delete``, mixed into ``Store``."""

    def condemned(self) -> dict[str, float]:
        """Condemned object keys and when they were condemned."""
        return {key: record[0] for key, record in self._condemned_records().items()}

    def _condemned_records(self) -> dict[str, list]:
        """key -> [when it was condemned, its modification time then (None for a cold pack)]."""
        if not self.backend.exists(CONDEMNED_KEY):
            return {}
        records = json.loads(self.backend.read(CONDEMNED_KEY))
        return {key: record if isinstance(record, list) else [record, None]  # a bare time: written before
                for key, record in records.items()}                          # the times were recorded

    def delete(self, ref: str, *, actor: str | None = None, reason: str = ""):
        """Remove a version (a data removal request); refused while a pointer or pin names it."""
        parsed = Ref.parse(ref)
        if not parsed.is_version:
            raise InvalidParameter(f"delete takes client/model@vX.Y.Z, not {ref}")

        def remove(current):
            if parsed.target not in current.versions:
                raise InvalidParameter(f"{current.model} has no version {parsed.target}")
            named = current.where(parsed.target)
            if named:
                raise Conflict(f"{ref} is still {', '.join(named)}: move the pointer first")
            return [{"action": "delete", "pointer": None, "from": parsed.target, "to": None}]

        return self._transact(parsed.model, remove, actor, reason)

    def _registry_tokens(self) -> dict[str, str | None]:
        return {str(m): self.backend.read_ref(ref_key(m))[1] for m in self.models()}

    def _mark(self, bundles_of: dict[str, str]) -> tuple[set[str], set[bytes], Manifests]:
        """(live manifest keys, live chunks, every manifest): live are every current version's
        bundle, and every object stored without the registry; bundles of deleted versions are not.

        A condemned file manifest that no tree lists any more (a gc deleted the dead tree that
        listed it, then stopped) is not taken for one stored without the registry, unless a put
        wrote it again after its condemnation: its modification time is no longer the one gc
        recorded (times from the same clock, the backend's, so no clock skew can mislead it).

        ``bundles_of`` caches version record id -> bundle id across passes (records are immutable).
        """
        def bundle(record_id: str) -> str:
            if record_id not in bundles_of:
                bundles_of[record_id] = json.loads(self._read_object(record_id, VERSION_CONTEXT))["bundle"]
            return bundles_of[record_id]

        current, ever = set(), set()
        for model in self.models():
            ever |= {bundle(r) for _, state in self.states(model) for r in state.versions.values()}
            current |= {bundle(r) for r in self.state(model).versions.values()}
        trees, files = {}, {}
        for object_id, manifest in self.manifests():
            (trees if isinstance(manifest, TreeManifest) else files)[format_id(object_id)] = manifest
        condemned = self._condemned_records()

        def abandoned(object_id: str) -> bool:
            key = manifest_key(parse_id(object_id))
            if key not in condemned:
                return False
            when, modified = condemned[key]
            # a record from before modification times were kept: compare with the condemnation time
            return self.backend.modified(key) == modified if modified is not None else \
                self.backend.modified(key) <= when

        live_trees = (current | (set(trees) - ever)) & set(trees)
        listed = {format_id(e.file) for t in trees.values() for e in t.entries}
        live_files = {format_id(e.file) for t in live_trees for e in trees[t].entries} | \
            {f for f in set(files) - listed if not abandoned(f)}
        chunks = {c for f in live_files if f in files for c, _ in files[f].chunks}
        key = lambda object_id: manifest_key(parse_id(object_id))  # noqa: E731
        every = Manifests({key(t): {key(format_id(e.file)) for e in tree.entries} for t, tree in trees.items()},
                          {key(f): {c for c, _ in manifest.chunks} for f, manifest in files.items()})
        return {key(i) for i in live_trees | live_files}, chunks, every

    def gc(self, *, dry_run: bool = False, grace: str = "1h", progress: Progress = lambda _: None) -> GcReport:
        """Condemn what nothing uses; delete what was condemned more than ``grace`` ago and is still unused."""
        grace_seconds = parse_duration(grace)
        report = GcReport(dry_run, grace_seconds)
        lock_path = self.path / "gc" / "lock"
        lock_path.parent.mkdir(exist_ok=True)
        with open(lock_path, "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another gc is running on {self.location}") from None
            # the store's index files (every pack, condemned ones included), and a shared store's
            # cache's, which list this machine's copies of packs
            homes = [IndexFiles.read(tier) for tier in {id(t): t for t in (self.backend, self.hot)}.values()]
            index = homes[0].index
            for home in homes:
                if home.index.skipped:
                    raise StoreError(f"index file {home.index.skipped[0]} is damaged: gc would take its packs for "
                                     "garbage. Run `artifactstore verify`, then any put (which re-indexes those "
                                     "packs), then gc")
            bundles_of: dict[str, str] = {}
            live_keys, live_chunks, manifests = set(), set(), Manifests({}, {})
            for report.mark_passes in range(1, MARK_ATTEMPTS + 1):
                before = self._registry_tokens()
                keys, chunks, found = self._mark(bundles_of)
                live_keys |= keys
                live_chunks |= chunks
                manifests.trees.update(found.trees)
                manifests.files.update(found.files)
                if self._registry_tokens() == before:
                    break
            unindexed = next((c for c in live_chunks if c not in index), None)
            if unindexed is not None:
                raise StoreError(f"live chunk {format_id(unindexed)} is in no index: run `artifactstore verify`; "
                                 "gc deletes nothing until every live chunk is indexed")
            report.live_chunks = len(live_chunks)
            self._sweep(report, homes, live_keys, live_chunks, manifests, progress)
        return report

    def _sweep(self, report: GcReport, homes: list[IndexFiles], live_keys: set[str], live_chunks: set[bytes],
               manifests: Manifests, progress: Progress) -> None:
        now = time.time()
        index = homes[0].index
        old, written_at = {}, {}
        tiers = [(self.backend, ["packs", "manifests"])] + \
            ([(self.cold, ["packs"])] if self.cold is not None and not self.shared else [])
        for tier, prefixes in tiers:
            for key in (k for prefix in prefixes for k in tier.list(prefix)):
                modified = tier.modified(key)
                if key not in old and now - modified > report.grace_seconds:
                    old[key] = tier.size(key)
                    if tier is self.backend:
                        written_at[key] = modified
        condemned = self.condemned()
        if not report.dry_run:
            report.repacked_bytes = self._repack_sparse(index, old, live_chunks, set(condemned))
        keep = _packs_to_keep(index, live_chunks, {pack_id_from_key(k) for k in condemned})
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
        if not report.dry_run and due:
            due = self._delete(due, homes, set(manifests.trees), progress, old, written_at)
        for key in sorted(due):
            (report.deleted_packs if key.startswith("packs/") else report.deleted_manifests).append(key)
            report.reclaimed_bytes += old[key]
        if report.dry_run:
            return
        remaining = {k: record for k, record in self._condemned_records().items() if k in dead and k not in due}
        remaining.update({k: [now, written_at.get(k)] for k in newly})
        self.backend.write(CONDEMNED_KEY, json.dumps(remaining, sort_keys=True, indent=0).encode())

    def _repack_sparse(self, index: ChunkIndex, old: dict[str, int], live_chunks: set[bytes],
                       condemned: set[str]) -> int:
        """Copy the live chunks out of old packs that are mostly garbage into new packs, so that
        the old ones become wholly unused; returns the bytes copied."""
        copies = []
        for pack_id, entries in index.pack_entries.items():
            key = pack_key(pack_id)
            live = [e for e in entries if e.chunk in live_chunks]
            # chunk bytes only: a pack's trailer and padding are no garbage to reclaim
            if key not in old or key in condemned or not live or \
                    2 * sum(e.length for e in live) >= sum(e.length for e in entries):
                continue
            copies.extend((e.chunk, e.length) for e in live
                          if all(loc.pack == pack_id for loc in index.all_locations(e.chunk)))
        if not copies:
            return 0
        session = self.new_put_session(restore=True, backend=self.backend)
        try:
            for chunk, length in copies:
                data = self._read_pack(index[chunk].pack, index[chunk].offset, length)
                if digest(data) != chunk:
                    raise CorruptObject(f"chunk {format_id(chunk)} in {pack_key(index[chunk].pack)} is damaged: "
                                        "run `artifactstore verify --repair` before gc")
                session.add(chunk, data)
            session.commit()
        except BaseException:
            session.abort()
            self._index = None  # it may name packs the session sealed but never published
            raise
        for pack_id, entries in session.finished:
            index.add_pack(pack_id, entries)
        self._index = None
        return sum(n for _, n in copies)

    def _delete(self, keys: set[str], homes: list[IndexFiles], tree_keys: set[str], progress: Progress,
                sizes: dict[str, int], written_at: dict[str, float]) -> set[str]:
        """Delete referrers before what they refer to, so that a gc killed at any moment leaves a
        store that verifies: tree manifests, then file manifests, then in each place with index
        files one without the doomed packs replaces those read at the start, then the packs.

        Pushes write into the store while this runs. Anything written again since the sweep read
        its time (a push re-using a condemned pack or manifest, or re-writing an index file with
        the same content) is left alone; a push that re-writes a pack also writes an index file
        listing it.
        """
        keys = {k for k in keys if not _rewritten(self.backend, k, written_at)}
        manifests = sorted((k for k in keys if k.startswith("manifests/")), key=lambda k: (k not in tree_keys, k))
        deleted = {k for k in manifests if self._delete_unused(k, written_at, sizes, progress)}
        packs = sorted(k for k in keys if k.startswith("packs/"))
        doomed = {pack_id_from_key(k) for k in packs}
        for home in homes:
            kept = [(p, e) for p, e in home.index.pack_entries.items() if p not in doomed]
            new_index = index_key(write_index(home.tier, kept)) if kept else None
            for key in sorted(set(home.modified) - {new_index}):
                if _rewritten(home.tier, key, home.modified):
                    continue
                home.tier.delete(key)
                if home.tier is self.backend and self.cold is not None and not self.shared:
                    self.cold.delete(key)
        deleted |= {k for k in packs if self._delete_unused(k, written_at, sizes, progress)}
        self._index = None
        self.forget_hot_packs()
        return deleted

    def _delete_unused(self, key: str, written_at: dict[str, float], sizes: dict[str, int],
                       progress: Progress) -> bool:
        """Delete a pack from every tier, or a manifest; False if a push wrote it again a moment ago."""
        if _rewritten(self.backend, key, written_at):
            return False
        if key.startswith("packs/"):
            self.hot.delete(guard_key(pack_id_from_key(key)))
        for tier in {id(t): t for t in (self.backend, self.hot, self.cold) if t is not None}.values():
            if tier is self.backend or key.startswith("packs/"):
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


def _rewritten(tier, key: str, written_at: dict[str, float]) -> bool:
    """Whether ``key`` was written (again) in ``tier`` since the sweep read the times."""
    try:
        modified = tier.modified(key)
    except NotFound:
        return False
    return written_at.get(key) != modified
