"""Private (copy-on-write) memory with pieces of files mapped into it, exported through the buffer
protocol: the bytes of a stored file laid out as in the file, its pages mapped from the packs that
hold them wherever a whole page lies in one pack at the right place.

Python's ``mmap.mmap`` maps one file per object and keeps a duplicate of its descriptor open for
as long as the mapping lives (before 3.13's ``trackfd=False``): a server holding the tensors of a
16 GB base model, 500 packs, would hold 500 descriptors per loaded version. This mapping holds
none; it is unmapped, all pieces at once, when the last view of it goes.
"""

import os

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES
from libc.errno cimport errno
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap

cdef extern from *:
    """
    #include <sys/mman.h>
    #ifndef MADV_HUGEPAGE
    #define MADV_HUGEPAGE MADV_NORMAL  /* no transparent huge pages here: the advice is a no-op */
    #endif
    """
    int MAP_NORESERVE
    int MADV_HUGEPAGE
    int madvise(void *addr, size_t length, int advice)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# The kernel maps a 2 MiB folio of the page cache with one page-table entry (not 512) where the
# virtual address and the file offset agree modulo 2 MiB, x86-64's and arm64's huge page with
# 4 KiB pages, and the size modulo which a put lays packs out: a mapping is placed so that the
# pieces holding most of its bytes agree (faulting a 210 MB adapter in took 4.7 ms instead of 10).
# A write fills the page cache with such folios; the faults of a mapping read pages from the disk
# in small ones unless it is advised MADV_HUGEPAGE, as each piece of a huge page or more is: packs
# read from the disk (after a reboot, an eviction, a put that wrote around the cache) then loaded
# warm in 23-28 ms, not 9.
HUGE_PAGE_SIZE = 2 << 20


cdef class FileMapping:
    """``size`` bytes of writable memory private to this process: zeros, except ``pieces``, each
    ``(fd, file_offset, offset, length)``: ``length`` bytes of the open file ``fd`` from
    ``file_offset`` mapped at ``offset`` (both multiples of PAGE_SIZE). Writes never reach a file.

    ``pieces`` is kept (without the descriptors) as ``mapped``: (offset, length) of each.
    """

    cdef void* address
    cdef Py_ssize_t size
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]
    cdef readonly tuple mapped

    def __cinit__(self, Py_ssize_t size, pieces=()):
        cdef int fd
        cdef Py_ssize_t file_offset, offset, length
        cdef void* piece
        self.address = NULL
        if size <= 0:
            raise ValueError(f"cannot map {size} bytes")
        checked = []
        for fd, file_offset, offset, length in pieces:
            if file_offset % PAGE_SIZE or offset % PAGE_SIZE or file_offset < 0 or offset < 0 or length <= 0 \
                    or length > size - offset:
                raise ValueError(f"piece ({file_offset}, {offset}, {length}) is not page-aligned within {size} bytes")
            checked.append((fd, file_offset, offset, length))
        address = _reserve(size, _huge_page_phase(checked))
        if address == NULL:
            raise OSError(errno, os.strerror(errno))
        self.address = address
        self.size = size
        self.shape[0] = size
        self.strides[0] = 1
        for fd, file_offset, offset, length in checked:
            piece = mmap(<char*>address + offset, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd,
                         file_offset)
            if piece == MAP_FAILED:  # out of mappings (vm.max_map_count), say: the caller reads instead
                error = errno
                munmap(self.address, self.size)
                self.address = NULL
                raise OSError(error, os.strerror(error))
            if length >= HUGE_PAGE_SIZE:
                madvise(piece, length, MADV_HUGEPAGE)  # advice: where refused, faults read as before
        self.mapped = tuple((offset, length) for _, _, offset, length in checked)

    def __len__(self):
        return self.size

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        buffer.buf = self.address
        buffer.obj = self
        buffer.len = self.size
        buffer.readonly = 0
        buffer.itemsize = 1
        buffer.ndim = 1
        buffer.format = NULL
        buffer.shape = NULL
        buffer.strides = NULL
        if flags & PyBUF_FORMAT:
            buffer.format = b"B"
        if flags & PyBUF_ND:
            buffer.shape = self.shape
        if flags & PyBUF_STRIDES == PyBUF_STRIDES:
            buffer.strides = self.strides
        buffer.suboffsets = NULL
        buffer.internal = NULL

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def __dealloc__(self):
        if self.address != NULL:
            munmap(self.address, self.size)


def _huge_page_phase(pieces):
    """The offset modulo HUGE_PAGE_SIZE the mapping's address should have: the file offset minus
    the offset in the mapping shared by the pieces holding most bytes (None where no piece holds a
    huge page)."""
    weights = {}
    for _, file_offset, offset, length in pieces:
        if length >= HUGE_PAGE_SIZE:
            phase = (file_offset - offset) % HUGE_PAGE_SIZE
            weights[phase] = weights.get(phase, 0) + length
    return max(weights, key=weights.__getitem__) if weights else None


cdef void* _reserve(Py_ssize_t size, phase):
    """``size`` bytes of private anonymous memory, at an address congruent to ``phase`` modulo
    HUGE_PAGE_SIZE unless it is None; NULL (and errno) if the kernel refuses."""
    cdef Py_ssize_t pages = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    cdef Py_ssize_t extra = 0 if phase is None else HUGE_PAGE_SIZE - PAGE_SIZE
    cdef char* reserved = <char*>mmap(NULL, pages + extra, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    if <void*>reserved == MAP_FAILED:
        return NULL
    if phase is None:
        return reserved
    cdef Py_ssize_t skip = (phase - <size_t>reserved) % HUGE_PAGE_SIZE
    if skip:
        munmap(reserved, skip)
    if extra - skip:
        munmap(reserved + skip + pages, extra - skip)
    return reserved + skip


def buffer_address(const unsigned char[::1] data) -> int:
    """The address of a contiguous buffer's first byte (0 for an empty one): whether memory is
    aligned for direct I/O (backends/local.py)."""
    return <size_t>&data[0] if data.shape[0] else 0
