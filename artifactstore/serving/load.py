"""Load safetensors weights straight from the store into numpy arrays or torch tensors.

``Loader(content).load(object_id)``. On the CPU, a tensor whose chunks lie back to back
in one local pack file is a view of that pack, memory-mapped copy-on-write: nothing is copied, the
pages are the page cache's (shared by every process that loads the same version), and writing to
a tensor never reaches the pack. Every other tensor (its chunks split between packs, or a pack in
another tier), and every tensor bound for CUDA, is read with ``os.preadv`` into one destination
buffer per file (pinned host memory for CUDA). The loading thread and the loader's checker threads
re-hash every chunk a load uses against its digest, each taking runs of chunks in turn; nothing is
returned unless every byte checked out.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any

import blake3
import ml_dtypes
import numpy as np

from ..content.fetch import make_hot
from ..content.guard import Guard, decode_guard, guard_key
from ..content.index import Location
from ..content.manifest import FileManifest, manifest_key
from ..content.pack import pack_key
from ..content.store import ContentStore
from ..content.tensorfile import SafetensorsHeader, TensorInfo, read_header
from ..errors import CorruptObject, InvalidInput, InvalidParameter, NotFound
from ..ids import format_id, parse_id
from ..native import _checksum, _mapping

WEIGHTS_DIR = "adapter_weights/"
WEIGHTS_SUFFIX = ".safetensors"
FRAMEWORKS = ("numpy", "torch")
# A run is read (where not mapped) and then hashed by the same thread: small enough that a load
# splits into many runs for the threads and a run stays in cache, large enough that the
# per-run cost does not show (1 to 16 MiB measured within noise on a 210 MB adapter).
RUN_LIMIT = 8 << 20
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: those it may run on, fewer under a CPU quota of cgroup v2
    (``cpu.max``, as a container sees it: a 2-CPU limit on a 64-core host is 2)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):  # no cgroup v2 here, or not readable: the affinity stands
        pass
    return count


# Threads that read and check a load's runs besides the loading thread: one per further usable CPU,
# up to four threads in all. Two threads saturate the memory bandwidth of this project's 2-core
# machine; more were not measured.
CHECKERS = min(usable_cpus(), 4) - 1
# Pages of packs are mapped into a load's buffers wherever a whole page of the file lies in one pack.
PAGE_SIZE = _mapping.PAGE_SIZE
# A loader remembers the headers and load plans of this many files (a follower keeps a few
# versions resident; a server may hold a few dozen adapters).
FILES_REMEMBERED = 64

# safetensors dtype -> numpy dtype. A dtype numpy cannot represent (the packed F4 and F6 formats,
# F8_E8M0 before ml_dtypes 0.5) comes back as the tensor's raw bytes: a flat uint8 array.
NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64, "C64": np.complex64,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz, "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
    "F8_E8M0": getattr(ml_dtypes, "float8_e8m0fnu", None),
}

# safetensors dtype -> torch dtype name; the raw-bytes rule applies where torch lacks one (F6,
# and older torch versions). F4 packs two values a byte; as in safetensors.torch it becomes
# float4_e2m1fn_x2 with the last dimension halved, which needs an even last dimension.
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
    "F4": "float4_e2m1fn_x2",
}


@dataclass(frozen=True)
class _StoredFile:
    """One safetensors file: its chunks and its parsed header (a function of the file's id)."""

    manifest: FileManifest
    chunk_starts: list[int]  # file offset of each chunk, then the file size
    header: SafetensorsHeader
    starts: np.ndarray = field(init=False)  # chunk_starts as an array, for the planner
    digests: list[bytes] = field(init=False)  # each chunk's id, in file order

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", np.array(self.chunk_starts, np.int64))
        object.__setattr__(self, "digests", [chunk for chunk, _ in self.manifest.chunks])


@dataclass(frozen=True)
class _Checks:
    """Chunks to check once their bytes are in a buffer. Those their pack's guard vouches for are
    arrays (offset in the buffer, length, xxh3) for one native call, named by arrays too (the
    chunk's number in ``digests``, its pack's in ``pack_ids``: a tuple for each chunk of a file
    costs a fresh load more than its arrays); the others, (digest, pack, offset, length), are
    re-hashed with BLAKE3."""

    offsets: np.ndarray
    lengths: np.ndarray
    expected: np.ndarray
    chunk: np.ndarray
    pack: np.ndarray
    digests: list[bytes]
    pack_ids: list[bytes]
    unvouched: list[tuple[bytes, bytes, int, int]]

    def vouched(self, k: int) -> tuple[bytes, bytes]:
        """(digest, pack) of the ``k``th chunk the guards vouch for."""
        return self.digests[self.chunk[k]], self.pack_ids[self.pack[k]]


@dataclass(frozen=True)
class _Run:
    """Chunks that follow each other in a buffer, read (where not mapped) and checked by one
    thread while they are in its cache. ``reads``: (pack, pack offset, offset in the buffer,
    length) of the bytes outside the mapped pages, adjacent reads merged; ``every``: the same for
    all of the run's bytes (read where the pages could not be mapped after all)."""

    reads: list[tuple[bytes, int, int, int]]
    every: list[tuple[bytes, int, int, int]]
    checks: _Checks


@dataclass(frozen=True)
class _BufferPlan:
    """Some of a file's tensors in one buffer, laid out as in the file from ``base`` (a file
    offset). ``pieces`` (pack, pack offset, offset, length) are the pages mapped from packs; the
    rest of the chunks' bytes are read. None of it depends on what is in the buffers."""

    base: int
    size: int
    maps: bool
    pieces: list[tuple[bytes, int, int, int]]
    runs: list[_Run]
    tensors: list[TensorInfo]
    packs: tuple[bytes, ...]  # every pack its chunks lie in


@dataclass(frozen=True)
class _FilePlan:
    """How to load some tensors of a stored file, valid while the store's ``layout`` holds."""

    buffers: list[_BufferPlan]
    layout: tuple[int, int]
    reusable: bool  # False when a chunk lacks a guard entry: its next load looks for one again


class _StalePlan(Exception):
    """A pack a plan maps is no longer a local file (tier or gc moved it): plan again."""


class _Recent:
    """The ``size`` most recently used entries of a mapping, shared by a loader's threads."""

    def __init__(self, size: int):
        self._size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class Loader:
    """Safetensors weights of a content store as verified tensors.

    A loader remembers, for the files it loaded most recently, their parsed headers (a function of
    the file's id) and how it loaded them (which pages of which packs it mapped, what it read, the
    xxh3 of each chunk from the packs' guards), as long as the store's index says the chunks have
    not moved; every load still maps, reads and checks every chunk it returns.
    """

    def __init__(self, content: ContentStore):
        self.content = content
        self._files = _Recent(FILES_REMEMBERED)
        self._plans = _Recent(FILES_REMEMBERED)
        self._checkers = _Checkers()

    def load(self, object_id: str, *, device: str = "cpu", framework: str = "numpy",
             names: Iterable[str] | None = None, label: str | None = None) -> dict[str, Any]:
        """The tensors of a safetensors file, or of every ``adapter_weights/*.safetensors`` in a tree.

        ``object_id`` is the ``b3:`` id of a file or a tree; ``label`` names it in messages (the
        ref the caller resolved, say). ``framework`` is ``"numpy"`` (BF16 and F8 as ml_dtypes
        types) or ``"torch"``; ``device`` is ``"cpu"``, or ``"cuda"``/``"cuda:N"`` with torch.
        ``names`` restricts the result to those tensors, and only the chunks holding them are
        read. A dtype the framework cannot represent (F4 and F6 in numpy, F6 in torch) comes back
        as raw bytes: a flat uint8 array.

        Every chunk read is re-hashed against its digest; damage raises ``CorruptObject`` naming
        the chunk and its pack, and nothing is returned. A malformed safetensors file, or a tensor
        name found in two files of a tree, raises ``InvalidInput``; an unknown name ``NotFound``.
        """
        converter = _converter(framework, device)
        return self.content.with_fresh_index(lambda: self._load(object_id, converter, names, label or object_id))

    def _load(self, object_id: str, converter: _NumpyArrays | _TorchTensors, names: Iterable[str] | None,
              label: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        with _PackFiles(self.content) as packs:
            files = [(path, file_id, self._stored_file(path, file_id, manifest, packs))
                     for path, file_id, manifest in self._weight_files(object_id, label)]
            wanted = _select([(path, file.header) for path, _, file in files], names, label)
            placed = [(path, self._place((file_id, None if names is None else tuple(t.name for t in tensors),
                                          converter.maps), file, tensors, packs, converter))
                      for (path, file_id, file), tensors in zip(files, wanted) if tensors]
        for path, groups in placed:
            for buffer, base, tensors in groups:
                result.update(converter.tensors(buffer, base, tensors, path))
        return result

    def _weight_files(self, object_id: str, label: str) -> list[tuple[str, str, FileManifest | None]]:
        """(label, file id, its manifest if read already) of the safetensors file ``object_id``, or
        of a tree's weights."""
        if self._files.get(object_id) is not None and self.content.home.exists(manifest_key(parse_id(object_id))):
            return [(object_id, object_id, None)]  # remembered, and not collected since
        manifest = self.content.read_manifest(object_id)
        if isinstance(manifest, FileManifest):
            return [(object_id, object_id, manifest)]
        weights: list[tuple[str, str, FileManifest | None]] = [
            (entry.path, format_id(entry.file), None) for entry in manifest.entries
            if entry.path.startswith(WEIGHTS_DIR) and entry.path.endswith(WEIGHTS_SUFFIX)]
        if not weights:
            raise NotFound(f"{label} has no {WEIGHTS_DIR}*{WEIGHTS_SUFFIX} file")
        return weights

    def _stored_file(self, label: str, file_id: str, manifest: FileManifest | None, packs: _PackFiles) -> _StoredFile:
        """A stored file's chunks and header, parsed from its leading chunks, each verified as it
        is read (or remembered from an earlier load: both are functions of the file's id)."""
        remembered = self._files.get(file_id)
        if remembered is not None:
            return remembered
        read = manifest or self.content.read_manifest(file_id)
        if not isinstance(read, FileManifest):
            raise CorruptObject(f"{label} ({file_id}) is not a file")
        manifest = read
        chunk_starts = [0, *accumulate(length for _, length in manifest.chunks)]
        leading: dict[int, bytearray] = {}

        def read_range(offset: int, length: int) -> bytes:
            parts = []
            for i in _chunks_covering(chunk_starts, offset, offset + length):
                if i not in leading:
                    chunk, size = manifest.chunks[i]
                    location = self.content.locate(chunk, size)
                    data = packs.read(location.pack, location.offset, size)
                    only = np.zeros(1, np.int64)
                    checks, = _checks_of([chunk], only, [location.pack], only, np.array([location.offset]), only,
                                         np.array([size]), packs, np.array([0, 1]))
                    if _first_damaged(data, checks):
                        raise CorruptObject(_damage(chunk, location.pack))
                    leading[i] = data
                parts.append(leading[i][max(offset - chunk_starts[i], 0):offset + length - chunk_starts[i]])
            return b"".join(parts)

        try:
            header = read_header(read_range, manifest.size)
        except InvalidInput as exc:
            raise InvalidInput(f"{label}: {exc}") from None
        stored = _StoredFile(manifest, chunk_starts, header)
        self._files.put(file_id, stored)
        return stored

    def _place(self, key: tuple, file: _StoredFile, tensors: list[TensorInfo], packs: _PackFiles,
               converter: _NumpyArrays | _TorchTensors) -> list[tuple[Any, int, list]]:
        """Map or read every tensor's bytes and verify each chunk they lie in: (buffer, the file
        offset its first byte stands for, the tensors in it) for each buffer."""
        plan = self._plans.get(key)
        if plan is None or plan.layout != self.content.layout:
            if self.content.shared:  # the machine's cache first: its packs are mapped, and shared
                make_hot(self.content, dict(file.manifest.chunks[i] for t in tensors
                                            for i in _chunks_covering(file.chunk_starts, t.begin, t.end)).items())
            plan = self._plan(file, tensors, packs, converter.maps)
        try:
            placed = _execute(plan, packs, self._checkers, converter)
        except _StalePlan:
            plan = self._plan(file, tensors, packs, converter.maps)
            placed = _execute(plan, packs, self._checkers, converter)
        if plan.reusable:
            self._plans.put(key, plan)
        return placed

    def _plan(self, file: _StoredFile, tensors: list[TensorInfo], packs: _PackFiles, maps: bool) -> _FilePlan:
        """Place each tensor in a buffer: on the CPU, the buffer of the phase that holds most of
        its bytes, so that it is mapped from the packs except perhaps on the pages where its
        chunks change pack (a partial retrain's unchanged tensors begin and end in new chunks)."""
        layout = self.content.layout
        located = _locate(self.content, file, tensors, packs, maps)
        by_phase: dict[int | None, list[TensorInfo]] = {}
        for tensor, phase in zip(tensors, _phases(file, tensors, located)):
            by_phase.setdefault(phase, []).append(tensor)
        if not by_phase:
            by_phase[None] = []
        buffers = [_plan_buffer(file, phase, members, located.needed if len(by_phase) == 1 else _needed(file, members),
                                located, packs) for phase, members in by_phase.items()]
        reusable = all(not run.checks.unvouched for buffer in buffers for run in buffer.runs)
        return _FilePlan(buffers, layout, reusable)


@dataclass(frozen=True)
class _Located:
    """Where the chunks some tensors need (``needed``: their numbers, in file order) lie, by chunk
    number in the file: the pack (a number in ``packs``; -1 for a chunk not needed), the offset in
    it, and the chunk's phase (file offset minus pack offset, modulo the page size) where it can be
    mapped from there, else -1."""

    needed: np.ndarray
    pack: np.ndarray
    pack_offset: np.ndarray
    phase: np.ndarray
    packs: list[bytes]


def _locate(content: ContentStore, file: _StoredFile, tensors: list[TensorInfo], packs: _PackFiles,
            maps: bool) -> _Located:
    count = len(file.manifest.chunks)
    pack, pack_offset, phase = np.full(count, -1, np.int64), np.zeros(count, np.int64), np.full(count, -1, np.int64)
    needed = _needed(file, tensors)
    lengths = file.starts[needed + 1] - file.starts[needed]
    found = content.locate_all([file.digests[i] for i in needed.tolist()], lengths)
    pack[needed], pack_offset[needed] = found.pack, found.offset
    if maps and len(needed):
        # a chunk maps where its pack is a local file that holds all of it
        sizes = np.array([packs.local_size(pack_id) for pack_id in found.packs], np.int64)
        mappable = needed[found.offset + lengths <= sizes[found.pack]]
        phase[mappable] = (file.starts[mappable] - pack_offset[mappable]) % PAGE_SIZE
    return _Located(needed, pack, pack_offset, phase, found.packs)


def _needed(file: _StoredFile, tensors: list[TensorInfo]) -> np.ndarray:
    """The numbers of the chunks holding any byte of ``tensors``, in file order."""
    first, stop = _covering(file, tensors)
    count = len(file.manifest.chunks)
    covered_by = np.cumsum(np.bincount(first, minlength=count + 1) - np.bincount(stop, minlength=count + 1))
    return np.flatnonzero(covered_by[:count])


def _covering(file: _StoredFile, tensors: list[TensorInfo]) -> tuple[np.ndarray, np.ndarray]:
    """``_chunks_covering`` of each tensor, as arrays of the first chunk and the one after the last."""
    begins = np.fromiter((tensor.begin for tensor in tensors), np.int64, len(tensors))
    ends = np.fromiter((tensor.end for tensor in tensors), np.int64, len(tensors))
    first = file.starts.searchsorted(begins, "right") - 1
    return first, np.where(begins < ends, file.starts.searchsorted(ends, "left"), first)


def _phases(file: _StoredFile, tensors: list[TensorInfo], located: _Located) -> list[int | None]:
    """``_phase`` of each tensor; for all of them at once where the chunks they need map in one
    phase at most (the usual case: one phase for the whole file)."""
    found = set(np.unique(located.phase[located.needed]).tolist()) - {-1}
    if len(found) > 1:
        return [_phase(file, tensor, located) for tensor in tensors]
    only = next(iter(found), None)
    first, stop = _covering(file, tensors)
    mappable_before = np.append(0, np.cumsum(located.phase != -1))
    return [only if mappable else None for mappable in (mappable_before[stop] > mappable_before[first]).tolist()]


def _phase(file: _StoredFile, tensor: TensorInfo, located: _Located) -> int | None:
    """The phase of the mappable chunks holding most of a tensor's bytes; None if none is."""
    covering = _chunks_covering(file.chunk_starts, tensor.begin, tensor.end)
    phases = located.phase[covering.start:covering.stop].tolist()
    found = set(phases) - {-1}
    if len(found) < 2:  # the usual case: one phase for the whole file
        return next(iter(found), None)
    votes: dict[int, int] = {}
    for i, phase in zip(covering, phases):
        if phase != -1:
            overlap = min(tensor.end, file.chunk_starts[i + 1]) - max(tensor.begin, file.chunk_starts[i])
            votes[phase] = votes.get(phase, 0) + overlap
    return max(votes, key=votes.__getitem__)


def _plan_buffer(file: _StoredFile, phase: int | None, tensors: list[TensorInfo], needed: np.ndarray,
                 located: _Located, packs: _PackFiles) -> _BufferPlan:
    """The buffer of ``tensors`` (in the ``needed`` chunks): where it starts (at ``phase`` modulo
    the page size, so that pack pages of that phase can be mapped into it; a buffer that maps
    nothing starts at phase 0, which keeps the file's alignment), the whole pages mapped from
    stretches of chunks back to back in one local pack, and the rest of the chunks' bytes to read.
    Computed on arrays, for all of its runs at once: a file has thousands of chunks, and this runs
    whenever a loader meets a version for the first time."""
    if not len(needed):
        return _BufferPlan(file.header.data_start, 0, phase is not None, [], [], tensors, ())
    starts, ends = file.starts[needed], file.starts[needed + 1]
    base = int(starts[0]) - (int(starts[0]) - (phase or 0)) % PAGE_SIZE
    pack, pack_offset = located.pack[needed], located.pack_offset[needed]
    offsets, stops = starts - base, ends - base  # each chunk's place in the buffer
    low, high = stops.copy(), stops.copy()  # each chunk's mapped pages [low, high), empty where none
    pieces: list[tuple[bytes, int, int, int]] = []
    if phase is not None:
        in_phase = located.phase[needed] == phase
        pack_base = starts - pack_offset
        follows = np.zeros(len(needed), np.bool_)  # continues the stretch of the chunk before it in one pack
        follows[1:] = in_phase[1:] & in_phase[:-1] & (pack[1:] == pack[:-1]) & (pack_base[1:] == pack_base[:-1]) \
            & (needed[1:] == needed[:-1] + 1)
        first, last = in_phase & ~follows, in_phase & ~np.append(follows[1:], False)
        page_low = -(-offsets[first] // PAGE_SIZE) * PAGE_SIZE
        page_high = stops[last] // PAGE_SIZE * PAGE_SIZE
        whole = page_high > page_low
        for k, begin, end in zip(np.flatnonzero(first)[whole].tolist(), page_low[whole].tolist(),
                                 page_high[whole].tolist()):
            pieces.append((located.packs[pack[k]], begin + base - int(pack_base[k]), begin, end - begin))
        if whole.any():
            stretch = np.cumsum(first) - 1
            mapped = in_phase.copy()
            mapped[in_phase] = whole[stretch[in_phase]]
            low[mapped], high[mapped] = page_low[stretch[mapped]], page_high[stretch[mapped]]
    bounds = _run_bounds(stops - offsets)
    shift = pack_offset - offsets  # pack offset = buffer offset + shift
    head_end, tail_start = np.clip(low, offsets, stops), np.clip(high, offsets, stops)
    reads = _reads(located, pack, shift, np.stack([offsets, tail_start], 1).ravel(),
                   np.stack([head_end, stops], 1).ravel(), bounds)
    every = _reads(located, pack, shift, offsets, stops, bounds)
    checks = _checks_of(file.digests, needed, located.packs, pack, pack_offset, offsets, stops - offsets, packs, bounds)
    return _BufferPlan(base, int(stops[-1]), phase is not None, pieces,
                       [_Run(*run) for run in zip(reads, every, checks)], tensors,
                       tuple(located.packs[k] for k in dict.fromkeys(pack.tolist())))


def _run_bounds(lengths: np.ndarray) -> np.ndarray:
    """Where each run of chunks begins, then the end: runs as long as fit in RUN_LIMIT (a chunk at least)."""
    ends = np.cumsum(lengths)  # where each chunk ends, counted from where the first begins
    bounds = [0]
    while bounds[-1] < len(lengths):
        start = bounds[-1]
        before = int(ends[start - 1]) if start else 0
        bounds.append(max(start + 1, int(ends.searchsorted(before + RUN_LIMIT, "right"))))
    return np.array(bounds)


def _reads(located: _Located, pack: np.ndarray, shift: np.ndarray, begins: np.ndarray, ends: np.ndarray,
           bounds: np.ndarray) -> list[list[tuple[bytes, int, int, int]]]:
    """For each run of chunks [bounds[i], bounds[i + 1]): (pack, pack offset, offset in the buffer,
    length) of the buffer's byte ranges [begins, ends), in order, the same number of them for each
    chunk (in ``pack``, at pack offset = buffer offset + ``shift``); empty ones dropped, adjacent
    ones of a run merged."""
    per_chunk = len(begins) // len(pack)
    run = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds) * per_chunk)
    pack, position = np.repeat(pack, per_chunk), np.repeat(shift, per_chunk) + begins
    kept = ends > begins
    run, pack, position, begins, ends = run[kept], pack[kept], position[kept], begins[kept], ends[kept]
    if not len(begins):
        return [[] for _ in bounds[1:]]
    joins = np.zeros(len(begins), np.bool_)
    joins[1:] = (run[1:] == run[:-1]) & (pack[1:] == pack[:-1]) & (begins[1:] == ends[:-1]) \
        & (position[1:] - begins[1:] == position[:-1] - begins[:-1])
    heads = np.flatnonzero(~joins)
    tails = np.append(heads[1:], len(begins)) - 1
    reads = [(located.packs[p], o, b, e - b) for p, o, b, e in
             zip(pack[heads].tolist(), position[heads].tolist(), begins[heads].tolist(), ends[tails].tolist())]
    firsts = run[heads].searchsorted(np.arange(len(bounds))).tolist()  # each run's first read, then the end
    return [reads[a:b] for a, b in zip(firsts, firsts[1:])]


def _checks_of(digests: list[bytes], chunk: np.ndarray, pack_ids: list[bytes], pack: np.ndarray,
               pack_offset: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, packs: _PackFiles,
               bounds: np.ndarray) -> list[_Checks]:
    """The checks of each run of chunks [bounds[i], bounds[i + 1]) (``digests[chunk]``; each in
    pack ``pack_ids[pack]`` at ``pack_offset``, at ``offsets`` in the buffer): by their pack's
    guard where it has an entry for the chunk's place and length, else by BLAKE3."""
    expected = np.zeros(len(chunk), np.uint64)
    vouched = np.zeros(len(chunk), np.bool_)
    for number in dict.fromkeys(pack.tolist()):
        guard = packs.guard(pack_ids[number])
        if guard is None or not len(guard.offsets):
            continue
        mine = np.flatnonzero(pack == number)
        at = np.maximum(np.searchsorted(guard.offsets, pack_offset[mine], "right") - 1, 0)  # the last at an offset
        hit = (guard.offsets[at] == pack_offset[mine]) & (guard.lengths[at] == lengths[mine])
        vouched[mine[hit]] = True
        expected[mine[hit]] = guard.checksums[at[hit]]
    others = np.flatnonzero(~vouched)
    rest = [(digests[c], pack_ids[p], o, n) for c, p, o, n in
            zip(chunk[others].tolist(), pack[others].tolist(), offsets[others].tolist(), lengths[others].tolist())]
    rest_firsts = others.searchsorted(bounds).tolist()  # each run's first chunk in rest, then the end
    firsts = np.append(0, np.cumsum(vouched))[bounds].tolist()  # the same among the vouched chunks
    at = np.flatnonzero(vouched)
    offsets, lengths, expected, chunk, pack = offsets[at], lengths[at], expected[at], chunk[at], pack[at]
    return [_Checks(offsets[a:b], lengths[a:b], expected[a:b], chunk[a:b], pack[a:b], digests, pack_ids, rest[c:d])
            for a, b, c, d in zip(firsts, firsts[1:], rest_firsts, rest_firsts[1:])]


def _execute(plan: _FilePlan, packs: _PackFiles, checkers: _Checkers,
             converter: _NumpyArrays | _TorchTensors) -> list[tuple[Any, int, list]]:
    """Map and read a plan's buffers, check every chunk, and return (buffer, base, tensors) of
    each once every check passed."""
    work: list[tuple[_Run, np.ndarray, Any]] = []
    groups = []
    for buffer in plan.buffers:
        memory, host, mapping = _allocate(buffer, packs, converter)
        for pack in buffer.packs:  # here: the readers only look packs up
            packs.open(pack)
        work.extend((run, host, mapping) for run in buffer.runs)
        groups.append((memory, buffer.base, buffer.tensors))
    damage = checkers.check(work, packs)
    if damage is not None:
        raise CorruptObject(damage)
    return groups


class _Checkers:
    """Threads that read and check runs beside the loading thread. They live as long as their
    loader (not one load: starting threads cost a warm load about a millisecond), and are made
    again in a forked child, which inherits none of them."""

    def __init__(self) -> None:
        self._pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process it belongs to, the pool)

    def check(self, work: list[tuple[_Run, np.ndarray, Any]], packs: _PackFiles) -> str | None:
        """Read and check each (run, buffer, its mapping): this thread and the checkers take
        runs in turn. Returns the damage found, if any, once no thread uses the buffers or the
        packs' descriptors any more; checkers busy with another load are not waited for."""
        runs = iter(work)
        taking = threading.Lock()  # a list iterator is not safe across threads without the GIL

        def next_run() -> tuple[_Run, np.ndarray, Any] | None:
            with taking:
                return next(runs, None)

        def take_runs() -> str | None:
            while (item := next_run()) is not None:
                damage = _read_and_check(packs, *item)
                if damage is not None:
                    return damage
            return None

        pool = self._pool_here() if len(work) > 1 else None
        helpers = [pool.submit(take_runs) for _ in range(CHECKERS)] if pool else []
        try:
            damage = take_runs()
        finally:
            # a helper still queued (the checkers serve another load) is dropped: this thread did its share
            started = [helper for helper in helpers if not helper.cancel()]
            wait(started)
        for helper in started:
            if damage is None:
                damage = helper.result()
        return damage

    def _pool_here(self) -> ThreadPoolExecutor | None:
        # No lock: a child forked while another thread held one would wait for it forever. Two
        # threads that both make a pool keep one; the other's threads end when it is collected.
        if not CHECKERS:
            return None
        pool = self._pool
        if pool is None or pool[0] != os.getpid():
            pool = self._pool = (os.getpid(), ThreadPoolExecutor(CHECKERS, "artifactstore-check"))
        return pool[1]


def _allocate(buffer: _BufferPlan, packs: _PackFiles,
              converter: _NumpyArrays | _TorchTensors) -> tuple[Any, np.ndarray, Any]:
    """The buffer (as the framework wants it), a numpy view of its memory to read into, and its
    FileMapping if pack pages are mapped into it (None if every byte is read)."""
    if not buffer.maps:
        return *converter.allocate(buffer.size), None
    if not buffer.size:
        host = np.empty(0, np.uint8)
        return converter.wrap(host), host, None
    pieces = []
    for pack, pack_offset, offset, length in buffer.pieces:
        if not packs.mappable(Location(pack, pack_offset, length)):  # moved, or truncated (no SIGBUS)
            raise _StalePlan()
        pieces.append((packs.local(pack), pack_offset, offset, length))
    try:
        mapping = _mapping.FileMapping(buffer.size, pieces)
    except OSError:  # out of mappings (vm.max_map_count) or address space: read every byte instead
        mapping = None
    host = np.frombuffer(mapping or _mapping.FileMapping(buffer.size), np.uint8)
    return converter.wrap(host), host, mapping


def _chunks_covering(chunk_starts: list[int], begin: int, end: int) -> range:
    """Indices of the chunks holding any byte of [begin, end)."""
    if begin >= end:
        return range(0)
    return range(bisect_right(chunk_starts, begin) - 1, bisect_left(chunk_starts, end))


def _read_and_check(packs: _PackFiles, run: _Run, host: np.ndarray, mapping: Any) -> str | None:
    """Read a run's unmapped bytes into place (all of them if nothing is ``mapping``ped), then
    check each of its chunks (faulting mapped pages in: measured cheaper than MADV_POPULATE_READ
    first) while they are in the CPU's cache; returns what is damaged, if anything."""
    landing = host.data
    for pack, pack_offset, offset, length in (run.reads if mapping is not None else run.every):
        packs.read_into(pack, [landing[offset:offset + length]], pack_offset)
    damaged = _first_damaged(host, run.checks)
    return None if damaged is None else _damage(*damaged)


def _first_damaged(data, checks: _Checks) -> tuple[bytes, bytes] | None:
    """(digest, pack) of a chunk of ``checks`` whose bytes in ``data`` are not that chunk, if any:
    by the pack's guard where it vouches for them (xxh3, in native code without the GIL), else,
    or where the guard disagrees, by BLAKE3."""
    suspects = list(checks.unvouched)
    start = 0
    while (missed := _checksum.first_mismatch(data, checks.offsets[start:], checks.lengths[start:],
                                              checks.expected[start:])) >= 0:
        digest, pack = checks.vouched(start + missed)
        suspects.append((digest, pack, int(checks.offsets[start + missed]), int(checks.lengths[start + missed])))
        start += missed + 1
    for digest, pack, offset, length in suspects:
        if blake3.blake3(data[offset:offset + length]).digest() != digest:
            return digest, pack
    return None


def _damage(chunk: bytes, pack: bytes) -> str:
    return f"chunk {format_id(chunk)} in {pack_key(pack)} is damaged (its bytes do not match its id)"


def _select(files: list[tuple[str, SafetensorsHeader]], names: Iterable[str] | None,
            label: str) -> list[list[TensorInfo]]:
    """The tensors to load from each file (label, header), in data order."""
    owner: dict[str, str] = {}
    for path, header in files:
        for name in header.tensors:
            if name in owner:
                raise InvalidInput(f"tensor {name!r} is in both {owner[name]} and {path}")
            owner[name] = path
    if names is None:
        return [list(header.tensors.values()) for _, header in files]
    if isinstance(names, str):
        raise InvalidParameter(f"names must be a collection of tensor names, not the string {names!r}")
    requested = set(names)
    missing = sorted(requested - owner.keys())
    if missing:
        raise NotFound(f"no tensor {', '.join(map(repr, missing))} in {label}")
    return [[t for t in header.tensors.values() if t.name in requested] for _, header in files]


class _PackFiles:
    """The packs one load reads: local pack files, each opened once and kept open for the load,
    and packs that are not local files (in another tier), read through the store."""

    def __init__(self, content: ContentStore):
        self._content = content
        self._fds: dict[bytes, int | None] = {}
        self._sizes: dict[bytes, int] = {}
        self._guards: dict[bytes, Guard | None] = {}

    def __enter__(self) -> _PackFiles:
        return self

    def __exit__(self, *_) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)

    def open(self, pack: bytes) -> None:
        if pack not in self._fds:
            try:
                fd = os.open(self._content.hot.path(pack_key(pack)), os.O_RDONLY)
            except FileNotFoundError:
                self._fds[pack] = None
                return
            self._fds[pack] = fd
            self._sizes[pack] = os.fstat(fd).st_size

    def local(self, pack: bytes) -> int | None:
        """The descriptor of an ``open``ed pack if it is a local file."""
        return self._fds[pack]

    def mappable(self, location: Location) -> bool:
        """Whether a chunk lies in a local pack file that holds all of it (a truncated pack is
        read instead, which reports it). The pages of a pack stay valid after the pack is deleted
        or replaced: a pack file is never rewritten in place, and an unlinked file lives on while
        mapped."""
        return location.offset + location.length <= self.local_size(location.pack)

    def local_size(self, pack: bytes) -> int:
        """The size of a pack that is a local file, else -1."""
        self.open(pack)
        return -1 if self._fds[pack] is None else self._sizes[pack]

    def guard(self, pack: bytes) -> Guard | None:
        """The checksums of a local pack's chunks (guard.py), if it has them."""
        self.open(pack)
        if self._fds[pack] is None:
            return None
        if pack not in self._guards:
            try:
                self._guards[pack] = decode_guard(self._content.hot.path(guard_key(pack)).read_bytes(), pack)
            except OSError:
                self._guards[pack] = None
        return self._guards[pack]

    def read(self, pack: bytes, offset: int, length: int) -> bytearray:
        self.open(pack)
        data = bytearray(length)
        self.read_into(pack, [memoryview(data)], offset)
        return data

    def read_into(self, pack: bytes, buffers: list[memoryview], offset: int) -> None:
        """Fill ``buffers`` in order from the pack's bytes at ``offset``; ``open`` the pack first."""
        fd = self._fds[pack]
        if fd is None:
            data = memoryview(self._content.read_pack(pack, offset, sum(map(len, buffers))))
            for buffer in buffers:
                buffer[:] = data[:len(buffer)]
                data = data[len(buffer):]
            return
        remaining = [b for b in buffers if len(b)]
        while remaining:
            count = os.preadv(fd, remaining, offset)
            if count == 0:
                raise CorruptObject(f"pack {pack_key(pack)} is truncated")
            offset += count
            while remaining and count >= len(remaining[0]):
                count -= len(remaining.pop(0))
            if count:
                remaining[0] = remaining[0][count:]


def check_target(framework: str, device: str) -> None:
    """Refuse (InvalidParameter) a framework or device that loads cannot use here, before any load."""
    _converter(framework, device)


def _converter(framework: str, device: str) -> _NumpyArrays | _TorchTensors:
    if framework not in FRAMEWORKS:
        raise InvalidParameter(f"unknown framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")
    if framework == "numpy":
        if str(device) != "cpu":
            raise InvalidParameter(f"device {device!r} needs framework='torch': numpy arrays live on the CPU")
        return _NumpyArrays()
    try:
        import torch
    except ImportError:
        raise InvalidParameter("framework='torch' needs PyTorch, which is not installed (pip install torch)") from None
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidParameter(f"unknown device {device!r}: expected cpu, cuda or cuda:N") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameter(f"device {device!r}: CUDA is not available to torch here")
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise InvalidParameter(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
    elif target.type != "cpu":
        raise InvalidParameter(f"unsupported device {device!r}: expected cpu, cuda or cuda:N")
    return _TorchTensors(torch, target)


@lru_cache(maxsize=4096)  # a model's tensors have few distinct shapes; loads make views of them again
def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _unrepresentable(label: str, info: TensorInfo, framework: str) -> InvalidInput:
    return InvalidInput(f"{label}: tensor {info.name!r} of shape {list(info.shape)} cannot be a {framework} tensor")


class _NumpyArrays:
    """Buffers are numpy uint8 arrays; tensors are views of them."""

    maps = True

    def wrap(self, mapping: np.ndarray) -> np.ndarray:
        return mapping

    def allocate(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The buffer, and the same as the numpy array to read into."""
        buffer = np.empty(size, np.uint8)
        return buffer, buffer

    def tensors(self, buffer: np.ndarray, base: int, infos: list[TensorInfo], label: str) -> dict[str, np.ndarray]:
        result = {}
        for info in infos:
            raw = buffer[info.begin - base:info.end - base]
            dtype = NUMPY_DTYPES.get(info.dtype)
            try:
                result[info.name] = raw if dtype is None else raw.view(dtype).reshape(info.shape)
            except ValueError:
                raise _unrepresentable(label, info, "numpy") from None
        return result


class _TorchTensors:
    """Buffers are uint8 tensors (pinned for CUDA); tensors are views of them, on the device."""

    def __init__(self, torch, device):
        self._torch = torch
        self._device = device
        self._dtypes = {name: getattr(torch, torch_name, None) for name, torch_name in TORCH_DTYPES.items()}
        self.maps = device.type == "cpu"  # CUDA copies from pinned memory: mapped pages would be slower

    def wrap(self, mapping: np.ndarray):
        return self._torch.from_numpy(mapping)

    def allocate(self, size: int) -> tuple[Any, np.ndarray]:
        """A uint8 tensor of ``size`` bytes and a numpy view of its memory to read into."""
        if self._device.type == "cuda":
            staging = self._torch.empty(size, dtype=self._torch.uint8, pin_memory=True)
            return staging, staging.numpy()
        host = np.empty(size, np.uint8)
        return self._torch.from_numpy(host), host

    def tensors(self, buffer, base: int, infos: list[TensorInfo], label: str) -> dict[str, Any]:
        if self._device.type == "cuda":
            buffer = self._to_device(buffer)
        result = {}
        typed: dict[Any, Any] = {}  # dtype -> the whole buffer viewed as that dtype
        for info in infos:
            start = info.begin - base
            dtype, shape = self._layout(info)
            try:
                if dtype is not None and start % dtype.itemsize == 0 and info.end > info.begin:
                    # one call per tensor: a strided view of the buffer seen as its dtype
                    whole = typed.get(dtype)
                    if whole is None:
                        whole = typed[dtype] = buffer[:len(buffer) - len(buffer) % dtype.itemsize].view(dtype)
                    result[info.name] = whole.as_strided(shape, _contiguous_strides(shape), start // dtype.itemsize)
                    continue
                raw = buffer[start:info.end - base]
                result[info.name] = raw if dtype is None else self._view(raw, start, dtype).reshape(shape)
            except RuntimeError:
                raise _unrepresentable(label, info, "torch") from None
        return result

    def _view(self, raw, offset: int, dtype):
        if not raw.numel():  # an empty slice may have a stride torch refuses to reinterpret
            return self._torch.empty(0, dtype=dtype, device=raw.device)
        if offset % dtype.itemsize == 0:
            return raw.view(dtype)
        # torch views a dtype only at offsets that are multiples of its size; on the CPU a
        # tensor may still start at any address (as numpy arrays may), so view through a buffer.
        if raw.device.type == "cpu":
            return self._torch.frombuffer(raw.numpy(), dtype=dtype)
        return raw.clone().view(dtype)

    def _layout(self, info: TensorInfo):
        """(torch dtype or None for raw bytes, shape) of a tensor."""
        dtype = self._dtypes.get(info.dtype)
        if info.dtype != "F4":
            return dtype, info.shape
        if not info.shape or info.shape[-1] % 2:
            return None, info.shape
        return dtype, (*info.shape[:-1], info.shape[-1] // 2)

    def _to_device(self, staging):
        torch = self._torch
        stream = torch.cuda.Stream(self._device)
        with torch.cuda.stream(stream):
            on_device = torch.empty(staging.numel(), dtype=torch.uint8, device=self._device)
            on_device.copy_(staging, non_blocking=True)
        stream.synchronize()
        # The caller uses the tensors on its current stream: without this, freeing them would let
        # the allocator hand the memory to the next allocation on our stream while that work runs.
        on_device.record_stream(torch.cuda.current_stream(self._device))
        return on_device
