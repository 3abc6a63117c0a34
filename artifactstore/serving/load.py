"""Load safetensors weights straight from the store into numpy arrays or torch tensors.

``Loader(content).load(object_id)``. On the CPU, a tensor whose chunks lie back to back
in one local pack file is a view of that pack, memory-mapped copy-on-write: nothing is copied, the
pages are the page cache's (shared by every process that loads the same version), and writing to
a tensor never reaches the pack. Every other tensor (its chunks split between packs, or a pack in
another tier), and every tensor bound for CUDA, is read with ``os.preadv`` into one destination
buffer per file (pinned host memory for CUDA). Two threads re-hash every chunk a load uses against
its digest, each taking runs of chunks; nothing is returned unless every byte checked out.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import blake3
import ml_dtypes
import numpy as np

from ..content.guard import decode_guard, guard_key
from ..content.manifest import FileManifest
from ..content.pack import pack_key
from ..content.store import ContentStore
from ..content.tensorfile import SafetensorsHeader, TensorInfo, read_header
from ..errors import CorruptObject, InvalidInput, InvalidParameter, NotFound
from ..ids import format_id
from ..native import _checksum, _mapping

WEIGHTS_DIR = "adapter_weights/"
WEIGHTS_SUFFIX = ".safetensors"
FRAMEWORKS = ("numpy", "torch")
# A run is read with one preadv and then hashed by the same thread: small enough that a load
# splits into many runs for the two threads and a run stays in cache, large enough that the
# per-run cost does not show (1 to 16 MiB measured within noise on a 210 MB adapter).
RUN_LIMIT = 4 << 20
# A partial load's buffer starts at this alignment relative to the data section, so that tensors
# aligned in the file stay aligned in the buffer (torch cannot view misaligned bytes as a dtype).
BUFFER_ALIGNMENT = 64

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
    """One safetensors file of a load: its name for messages, its chunks and its parsed header."""

    label: str
    manifest: FileManifest
    chunk_starts: list[int]  # file offset of each chunk, then the file size
    header: SafetensorsHeader


@dataclass
class _Run:
    """Chunks back to back in one pack, read with one preadv into ``landing[begin:end]``.

    A chunk straddling the header and the data section brings its header bytes into ``prefix``;
    only the first chunk of a load can, so it is always the run's first chunk.
    """

    pack: bytes
    pack_offset: int
    begin: int
    end: int
    prefix: bytearray
    chunks: list[tuple[bytes, int, int, int]] = field(default_factory=list)  # digest, landing range, pack offset

    @property
    def pack_end(self) -> int:
        return self.pack_offset + len(self.prefix) + self.end - self.begin


@dataclass
class _Segment:
    """Chunks back to back both in a file and in one local pack: a tensor inside it is a view
    of the pack's mapping, at its file offset minus ``base``."""

    pack: bytes
    mapping: np.ndarray  # the pack's
    last: int  # index of its last chunk in the file
    base: int  # file offset - pack offset
    tensors: list[TensorInfo] = field(default_factory=list)


class Loader:
    """Safetensors weights of a content store as verified tensors."""

    def __init__(self, content: ContentStore):
        self.content = content

    def load(self, object_id: str, *, device: str = "cpu", framework: str = "numpy",
             names: Iterable[str] | None = None, label: str | None = None) -> dict[str, Any]:
        """The tensors of a safetensors file, or of every ``adapter_weights/*.safetensors`` in a tree.

        ``object_id`` is the ``b3:`` id of a file or a tree; ``label`` names it in messages (the
        ref the caller resolved, say). ``framework`` is ``"numpy"`` (BF16 and F8 as ml_dtypes
        types) or ``"torch"``; ``device`` is ``"cpu"``, or ``"cuda"``/``"cuda:N"`` with torch.
        ``names`` restricts the result to those tensors, and only the chunks holding them are
        read. The tensors of one file are views into one buffer. A dtype the framework cannot
        represent (F4 and F6 in numpy, F6 in torch) comes back as raw bytes: a flat uint8 array.

        Every chunk read is re-hashed against its digest; damage raises ``CorruptObject`` naming
        the chunk and its pack, and nothing is returned. A malformed safetensors file, or a tensor
        name found in two files of a tree, raises ``InvalidInput``; an unknown name ``NotFound``.
        """
        converter = _converter(framework, device)
        return self.content.with_fresh_index(lambda: self._load(object_id, converter, names, label or object_id))

    def _load(self, object_id: str, converter: _NumpyArrays | _TorchTensors, names: Iterable[str] | None,
              label: str) -> dict[str, Any]:
        with _PackFiles(self.content) as packs, ThreadPoolExecutor(2) as pool:
            files = [self._stored_file(path, manifest, packs) for path, manifest in self._weight_files(object_id, label)]
            wanted = _select(files, names, label)
            placed = [self._place_tensors(file, tensors, packs, pool, converter) for file, tensors in wanted]
        result: dict[str, Any] = {}
        for (file, _), groups in zip(wanted, placed):
            for buffer, base, tensors in groups:
                result.update(converter.tensors(buffer, base, tensors, file.label))
        return result

    def _weight_files(self, object_id: str, label: str) -> list[tuple[str, FileManifest]]:
        manifest = self.content.read_manifest(object_id)
        if isinstance(manifest, FileManifest):
            return [(object_id, manifest)]
        weights = []
        for entry in manifest.entries:
            if entry.path.startswith(WEIGHTS_DIR) and entry.path.endswith(WEIGHTS_SUFFIX):
                file_manifest = self.content.read_manifest(format_id(entry.file))
                if not isinstance(file_manifest, FileManifest):
                    raise CorruptObject(f"tree {object_id} lists {format_id(entry.file)}, which is not a file")
                weights.append((entry.path, file_manifest))
        if not weights:
            raise NotFound(f"{label} has no {WEIGHTS_DIR}*{WEIGHTS_SUFFIX} file")
        return weights

    def _stored_file(self, label: str, manifest: FileManifest, packs: _PackFiles) -> _StoredFile:
        """Parse a stored file's header from its leading chunks, each verified as it is read."""
        chunk_starts = [0]
        for _, length in manifest.chunks:
            chunk_starts.append(chunk_starts[-1] + length)
        leading: dict[int, bytearray] = {}

        def read_range(offset: int, length: int) -> bytes:
            parts = []
            for i in _chunks_covering(chunk_starts, offset, offset + length):
                if i not in leading:
                    chunk, size = manifest.chunks[i]
                    location = self.content.locate(chunk, size)
                    data = packs.read(location.pack, location.offset, size)
                    if _first_damaged(data, [(chunk, 0, size, location.offset)], packs.guard(location.pack)):
                        raise CorruptObject(_damage(chunk, location.pack))
                    leading[i] = data
                parts.append(leading[i][max(offset - chunk_starts[i], 0):offset + length - chunk_starts[i]])
            return b"".join(parts)

        try:
            header = read_header(read_range, manifest.size)
        except InvalidInput as exc:
            raise InvalidInput(f"{label}: {exc}") from None
        return _StoredFile(label, manifest, chunk_starts, header)

    def _place_tensors(self, file: _StoredFile, tensors: list[TensorInfo], packs: _PackFiles,
                       pool: ThreadPoolExecutor, converter: _NumpyArrays | _TorchTensors) -> list[tuple[Any, int, list]]:
        """Find or read every tensor's bytes and verify each chunk they lie in.

        Returns (buffer, the file offset its first byte stands for, the tensors in it) for each
        buffer: the mappings of the packs tensors are views of, and one buffer read for the rest.
        """
        checks: list[Future] = []
        segments = self._segments(file, tensors, packs, pool, checks) if converter.maps else []
        mapped = [segment for segment in segments if segment.tensors]
        in_segment = {id(t) for segment in mapped for t in segment.tensors}
        copied = [t for t in tensors if id(t) not in in_segment]
        groups = [(converter.wrap(segment.mapping), segment.base, segment.tensors) for segment in mapped]
        if copied or not mapped:
            buffer, base = self._read_tensors(file, copied, packs, pool, converter.allocate, checks)
            groups.append((buffer, base, copied))
        for check in checks:
            damage = check.result()
            if damage is not None:
                raise CorruptObject(damage)
        return groups

    def _segments(self, file: _StoredFile, tensors: list[TensorInfo], packs: _PackFiles, pool: ThreadPoolExecutor,
                  checks: list[Future]) -> list[_Segment]:
        """The runs of ``tensors``' chunks that lie back to back in one local pack, each holding
        the tensors that lie wholly in it.

        The chunks of the tensors placed in a segment are checked on ``pool`` (futures added to
        ``checks``) in runs of at most RUN_LIMIT bytes, submitted once everything is planned: a
        worker coming back for its next run would otherwise wait for this thread to let go of
        the GIL. (A chunk only copied tensors need is checked by the copying reader instead.)
        """
        segments: list[_Segment] = []
        home: dict[int, tuple[_Segment, bytes, int, int]] = {}  # chunk index -> segment, digest, pack offset, length
        needed = sorted({i for t in tensors for i in _chunks_covering(file.chunk_starts, t.begin, t.end)})
        for i in needed:
            chunk, length = file.manifest.chunks[i]
            location = self.content.locate(chunk, length)
            mapping = packs.mapping(location.pack)
            if mapping is None or location.offset + length > len(mapping):
                continue  # not a local file, or truncated: the copying reader reports it
            last = segments[-1] if segments else None
            base = file.chunk_starts[i] - location.offset
            if last is None or (last.pack, last.last, last.base) != (location.pack, i - 1, base):
                last = _Segment(location.pack, mapping, i, base)
                segments.append(last)
            last.last = i
            home[i] = (last, chunk, location.offset, length)
        used: dict[int, tuple[_Segment, bytes, int, int]] = {}
        for tensor in tensors:
            covering = _chunks_covering(file.chunk_starts, tensor.begin, tensor.end)
            if not covering or covering[0] not in home:
                continue  # no bytes (the copying reader makes an empty tensor), or not in a local pack
            segment = home[covering[0]][0]
            if covering[-1] <= segment.last and \
                    packs.claim(segment.pack, tensor.begin - segment.base, tensor.end - segment.base):
                segment.tensors.append(tensor)
                used.update((i, home[i]) for i in covering)
        runs: list[tuple[_Segment, list[tuple[bytes, int, int, int]], int]] = []  # segment, chunks, bytes
        for i in sorted(used):
            segment, chunk, offset, length = used[i]
            if not runs or runs[-1][0] is not segment or runs[-1][2] + length > RUN_LIMIT:
                runs.append((segment, [], 0))
            runs[-1][1].append((chunk, offset, length, offset))
            runs[-1] = (segment, runs[-1][1], runs[-1][2] + length)
        checks.extend(pool.submit(_check_mapped, packs, segment.pack, run) for segment, run, _ in runs)
        return segments

    def _read_tensors(self, file: _StoredFile, tensors: list[TensorInfo], packs: _PackFiles,
                      pool: ThreadPoolExecutor, allocate: Callable[[int], tuple[Any, np.ndarray]],
                      checks: list[Future]) -> tuple[Any, int]:
        """Read the chunks holding ``tensors`` into a new buffer, adding their checks to ``checks``.

        Returns the buffer and the file offset its first byte stands for. It spans the data
        section from (about) the first chunk needed to the end of the last; bytes between chunks
        that are not needed are never written, so their pages are never allocated.
        """
        needed = sorted({i for t in tensors for i in _chunks_covering(file.chunk_starts, t.begin, t.end)})
        data_start = file.header.data_start
        if needed:
            first = file.chunk_starts[needed[0]]
            base = max(data_start, first - (first - data_start) % BUFFER_ALIGNMENT)
            end = file.chunk_starts[needed[-1] + 1]
        else:
            base = end = data_start
        buffer, host = allocate(end - base)
        landing = host.data
        checks.extend(pool.submit(_read_and_check, packs, run, landing)
                      for run in self._plan_runs(file, needed, base, packs))
        return buffer, base

    def _plan_runs(self, file: _StoredFile, needed: list[int], base: int, packs: _PackFiles) -> Iterator[_Run]:
        """Group the needed chunks (indices in file order) into runs landing at ``file offset - base``.

        Opens each run's pack here, in one thread, so that the readers only look it up.
        """
        run: _Run | None = None
        for i in needed:
            chunk, length = file.manifest.chunks[i]
            location = self.content.locate(chunk, length)
            start, end = file.chunk_starts[i] - base, file.chunk_starts[i + 1] - base
            landing_start = max(start, 0)  # below 0: the header's share of a straddling chunk
            if (run is None or location.pack != run.pack or location.offset != run.pack_end
                    or start != run.end or run.end - run.begin + length > RUN_LIMIT):
                if run is not None:
                    yield run
                run = _Run(location.pack, location.offset, landing_start, landing_start,
                           bytearray(landing_start - start))
                packs.open(run.pack)
            run.chunks.append((chunk, landing_start, end, location.offset))
            run.end = end
        if run is not None:
            yield run


def _chunks_covering(chunk_starts: list[int], begin: int, end: int) -> range:
    """Indices of the chunks holding any byte of [begin, end)."""
    if begin >= end:
        return range(0)
    return range(bisect_right(chunk_starts, begin) - 1, bisect_left(chunk_starts, end))


def _check_mapped(packs: _PackFiles, pack: bytes, run: list[tuple[bytes, int, int, int]]) -> str | None:
    """Check a run of chunks in a pack's mapping (which faults their pages in); returns what is damaged."""
    damaged = _first_damaged(packs.mapping(pack), run, packs.guard(pack))
    return None if damaged is None else _damage(damaged, pack)


def _read_and_check(packs: _PackFiles, run: _Run, landing: memoryview) -> str | None:
    """Read a run into place and hash each of its chunks while it is still in the CPU's cache.

    Returns what is damaged, if anything.
    """
    packs.read_into(run.pack, [memoryview(run.prefix), landing[run.begin:run.end]], run.pack_offset)
    guard, chunks = packs.guard(run.pack), run.chunks
    damaged = None
    if run.prefix:  # the straddling first chunk is checked whole, header bytes included
        chunk, begin, end, offset = chunks[0]
        damaged = _first_damaged(run.prefix + landing[begin:end], [(chunk, 0, len(run.prefix) + end - begin, offset)],
                                 guard)
        chunks = chunks[1:]
    damaged = damaged or _first_damaged(landing, [(c, begin, end - begin, offset) for c, begin, end, offset in chunks],
                                        guard)
    return None if damaged is None else _damage(damaged, run.pack)


def _first_damaged(data, chunks: list[tuple[bytes, int, int, int]], guard: dict[int, tuple[int, int]] | None) -> bytes | None:
    """A chunk of ``chunks`` = (digest, offset in ``data``, length, offset in its pack) whose bytes
    are not that chunk, if any: by the pack's guard where it vouches for them (xxh3, in native
    code without the GIL), else, or where the guard disagrees, by BLAKE3."""
    vouched, unvouched = [], []
    for chunk in chunks:
        entry = guard.get(chunk[3]) if guard is not None else None
        if entry is not None and entry[0] == chunk[2]:
            vouched.append((chunk, entry[1]))
        else:
            unvouched.append(chunk)
    if vouched:
        offsets = np.array([c[1] for c, _ in vouched], np.int64)
        lengths = np.array([c[2] for c, _ in vouched], np.int64)
        expected = np.array([value for _, value in vouched], np.uint64)
        start = 0
        while (missed := _checksum.first_mismatch(data, offsets[start:], lengths[start:], expected[start:])) >= 0:
            unvouched.append(vouched[start + missed][0])
            start += missed + 1
    for digest, offset, length, _ in unvouched:
        if blake3.blake3(data[offset:offset + length]).digest() != digest:
            return digest
    return None


def _damage(chunk: bytes, pack: bytes) -> str:
    return f"chunk {format_id(chunk)} in {pack_key(pack)} is damaged (its bytes do not match its id)"


def _select(files: list[_StoredFile], names: Iterable[str] | None,
            label: str) -> list[tuple[_StoredFile, list[TensorInfo]]]:
    """The tensors to load from each file, in data order."""
    owner: dict[str, _StoredFile] = {}
    for file in files:
        for name in file.header.tensors:
            if name in owner:
                raise InvalidInput(f"tensor {name!r} is in both {owner[name].label} and {file.label}")
            owner[name] = file
    if names is None:
        return [(file, list(file.header.tensors.values())) for file in files]
    if isinstance(names, str):
        raise InvalidParameter(f"names must be a collection of tensor names, not the string {names!r}")
    requested = set(names)
    missing = sorted(requested - owner.keys())
    if missing:
        raise NotFound(f"no tensor {', '.join(map(repr, missing))} in {label}")
    selected = [(file, [t for t in file.header.tensors.values() if t.name in requested]) for file in files]
    return [(file, tensors) for file, tensors in selected if tensors]


class _PackFiles:
    """The packs one load reads: local pack files, each opened once and kept open for the load
    (and mapped once if tensors are views of it), and packs that are not local files (in another
    tier), read through the store."""

    def __init__(self, content: ContentStore):
        self._content = content
        self._fds: dict[bytes, int | None] = {}
        self._mappings: dict[bytes, np.ndarray | None] = {}
        self._guards: dict[bytes, dict[int, tuple[int, int]] | None] = {}
        self._claims: dict[bytes, tuple[list[int], list[int]]] = {}  # pack -> sorted starts, ends

    def __enter__(self) -> _PackFiles:
        return self

    def __exit__(self, *_) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)

    def open(self, pack: bytes) -> None:
        if pack not in self._fds:
            try:
                self._fds[pack] = os.open(self._content.hot.path(pack_key(pack)), os.O_RDONLY)
            except FileNotFoundError:
                self._fds[pack] = None
            try:
                self._guards[pack] = decode_guard(self._content.hot.path(guard_key(pack)).read_bytes(), pack)
            except OSError:
                self._guards[pack] = None

    def guard(self, pack: bytes) -> dict[int, tuple[int, int]] | None:
        """The checksums of an ``open``ed local pack's chunks by offset (guard.py), if it has them."""
        return self._guards[pack] if self._fds[pack] is not None else None

    def mapping(self, pack: bytes) -> np.ndarray | None:
        """The whole local pack file as a copy-on-write uint8 array; None if it is not a local file
        or cannot be mapped (out of address space or of mappings: the load reads it instead).

        Its pages stay valid after the pack is deleted or replaced (a pack file is never
        rewritten in place, and an unlinked file lives on while mapped).
        """
        if pack not in self._mappings:
            self.open(pack)
            fd = self._fds[pack]
            mapping = None
            try:
                size = os.fstat(fd).st_size if fd is not None else 0
                if fd is not None and size:
                    mapping = np.frombuffer(_mapping.FileMapping(fd, size), np.uint8)
            except OSError:
                pass
            self._mappings[pack] = mapping
        return self._mappings[pack]

    def claim(self, pack: bytes, begin: int, end: int) -> bool:
        """Reserve bytes [begin, end) of a pack's mapping for one tensor of this load; False if
        another tensor has any of them (the same bytes twice, e.g. a repeated tensor: each
        tensor must own its memory, so that writing one never changes another)."""
        starts, ends = self._claims.setdefault(pack, ([], []))
        i = bisect_right(starts, begin)
        if (i and ends[i - 1] > begin) or (i < len(starts) and starts[i] < end):
            return False
        starts.insert(i, begin)
        ends.insert(i, end)
        return True

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
        for info in infos:
            raw = buffer[info.begin - base:info.end - base]
            dtype, shape = self._layout(info)
            if dtype is None:
                result[info.name] = raw
                continue
            try:
                result[info.name] = self._view(raw, info.begin - base, dtype).reshape(shape)
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
        name = TORCH_DTYPES.get(info.dtype)
        dtype = getattr(self._torch, name, None) if name else None
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
