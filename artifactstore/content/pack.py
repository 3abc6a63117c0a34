"""Pack files: immutable containers of chunks with a self-describing trailer.

Layout (docs/format.md): chunk bytes back to back, then ``entry{N} N:u32
"ARTPACK1"`` where an entry is a 32-byte chunk digest and a u32 length. The
pack id is the BLAKE3 of the trailer. An entry whose digest is all zeros is
padding (zero bytes that are no chunk), which writers use to keep a file's bytes
aligned in the pack as they are in the file.
"""

import struct
from dataclasses import dataclass

from ..backends import Backend, ObjectWriter
from ..errors import CorruptObject, InvalidInput, StoreError
from ..ids import DIGEST_SIZE, digest
from .guard import checksum, encode_guard, guard_key

MAGIC = b"ARTPACK1"
PADDING = bytes(DIGEST_SIZE)
ENTRY = struct.Struct("<32sI")
FOOTER = struct.Struct("<I8s")
TARGET_SIZE = 32 << 20
INPUT_CHANGED = "the input changed while it was being stored: store it again once it holds still"


@dataclass(frozen=True)
class PackEntry:
    chunk: bytes
    offset: int
    length: int


def pack_key(pack_id: bytes) -> str:
    hex_id = pack_id.hex()
    return f"packs/{hex_id[:2]}/{hex_id}.pack"


def pack_id_from_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".pack"):
        return None
    try:
        pack_id = bytes.fromhex(name[: -len(".pack")])
    except ValueError:
        return None
    return pack_id if len(pack_id) == DIGEST_SIZE and key == pack_key(pack_id) else None


def encode_trailer(layout: list[tuple[bytes, int]]) -> bytes:
    """The trailer of a pack holding ``layout`` = (chunk digest or PADDING, length) in pack order."""
    return b"".join(ENTRY.pack(chunk, length) for chunk, length in layout) + FOOTER.pack(len(layout), MAGIC)


def decode_trailer(tail: bytes, pack_size: int, where: str) -> tuple[bytes, list[PackEntry]]:
    """(pack id, entries) from the trailer at the end of a pack of ``pack_size`` bytes.

    ``tail`` must hold at least the whole trailer (the end of the file).
    """
    if len(tail) < FOOTER.size:
        raise CorruptObject(f"{where}: too short to be a pack")
    count, magic = FOOTER.unpack_from(tail, len(tail) - FOOTER.size)
    if magic != MAGIC:
        raise CorruptObject(f"{where}: bad pack magic")
    trailer_size = count * ENTRY.size + FOOTER.size
    if trailer_size > len(tail) or trailer_size > pack_size:
        raise CorruptObject(f"{where}: trailer claims {count} chunks, more than the pack can hold")
    trailer = tail[len(tail) - trailer_size:]
    entries, offset = [], 0
    for chunk, length in ENTRY.iter_unpack(trailer[: count * ENTRY.size]):
        if chunk != PADDING:
            entries.append(PackEntry(chunk, offset, length))
        offset += length
    if offset + trailer_size != pack_size:
        raise CorruptObject(f"{where}: chunk lengths do not add up to the pack's size")
    return digest(trailer), entries


def read_trailer(backend: Backend, key: str) -> tuple[bytes, list[PackEntry]]:
    size = backend.size(key)
    if size < FOOTER.size:
        raise CorruptObject(f"{key}: too short to be a pack")
    count, _ = FOOTER.unpack(backend.read_range(key, size - FOOTER.size, FOOTER.size))
    trailer_size = min(count * ENTRY.size + FOOTER.size, size)
    return decode_trailer(backend.read_range(key, size - trailer_size, trailer_size), size, key)


class PackWriter:
    """Appends chunks to a new pack; ``seal`` then ``publish`` make it visible.

    ``guarded``: also write the pack's guard (guard.py), for packs in a local tier. ``cached``: as
    ``Backend.open_writer``'s.
    """

    def __init__(self, backend: Backend, *, guarded: bool = False, cached: bool = True):
        self._backend = backend
        self._writer: ObjectWriter = backend.open_writer(cached=cached)
        self._layout: list[tuple[bytes, int]] = []  # the trailer's entries, padding included
        self._checksums: list[int] | None = [] if guarded else None
        self._unchecked: list[tuple[memoryview, list[tuple[bytes, int, int | None]]]] = []  # runs being written
        self.entries: list[PackEntry] = []
        self.size = 0
        self._broken = False  # an append failed halfway: the bytes written and the layout disagree

    def add(self, chunk: bytes, data) -> None:
        """Append a chunk whose bytes were checked against ``chunk``."""
        self.add_run(data, [(chunk, len(data), None)])

    def add_run(self, data, chunks: list[tuple[bytes, int, int | None]]) -> None:
        """Append chunks that lie back to back in ``data`` with one write: (digest, length,
        ``data_checksum``) for each, in order. ``data_checksum``: the chunk's xxh3 if the caller
        took it before it computed the digest from the same bytes (data that may change under us,
        such as a mapped input file): the guard vouches for the bytes that were hashed, not for a
        later read, and bytes written that differ from them are refused (InvalidInput) instead of
        stored damaged. None: bytes just checked against the digest, whose xxh3 is taken here.

        The write may still be going on when this returns, and those checks wait for it: ``data``
        must stay until ``settle``, which ``seal`` calls. This returns once the runs before it are
        written and checked, so that the disk writes one run while this checks the one before."""
        view = memoryview(data).cast("B")
        if sum(length for _, length, _ in chunks) != len(view):
            raise ValueError(f"chunks of {sum(length for _, length, _ in chunks)} bytes in a run of {len(view)}")
        start = self.size
        self._start_append()
        self._writer.write(view)
        self.size += len(view)
        offset = 0
        for chunk, length, _ in chunks:
            self._layout.append((chunk, length))
            self.entries.append(PackEntry(chunk, start + offset, length))
            offset += length
        self._unchecked.append((view, chunks))
        self._check_written(keep=1)
        self._broken = False

    def settle(self) -> None:
        """Wait for every write so far, then check what each read (see ``add_run``)."""
        self._check_written(keep=0)

    def _check_written(self, keep: int) -> None:
        """Check the runs written, all but the ``keep`` newest, once their writes ended; a write
        or a check that fails leaves the pack unfit for anything but ``discard``."""
        try:
            self._writer.settle(keep)
            while len(self._unchecked) > keep:
                view, chunks = self._unchecked.pop(0)
                offset = 0
                for _, length, data_checksum in chunks:
                    if data_checksum is not None or self._checksums is not None:
                        written = checksum(view[offset:offset + length])  # read after the write
                        if data_checksum is not None and written != data_checksum:
                            raise InvalidInput(INPUT_CHANGED)
                        if self._checksums is not None:
                            self._checksums.append(written if data_checksum is None else data_checksum)
                    offset += length
        except BaseException:
            self._broken = True
            raise

    def pad(self, length: int) -> None:
        """Append ``length`` zero bytes that are no chunk."""
        if length:
            self._start_append()
            self._writer.write(bytes(length))
            self._layout.append((PADDING, length))
            self.size += length
            self._broken = False

    def _start_append(self) -> None:
        """Mark the pack inconsistent until the append in progress completes; refuse to go on
        with one whose earlier append failed halfway (its bytes and its layout disagree)."""
        if self._broken:
            raise StoreError("a pack whose last append failed cannot take more chunks")
        self._broken = True

    def seal(self) -> bytes:
        """Append the trailer; returns the pack id. Nothing is visible before ``publish``."""
        if self._broken:
            raise StoreError("a pack whose last append failed cannot be sealed")
        self.settle()
        trailer = encode_trailer(self._layout)
        self.pack_id = digest(trailer)
        self._writer.write(trailer)
        return self.pack_id

    def publish(self) -> None:
        try:
            self._writer.publish(pack_key(self.pack_id))
        except BaseException:
            self._writer.discard()
            raise
        if self._checksums is not None:  # after the pack: a guard never names a pack that is not there
            self._backend.write(guard_key(self.pack_id), encode_guard(
                self.pack_id, [(e.offset, e.length, c) for e, c in zip(self.entries, self._checksums)]))

    def discard(self) -> None:
        self._writer.discard()
