"""A put's machinery: collect the input files, chunk and hash them, write new chunks into packs.

``PackSession`` is what every writer of packs uses (a put, a pull or tiering copying chunks into
the hot tier, gc repacking): it deduplicates against the index, rolls packs at the target size,
and publishes packs and then one index file listing them.
"""

import mmap
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import blake3

from ..backends import Backend
from ..errors import InvalidInput, NotFound
from ..ids import digest, tree_digest
from ..progress import Progress
from . import chunking
from .guard import checksum
from .index import ChunkIndex, write_index
from .manifest import FileManifest, TreeEntry, TreeManifest, check_relative_path
from .pack import INPUT_CHANGED, TARGET_SIZE, PackWriter
from .pending import SessionMarker

# A put cuts a file this many bytes at a time (about 128 chunks, one task of the hashing pool):
# hashing, writing and the disk start after the first block, not after the whole file is cut.
CUT_BLOCK = 8 << 20
FIRST_BLOCK = 1 << 20  # then 2, 4, 8 MiB: the first write waits for a MiB's cut and hashes, not 8 MiB's
LOOKAHEAD = 2  # blocks cut and being hashed beyond the one being stored
PROBES = 8  # chunks probed (besides the first) to guess whether a file is stored whole
PROBE_WINDOW_CHUNKS = 4  # each probe cuts this many maximal chunks' worth of bytes
# A put lays each new chunk out at its file offset modulo this (a page), padding the pack where
# needed: a load maps the pages of a file's packs side by side in one buffer laid out as the file
# is, which works where chunks lie at the same offset modulo the page size in the pack as in the
# file; tensors keep the alignment safetensors gave them in the file. A file smaller than a page
# has no page to map: its chunk is only kept at its offset modulo SMALL_FILE_ALIGNMENT.
PACK_ALIGNMENT = 4096
SMALL_FILE_ALIGNMENT = 64
# A pack's first chunk lies at its file offset modulo a huge page (2 MiB on x86-64 and arm64 with
# 4 KiB pages) where that takes at most PACK_START_SLACK bytes of padding. So does the first new
# chunk of a file of at least a huge page, if it lies in the file's first block (CUT_BLOCK); where
# it cannot, it closes the open pack and starts the next one if that can (a bundle's small files
# open the pack its weights would otherwise start in). A put closes a full pack (TARGET_SIZE) at
# the first chunk after which the next can start so, and once it holds TARGET_SIZE + PACK_OVERRUN
# at the latest. Most pages of a new file then share one offset modulo the huge page, so a load
# maps the page cache's 2 MiB folios with one page-table entry each: faulting a 210 MB adapter in
# took 4.7 ms instead of 10 on this project's machine.
HUGE_ALIGNMENT = 2 << 20
PACK_START_SLACK = 128 << 10
PACK_OVERRUN = 8 << 20


FileChunk = tuple[bytes, int, int, int]  # digest, offset in its file, length, xxh3


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

    def __init__(self, backend: Backend, index: ChunkIndex, *, condemned: set[bytes], restore: bool = False,
                 marker: SessionMarker | None = None):
        self._backend = backend
        self._marker = marker  # written before the first pack is published, removed after the index file
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

    def add(self, chunk: bytes, data) -> None:
        """Store a chunk, already checked against its digest, unless it is stored already."""
        if not self._wanted(chunk):
            return
        if self._writer is None:
            self._writer = self._new_writer()
        self._writer.add(chunk, data)
        self._in_open_pack.add(chunk)
        self.new_bytes += len(data)
        if self._writer.size >= TARGET_SIZE:
            self._close_pack()

    def add_file_chunks(self, data: memoryview, chunks: list[FileChunk], *, file_start: bool) -> list[FileChunk]:
        """Store the chunks of a file (``data``) that are not stored yet: (digest, file offset,
        length, xxh3 taken before the digest) in file order. Each run of new chunks that follow
        each other in the file is written with one write, at a pack offset congruent to its file
        offset modulo PACK_ALIGNMENT (SMALL_FILE_ALIGNMENT for a file smaller than that), or
        modulo HUGE_ALIGNMENT where it starts a pack or the file's new chunks, as the comment at
        HUGE_ALIGNMENT says (``file_start``: ``chunks`` begin the file). Returns the chunks it did
        not write."""
        alignment = PACK_ALIGNMENT if len(data) >= PACK_ALIGNMENT else SMALL_FILE_ALIGNMENT
        opens_large_file = file_start and len(data) >= HUGE_ALIGNMENT
        skipped: list[FileChunk] = []
        run: list[FileChunk] = []
        for entry in chunks:
            chunk, offset, length, _ = entry
            if not self._wanted(chunk):
                skipped.append(entry)
                continue
            if run and run[-1][1] + run[-1][2] != offset:
                self._write_run(data, run)
                run = []
            writer = self._writer if run else self._writer_at(offset, alignment, opens_large_file)
            opens_large_file = False
            assert writer is not None
            run.append(entry)
            self._in_open_pack.add(chunk)
            self.new_bytes += length
            if _closes(writer.size + offset + length - run[0][1], offset + length):
                self._write_run(data, run)
                run = []
                self._close_pack()
        if run:
            self._write_run(data, run)
        return skipped

    def settle(self) -> None:
        """Wait for the writes from the caller's memory and check them (``PackWriter.add_run``):
        a put calls it before it lets go of the file it mapped."""
        if self._writer is not None:
            self._writer.settle()

    def _wanted(self, chunk: bytes) -> bool:
        return not (self.stored(chunk) and not self._restore) and chunk not in self._in_open_pack

    def stored(self, chunk: bytes) -> bool:
        """Whether a chunk is stored in a pack that gc is not about to delete."""
        return chunk_stored(self._index, self._condemned, chunk)

    def _writer_at(self, file_offset: int, alignment: int, opens_large_file: bool) -> PackWriter:
        """The pack for a chunk from ``file_offset``, padded so that the chunk keeps its
        ``alignment``, or its offset modulo HUGE_ALIGNMENT where that is cheap (HUGE_ALIGNMENT)."""
        if self._writer is not None and self._writer.size and opens_large_file:
            if (file_offset - self._writer.size) % HUGE_ALIGNMENT <= PACK_START_SLACK:
                alignment = HUGE_ALIGNMENT
            elif file_offset % HUGE_ALIGNMENT <= PACK_START_SLACK:
                self._close_pack()
        if self._writer is None:
            self._writer = self._new_writer()
            if file_offset % HUGE_ALIGNMENT <= PACK_START_SLACK:
                alignment = HUGE_ALIGNMENT
        self._writer.pad((file_offset - self._writer.size) % alignment)
        return self._writer

    def _new_writer(self) -> PackWriter:
        # A put's new packs go around the page cache where the backend can (direct I/O): the
        # machine that puts is seldom the one that loads, and the copy into the cache was a quarter
        # of a put's CPU. A restore copies chunks into this machine's hot tier for loads that follow.
        return PackWriter(self._backend, guarded=self.guarded, cached=self._restore)

    def _write_run(self, data: memoryview, run: list[FileChunk]) -> None:
        assert self._writer is not None
        begin, end = run[0][1], run[-1][1] + run[-1][2]
        self._writer.add_run(data[begin:end], [(chunk, length, xxh3) for chunk, _, length, xxh3 in run])

    def _close_pack(self) -> None:
        writer, self._writer = self._writer, None
        assert writer is not None
        try:
            pack_id = writer.seal()
        except BaseException:
            writer.discard()
            raise
        self._index.add_pack(pack_id, writer.entries)  # the caller drops the index if the put fails
        self._in_open_pack.clear()
        self.finished.append((pack_id, writer.entries))
        self._publishing.append(self._publisher.submit(self._publish, writer))

    def _publish(self, writer: PackWriter) -> None:
        if self._marker is not None:
            try:
                self._marker.write()
            except BaseException:
                writer.discard()
                raise
        writer.publish()

    def commit(self) -> None:
        """Publish every pack, then the index file that lists them."""
        if self._writer is not None:
            self._close_pack()
        with self._publisher:
            for publishing in self._publishing:
                publishing.result()
        if self.finished:
            self.index_file = write_index(self._backend, self.finished)
        if self._marker is not None:
            self._marker.remove()

    def abort(self) -> None:
        self._publisher.shutdown(wait=True)
        if self._writer is not None:
            self._writer.discard()
        if self._marker is not None:
            self._marker.end()


def chunk_stored(index: ChunkIndex, condemned: set[bytes], chunk: bytes) -> bool:
    """Whether ``index`` has a chunk in a pack that is not ``condemned`` (gc is about to delete those)."""
    return chunk in index and any(loc.pack not in condemned for loc in index.all_locations(chunk))


def _closes(held: int, next_offset: int) -> bool:
    """Whether a pack holding ``held`` bytes closes before the chunk at file offset ``next_offset``."""
    return held >= TARGET_SIZE and (next_offset % HUGE_ALIGNMENT <= PACK_START_SLACK
                                    or held >= TARGET_SIZE + PACK_OVERRUN)


class Workers(NamedTuple):
    """The threads of a put's pipeline, shared by its files: ``hashing`` (two: each block's chunks),
    ``digester`` (one: a file's BLAKE3 is one sequential hash) and ``storer`` (one: packs are
    written in file order)."""

    hashing: ThreadPoolExecutor
    digester: ThreadPoolExecutor
    storer: ThreadPoolExecutor


@contextmanager
def put_workers() -> Iterator[Workers]:
    with ThreadPoolExecutor(2) as hashing, ThreadPoolExecutor(1) as digester, ThreadPoolExecutor(1) as storer:
        yield Workers(hashing, digester, storer)


def ingest_file(source: Path, chunker: chunking.ChunkerParams, session: PackSession, workers: Workers,
                progress: Progress, stored: Callable[[bytes, int], FileManifest | None],
                known_id: bytes | None = None) -> tuple[bytes, FileManifest]:
    """Chunk and hash one file, adding its new chunks to ``session``: (file digest, manifest).

    ``stored(file id, size)`` is the manifest of a file the store holds whole, if it does. When
    chunks probed over the file are all stored already (a re-put, most likely), its digest is
    taken first, and a file found stored costs nothing more: no cut, no chunk hashed. A
    ``known_id`` (the caller hashed the file a moment ago) stands for that digest.
    """
    with _mapped(source) as data:
        if not data:
            return digest(b""), FileManifest(0, [])
        try:
            file_id = known_id or _id_if_probably_stored(data, chunker, session.stored)
            if file_id is not None:
                manifest = stored(file_id, len(data))
                if manifest is not None:
                    progress(len(data))
                    return file_id, manifest
            return _ingest_buffer(data, chunker, session, workers, progress)
        except InvalidInput as exc:
            raise InvalidInput(f"{source}: {exc}") from None


def hash_if_probably_stored(source: Path, chunker: chunking.ChunkerParams,
                            stored_chunk: Callable[[bytes], bool]) -> tuple[bytes, int] | None:
    """(id, size) of a file whose probed chunks are all stored; None, without hashing it, for a
    file that does not look stored (``_probably_stored``)."""
    with _mapped(source) as data:
        file_id = _id_if_probably_stored(data, chunker, stored_chunk) if data else digest(b"")
        return None if file_id is None else (file_id, len(data))


@contextmanager
def _mapped(source: Path) -> Iterator[memoryview]:
    """A file's bytes, memory-mapped (empty for an empty file, which cannot be mapped)."""
    with open(source, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        data = memoryview(mapped)
        try:
            yield data
        finally:
            data.release()
            try:
                mapped.close()
            except BufferError:
                pass  # an exception's traceback still holds slices of it: it closes when they go


def _id_if_probably_stored(data: memoryview, chunker: chunking.ChunkerParams,
                           stored_chunk: Callable[[bytes], bool]) -> bytes | None:
    """The file's BLAKE3 if a few chunks probed over it are all stored, else None."""
    if not _probably_stored(data, chunker, stored_chunk):
        return None
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()


def _probably_stored(data: memoryview, chunker: chunking.ChunkerParams, stored_chunk: Callable[[bytes], bool]) -> bool:
    """Whether a few chunks spread over the file are all stored: a cheap guess (a few cuts of
    a MiB, stopping at the first chunk not stored) that the whole file is. Its first chunk is
    exact; each other probe cuts a window of the file and takes the last whole chunk it finds,
    which is one of the file's own chunks unless the content is pathological (cut points
    resynchronise within a chunk or two). A wrong guess costs time, nothing else."""
    params = chunker.as_kwargs()
    window = PROBE_WINDOW_CHUNKS * chunker.max_size

    def probes() -> Iterator[tuple[int, int]]:
        yield 0, chunking.cut(data[:chunker.max_size], **params)[0]
        for k in range(1, PROBES + 1):
            start = max(0, len(data) * k // PROBES - window)
            lengths = chunking.cut(data[start:start + window], **params)
            if start + window < len(data):
                lengths.pop()  # cut short by the window's end
            if lengths:
                yield start + sum(lengths[:-1]), lengths[-1]

    return all(stored_chunk(digest(data[offset:offset + length])) for offset, length in probes())


def _ingest_buffer(data: memoryview, chunker: chunking.ChunkerParams, session: PackSession,
                   workers: Workers, progress: Progress) -> tuple[bytes, FileManifest]:
    """One pass of a pipeline over the file, block by block: this thread cuts block k+2 while the
    hashing threads hash blocks k+1 and k+2 (each chunk's xxh3, then its BLAKE3), the digester adds block
    k to the file's BLAKE3, and the storer writes block k's new chunks into packs. The cut and the
    writes each cost about a third of a put's CPU: on one thread they made it the pipeline's
    slowest stage.

    Every chunk's xxh3 is taken before any other read of its bytes (its BLAKE3, the file's digest,
    the write into a pack) and again after all of them: a chunk written is checked after its
    write (``PackWriter.add``), a chunk already stored here. If the input changed meanwhile, the
    put fails rather than store a file id, chunk ids or bytes that disagree.
    """
    file_hash = blake3.blake3()
    offsets = [0]  # each chunk's offset, then the end of the last chunk cut so far
    chunk_ids: list[bytes] = []
    blocks: deque[tuple[Future, Future, Future]] = deque()  # each block's store, hashing and digest
    stored: Future | None = None
    try:
        for lengths in chunking.cut_blocks(data, **chunker.as_kwargs(), block_size=CUT_BLOCK, first_block=FIRST_BLOCK):
            first = len(offsets) - 1
            for length in lengths:
                offsets.append(offsets[-1] + length)
            hashed = workers.hashing.submit(_hash_chunks, data, offsets, first, len(offsets) - 1)
            digested = workers.digester.submit(_add_to_digest, file_hash, data, hashed, offsets[first], offsets[-1])
            stored = workers.storer.submit(_store_block, data, offsets, session, progress, first, len(offsets) - 1,
                                           hashed, digested, stored)
            blocks.append((stored, hashed, digested))
            if len(blocks) > LOOKAHEAD:
                chunk_ids += blocks.popleft()[0].result()
        while blocks:
            chunk_ids += blocks.popleft()[0].result()
        session.settle()
    except BaseException:
        for tasks in blocks:  # they read ``data``: let them finish before it is released
            for task in tasks:
                task.cancel() or task.exception()
        raise
    lengths = [end - begin for begin, end in zip(offsets, offsets[1:])]
    return file_hash.digest(), FileManifest(len(data), list(zip(chunk_ids, lengths)))


def _add_to_digest(file_hash: blake3.blake3, data: memoryview, hashed: Future, begin: int, end: int) -> None:
    hashed.result()  # the block's xxh3 come first
    file_hash.update(data[begin:end])


def _store_block(data: memoryview, offsets: list[int], session: PackSession, progress: Progress, first: int,
                 last: int, hashed: Future, digested: Future, before: Future | None) -> list[bytes]:
    """Add a block's new chunks to ``session`` once every other read of them is done, check the
    chunks it had already against their xxh3, and return the block's chunk ids. Nothing is added
    after the store of the block ``before`` it failed: the pack it was writing is inconsistent."""
    if before is not None and (before.cancelled() or before.exception() is not None):
        raise CancelledError()  # the storer runs blocks in order: ``before`` is done
    digested.result()
    hashes = hashed.result()
    chunks = [(chunk, offsets[i], offsets[i + 1] - offsets[i], xxh3) for i, (chunk, xxh3) in enumerate(hashes, first)]
    for _, offset, length, xxh3 in session.add_file_chunks(data, chunks, file_start=first == 0):
        if checksum(data[offset:offset + length]) != xxh3:
            raise InvalidInput(INPUT_CHANGED)
    progress(offsets[last] - offsets[first])
    return [chunk for chunk, _ in hashes]


def root_object(root: Path, files: list[tuple[InputFile, bytes]]) -> tuple[bytes, bytes | None]:
    """The id of what was put (a file, or a tree of files) and the tree manifest if it is a tree."""
    if not root.is_dir():
        return files[0][1], None
    encoded = TreeManifest([TreeEntry(f.path, f.size, file_id) for f, file_id in files]).encode()
    return tree_digest(encoded), encoded


def _hash_chunks(data: memoryview, offsets: list[int], first: int, last: int) -> list[tuple[bytes, int]]:
    """(BLAKE3, xxh3) of chunks ``first`` to ``last - 1``; the xxh3 first, so that neither a guard
    nor the put's checks can vouch for bytes that changed after their BLAKE3 was taken."""
    hashed = []
    for i in range(first, last):
        piece = data[offsets[i]:offsets[i + 1]]
        data_checksum = checksum(piece)
        hashed.append((blake3.blake3(piece).digest(), data_checksum))
    return hashed
