"""Pack guards and the native xxh3 they use (the xxhash package is the oracle)."""

import numpy as np
import pytest
import xxhash

from artifactstore.content.guard import checksum, decode_guard, encode_guard
from artifactstore.native import _checksum


def test_native_xxh3_equals_the_xxhash_package():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    for length in [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 65_536, 300_000]:
        assert checksum(data[:length]) == xxhash.xxh3_64_intdigest(data[:length]), length
    for _ in range(200):
        begin = int(rng.integers(0, len(data)))
        piece = memoryview(data)[begin:begin + int(rng.integers(0, 5000))]
        assert checksum(piece) == xxhash.xxh3_64_intdigest(piece)
    assert checksum(np.frombuffer(data, np.uint8)) == checksum(bytearray(data)) == checksum(data)


def test_first_mismatch_finds_the_first_range_that_differs():
    data = np.random.default_rng(2).integers(0, 256, 10_000, dtype=np.uint8)
    offsets = np.array([0, 100, 5000, 9000], np.int64)
    lengths = np.array([100, 0, 3000, 1000], np.int64)
    expected = np.array([checksum(data[o:o + n]) for o, n in zip(offsets, lengths)], np.uint64)
    assert _checksum.first_mismatch(data, offsets, lengths, expected) == -1
    expected[2] ^= 1
    assert _checksum.first_mismatch(data, offsets, lengths, expected) == 2
    with pytest.raises(ValueError, match="outside the 10000-byte buffer"):
        _checksum.first_mismatch(data, np.array([9000], np.int64), np.array([1001], np.int64), expected[:1])
    with pytest.raises(ValueError, match="outside"):  # offset + length overflows int64
        _checksum.first_mismatch(data, np.array([2**63 - 1], np.int64), np.array([1], np.int64), expected[:1])
    with pytest.raises(ValueError, match="same length"):
        _checksum.first_mismatch(data, offsets, lengths[:2], expected)


def test_guard_round_trip_and_rejections():
    pack = bytes(range(32))
    data = encode_guard(pack, [(0, 100, 7), (100, 5, 8), (105, 65_536, 2**64 - 1)])
    assert _entries(decode_guard(data, pack)) == [(0, 100, 7), (100, 5, 8), (105, 65_536, 2**64 - 1)]
    padded = decode_guard(encode_guard(pack, [(3, 100, 7), (160, 5, 8)]), pack)
    assert _entries(padded) == [(0, 3, 0), (3, 100, 7), (103, 57, 0), (160, 5, 8)]
    assert _entries(decode_guard(encode_guard(pack, []), pack)) == []
    assert decode_guard(data, bytes(32)) is None, "another pack's guard"
    assert decode_guard(data[:-1], pack) is None, "truncated"
    assert decode_guard(data + b"\0", pack) is None, "trailing bytes"
    assert decode_guard(b"", pack) is None
    flipped = bytearray(data)
    flipped[50] ^= 1
    assert decode_guard(bytes(flipped), pack) is None, "a flipped bit"
    assert decode_guard(b"ARTGUARX" + data[8:], pack) is None, "bad magic"


def _entries(guard) -> list[tuple[int, int, int]]:
    assert guard.offsets.dtype == guard.lengths.dtype == np.int64 and guard.checksums.dtype == np.uint64
    return list(zip(guard.offsets.tolist(), guard.lengths.tolist(), guard.checksums.tolist()))
