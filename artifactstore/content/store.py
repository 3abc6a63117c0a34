"""The content store: files and trees in, the same bytes out, every byte checked against its id.

A ``ContentStore`` is three places (``home``, ``hot``, ``cold``) and the chunk index that says
where each chunk lies. ``home`` holds what the store is made of (its configuration, manifests,
index files, and the registry above it); ``hot`` is this machine's directory of packs (``home``
itself for a store in a directory, a cache directory for a shared store); ``cold`` is the object
storage tier, if any (a shared store's bucket, or a directory store's ``--cold``).
"""

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import blake3

from ..backends import Backend, is_url, open_backend, probe
from ..backends.local import LocalBackend
from ..backends.remote import mask_url
from ..errors import Conflict, CorruptObject, InvalidInput, InvalidParameter, NotFound, StoreError
from ..ids import digest, format_id, parse_id
from ..progress import Progress, no_progress
from .chunking import DEFAULT_PARAMS, ChunkerParams
from .cold import claim_cold_tier, keep_claim, kept_claim, release
from .condemned import condemned_packs, condemned_times
from .config import CONFIG_KEY, DEFAULT_KEEP_HOT, FORMAT_VERSION, SETTINGS, StoreConfig
from .index import ChunkIndex, IndexFiles, Location, LocationArrays, write_index
from .lease import Lease, StoreLease
from .manifest import FileManifest, TreeEntry, TreeManifest, decode_manifest, manifest_key
from .pack import pack_id_from_key, pack_key, read_trailer
from .pending import SessionMarker, finished_markers, pending_markers, remove_marker
from .put import (
    PackSession,
    chunk_stored,
    collect_inputs,
    hash_if_probably_stored,
    ingest_file,
    put_workers,
    root_object,
)

if TYPE_CHECKING:
    import numpy as np

READ_SEGMENT = 16 << 20
# A put that finds this many index files in a place merges them into one (under the maintenance
# lock), so that opening a store reads a bounded number of files however many puts it has seen.
INDEX_FILES_MERGED_AT = 16
T = TypeVar("T")
LAYOUT = ("tmp", "packs", "index", "manifests")


@dataclass(frozen=True)
class PutResult:
    id: str
    logical_bytes: int
    new_bytes: int


@dataclass(frozen=True)
class StoreStats:
    logical_bytes: int
    stored_bytes: int  # every pack, index file and manifest, each counted once, in either tier
    hot_pack_bytes: int  # packs in this machine's hot tier
    cold_pack_bytes: int  # packs in the cold tier only (a shared store: all the bucket's packs)
    chunk_bytes: int
    chunks: int
    packs: int
    files: int
    trees: int


class ContentStore:
    """Content-addressed files and trees in packs, over a home, a hot and an optional cold place."""

    def __init__(self, location: str, home: Backend, hot: LocalBackend, cold: Backend | None, cold_url: str | None,
                 config: StoreConfig):
        self.location = location
        self.home = home
        self.hot = hot
        self.cold = cold
        self.cold_url = cold_url
        self.config = config
        self._index: ChunkIndex | None = None
        self._hot_packs: set[bytes] | None = None
        self._layout_changes = 0

    @classmethod
    def open(cls, location: str | os.PathLike, *, cache: str | os.PathLike | None = None) -> "ContentStore":
        """The store at a directory, or at an object-storage URL shared by many machines.

        A shared store (``s3://bucket/prefix``) keeps everything in the bucket; this machine's
        hot tier is a cache directory: ``cache``, else ``$ARTIFACTSTORE_CACHE``, else
        ``~/.cache/artifactstore/<hash of the URL>``.
        """
        location = str(location)
        home = open_backend(location)
        try:
            data = home.read(CONFIG_KEY)
        except NotFound:
            raise StoreError(f"{location} is not an artifactstore store (run `artifactstore init`)") from None
        config = StoreConfig.decode(data, f"{location}/{CONFIG_KEY}")
        if is_url(location):
            path = Path(cache or os.environ.get("ARTIFACTSTORE_CACHE") or default_cache(location))
            path.mkdir(parents=True, exist_ok=True)
            return cls(location, home, LocalBackend(path), home, location, config)
        if not isinstance(home, LocalBackend):
            raise StoreError(f"{location}: not a directory")
        return cls(location, home, home, open_backend(config.cold) if config.cold else None, config.cold, config)

    @classmethod
    def init(cls, location: str | os.PathLike, chunker: ChunkerParams = DEFAULT_PARAMS, *, cold: str | None = None,
             keep_hot: int = DEFAULT_KEEP_HOT, cache: str | os.PathLike | None = None) -> "ContentStore":
        """Create a store in a new or empty directory, or at an object-storage URL (a shared store).

        ``cold`` is a directory or fsspec URL for the cold tier of a directory store; it must be
        reachable and writable.
        """
        if type(keep_hot) is not int or keep_hot < 0:
            raise InvalidParameter(f"--keep-hot must be a whole number >= 0, not {keep_hot!r}")
        location = str(location)
        if is_url(location):
            if cold is not None:
                raise InvalidParameter("a shared store lives in object storage already: it takes no --cold")
            home = open_backend(location)
            if home.exists(CONFIG_KEY):
                raise StoreError(f"{location} is already a store")
            probe(home)
            home.write(CONFIG_KEY, StoreConfig(FORMAT_VERSION, chunker, None, keep_hot).encode())
        else:
            root = Path(location)
            if (root / CONFIG_KEY).exists():
                raise StoreError(f"{root} is already a store")
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise StoreError(f"{root} exists and is not an empty directory")
            nearest = next(p for p in (root, *root.absolute().parents) if p.exists())
            if not nearest.is_dir():
                raise StoreError(f"cannot make the store's directory {root}: {nearest} is not a directory")
            claim = None
            if cold is not None:
                cold, claim = claim_cold_tier(cold, root)  # before the first byte of the store is written
            try:
                try:
                    for sub in LAYOUT:
                        (root / sub).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot make the store's directory {root}: {exc.strerror or exc}") from None
                keep_claim(root, claim)
                LocalBackend(root).write(CONFIG_KEY, StoreConfig(FORMAT_VERSION, chunker, cold, keep_hot).encode())
            except BaseException:
                if cold is not None and claim is not None:
                    release(cold, claim)  # a failed init leaves no cold tier claimed
                raise
        return cls.open(location, cache=cache)

    def change_setting(self, setting: str, value: str | int | None, *, actor: str, reason: str, at: str) -> StoreConfig:
        """Change ``cold`` (a directory or URL, None: no cold tier) or ``keep_hot`` (whole number), with
        who, when and why recorded in the configuration itself; one compare-and-swap of
        ``artifactstore.json``. A new cold tier must take writes now; a cold tier that holds packs
        cannot be replaced or dropped (they would be lost to the store)."""
        if setting not in SETTINGS:
            raise InvalidParameter(f"unknown setting {setting!r}: expected one of {', '.join(SETTINGS)}")
        data, token = self.home.read_ref(CONFIG_KEY)
        if data is None:
            raise StoreError(f"{self.location}/{CONFIG_KEY} is gone")
        current = StoreConfig.decode(data, f"{self.location}/{CONFIG_KEY}")
        root = Path(self.location)
        claim = kept = None if self.shared else kept_claim(root)
        if setting == "keep_hot":
            if type(value) is not int or value < 0:
                raise InvalidParameter(f"keep-hot must be a whole number >= 0, not {value!r}")
            updated = replace(current, keep_hot=value)
        else:
            if self.shared:
                raise InvalidParameter("a shared store lives in object storage already: it has no separate cold tier")
            cold = None if value is None else str(value) if is_url(str(value)) else str(Path(str(value)).resolve())
            if current.cold is not None and current.cold != cold and any(open_backend(current.cold).list("packs")):
                raise InvalidParameter(f"the cold tier {mask_url(current.cold)} holds packs: run `artifactstore "
                                       "pull` for what must stay, or keep it; replacing it would lose them")
            if value is None:
                claim = None
            elif cold != current.cold:
                cold, claim = claim_cold_tier(str(value), root)
            updated = replace(current, cold=cold)
        before, after = getattr(current, setting), getattr(updated, setting)
        if before == after:
            raise InvalidParameter(f"{setting} is {before!r} already")
        record = {"at": at, "actor": actor, "reason": reason, "setting": setting,
                  "from": mask_url(before) if isinstance(before, str) else before,
                  "to": mask_url(after) if isinstance(after, str) else after}
        updated = replace(updated, changes=(*current.changes, record))
        try:
            self.home.swap_ref(CONFIG_KEY, updated.encode(), token)
        except Conflict:
            if updated.cold is not None and claim not in (None, kept):
                release(updated.cold, claim)
            raise Conflict(f"{CONFIG_KEY} changed while this command ran: nothing was changed; retry") from None
        self.config = updated
        if setting == "cold":
            keep_claim(root, claim)
            if current.cold is not None and kept is not None and kept != claim:  # not the same place respelled
                release(current.cold, kept)
            self.cold_url = updated.cold
            self.cold = open_backend(updated.cold) if updated.cold else None
        return updated

    @property
    def shared(self) -> bool:
        return self.hot is not self.home

    @property
    def path(self) -> Path:
        """This machine's directory of the store: the store itself, or a shared store's cache."""
        return self.hot.root

    # -- the index ---------------------------------------------------------------------------

    @property
    def index(self) -> ChunkIndex:
        """Where every chunk lies: the store's index files, plus this machine's cache's for a shared store."""
        index = self._index  # read once: another thread may drop it meanwhile (forget_index)
        return index if index is not None else self._load_index()

    @property
    def layout(self) -> tuple[int, int]:
        """Changes whenever ``locate`` may answer differently for a chunk it located before (the
        index was read again or grew, the hot tier was rescanned): what a reader that remembers
        where chunks lie compares."""
        return self._layout_changes, self.index.generation

    def _load_index(self) -> ChunkIndex:
        # read whole, then published: another thread must never search an index still being read
        # (it would call a chunk missing); two threads that both load keep one
        index = ChunkIndex()
        for home in self._index_homes():
            index.read_files(home)
        self._layout_changes += 1
        self._index = index
        return index

    def refresh_index(self) -> bool:
        """Read the index files other processes published since; True if the index changed.

        When gc has replaced index files this index was read from, it is read afresh: the packs
        those files listed may be gone.
        """
        index = self._index
        if index is None:
            self._load_index()
            return True
        changed = False
        for home in self._index_homes():
            new, vanished = index.read_files(home)
            if vanished:
                self._load_index()
                return True
            changed = changed or bool(new)
        return changed

    def with_fresh_index(self, read: Callable[[], T]) -> T:
        """Run ``read``; if a pack it needed is gone because gc moved its live chunks into new
        packs since this index was read, read the index afresh and run it once more."""
        try:
            return read()
        except NotFound:
            if not self.refresh_index():
                raise
            return read()

    def forget_index(self) -> None:
        """Drop the index: it may name packs a failed or finished writer of this process sealed
        but that are no longer, or never were, published."""
        self._layout_changes += 1
        self._index = None

    def _index_homes(self) -> list[Backend]:
        return [self.home, self.hot] if self.shared else [self.home]

    @property
    def hot_packs(self) -> set[bytes]:
        """Ids of the packs present in the hot tier (cached: ``rescan_hot_tier`` after changing it)."""
        packs = self._hot_packs  # read once: another thread may drop it meanwhile (rescan_hot_tier)
        if packs is None:
            packs = self._hot_packs = {p for p in map(pack_id_from_key, self.hot.list("packs")) if p}
        return packs

    def rescan_hot_tier(self) -> None:
        self._layout_changes += 1
        self._hot_packs = None

    # -- writing -----------------------------------------------------------------------------

    def upgrade_format(self) -> None:
        """Make readers of an older format refuse the store before this process writes what they
        would misread (padded packs: version 2; model states naming a version map: version 3)."""
        if self.config.version < FORMAT_VERSION:
            self.config = self.config.upgraded()
            self.home.write(CONFIG_KEY, self.config.encode())

    @contextmanager
    def pack_session(self, *, restore: bool = False, target: Backend | None = None) -> Iterator[PackSession]:
        """A session writing new packs into ``target`` (by default the store's own place, or this
        machine's hot tier for ``restore`` sessions, which copy chunks the store already has).
        It commits (packs, then their index file) when the block ends, or aborts on an error."""
        target = target or (self.hot if restore else self.home)
        if not restore:
            self.upgrade_format()  # a put pads packs, which version-1 readers would take for damage
        # the index the packs go into is the one their index file is marked read in: another
        # thread may publish a new index meanwhile, which then reads that file itself
        index = self.index
        session = PackSession(target, index, condemned=condemned_packs(self.home), restore=restore,
                              marker=SessionMarker(target) if target is self.home else None)
        try:
            yield session
            session.commit()
        except BaseException:
            session.abort()
            self.forget_index()
            raise
        finally:
            self.rescan_hot_tier()
        if session.index_file is not None:
            index.mark_read(target, session.index_file)

    def put(self, path: str | os.PathLike, *, progress: Progress = no_progress,
            hashed: Mapping[str, bytes] | None = None) -> PutResult:
        """Store a file or a directory tree; returns its id and how many bytes were new.

        ``hashed``: the ids of input files, by their path in the tree (a file's name when ``path``
        is a file), that the caller took a moment ago (``stored_file_id``): a file this store
        holds whole under that id is not read again, and the put stores what was hashed."""
        root = Path(path)
        inputs = collect_inputs(root)
        self.refresh_index()  # another process (gc, above all) may have changed it since
        self._index_orphan_packs()
        self._merge_index_files()
        hashed = hashed or {}
        damaged: set[str] = set()  # manifests found unreadable: written again
        with self.pack_session() as session, put_workers() as workers:
            stored = partial(self._stored_file, session.stored, condemned_times(self.home), damaged)
            files = [(f, *ingest_file(f.source, self.config.chunker, session, workers, progress, stored,
                                      hashed.get(f.path)))
                     for f in inputs]
        # condemned ones are written again too (which makes them young again for gc): the list is read
        # once for all manifests, after the packs
        rewritten = condemned_times(self.home).keys() | damaged
        for _, file_id, manifest in files:
            self._publish_manifest(file_id, manifest.encode(), rewritten)
        object_id, tree = root_object(root, [(f, file_id) for f, file_id, _ in files])
        if tree is not None:
            self._publish_manifest(object_id, tree, rewritten)
        return PutResult(format_id(object_id), sum(f.size for f in inputs), session.new_bytes)

    def stored_file_id(self, path: str | os.PathLike) -> bytes | None:
        """The id of the regular file at ``path`` if this store holds it whole (as a put would
        find it), else None. A few chunks are probed first: a file the store lacks is not hashed."""
        self.refresh_index()
        stored_chunk = partial(chunk_stored, self.index, condemned_packs(self.home))
        found = hash_if_probably_stored(Path(path), self.config.chunker, stored_chunk)
        if found is None:
            return None
        file_id, size = found
        stored = self._stored_file(stored_chunk, condemned_times(self.home), set(), file_id, size)
        return file_id if stored else None

    def _stored_file(self, stored_chunk: Callable[[bytes], bool], condemned: dict[str, float], damaged: set[str],
                     file_id: bytes, size: int) -> FileManifest | None:
        """The manifest of a file this store holds whole, if it does: the manifest is there and not
        condemned, and every chunk it lists is in a pack that is not condemned (what a put that
        stored the file again would find, and so would neither write nor re-write). A manifest
        that cannot be read is added to ``damaged``: the put that stores the file again repairs it."""
        key = manifest_key(file_id)
        if key in condemned:
            return None
        try:
            manifest = decode_manifest(self.home.read(key), key)
        except NotFound:
            return None
        except CorruptObject:
            damaged.add(key)
            return None
        if not isinstance(manifest, FileManifest) or manifest.size != size:
            return None
        return manifest if all(stored_chunk(chunk) for chunk, _ in manifest.chunks) else None

    def identify(self, path: str | os.PathLike, *, hashed: Mapping[str, bytes] | None = None) -> str:
        """The id ``put`` would return for ``path``, computed without writing anything; ``hashed``:
        the ids of input files the caller has taken already, by their path in the tree (as ``put``)."""
        root = Path(path)
        hashed = hashed or {}
        # each file hashed from a mapping: a 16 GB base model is not read into memory
        files = [(f, hashed.get(f.path) or blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(f.source).digest())
                 for f in collect_inputs(root)]
        return format_id(root_object(root, files)[0])

    def _publish_manifest(self, object_id: bytes, encoded: bytes, rewritten: Container[str]) -> None:
        """Write a manifest the store lacks, or one of ``rewritten`` (condemned or damaged)."""
        key = manifest_key(object_id)
        if key in rewritten or not self.home.exists(key):
            self.home.write(key, encoded)

    def _index_orphan_packs(self) -> None:
        """Index packs no intact index file lists (published by a session that failed before its
        index file, or listed by a damaged one), so that a retry reuses them and gc spares them.
        Only where a session's marker is there (pending.py) or an index file failed its check:
        listing every pack is the cost."""
        index = self.index  # one index takes the packs and the file that lists them (as pack_session)
        markers = pending_markers(self.home)
        if not markers and not index.skipped:
            return
        finished = finished_markers(self.home, markers)  # before the list: they published all they will
        orphans = []
        condemned = condemned_packs(self.home)
        for key in self.home.list("packs"):
            pack_id = pack_id_from_key(key)
            if pack_id is None or pack_id in index.pack_entries or pack_id in condemned:
                continue
            try:
                trailer_id, entries = read_trailer(self.home, key)
            except (CorruptObject, NotFound):
                continue  # verify reports it; never index a damaged pack
            if trailer_id == pack_id:
                orphans.append((pack_id, entries))
                index.add_pack(pack_id, entries)
        if orphans:
            index.mark_read(self.home, write_index(self.home, orphans))
        for key in finished:
            remove_marker(self.home, key)

    def _merge_index_files(self) -> None:
        """Merge the index files of a place that has INDEX_FILES_MERGED_AT or more into one, unless
        gc (or another merge) holds the maintenance lock: gc merges them anyway."""
        crowded = [home for home in self._index_homes()
                   if sum(1 for _ in home.list("index")) >= INDEX_FILES_MERGED_AT]
        if not crowded:
            return
        with self.maintenance_lock() as held:
            if not held:
                return
            for home in crowded:
                self.replace_index_files(IndexFiles.read(home))
        self.forget_index()

    def replace_index_files(self, files: IndexFiles, drop: frozenset[bytes] = frozenset()) -> None:
        """One index file instead of ``files``, without the packs in ``drop``; the cold tier's
        copies of the files replaced go too. The caller holds the maintenance lock."""
        _, deleted = files.replace(drop)
        if files.tier is self.home and self.cold is not None and not self.shared:
            for key in deleted:
                self.cold.delete(key)

    @contextmanager
    def maintenance_lock(self) -> Iterator[Lease | None]:
        """The lock that gc and index merging hold: an ``flock`` in this machine's directory of the
        store, and on a shared store the store's lease too (lease.py), so that no other machine's
        gc or merge runs meanwhile. Yields what is held (None: another holds it). Puts never take
        it to store, only to merge index files."""
        path = self.path / "gc" / "lock"
        path.parent.mkdir(exist_ok=True)
        with open(path, "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            if not self.shared:
                yield Lease()
                return
            lease = StoreLease.take(self.home)
            if lease is None:
                yield None
                return
            try:
                yield lease
            finally:
                lease.release()

    # -- reading -----------------------------------------------------------------------------

    def read_manifest(self, object_id: str) -> FileManifest | TreeManifest:
        key = manifest_key(parse_id(object_id))
        if not self.home.exists(key):
            raise NotFound(f"no object {object_id} in the store at {self.location}")
        return decode_manifest(self.home.read(key), key)

    def manifests(self) -> Iterator[tuple[bytes, FileManifest | TreeManifest]]:
        for key in self.home.list("manifests"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            yield bytes.fromhex(name), decode_manifest(self.home.read(key), key)

    def get(self, object_id: str, dest: str | os.PathLike, *, progress: Progress = no_progress) -> None:
        """Write the file or tree ``object_id`` to ``dest``, which must not exist yet.

        Everything is written beside ``dest`` first and renamed into place once every file
        checked out against its id, so a failed get leaves nothing behind.
        """
        manifest = self.read_manifest(object_id)
        target = _new_destination(dest)
        if isinstance(manifest, FileManifest):
            self.with_fresh_index(lambda: self._get_file(parse_id(object_id), manifest, target, progress))
        else:
            self.materialize(manifest, target, progress)

    def read_file(self, file_id: bytes) -> bytes:
        """A stored file's bytes, checked against its id; for small files (it is read into memory)."""
        manifest = self.read_manifest(format_id(file_id))
        if not isinstance(manifest, FileManifest):
            raise InvalidParameter(f"{format_id(file_id)} is a tree, not a file")
        data = self.with_fresh_index(lambda: b"".join(self.read_segments(manifest)))
        if digest(data) != file_id:
            raise CorruptObject(self._describe_damage(file_id, manifest))
        return data

    def read_tree_file(self, tree_id: str, path: str) -> bytes | None:
        """The bytes of the file at ``path`` in a stored tree, checked; None if the tree has none."""
        tree = self.read_manifest(tree_id)
        entry = next((e for e in getattr(tree, "entries", ()) if e.path == path), None)
        return None if entry is None else self.read_file(entry.file)

    def subtree(self, tree_id: str, prefix: str) -> TreeManifest:
        """The entries of a tree under ``prefix`` (a directory, ending in ``/``), relative to it."""
        tree = self.read_manifest(tree_id)
        return TreeManifest([TreeEntry(e.path.removeprefix(prefix), e.size, e.file)
                             for e in getattr(tree, "entries", []) if e.path.startswith(prefix)])

    def materialize(self, tree: TreeManifest, dest: str | os.PathLike, progress: Progress = no_progress) -> Path:
        """Write the files of ``tree`` under ``dest``, which must not exist yet; all or nothing."""
        target = _new_destination(dest)
        return self.with_fresh_index(lambda: self._materialize(tree, target, progress))

    def _materialize(self, tree: TreeManifest, target: Path, progress: Progress) -> Path:
        files = [(e, self.read_manifest(format_id(e.file))) for e in tree.entries]
        # os.mkdir, not mkdtemp (always 0700): the directory gets the umask's mode, like every file
        # in it, so that a server running as another user (vLLM, say) can read a checkout
        staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            for entry, file_manifest in files:
                if not isinstance(file_manifest, FileManifest):
                    raise CorruptObject(f"a tree lists {format_id(entry.file)}, which is not a file")
                out = staging.joinpath(*entry.path.split("/"))
                out.parent.mkdir(parents=True, exist_ok=True)
                self._get_file(entry.file, file_manifest, out, progress)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def _get_file(self, file_id: bytes, manifest: FileManifest, out: Path, progress: Progress) -> None:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        # a name of its own: a tree may hold ".X.partial" beside X, and a killed get leaves its file
        partial = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:12]}")
        staged = open(partial, "xb")  # outside the try: a file this call did not create is never removed
        try:
            with staged as f:
                for segment in self.read_segments(manifest):
                    hasher.update(segment)
                    f.write(segment)
                    progress(len(segment))
                f.flush()
                os.fsync(f.fileno())
            if hasher.digest() != file_id:
                raise CorruptObject(self._describe_damage(file_id, manifest))
            os.rename(partial, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def read_segments(self, manifest: FileManifest) -> Iterator[bytes]:
        """The file's bytes, reading runs of chunks that lie back to back in one pack at once."""
        run_pack, run_start, run_length = None, 0, 0
        for chunk, length in manifest.chunks:
            location = self.locate(chunk, length)
            contiguous = location.pack == run_pack and location.offset == run_start + run_length
            if contiguous and run_length + length <= READ_SEGMENT:
                run_length += length
                continue
            if run_pack is not None:
                yield self.read_pack(run_pack, run_start, run_length)
            run_pack, run_start, run_length = location.pack, location.offset, length
        if run_pack is not None:
            yield self.read_pack(run_pack, run_start, run_length)

    def locate(self, chunk: bytes, length: int) -> Location:
        """Where to read a chunk: a hot copy if there is one.

        A chunk this process has not heard of may have been stored by another one since: the
        index files published since are read before the chunk is called missing.
        """
        locations = self.index.all_locations(chunk)
        if not locations and self.refresh_index():
            locations = self.index.all_locations(chunk)
        return self._preferred(chunk, length, locations)

    def locate_all(self, chunks: list[bytes], lengths: "np.ndarray") -> LocationArrays:
        """``locate`` of each chunk (of ``lengths``), as arrays, the index searched for all of them at once."""
        found, others = self.index.all_locations_of(chunks)
        for k in (found.length != lengths).nonzero()[0].tolist():  # not one location of the right length (rare)
            chunk, length = chunks[k], int(lengths[k])
            locations = others[k] if k in others else [found.location(k)]
            found.put(k, self._preferred(chunk, length, locations) if locations else self.locate(chunk, length))
        return found

    def _preferred(self, chunk: bytes, length: int, locations: list[Location]) -> Location:
        if not locations:
            raise CorruptObject(f"chunk {format_id(chunk)} is missing from the store")
        location = locations[0]
        if len(locations) > 1:  # one of several copies may be hot
            location = next((loc for loc in locations if loc.pack in self.hot_packs), location)
        if location.length != length:
            raise CorruptObject(f"chunk {format_id(chunk)}: index length {location.length}, manifest {length}")
        return location

    def hot_location(self, chunk: bytes) -> Location | None:
        return next((loc for loc in self.index.all_locations(chunk) if loc.pack in self.hot_packs), None)

    def read_pack(self, pack_id: bytes, offset: int, length: int) -> bytes:
        tiers = [self.hot] if self.cold is None else \
            [self.hot, self.cold] if pack_id in self.hot_packs else [self.cold, self.hot]
        for tier in tiers:  # the other tier too: a concurrent `tier` may have just moved the pack
            try:
                data = tier.read_range(pack_key(pack_id), offset, length)
                break
            except NotFound:
                if tier is tiers[-1]:
                    raise
        if len(data) != length:
            raise CorruptObject(f"pack {pack_key(pack_id)} is truncated")
        return data

    def _describe_damage(self, file_id: bytes, manifest: FileManifest) -> str:
        for chunk, length in manifest.chunks:
            location = self.locate(chunk, length)
            if digest(self.read_pack(location.pack, location.offset, length)) != chunk:
                return (f"chunk {format_id(chunk)} in {pack_key(location.pack)} is damaged "
                        f"(content of {format_id(file_id)} does not match its id)")
        return f"manifest of {format_id(file_id)} is damaged: its chunks do not hash to its id"

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        files: dict[bytes, FileManifest] = {}
        trees: dict[bytes, TreeManifest] = {}
        for object_id, manifest in self.manifests():
            if isinstance(manifest, FileManifest):
                files[object_id] = manifest
            else:
                trees[object_id] = manifest
        in_trees = {e.file for t in trees.values() for e in t.entries}
        logical = sum(t.size for t in trees.values()) + sum(
            m.size for object_id, m in files.items() if object_id not in in_trees)
        sizes = {k: self.home.size(k) for prefix in ("packs", "index", "manifests") for k in self.home.list(prefix)}
        hot = sum(self.hot.size(k) for k in self.hot.list("packs")) if self.shared else \
            sum(n for k, n in sizes.items() if k.startswith("packs/"))
        cold_only = {} if self.cold is None or self.shared else \
            {k: self.cold.size(k) for k in self.cold.list("packs") if k not in sizes}
        return StoreStats(
            logical_bytes=logical,
            stored_bytes=sum(sizes.values()) + sum(cold_only.values()),
            hot_pack_bytes=hot,
            cold_pack_bytes=sum(cold_only.values()) if not self.shared else
            sum(n for k, n in sizes.items() if k.startswith("packs/")),
            chunk_bytes=sum(loc.length for loc in self.index.locations.values()),
            chunks=len(self.index.locations),
            packs=len(self.index.packs),
            files=len(files),
            trees=len(trees),
        )


def default_cache(url: str) -> Path:
    return Path.home() / ".cache" / "artifactstore" / blake3.blake3(url.encode()).hexdigest()[:16]


def _new_destination(dest: str | os.PathLike) -> Path:
    target = Path(dest)
    if target.exists() or target.is_symlink():
        raise InvalidInput(f"destination already exists: {target}")
    if not target.parent.is_dir():
        raise NotFound(f"destination directory does not exist: {target.parent}")
    return target
