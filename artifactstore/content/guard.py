"""Pack guards: an xxh3 checksum of every chunk of a local pack, for the hot read path.

Re-hashing each chunk with BLAKE3 costs a load more than reading it (about 4 GB/s a core against
20 GB/s for xxh3, which the native module ``_checksum`` computes without the GIL). A guard is
written beside a pack in a local tier when the pack is written, from bytes whose BLAKE3 ids were
just computed or checked, so it vouches for verified bytes. Loads from that tier check each chunk
against its guard; a chunk that fails is re-hashed with BLAKE3 before it is called damaged, so a
damaged guard can slow a load but never fail one nor pass bad bytes that BLAKE3 would catch.
Guards never leave the machine: object storage and every transfer between tiers keep BLAKE3.

Layout (docs/format.md): ``"ARTGUARD"``, the 32-byte pack id, ``count:u32``, then per chunk in
pack order ``length:u32 xxh3_64:u64``, then the xxh3_64 of everything before it. Little-endian.
"""

import struct
from typing import TYPE_CHECKING, Any, NamedTuple

from ..ids import DIGEST_SIZE
from ..native import _checksum

MAGIC = b"ARTGUARD"
HEAD = struct.Struct(f"<8s{DIGEST_SIZE}sI")
ENTRY = struct.Struct("<IQ")
CHECKSUM = struct.Struct("<Q")
# ENTRY as numpy fields (not a dtype: this module is imported by commands that never load numpy)
_ENTRY_FIELDS: Any = {"names": ["length", "checksum"], "formats": ["<u4", "<u8"], "offsets": [0, 4],
                      "itemsize": ENTRY.size}

if TYPE_CHECKING:
    import numpy as np

checksum = _checksum.xxh3_64


def guard_key(pack_id: bytes) -> str:
    hex_id = pack_id.hex()
    return f"guards/{hex_id[:2]}/{hex_id}.guard"


def encode_guard(pack_id: bytes, chunks: list[tuple[int, int, int]]) -> bytes:
    """The guard of a pack whose chunks, in pack order, are at (offset, length) with this
    checksum; a gap before a chunk (padding) becomes an entry with checksum 0."""
    layout, end = [], 0
    for offset, length, value in chunks:
        if offset > end:
            layout.append((offset - end, 0))
        layout.append((length, value))
        end = offset + length
    body = HEAD.pack(MAGIC, pack_id, len(layout)) + b"".join(ENTRY.pack(n, c) for n, c in layout)
    return body + CHECKSUM.pack(checksum(body))


class Guard(NamedTuple):
    """A pack's guard: the pack offset, length and checksum of each entry, in pack order."""

    offsets: "np.ndarray"  # int64
    lengths: "np.ndarray"  # int64
    checksums: "np.ndarray"  # uint64


def decode_guard(data: bytes, pack_id: bytes) -> Guard | None:
    """The entries of a guard (padding included, with checksum 0); None for a guard that is
    damaged or belongs to another pack (the reader then checks with BLAKE3)."""
    if len(data) < HEAD.size + CHECKSUM.size:
        return None
    magic, owner, count = HEAD.unpack_from(data)
    body = data[:-CHECKSUM.size]
    if (magic, owner) != (MAGIC, pack_id) or len(body) != HEAD.size + count * ENTRY.size \
            or CHECKSUM.unpack_from(data, len(body))[0] != checksum(body):
        return None
    import numpy as np

    entries = np.frombuffer(body, np.dtype(_ENTRY_FIELDS), count, HEAD.size)
    lengths = entries["length"].astype(np.int64)
    offsets = np.zeros(count, np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return Guard(offsets, lengths, entries["checksum"].astype(np.uint64))
