"""Pack files: immutable containers of chunks with a self-describing trailer.

Layout (docs/format.md): chunk bytes back to back, then ``entry{N} N:u32
"ARTPACK1"`` where an entry is a 32-byte chunk digest and a u32 length. The
pack id is the BLAKE3 of the trailer.
"""

import struct
from dataclasses import dataclass

from .backend import Backend, ObjectWriter
from .errors import CorruptObject
from .guard import checksum, encode_guard, guard_key
from .ids import DIGEST_SIZE, digest

MAGIC = b"ARTPACK1"
ENTRY = struct.Struct("<32sI")
FOOTER = struct.Struct("<I8s")
TARGET_SIZE = 32 << 20


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


def encode_trailer(entries: list[PackEntry]) -> bytes:
    return b"".join(ENTRY.pack(e.chunk, e.length) for e in entries) + FOOTER.pack(len(entries), MAGIC)


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
    """Appends chunks to a new pack; ``finish`` publishes it and returns (id, entries).

    ``guarded``: also write the pack's guard (guard.py), for packs in a local tier.
    """

    def __init__(self, backend: Backend, *, guarded: bool = False):
        self._backend = backend
        self._writer: ObjectWriter = backend.open_writer()
        self._checksums: list[int] | None = [] if guarded else None
        self.entries: list[PackEntry] = []
        self.size = 0

    def add(self, chunk: bytes, data) -> None:
        self._writer.write(data)
        self.entries.append(PackEntry(chunk, self.size, len(data)))
        self.size += len(data)
        if self._checksums is not None:
            self._checksums.append(checksum(data))

    def seal(self) -> bytes:
        """Append the trailer; returns the pack id. Nothing is visible before ``publish``."""
        trailer = encode_trailer(self.entries)
        self.pack_id = digest(trailer)
        self._writer.write(trailer)
        return self.pack_id

    def publish(self) -> None:
        self._writer.publish(pack_key(self.pack_id))
        if self._checksums is not None:  # after the pack: a guard never names a pack that is not there
            self._backend.write(guard_key(self.pack_id), encode_guard(
                self.pack_id, [(e.length, c) for e, c in zip(self.entries, self._checksums)]))

    def finish(self) -> tuple[bytes, list[PackEntry]]:
        self.seal()
        self.publish()
        return self.pack_id, self.entries

    def discard(self) -> None:
        self._writer.discard()
