"""Content-defined chunking: FastCDC 2020, cut points identical to the Rust crate fastcdc (v2020).

Parameters are checked and turned into the crate's gear table and masks here; the
scan itself runs in the compiled module ``artifactstore._fastcdc`` without the GIL, in the
faster of its two loops on this CPU (``loop``).
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Any, BinaryIO

from ..errors import InvalidParameter
from ..native import _fastcdc

__all__ = ["DEFAULT_PARAMS", "ChunkerParams", "cut", "cut_blocks", "cut_stream"]

MIN_SIZE_RANGE = (64, 1_048_576)
AVG_SIZE_RANGE = (256, 4_194_304)
MAX_SIZE_RANGE = (1024, 16_777_216)
NORMALIZATION_RANGE = (0, 3)
SEED_RANGE = (0, 2**64 - 1)

# The crate's masks, indexed by the number of bits the cut condition tests.
MASKS = (
    0, 0, 0, 0, 0,
    0x0000000001804110, 0x0000000001803110, 0x0000000018035100, 0x0000001800035300,
    0x0000019000353000, 0x0000590003530000, 0x0000d90003530000, 0x0000d90103530000,
    0x0000d90303530000, 0x0000d90313530000, 0x0000d90f03530000, 0x0000d90303537000,
    0x0000d90703537000, 0x0000d90707537000, 0x0000d91707537000, 0x0000d91747537000,
    0x0000d91767537000, 0x0000d93767537000, 0x0000d93777537000, 0x0000d93777577000,
    0x0000db3777577000,
)

GEAR = tuple(int.from_bytes(hashlib.md5(bytes([i]) * 64).digest()[:8], "big") for i in range(256))
"""The crate's gear table: the first 8 bytes, big-endian, of MD5 of the byte repeated 64 times."""


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidParameter(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _mask_bits(avg_size: int) -> int:
    """The crate's ``(avg_size as f64).log2().round()``: half-way rounds up."""
    return math.floor(math.log2(avg_size) + 0.5)


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC parameters, checked against the crate's limits on construction."""

    min_size: int
    avg_size: int
    max_size: int
    normalization: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("min_size", self.min_size, *MIN_SIZE_RANGE)
        _check_int("avg_size", self.avg_size, *AVG_SIZE_RANGE)
        _check_int("max_size", self.max_size, *MAX_SIZE_RANGE)
        if not self.min_size <= self.avg_size <= self.max_size:
            raise InvalidParameter(
                f"chunk sizes must satisfy min_size <= avg_size <= max_size, got "
                f"min_size={self.min_size}, avg_size={self.avg_size}, max_size={self.max_size}"
            )
        _check_int("normalization", self.normalization, *NORMALIZATION_RANGE)
        _check_int("seed", self.seed, *SEED_RANGE)

    def as_kwargs(self) -> dict[str, int]:
        """The parameters as keyword arguments for ``cut`` and ``cut_stream``."""
        return {
            "min_size": self.min_size, "avg_size": self.avg_size, "max_size": self.max_size,
            "normalization": self.normalization, "seed": self.seed,
        }


DEFAULT_PARAMS = ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024, normalization=1, seed=0)


# The native scan has two loops with identical cut points: two interleaved hash lanes with
# prefetch (1.1x pyfastcdc where it was tuned, an AMD EPYC) and one lane, as pyfastcdc's (faster
# on the Intel Xeons measured, where two lanes made 0.65-0.73x). None: time both once per process,
# on the first chunker made, and keep the faster; True or False: that loop.
TWO_LANES: bool | None = None
CALIBRATION_BYTES = 1 << 20


def loop() -> bool:
    """Whether cuts run the two-lane loop (see TWO_LANES)."""
    return _calibrated() if TWO_LANES is None else TWO_LANES


@lru_cache(maxsize=1)
def _calibrated() -> bool:
    """Whether the two-lane loop cuts random bytes faster than the one-lane loop on this CPU:
    the best of three alternating runs of each over 1 MiB (a few milliseconds, once)."""
    data = random.Random(0).randbytes(CALIBRATION_BYTES)
    loops = {two: _chunker(DEFAULT_PARAMS, two) for two in (True, False)}
    best = {two: float("inf") for two in loops}
    for _ in range(3):
        for two, chunker in loops.items():
            started = time.perf_counter()
            chunker.cut(data, True)
            best[two] = min(best[two], time.perf_counter() - started)
    return best[True] < best[False]


@lru_cache(maxsize=64)
def _chunker(params: ChunkerParams, two_lanes: bool) -> Any:
    # AVG_SIZE_RANGE gives bits in 8..22 and normalization is at most 3, so both
    # indices stay within MASKS' meaningful entries 5..25.
    bits = _mask_bits(params.avg_size)
    return _fastcdc.Chunker(
        [g ^ params.seed for g in GEAR],
        params.min_size, params.avg_size, params.max_size,
        MASKS[bits + params.normalization], MASKS[bits - params.normalization], two_lanes,
    )


PARALLEL_MIN_BYTES = 8 << 20


def cut(data: Any, *, min_size: int, avg_size: int, max_size: int,
        normalization: int = 1, seed: int = 0, threads: int = 2) -> list[int]:
    """Chunk lengths of ``data``, in order; ``[]`` when it is empty.

    ``data`` is any C-contiguous buffer (bytes, bytearray, memoryview, mmap, numpy
    array of any dtype); its raw bytes are chunked without the GIL. Buffers of at least
    8 MiB are split among ``threads`` threads, with results identical to one thread.
    """
    params = ChunkerParams(min_size, avg_size, max_size, normalization, seed)
    _check_int("threads", threads, 1, 256)
    chunker = _chunker(params, loop())
    view = _bytes_of(data)
    if threads == 1 or len(view) < PARALLEL_MIN_BYTES:
        return chunker.cut(view, True)[0]
    return _cut_in_parallel(chunker, view, threads, max_size)


def _bytes_of(data: Any) -> memoryview:
    """A flat byte view of any C-contiguous buffer, numpy arrays of exotic dtypes (bf16) included."""
    np = sys.modules.get("numpy")  # an array exists only once numpy is loaded: chunking does not load it
    if np is not None and isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise InvalidParameter("cut needs a C-contiguous array")
        return data.reshape(-1).view(np.uint8).data
    view = memoryview(data)
    if not view.c_contiguous:
        raise InvalidParameter("cut needs a C-contiguous buffer")
    return view.cast("B")


def _cut_in_parallel(chunker: Any, view: memoryview, threads: int, max_size: int) -> list[int]:
    """Chunk segments concurrently, each from a guessed start, then stitch them together.

    Cut points are content-defined: once the chunking before a segment meets one of the
    segment's own cut points, everything after that point is what one pass would give. The
    chunking before it goes on past the segment's start a chunk at a time until it does (a
    chunk or two on real data); where it never does (pathological data), the rest is chunked
    in one pass.
    """
    size = len(view)
    starts = [size * i // threads for i in range(threads)] + [size]

    def segment(i: int) -> list[int]:
        """The segment's chunk ends from its guessed start, its start first; final only where
        the data ends, else it stops before a chunk that could depend on the next segment."""
        lengths, _ = chunker.cut(view[starts[i]:starts[i + 1]], starts[i + 1] == size)
        return list(accumulate(lengths, initial=starts[i]))

    with ThreadPoolExecutor(threads - 1) as pool:
        later = [pool.submit(segment, i) for i in range(1, threads)]
        ends = segment(0)
        for future in later:
            segment_ends = future.result()
            positions = {end: k for k, end in enumerate(segment_ends)}
            while ends[-1] not in positions and ends[-1] < segment_ends[-1]:
                stop = min(size, ends[-1] + max_size)  # one chunk, or the last ones
                _extend(ends, chunker.cut(view[ends[-1]:stop], stop == size)[0])
            if ends[-1] not in positions:
                _extend(ends, chunker.cut(view[ends[-1]:], True)[0])
                break
            ends.extend(segment_ends[positions[ends[-1]] + 1:])
    return [b - a for a, b in zip(ends, ends[1:])]


def _extend(ends: list[int], lengths: list[int]) -> None:
    for length in lengths:
        ends.append(ends[-1] + length)


def cut_blocks(data: Any, *, min_size: int, avg_size: int, max_size: int, normalization: int = 1, seed: int = 0,
               block_size: int = 8 << 20, first_block: int | None = None) -> Iterator[list[int]]:
    """``cut(data)``, a block of about ``block_size`` bytes at a time: the lengths of the chunks
    that start in each block, in order, so that a caller can hash and store the first chunks
    while the rest are still being cut. Concatenated, the blocks' lengths equal ``cut(data)``:
    a cut point depends only on the ``max_size`` bytes after the chunk's start. ``first_block``:
    the first block is about that long, and each next one twice the one before, up to
    ``block_size`` (a pipeline's later stages start sooner)."""
    params = ChunkerParams(min_size, avg_size, max_size, normalization, seed)
    for name, size in (("block_size", block_size), ("first_block", block_size if first_block is None else first_block)):
        if type(size) is not int or size < 1:
            raise InvalidParameter(f"{name} must be a positive integer, got {size!r}")
    return _blocks(_chunker(params, loop()), _bytes_of(data), block_size, first_block or block_size, max_size)


def _blocks(chunker: Any, view: memoryview, block_size: int, first_block: int, max_size: int) -> Iterator[list[int]]:
    position, size = 0, min(first_block, block_size)
    while position < len(view):
        stop = min(len(view), position + size + max_size)
        lengths, consumed = chunker.cut(view[position:stop], stop == len(view))
        yield lengths
        position += consumed
        size = min(2 * size, block_size)


def cut_stream(stream: BinaryIO, *, min_size: int, avg_size: int, max_size: int,
               normalization: int = 1, seed: int = 0,
               block_size: int = 16 << 20) -> Iterator[tuple[memoryview, list[int]]]:
    """Chunk a binary stream of any size, reading about ``block_size`` bytes at a time.

    Yields ``(view, lengths)``: a read-only view of whole consecutive chunks and their
    lengths. The lengths of all batches together equal ``cut`` of the whole content.
    The view's buffer is reused: it is only valid until the next batch is requested.
    """
    params = ChunkerParams(min_size, avg_size, max_size, normalization, seed)
    if type(block_size) is not int or block_size < 1:
        raise InvalidParameter(f"block_size must be a positive integer, got {block_size!r}")
    return _batches(_chunker(params, loop()), _reader(stream), block_size, max_size)


def _batches(chunker: Any, read_into: Callable[[memoryview], int | None], block_size: int,
             max_size: int) -> Iterator[tuple[memoryview, list[int]]]:
    # A cut may look max_size bytes ahead, so up to max_size - 1 bytes stay behind
    # for the next batch; each fill then adds at least block_size new ones.
    buffer = memoryview(bytearray(block_size + max_size))
    filled = 0
    at_eof = False
    while not at_eof:
        while filled < len(buffer):
            count = read_into(buffer[filled:])
            if not count:
                at_eof = True
                break
            filled += count
        lengths, consumed = chunker.cut(buffer[:filled], at_eof)
        if lengths:
            yield buffer[:consumed].toreadonly(), lengths
        buffer[: filled - consumed] = buffer[consumed:filled]
        filled -= consumed


def _reader(stream: BinaryIO) -> Callable[[memoryview], int | None]:
    """``stream.readinto``, or an equivalent built on ``stream.read``."""
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        return readinto

    def read_into(target: memoryview) -> int:
        data = stream.read(len(target))
        target[: len(data)] = data
        return len(data)

    return read_into
