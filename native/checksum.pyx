# cython: boundscheck=False, wraparound=False
"""xxh3-64 (the vendored reference header, native/xxhash/) with the GIL released.

The ``xxhash`` package holds the GIL while it hashes, so two threads checking chunks took turns;
here they run side by side, page faults of mapped packs included. On x86 the build adds xxHash's
dispatcher, which picks the widest vector unit the CPU has when the module loads.
"""

from libc.stdint cimport int64_t, uint64_t

cdef extern from *:
    """
    #ifdef ARTIFACTSTORE_XXH_DISPATCH
    #include "xxh_x86dispatch.h"
    #else
    #define XXH_INLINE_ALL
    #include "xxhash.h"
    #endif
    """
    uint64_t XXH3_64bits(const void* data, size_t length) nogil


def xxh3_64(const unsigned char[::1] data) -> int:
    """XXH3_64bits of ``data`` with seed 0."""
    cdef uint64_t value
    with nogil:
        value = XXH3_64bits(&data[0] if data.shape[0] else NULL, data.shape[0])
    return value


def first_mismatch(const unsigned char[::1] data, const int64_t[::1] offsets, const int64_t[::1] lengths,
                   const uint64_t[::1] expected) -> int:
    """Index of the first range ``data[offsets[i]:offsets[i] + lengths[i]]`` whose xxh3-64 is not
    ``expected[i]``, or -1 if every one matches."""
    cdef Py_ssize_t i, count = offsets.shape[0], found = -1
    if lengths.shape[0] != count or expected.shape[0] != count:
        raise ValueError("offsets, lengths and expected must have the same length")
    for i in range(count):
        if offsets[i] < 0 or lengths[i] < 0 or offsets[i] > data.shape[0] or lengths[i] > data.shape[0] - offsets[i]:
            raise ValueError(f"range {i} ({offsets[i]}, {lengths[i]}) is outside the {data.shape[0]}-byte buffer")
    with nogil:
        for i in range(count):
            if XXH3_64bits(&data[0] + offsets[i], lengths[i]) != expected[i]:
                found = i
                break
    return found
