"""A put's machinery: collect the input files, chunk and hash them, write new chunks into packs.

``PackSession`` is what every writer of packs uses (a put, a pull or tiering copying chunks into
the hot tier, gc repacking): it deduplicates against the index, rolls packs at the target size,
and publishes packs and then one index file listing them.
"""

import mmap
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import blake3

from ..backends import Backend
from ..errors import InvalidInput, NotFound
from ..ids import digest, tree_digest
from ..progress import Progress
from . import chunking
from .guard import checksum
from .index import ChunkIndex, write_index
from .manifest import FileManifest, TreeEntry, TreeManifest, check_relative_path
from .pack import TARGET_SIZE, PackWriter

HASH_BATCH = 128  # chunks hashed per task: about 8 MiB
# A put lays each new chunk out at its file offset modulo this, padding the pack where needed:
# safetensors aligns tensors in the file, and a tensor mapped from a pack keeps that alignment.
PACK_ALIGNMENT = 64


@dataclass(frozen=True)
class InputFile:
    path: str
    source: Path
    size: int


def collect_inputs(root: Path) -> list[InputFile]:
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
                found.append(InputFile(_tree_path(full.relative_to(root)), full, st.st_size))
        return sorted(found, key=lambda f: f.path)
    _check_regular(root, st)
    return [InputFile(root.name, root, st.st_size)]


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


class PackSession:
    """The packs one writer writes: dedup against the index, roll packs at the target size.

    Use it through ``ContentStore.pack_session``, which commits it or, on an error, aborts it.
    """

    def __init__(self, backend: Backend, index: ChunkIndex, *, condemned: set[bytes], restore: bool = False):
        self._backend = backend
        self.guarded = backend.capabilities.local_directory is not None  # guards never leave the machine
        self._index = index
        self._condemned = condemned  # packs gc will delete: never deduplicate against them
        self._restore = restore  # write chunks the index knows too: copies into the hot tier
        self._writer: PackWriter | None = None
        self._in_open_pack: set[bytes] = set()
        # Sealed packs are fsynced and renamed in the background while the next one fills.
        self._publisher = ThreadPoolExecutor(1)
        self._publishing: list = []
        self.finished: list = []
        self.index_file: str | None = None  # the key of the index file commit wrote
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
        assert writer is not None
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
            self.index_file = write_index(self._backend, self.finished)

    def abort(self) -> None:
        self._publisher.shutdown(wait=True)
        if self._writer is not None:
            self._writer.discard()


def ingest_file(source: Path, chunker: chunking.ChunkerParams, session: PackSession, pool: ThreadPoolExecutor,
                progress: Progress) -> tuple[bytes, FileManifest]:
    """Chunk and hash one file, adding its new chunks to ``session``: (file digest, manifest)."""
    with open(source, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return digest(b""), FileManifest(0, [])
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        data = memoryview(mapped)
        try:
            return _ingest_buffer(data, chunker, session, pool, progress)
        except InvalidInput as exc:
            raise InvalidInput(f"{source}: {exc}") from None
        finally:
            data.release()
            try:
                mapped.close()
            except BufferError:
                pass  # an exception's traceback still holds slices of it: it closes when they go


def _ingest_buffer(data: memoryview, chunker: chunking.ChunkerParams, session: PackSession,
                   pool: ThreadPoolExecutor, progress: Progress) -> tuple[bytes, FileManifest]:
    file_digest = pool.submit(lambda: blake3.blake3(data).digest())
    lengths = chunking.cut(data, **chunker.as_kwargs())
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
        tasks: list[Future] = [*hashed, file_digest]
        for task in tasks:  # they read ``data``: let them finish before it is released
            task.cancel() or task.exception()
        raise
    return file_digest.result(), FileManifest(len(data), list(zip(chunk_ids, lengths)))


def root_object(root: Path, files: list[tuple[InputFile, bytes]]) -> tuple[bytes, bytes | None]:
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
