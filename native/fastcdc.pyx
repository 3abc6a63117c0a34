# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native core of artifactstore.chunking: FastCDC 2020 cut points over a whole buffer.

Cut points are identical to the Rust crate fastcdc (v2020 module). Parameters are
validated and derived (gear table, masks) in artifactstore/chunking.py; this module
only runs the hot loop, without the GIL.

The gear hash at a position depends only on the last 64 bytes hashed (each byte's
contribution is shifted out after 64 positions), so the scan hashes two consecutive
blocks of a chunk at once, the second lane warmed up from the 64 bytes before its
block. A single hash chain is bound by the latency of its shift-and-add; two
independent chains run about as fast as the core can load bytes and table entries.
The first hit in position order is then resolved exactly. Which of the two loops is faster
depends on the CPU (two lanes won on the AMD EPYC they were tuned on and lost on Intel Xeons):
``Chunker(..., two_lanes=False)`` scans with one lane, as pyfastcdc does; the cut points are
the same either way.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport SIZE_MAX, uint8_t, uint64_t
from libc.stdlib cimport free, realloc

cdef extern from *:
    void __builtin_prefetch(const void *address) noexcept nogil

cdef enum:
    HASH_WINDOW = 64  # bytes that determine a gear hash
    LANE_BLOCK = 512  # bytes each lane hashes per round (measured best from 256 to 4096)
    MIN_LANE_BLOCK = 256  # below this the warm-up outweighs the second lane
    CACHE_LINE = 64

cdef size_t NOT_FOUND = SIZE_MAX


ctypedef struct Params:
    uint64_t gear[256]
    uint64_t gear_ls[256]
    uint64_t mask_s
    uint64_t mask_s_ls
    uint64_t mask_l
    uint64_t mask_l_ls
    size_t min_size
    size_t avg_size
    size_t max_size
    bint two_lanes


ctypedef struct Lengths:
    size_t *items
    size_t count
    size_t capacity


cdef inline uint64_t _hash_of(const Params *p, const uint8_t *chunk, size_t begin, size_t end) noexcept nogil:
    """Gear hash after chunk[begin:end], starting from 0 (begin and end even)."""
    cdef uint64_t h = 0
    cdef size_t a
    for a in range(begin, end, 2):
        h = (h << 2) + p.gear_ls[chunk[a]]
        h = h + p.gear[chunk[a + 1]]
    return h


cdef inline uint64_t _warm_hash(
    const Params *p, const uint8_t *chunk, size_t hash_start, size_t position,
) noexcept nogil:
    """Exact gear hash just before `position`, from at most HASH_WINDOW bytes."""
    if position - hash_start > HASH_WINDOW:
        return _hash_of(p, chunk, position - HASH_WINDOW, position)
    return _hash_of(p, chunk, hash_start, position)


cdef inline size_t _scan(
    const Params *p, const uint8_t *chunk, size_t begin, size_t end,
    uint64_t *hash, uint64_t mask, uint64_t mask_ls,
) noexcept nogil:
    """First cut in [begin, end) continuing from *hash, or NOT_FOUND (updates *hash)."""
    cdef uint64_t h = hash[0]
    cdef const uint64_t *gear = <const uint64_t *>p.gear
    cdef const uint64_t *gear_ls = <const uint64_t *>p.gear_ls
    cdef size_t a
    for a in range(begin, end, 2):
        h = (h << 2) + gear_ls[chunk[a]]
        if (h & mask_ls) == 0:
            return a
        h = h + gear[chunk[a + 1]]
        if (h & mask) == 0:
            return a + 1
    hash[0] = h
    return NOT_FOUND


cdef size_t _scan_region(
    const Params *p, const uint8_t *chunk, size_t hash_start, size_t begin, size_t end,
    uint64_t *hash, uint64_t mask, uint64_t mask_ls,
) noexcept nogil:
    """_scan with two interleaved lanes over consecutive blocks; same result."""
    cdef const uint64_t *gear = <const uint64_t *>p.gear
    cdef const uint64_t *gear_ls = <const uint64_t *>p.gear_ls
    cdef const uint8_t *lane0
    cdef const uint8_t *lane1
    cdef uint64_t h0 = hash[0]
    cdef uint64_t h1
    cdef size_t position = begin
    cdef size_t block, k, hit, earlier, ahead
    while end - position >= 2 * MIN_LANE_BLOCK:
        block = min(<size_t>LANE_BLOCK, ((end - position) // 2) & ~(<size_t>1))
        lane0 = chunk + position
        lane1 = lane0 + block
        # Lane 0 of the next round continues where lane 1 reads now, which the
        # hardware prefetcher follows; lane 1 jumps a block ahead, which it does not.
        ahead = position + 3 * block - HASH_WINDOW
        while ahead < min(end, position + 4 * block):
            __builtin_prefetch(chunk + ahead)
            ahead += CACHE_LINE
        h1 = _warm_hash(p, chunk, hash_start, position + block)
        hit = NOT_FOUND
        k = 0
        while k < block:
            h0 = (h0 << 2) + gear_ls[lane0[k]]
            h1 = (h1 << 2) + gear_ls[lane1[k]]
            if (h0 & mask_ls) == 0:
                return position + k
            if (h1 & mask_ls) == 0:
                hit = position + block + k
                break
            h0 = h0 + gear[lane0[k + 1]]
            h1 = h1 + gear[lane1[k + 1]]
            if (h0 & mask) == 0:
                return position + k + 1
            if (h1 & mask) == 0:
                hit = position + block + k + 1
                break
            k += 2
        if hit != NOT_FOUND:
            # Lane 0 is only checked up to pair k; an earlier cut may follow there.
            h0 = _warm_hash(p, chunk, hash_start, position + k)
            earlier = _scan(p, chunk, position + k, position + block, &h0, mask, mask_ls)
            return earlier if earlier != NOT_FOUND else hit
        h0 = h1
        position += 2 * block
    hash[0] = h0
    return _scan(p, chunk, position, end, hash, mask, mask_ls)


cdef size_t _cut_point(const Params *p, const uint8_t *chunk, size_t available) noexcept nogil:
    """Length of the chunk starting at `chunk` (the crate's v2020 `cut`)."""
    cdef size_t remaining = available
    if remaining <= p.min_size:
        return remaining
    cdef size_t center = p.avg_size
    if remaining > p.max_size:
        remaining = p.max_size
    elif remaining < center:
        center = remaining
    # The crate hashes byte pairs from min_size // 2 * 2 and switches masks at the
    # pair boundary center // 2 * 2; an odd last byte is never hashed.
    cdef size_t hash_start = p.min_size & ~(<size_t>1)
    cdef size_t mask_switch = center & ~(<size_t>1)
    cdef size_t hash_end = remaining & ~(<size_t>1)
    cdef uint64_t h = 0
    cdef size_t cut
    if p.two_lanes:
        cut = _scan_region(p, chunk, hash_start, hash_start, mask_switch, &h, p.mask_s, p.mask_s_ls)
        if cut == NOT_FOUND:
            cut = _scan_region(p, chunk, hash_start, mask_switch, hash_end, &h, p.mask_l, p.mask_l_ls)
    else:
        cut = _scan(p, chunk, hash_start, mask_switch, &h, p.mask_s, p.mask_s_ls)
        if cut == NOT_FOUND:
            cut = _scan(p, chunk, mask_switch, hash_end, &h, p.mask_l, p.mask_l_ls)
    return cut if cut != NOT_FOUND else remaining


cdef int _append(Lengths *lengths, size_t length) noexcept nogil:
    cdef size_t *grown
    if lengths.count == lengths.capacity:
        lengths.capacity = lengths.capacity * 2 + 1024
        grown = <size_t *>realloc(lengths.items, lengths.capacity * sizeof(size_t))
        if grown == NULL:
            return -1
        lengths.items = grown
    lengths.items[lengths.count] = length
    lengths.count += 1
    return 0


cdef Py_ssize_t _cut_all(
    const Params *p, const uint8_t *data, size_t size, bint at_eof, Lengths *lengths,
) noexcept nogil:
    """Cut data into chunks; returns the bytes consumed, or -1 when out of memory.

    Unless at_eof, stops before a chunk that could depend on bytes beyond `size`:
    a cut reads at most max_size bytes, so it is final once that many are available.
    """
    cdef size_t offset = 0
    cdef size_t length
    while offset < size:
        if not at_eof and size - offset < p.max_size:
            break
        length = _cut_point(p, data + offset, size - offset)
        if _append(lengths, length) != 0:
            return -1
        offset += length
    return <Py_ssize_t>offset


cdef class Chunker:
    """Cut points for one parameter set; construct through artifactstore.chunking."""

    cdef Params params

    def __init__(self, gear, size_t min_size, size_t avg_size, size_t max_size, uint64_t mask_s, uint64_t mask_l,
                 bint two_lanes=True):
        if len(gear) != 256:
            raise ValueError("gear must have 256 entries")
        cdef int i
        # With a seed, gear holds GEAR[i] ^ seed; shifting it gives the crate's
        # GEAR_LS[i] ^ (seed << 1), both modulo 2**64.
        for i in range(256):
            self.params.gear[i] = gear[i]
            self.params.gear_ls[i] = self.params.gear[i] << 1
        self.params.min_size = min_size
        self.params.avg_size = avg_size
        self.params.max_size = max_size
        self.params.mask_s = mask_s
        self.params.mask_s_ls = mask_s << 1
        self.params.mask_l = mask_l
        self.params.mask_l_ls = mask_l << 1
        self.params.two_lanes = two_lanes

    def cut(self, data, bint at_eof=True):
        """Chunk lengths of a contiguous buffer and the number of bytes they cover.

        With at_eof false, bytes whose cut could depend on data after the buffer are
        left out of the result (at most max_size - 1 of them).
        """
        cdef Py_buffer view
        cdef Lengths lengths = Lengths(NULL, 0, 0)
        cdef Py_ssize_t consumed
        cdef size_t i
        cdef list result = []
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            with nogil:
                consumed = _cut_all(&self.params, <const uint8_t *>view.buf, <size_t>view.len, at_eof, &lengths)
            if consumed < 0:
                raise MemoryError()
            for i in range(lengths.count):
                result.append(lengths.items[i])
            return result, consumed
        finally:
            free(lengths.items)
            PyBuffer_Release(&view)
