"""A file mapped copy-on-write (MAP_PRIVATE), its bytes exported through the buffer protocol.

Python's ``mmap.mmap`` keeps a duplicate of the file descriptor open for as long as the mapping
lives (before 3.13's ``trackfd=False``): a server holding the tensors of a 16 GB base model, 500
packs, would hold 500 descriptors per loaded version. This mapping holds none; it is unmapped
when the last view of it goes.
"""

import os

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES
from libc.errno cimport errno
from posix.mman cimport MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap


cdef class FileMapping:
    """The first ``size`` bytes of the open file ``fd``, writable, writes private to this process."""

    cdef void* address
    cdef Py_ssize_t size
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self, int fd, Py_ssize_t size):
        self.address = NULL
        if size <= 0:
            raise ValueError(f"cannot map {size} bytes")
        address = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
        if address == MAP_FAILED:
            raise OSError(errno, os.strerror(errno))
        self.address = address
        self.size = size
        self.shape[0] = size
        self.strides[0] = 1

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
