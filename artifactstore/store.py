"""The content-addressed store: put files and trees in, get them back, verify, count."""

import json
import mmap
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path

import blake3

from . import chunking
from .backend import Backend, LocalBackend
from .errors import CorruptObject, InvalidInput, InvalidParameter, NotFound, StoreError
from .gc import GcOperations
from .guard import checksum
from .ids import digest, format_id, parse_id, tree_digest
from .index import ChunkIndex, write_index
from .load import LoaderOperations
from .manifest import FileManifest, TreeEntry, TreeManifest, check_relative_path, decode_manifest, manifest_key
from .pack import TARGET_SIZE, PackWriter, pack_id_from_key, pack_key, read_trailer
from .registry import RegistryOperations
from .remote import is_url, mask_secrets, mask_url, open_backend
from .reports import RegistryQueries
from .tiers import TierOperations
from .verify import verify_store

CONFIG_KEY = "artifactstore.json"
DEFAULT_KEEP_HOT = 3
FORMAT_VERSION = 2  # 2: packs may hold padding entries (docs/format.md); 1 is read, and upgraded on a put
READ_SEGMENT = 16 << 20
HASH_BATCH = 128  # chunks hashed per task: about 8 MiB
# A put lays each new chunk out at its file offset modulo this, padding the pack where needed:
# safetensors aligns tensors in the file, and a tensor mapped from a pack keeps that alignment.
PACK_ALIGNMENT = 64

Progress = Callable[[int], None]


def _no_progress(_: int) -> None:
    pass


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


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    problems: list[str]
    repaired: list[str]


@dataclass(frozen=True)
class _InputFile:
    path: str
    source: Path
    size: int


def _collect_inputs(root: Path) -> list[_InputFile]:
    """Every regular file under ``root``, checked readable; refuses anything else."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise NotFound(f"no such file or directory: {root}") from None
    if stat.S_ISDIR(st.st_mode):
        found = []
        for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = Path(dirpath, name)
                st = os.lstat(full)
                if stat.S_ISDIR(st.st_mode):
                    continue
                _check_regular(full, st)
                found.append(_InputFile(_tree_path(full.relative_to(root)), full, st.st_size))
        return sorted(found, key=lambda f: f.path)
    _check_regular(root, st)
    return [_InputFile(root.name, root, st.st_size)]


def _raise_walk_error(exc: OSError) -> None:
    raise InvalidInput(f"cannot read directory {exc.filename}: {exc.strerror}")


def _check_regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInput(f"symlinks are not stored: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"not a regular file (device, fifo or socket): {path}")
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None


def _tree_path(relative: Path) -> str:
    text = relative.as_posix()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"file name is not valid UTF-8: {relative}") from None
    check_relative_path(text)
    return text


class _PutSession:
    """The packs one put writes: dedup against the index, roll packs at the target size."""

    def __init__(self, backend: Backend, index: ChunkIndex, *, condemned: set[bytes], restore: bool = False):
        self._backend = backend
        self.guarded = isinstance(backend, LocalBackend)  # packs in a local directory get guards
        self._index = index
        self._condemned = condemned  # packs gc will delete: never deduplicate against them
        self._restore = restore  # write chunks the index knows too: copies into the hot tier
        self._writer: PackWriter | None = None
        self._in_open_pack: set[bytes] = set()
        # Sealed packs are fsynced and renamed in the background while the next one fills.
        self._publisher = ThreadPoolExecutor(1)
        self._publishing: list = []
        self.finished: list = []
        self.new_bytes = 0

    def add(self, chunk: bytes, data, *, data_checksum: int | None = None, file_offset: int | None = None) -> None:
        """Store a chunk unless it is stored already. ``file_offset``: where it lies in its file,
        to lay it out at the same offset modulo PACK_ALIGNMENT (so that tensors mapped from the
        pack are as aligned as in the file). ``data_checksum``: see ``PackWriter.add``."""
        if (self._stored(chunk) and not self._restore) or chunk in self._in_open_pack:
            return
        if self._writer is None:
            self._writer = PackWriter(self._backend, guarded=self.guarded)
        if file_offset is not None:
            self._writer.pad((file_offset - self._writer.size) % PACK_ALIGNMENT)
        self._writer.add(chunk, data, data_checksum=data_checksum)
        self._in_open_pack.add(chunk)
        self.new_bytes += len(data)
        if self._writer.size >= TARGET_SIZE:
            self._close_pack()

    def _stored(self, chunk: bytes) -> bool:
        return chunk in self._index and any(
            loc.pack not in self._condemned for loc in self._index.all_locations(chunk))

    def _close_pack(self) -> None:
        writer, self._writer = self._writer, None
        pack_id = writer.seal()
        self._index.add_pack(pack_id, writer.entries)  # the caller drops the index if the put fails
        self._in_open_pack.clear()
        self.finished.append((pack_id, writer.entries))
        self._publishing.append(self._publisher.submit(writer.publish))

    def commit(self) -> None:
        """Publish every pack, then the index file that lists them."""
        if self._writer is not None:
            self._close_pack()
        with self._publisher:
            for publishing in self._publishing:
                publishing.result()
        if self.finished:
            write_index(self._backend, self.finished)

    def abort(self) -> None:
        self._publisher.shutdown(wait=True)
        if self._writer is not None:
            self._writer.discard()


class Store(LoaderOperations, GcOperations, TierOperations, RegistryOperations, RegistryQueries):
    """A store on a local directory: content-addressed data plus the version registry.

    Open an existing one with ``Store(path)``, create one with ``Store.init(path)``. Packs
    live in the hot tier (the store directory) or, with a cold tier, in object storage.
    """

    def __init__(self, location: str | os.PathLike, *, cache: str | os.PathLike | None = None):
        """Open the store at a directory, or at an object-storage URL shared by many machines.

        A shared store (``s3://bucket/prefix``) keeps everything in the bucket; this machine's
        hot tier is a cache directory: ``cache``, else ``$ARTIFACTSTORE_CACHE``, else
        ``~/.cache/artifactstore/<hash of the URL>``.
        """
        self.location = str(location)
        shared = is_url(self.location)
        self.backend: Backend = open_backend(self.location) if shared else LocalBackend(Path(location))
        try:
            config = json.loads(self.backend.read(CONFIG_KEY))
        except NotFound:
            raise StoreError(f"{self.location} is not an artifactstore store (run `artifactstore init`)") from None
        except ValueError:
            raise StoreError(f"{self.location}/{CONFIG_KEY} is not valid JSON") from None
        if config.get("format") != "artifactstore" or config.get("version") not in (1, FORMAT_VERSION):
            raise StoreError(f"{self.location} has an unsupported store format: {config.get('version')!r}")
        self._config = config
        self.chunker = chunking.ChunkerParams(**config["chunker"])
        tiers = config.get("tiers", {})
        self.keep_hot: int = tiers.get("keep_hot", DEFAULT_KEEP_HOT)
        if shared:
            self.path = Path(cache or os.environ.get("ARTIFACTSTORE_CACHE") or default_cache(self.location))
            self.path.mkdir(parents=True, exist_ok=True)
            self.hot: LocalBackend = LocalBackend(self.path)
            self.cold_url: str | None = self.location
            self.cold: Backend | None = self.backend
        else:
            self.path = Path(location)
            self.hot = self.backend
            self.cold_url = tiers.get("cold")
            self.cold = open_backend(self.cold_url) if self.cold_url else None
        self._index: ChunkIndex | None = None
        self._hot_packs: set[bytes] | None = None

    @property
    def shared(self) -> bool:
        return self.hot is not self.backend

    @classmethod
    def init(cls, location: str | os.PathLike, chunker: chunking.ChunkerParams = chunking.DEFAULT_PARAMS, *,
             cold: str | None = None, keep_hot: int = DEFAULT_KEEP_HOT, cache: str | os.PathLike | None = None
             ) -> "Store":
        """Create a store in a new or empty directory, or at an object-storage URL (a shared store).

        ``cold`` is a directory or fsspec URL for the cold tier of a directory store.
        """
        if type(keep_hot) is not int or keep_hot < 0:
            raise InvalidParameter(f"--keep-hot must be a whole number >= 0, not {keep_hot!r}")
        if is_url(str(location)):
            if cold is not None:
                raise InvalidParameter("a shared store lives in object storage already: it takes no --cold")
            backend = open_backend(str(location))
            if backend.exists(CONFIG_KEY):
                raise StoreError(f"{location} is already a store")
        else:
            root = Path(location)
            if (root / CONFIG_KEY).exists():
                raise StoreError(f"{root} is already a store")
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise StoreError(f"{root} exists and is not an empty directory")
            for sub in ("tmp", "packs", "index", "manifests"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            backend = LocalBackend(root)
            if cold is not None and not is_url(cold):
                cold = str(Path(cold).resolve())
        config = {"format": "artifactstore", "version": FORMAT_VERSION, "chunker": asdict(chunker),
                  "tiers": {"cold": cold, "keep_hot": keep_hot}}
        backend.write(CONFIG_KEY, json.dumps(config, sort_keys=True, indent=1).encode())
        return cls(location, cache=cache)

    @property
    def index(self) -> ChunkIndex:
        """The store's index, plus this machine's cache index for a shared store."""
        if self._index is None:
            self._index = ChunkIndex.load(self.backend)
            if self.shared:
                self._index.merge(ChunkIndex.load(self.hot))
        return self._index

    def effective_config(self) -> dict:
        """What this store runs with, including the AWS settings from the environment, secrets masked."""
        aws = {k: v for k, v in sorted(os.environ.items()) if k.startswith("AWS_")}
        return {"store": mask_url(self.location), "hot": str(self.path.resolve()), "format_version": self._config["version"],
                "chunker": asdict(self.chunker), "cold": mask_url(self.cold_url), "keep_hot": self.keep_hot,
                "environment": mask_secrets(aws)}

    @property
    def hot_packs(self) -> set[bytes]:
        """Ids of the packs present in the hot tier."""
        if self._hot_packs is None:
            self._hot_packs = {p for p in map(pack_id_from_key, self.hot.list("packs")) if p}
        return self._hot_packs

    def forget_hot_packs(self) -> None:
        self._hot_packs = None

    def new_put_session(self, *, restore: bool = False, backend: Backend | None = None) -> _PutSession:
        """Packs for new chunks, written to ``backend``: by default the store's own, or this machine's
        hot tier for ``restore`` sessions (copies of chunks the store already has)."""
        home = backend or (self.hot if restore else self.backend)
        if not restore and self._config["version"] < FORMAT_VERSION:
            # a put pads packs, which version-1 readers would take for damage: make them refuse the store
            self._config = {**self._config, "version": FORMAT_VERSION}
            self.backend.write(CONFIG_KEY, json.dumps(self._config, sort_keys=True, indent=1).encode())
        return _PutSession(home, self.index, condemned=self._condemned_packs(), restore=restore)

    def _condemned_packs(self) -> set[bytes]:
        return {p for p in map(pack_id_from_key, self.condemned()) if p}

    # -- put ---------------------------------------------------------------------------------

    def put(self, path: str | os.PathLike, *, progress: Progress = _no_progress) -> PutResult:
        """Store a file or a directory tree; returns its id and how many bytes were new."""
        root = Path(path)
        inputs = _collect_inputs(root)
        self._index = None  # another process (gc, above all) may have changed it since the last put
        self._index_orphan_packs()
        session = self.new_put_session()
        try:
            with ThreadPoolExecutor(2) as pool:
                files = [(f, *self._ingest_file(f.source, session, pool, progress)) for f in inputs]
            session.commit()
        except BaseException:
            session.abort()
            self._index = None  # it may name packs this put sealed but never published
            raise
        finally:
            self.forget_hot_packs()
        for _, file_id, manifest in files:
            self._publish_manifest(file_id, manifest.encode())
        object_id, tree = _root_object(root, [(f, file_id) for f, file_id, _ in files])
        if tree is not None:
            self._publish_manifest(object_id, tree)
        return PutResult(format_id(object_id), sum(f.size for f in inputs), session.new_bytes)

    def identify(self, path: str | os.PathLike) -> str:
        """The id ``put`` would return for ``path``, computed without writing anything."""
        root = Path(path)
        files = []
        for f in _collect_inputs(root):
            with open(f.source, "rb") as handle:
                files.append((f, blake3.blake3(handle.read(), max_threads=blake3.blake3.AUTO).digest()))
        return format_id(_root_object(root, files)[0])

    def _ingest_file(self, source: Path, session: _PutSession, pool: ThreadPoolExecutor,
                     progress: Progress) -> tuple[bytes, FileManifest]:
        with open(source, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return digest(b""), FileManifest(0, [])
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            data = memoryview(mapped)
            try:
                return self._ingest_buffer(data, session, pool, progress)
            except InvalidInput as exc:
                raise InvalidInput(f"{source}: {exc}") from None
            finally:
                data.release()
                try:
                    mapped.close()
                except BufferError:
                    pass  # an exception's traceback still holds slices of it: it closes when they go

    def _ingest_buffer(self, data: memoryview, session: _PutSession, pool: ThreadPoolExecutor,
                       progress: Progress) -> tuple[bytes, FileManifest]:
        file_digest = pool.submit(lambda: blake3.blake3(data).digest())
        lengths = chunking.cut(data, **self.chunker.as_kwargs())
        offsets = [0, *accumulate(lengths)]
        # The pool hashes batch k+1 while this thread writes batch k's new chunks into packs.
        batches = [(i, min(i + HASH_BATCH, len(lengths))) for i in range(0, len(lengths), HASH_BATCH)]
        hashed = [pool.submit(_hash_chunks, data, offsets, first, last, session.guarded) for first, last in batches]
        chunk_ids = []
        try:
            for (first, _), batch in zip(batches, hashed):
                for i, (chunk, data_checksum) in enumerate(batch.result(), first):
                    session.add(chunk, data[offsets[i]:offsets[i + 1]], data_checksum=data_checksum,
                                file_offset=offsets[i])
                    progress(lengths[i])
                    chunk_ids.append(chunk)
        except BaseException:
            for task in [*hashed, file_digest]:  # they read ``data``: let them finish before it is released
                task.cancel() or task.exception()
            raise
        return file_digest.result(), FileManifest(len(data), list(zip(chunk_ids, lengths)))

    def _publish_manifest(self, object_id: bytes, encoded: bytes) -> None:
        key = manifest_key(object_id)
        if not self.backend.exists(key) or key in self.condemned():
            self.backend.write(key, encoded)  # rewriting a condemned one makes it young again for gc

    def _index_orphan_packs(self) -> None:
        """Index packs a crashed put published but never indexed, so that a retry reuses them."""
        orphans = []
        condemned = self._condemned_packs()
        for key in self.backend.list("packs"):
            pack_id = pack_id_from_key(key)
            if pack_id is None or pack_id in self.index.pack_entries or pack_id in condemned:
                continue
            try:
                trailer_id, entries = read_trailer(self.backend, key)
            except (CorruptObject, NotFound):
                continue  # verify reports it; never index a damaged pack
            if trailer_id == pack_id:
                orphans.append((pack_id, entries))
                self.index.add_pack(pack_id, entries)
        if orphans:
            write_index(self.backend, orphans)

    # -- get ---------------------------------------------------------------------------------

    def read_manifest(self, object_id: str) -> FileManifest | TreeManifest:
        key = manifest_key(parse_id(object_id))
        if not self.backend.exists(key):
            raise NotFound(f"no object {object_id} in the store at {self.location}")
        return decode_manifest(self.backend.read(key), key)

    def get(self, object_id: str, dest: str | os.PathLike, *, progress: Progress = _no_progress) -> None:
        """Write the file or tree ``object_id`` to ``dest``, which must not exist yet.

        Everything is written beside ``dest`` first and renamed into place once every file
        checked out against its id, so a failed get leaves nothing behind.
        """
        manifest = self.read_manifest(object_id)
        target = _new_destination(dest)
        if isinstance(manifest, FileManifest):
            self._get_file(parse_id(object_id), manifest, target, progress)
        else:
            self._materialize(manifest, target, progress)

    def checkout(self, ref: str, dest: str | os.PathLike, *, progress: Progress = _no_progress) -> Path:
        """Write a version's ``adapter_weights/`` as a PEFT / vLLM adapter directory at ``dest``."""
        tree = self.read_manifest(self.resolve(ref))
        prefix = "adapter_weights/"
        entries = [TreeEntry(e.path.removeprefix(prefix), e.size, e.file)
                   for e in getattr(tree, "entries", []) if e.path.startswith(prefix)]
        if not entries:
            raise NotFound(f"{ref} has no adapter_weights/ to check out")
        target = _new_destination(dest)
        self._materialize(TreeManifest(entries), target, progress)
        return target

    def _materialize(self, tree: TreeManifest, target: Path, progress: Progress) -> None:
        files = [(e, self.read_manifest(format_id(e.file))) for e in tree.entries]
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
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

    def _get_file(self, file_id: bytes, manifest: FileManifest, out: Path, progress: Progress) -> None:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        partial = out.with_name(f".{out.name}.partial")
        try:
            with open(partial, "xb") as f:
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
            location = self._locate(chunk, length)
            contiguous = location.pack == run_pack and location.offset == run_start + run_length
            if contiguous and run_length + length <= READ_SEGMENT:
                run_length += length
                continue
            if run_pack is not None:
                yield self._read_pack(run_pack, run_start, run_length)
            run_pack, run_start, run_length = location.pack, location.offset, length
        if run_pack is not None:
            yield self._read_pack(run_pack, run_start, run_length)

    def _locate(self, chunk: bytes, length: int):
        """Where to read a chunk: a hot copy if there is one."""
        location = self.index.locations.get(chunk)
        if location is None:
            raise CorruptObject(f"chunk {format_id(chunk)} is missing from the store")
        if chunk in self.index.alternates:  # one of several copies may be hot
            location = self.hot_location(chunk) or location
        if location.length != length:
            raise CorruptObject(f"chunk {format_id(chunk)}: index length {location.length}, manifest {length}")
        return location

    def hot_location(self, chunk: bytes):
        return next((loc for loc in self.index.all_locations(chunk) if loc.pack in self.hot_packs), None)

    def _read_pack(self, pack_id: bytes, offset: int, length: int) -> bytes:
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
            location = self._locate(chunk, length)
            if digest(self._read_pack(location.pack, location.offset, length)) != chunk:
                return (f"chunk {format_id(chunk)} in {pack_key(location.pack)} is damaged "
                        f"(content of {format_id(file_id)} does not match its id)")
        return f"manifest of {format_id(file_id)} is damaged: its chunks do not hash to its id"

    def verify(self, *, tier: str = "all", sample: float = 100.0, repair: bool = False,
               progress: Progress = _no_progress) -> VerifyReport:
        """Re-hash chunks and check index files, manifests and the registry; name what is damaged.

        See ``verify_store`` for ``tier``, ``sample`` and ``repair``.
        """
        problems, repairs = verify_store(self, progress, tier=tier, sample=sample, repair=repair)
        self.forget_hot_packs()
        return VerifyReport(not problems, problems, repairs)

    # -- stats -------------------------------------------------------------------------------

    def manifests(self) -> Iterator[tuple[bytes, FileManifest | TreeManifest]]:
        for key in self.backend.list("manifests"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            yield bytes.fromhex(name), decode_manifest(self.backend.read(key), key)

    def stats(self) -> StoreStats:
        files, trees = {}, {}
        for object_id, manifest in self.manifests():
            (files if isinstance(manifest, FileManifest) else trees)[object_id] = manifest
        in_trees = {e.file for t in trees.values() for e in t.entries}
        logical = sum(t.size for t in trees.values()) + sum(
            m.size for object_id, m in files.items() if object_id not in in_trees)
        sizes = {k: self.backend.size(k) for prefix in ("packs", "index", "manifests")
                 for k in self.backend.list(prefix)}
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


def _root_object(root: Path, files: list[tuple[_InputFile, bytes]]) -> tuple[bytes, bytes | None]:
    """The id of what was put (a file, or a tree of files) and the tree manifest if it is a tree."""
    if not root.is_dir():
        return files[0][1], None
    encoded = TreeManifest([TreeEntry(f.path, f.size, file_id) for f, file_id in files]).encode()
    return tree_digest(encoded), encoded


def _hash_chunks(data: memoryview, offsets: list[int], first: int, last: int,
                 guarded: bool) -> list[tuple[bytes, int | None]]:
    """(BLAKE3, xxh3 if ``guarded``) of each chunk; the xxh3 first, so that a guard can never
    vouch for bytes that changed after their BLAKE3 was taken."""
    hashed = []
    for i in range(first, last):
        piece = data[offsets[i]:offsets[i + 1]]
        data_checksum = checksum(piece) if guarded else None
        hashed.append((blake3.blake3(piece).digest(), data_checksum))
    return hashed
