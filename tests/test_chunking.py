"""artifactstore.chunking: cut points identical to the Rust crate fastcdc (v2020).

pyfastcdc, which reproduces the crate, is the oracle for everything the crate's
fixture does not cover.
"""

import hashlib
import io
import json
import mmap
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import FrozenInstanceError
from pathlib import Path

import ml_dtypes
import numpy as np
import pyfastcdc
import pytest

from artifactstore.content import chunking
from artifactstore.errors import InvalidParameter

FIXTURES = Path(__file__).parent / "fixtures" / "fastcdc"  # the crate's test image and its cut points


SMALL = {"min_size": 256, "avg_size": 1024, "max_size": 4096}


def oracle(data, min_size: int, avg_size: int, max_size: int, normalization: int = 1, seed: int = 0) -> list[int]:
    # pyfastcdc shifts the seed before narrowing it to 64 bits, so it rejects seeds
    # from 2**63 on. Bit 63 of a gear entry only ever reaches bit 63 of the hash,
    # which no mask tests, so clearing it leaves the crate's cut points unchanged.
    reference = pyfastcdc.FastCDC(avg_size, min_size=min_size, max_size=max_size,
                                  normalized_chunking=normalization, seed=seed & (2**63 - 1))
    return [chunk.length for chunk in reference.cut_buf(memoryview(data).cast("B"))]


def bf16_weights(count: int, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal(count, dtype=np.float32) * np.float32(0.02)
    return (values.view(np.uint32) >> 16).astype(np.uint16)


def sample_data(rng: random.Random, size: int) -> bytes:
    kind = rng.choice(["random", "zeros", "pattern", "few-values", "bf16"])
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    if kind == "pattern":
        pattern = rng.randbytes(rng.randint(1, 300))
        return (pattern * (size // len(pattern) + 1))[:size]
    if kind == "few-values":
        values = np.frombuffer(rng.randbytes(rng.randint(2, 4)), dtype=np.uint8)
        return np.random.default_rng(rng.randrange(1000)).choice(values, size).tobytes()
    return bf16_weights(size // 2 + 1, rng.randrange(1000)).tobytes()[:size]


@pytest.fixture(params=[True, False], ids=["two lanes", "one lane"], autouse=True)
def loop(request, monkeypatch):
    """Every test runs with each of the native scan's loops: their cut points must be identical."""
    monkeypatch.setattr(chunking, "TWO_LANES", request.param)
    return request.param


def test_the_loop_is_chosen_by_timing_both_once(monkeypatch):
    monkeypatch.setattr(chunking, "TWO_LANES", None)
    assert chunking.loop() in (True, False) and chunking.loop() == chunking._calibrated()


# --- the crate's fixture ---------------------------------------------------------------

FIXTURE = json.loads((FIXTURES / "expected.json").read_text())


def test_fixture_image_is_the_crates():
    image = (FIXTURES / "SekienAkashita.jpg").read_bytes()
    assert hashlib.sha256(image).hexdigest() == FIXTURE["sha256"]


def case_id(case: dict) -> str:
    return "{min_size}-{avg_size}-{max_size}-nc{normalization}-seed{seed}".format(**case)


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=case_id)
def test_fixture_cut_points(case):
    image = (FIXTURES / "SekienAkashita.jpg").read_bytes()
    params = {k: case[k] for k in ("min_size", "avg_size", "max_size", "normalization", "seed")}
    assert chunking.cut(image, **params) == case["lengths"]


def test_gear_table_is_the_crates():
    assert chunking.GEAR[0] == 0x3B5D3C7D207E37DC
    assert chunking.GEAR[1] == 0x784D68BA91123086
    assert chunking.GEAR[255] == int.from_bytes(hashlib.md5(b"\xff" * 64).digest()[:8], "big")


# --- agreement with pyfastcdc ---------------------------------------------------------

def test_random_cases_match_pyfastcdc():
    rng = random.Random(20_200)
    for _ in range(1500):
        min_size = rng.randint(64, 4096)
        avg_size = rng.randint(max(min_size, 256), 16384)
        max_size = rng.randint(max(avg_size, 1024), rng.choice([65536, 1 << 20]))
        params = {
            "min_size": min_size, "avg_size": avg_size, "max_size": max_size,
            "normalization": rng.randint(0, 3),
            "seed": rng.choice([0, 1, 666, rng.getrandbits(64), 2**63, 2**64 - 1]),
        }
        size = rng.choice([0, 1, min_size - 1, min_size, min_size + 1, avg_size, max_size - 1, max_size,
                           max_size + 1, rng.randint(0, 4 * max_size), rng.randint(0, 200_000)])
        data = sample_data(rng, size)
        assert chunking.cut(data, **params) == oracle(data, **params), (params, size)


@pytest.mark.parametrize("params", [
    {"min_size": 64, "avg_size": 256, "max_size": 1024, "normalization": 3},
    {"min_size": 64, "avg_size": 362, "max_size": 1024},  # log2 rounds down
    {"min_size": 64, "avg_size": 363, "max_size": 1024},  # log2 rounds up
    {"min_size": 65, "avg_size": 257, "max_size": 1025, "normalization": 0},
    {"min_size": 4097, "avg_size": 12345, "max_size": 54321, "normalization": 2, "seed": 2**64 - 1},
    {"min_size": 16384, "avg_size": 65536, "max_size": 262144},
    {"min_size": 256, "avg_size": 256, "max_size": 1 << 20},
    {"min_size": 1024, "avg_size": 1 << 20, "max_size": 1 << 20},
])
def test_sizes_around_the_limits_match_pyfastcdc(params):
    rng = random.Random(params["avg_size"])
    for size in sorted({0, 1, params["min_size"] - 1, params["min_size"], params["min_size"] + 1,
                        params["avg_size"], params["max_size"] - 1, params["max_size"], params["max_size"] + 1,
                        3 * params["max_size"] + 17}):
        for data in (rng.randbytes(size), bytes(size), bf16_weights(size // 2 + 1).tobytes()[:size]):
            assert chunking.cut(data, **params) == oracle(data, **params), size


def test_largest_parameters_match_pyfastcdc():
    params = {"min_size": 1 << 20, "avg_size": 4 << 20, "max_size": 16 << 20, "normalization": 3}
    data = np.random.default_rng(1).integers(0, 256, (32 << 20) + 1, dtype=np.uint8)
    assert chunking.cut(data, **params) == oracle(data, **params)


def test_weights_with_default_params_match_pyfastcdc():
    data = bf16_weights(4 << 20)
    params = chunking.DEFAULT_PARAMS.as_kwargs()
    assert chunking.cut(data, **params) == oracle(data, **params)


def test_empty_data_has_no_chunks():
    assert chunking.cut(b"", **SMALL) == []


# --- input types ----------------------------------------------------------------------

def test_every_buffer_type_gives_the_same_cut_points(tmp_path):
    weights = bf16_weights(150_000, seed=3)
    raw = weights.tobytes()
    expected = chunking.cut(raw, **SMALL)
    assert len(expected) > 50 and sum(expected) == len(raw)

    path = tmp_path / "weights.bin"
    path.write_bytes(raw)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as read_only_map:
        assert chunking.cut(read_only_map, **SMALL) == expected
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as writable_map:
        assert chunking.cut(writable_map, **SMALL) == expected

    inputs = {
        "bytearray": bytearray(raw),
        "memoryview": memoryview(bytearray(raw)),
        "read-only memoryview": memoryview(bytearray(raw)).toreadonly(),
        "memoryview of bytes": memoryview(raw),
        "uint8 array": np.frombuffer(raw, dtype=np.uint8),
        "uint16 array": weights,
        "bfloat16 array": weights.view(ml_dtypes.bfloat16),
        "2-D float32 array": np.frombuffer(raw, dtype=np.float32).reshape(-1, 100),
    }
    for name, data in inputs.items():
        assert chunking.cut(data, **SMALL) == expected, name


def test_non_contiguous_arrays_are_refused():
    with pytest.raises((BufferError, ValueError)):
        chunking.cut(np.zeros((100, 100), dtype=np.uint16)[:, ::2], **SMALL)


# --- streams --------------------------------------------------------------------------

class ShortReads(io.RawIOBase):
    """A stream that returns at most a few random bytes per read, through readinto."""

    def __init__(self, data: bytes, seed: int):
        self.data, self.position, self.rng = data, 0, random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        count = min(len(target), self.rng.randint(1, 5000), len(self.data) - self.position)
        target[:count] = self.data[self.position: self.position + count]
        self.position += count
        return count


class ReadOnly:
    """A stream with only read(), returning short reads."""

    def __init__(self, data: bytes):
        self.stream = io.BytesIO(data)

    def read(self, size: int) -> bytes:
        return self.stream.read(min(size, 3001))


def collect(batches) -> tuple[bytes, list[int]]:
    content, lengths = bytearray(), []
    for view, batch_lengths in batches:
        assert view.readonly and batch_lengths and sum(batch_lengths) == len(view)
        content += view  # copied now: the view's buffer is reused by the next batch
        lengths += batch_lengths
    return bytes(content), lengths


@pytest.mark.parametrize("block_size", [1, 1000, 4095, 4096, 4097, 3 * 4096 + 7, 1 << 20])
def test_stream_matches_cut(block_size):
    rng = random.Random(block_size)
    for data in (rng.randbytes(5 * 4096 + 123), bytes(9000), b"", rng.randbytes(100)):
        expected = chunking.cut(data, **SMALL)
        for stream in (io.BytesIO(data), ShortReads(data, block_size), ReadOnly(data)):
            assert collect(chunking.cut_stream(stream, block_size=block_size, **SMALL)) == (data, expected)


def test_stream_of_weights_with_default_params_matches_cut():
    data = bf16_weights(3 << 20, seed=5).tobytes()
    params = chunking.DEFAULT_PARAMS.as_kwargs()
    for block_size in (300_001, 1 << 20):
        batches = chunking.cut_stream(io.BytesIO(data), block_size=block_size, **params)
        assert collect(batches) == (data, chunking.cut(data, **params))


# --- parameters -----------------------------------------------------------------------

def test_default_params():
    assert chunking.DEFAULT_PARAMS == chunking.ChunkerParams(16384, 65536, 262144, 1, 0)
    assert chunking.DEFAULT_PARAMS.as_kwargs() == {
        "min_size": 16384, "avg_size": 65536, "max_size": 262144, "normalization": 1, "seed": 0}
    with pytest.raises(FrozenInstanceError):
        chunking.DEFAULT_PARAMS.avg_size = 1024  # type: ignore[misc]


def test_masks_exist_for_every_allowed_average():
    # bits grows with avg_size, so the two ends of its range bound every index.
    for avg_size in (256, 4_194_304):
        bits = chunking._mask_bits(avg_size)
        assert 5 <= bits - 3 and bits + 3 < len(chunking.MASKS)


@pytest.mark.parametrize("params, words", [
    ({"min_size": 63}, ["min_size", "[64, 1048576]"]),
    ({"min_size": 1_048_577, "avg_size": 2 << 20, "max_size": 4 << 20}, ["min_size", "[64, 1048576]"]),
    ({"avg_size": 255, "min_size": 64}, ["avg_size", "[256, 4194304]"]),
    ({"avg_size": 4_194_305, "max_size": 16 << 20}, ["avg_size", "[256, 4194304]"]),
    ({"max_size": 1023, "avg_size": 256, "min_size": 64}, ["max_size", "[1024, 16777216]"]),
    ({"max_size": 16_777_217}, ["max_size", "[1024, 16777216]"]),
    ({"min_size": 2048, "avg_size": 1024}, ["min_size <= avg_size <= max_size"]),
    ({"avg_size": 8192}, ["min_size <= avg_size <= max_size"]),
    ({"normalization": -1}, ["normalization", "[0, 3]"]),
    ({"normalization": 4}, ["normalization", "[0, 3]"]),
    ({"seed": -1}, ["seed", "[0, 18446744073709551615]"]),
    ({"seed": 2**64}, ["seed", "[0, 18446744073709551615]"]),
    ({"avg_size": 1024.0}, ["avg_size", "integer"]),
    ({"min_size": "256"}, ["min_size", "integer"]),
    ({"normalization": True}, ["normalization", "integer"]),
])
def test_invalid_parameters_are_refused(params, words):
    arguments = {**SMALL, **params}
    for attempt in (lambda: chunking.cut(b"data", **arguments),
                    lambda: chunking.cut_stream(io.BytesIO(b"data"), **arguments),
                    lambda: chunking.ChunkerParams(**arguments)):
        with pytest.raises(InvalidParameter) as error:
            attempt()
        assert all(word in str(error.value) for word in words), str(error.value)


@pytest.mark.parametrize("block_size", [0, -1, 1.5])
def test_invalid_block_size_is_refused(block_size):
    with pytest.raises(InvalidParameter, match="block_size"):
        chunking.cut_stream(io.BytesIO(b"data"), block_size=block_size, **SMALL)


# --- native core ----------------------------------------------------------------------

def test_cut_releases_the_gil():
    data = np.random.default_rng(2).integers(0, 256, 64 << 20, dtype=np.uint8)
    window: dict[str, float] = {}

    def worker() -> None:
        window["start"] = time.perf_counter()
        chunking.cut(data, **chunking.DEFAULT_PARAMS.as_kwargs())
        window["end"] = time.perf_counter()

    # With a switch interval far longer than the cut, the main thread can only run
    # inside the worker's window if the worker gives the GIL up of its own accord.
    stamps = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        while thread.is_alive():
            stamps.append(time.perf_counter())
            time.sleep(0)  # lets the worker take the GIL back when the cut returns
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert any(window["start"] < stamp < window["end"] for stamp in stamps)


@pytest.mark.parametrize("module", ["_fastcdc", "_checksum"])
def test_missing_native_core_says_how_to_build_it(module):
    root = Path(__file__).parent.parent
    code = (f"import sys; sys.modules['artifactstore.{module}'] = None\n"
            "try:\n    import artifactstore.chunking\n"
            "except ImportError as error:\n    print(error)\n")
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=root, env={**os.environ, "PYTHONPATH": path})
    assert "not built" in result.stdout
    assert "pip install ." in result.stdout and "pip install -e ." in result.stdout


def _periodic(size: int, period: int) -> bytes:
    pattern = bytes((i * 37) & 0xFF for i in range(period))
    return (pattern * (size // period + 1))[:size]


@pytest.mark.parametrize("data", [
    np.random.default_rng(42).integers(0, 256, 24 << 20, dtype=np.uint8).tobytes(),
    bytes(20 << 20),
    _periodic(20 << 20, 1799),
    bytes(9 << 20) + np.random.default_rng(43).integers(0, 256, 9 << 20, dtype=np.uint8).tobytes() + bytes(5 << 20),
], ids=["random", "zeros", "periodic", "zeros-random-zeros"])
def test_parallel_cut_is_identical_to_one_thread(data):
    large = {"min_size": 256 << 10, "avg_size": 1 << 20, "max_size": 4 << 20}  # segments of 5 threads < max_size
    for params in (chunking.DEFAULT_PARAMS.as_kwargs(), SMALL, {**SMALL, "normalization": 3, "seed": 7}, large):
        one = chunking.cut(data, **params, threads=1)
        for threads in (2, 3, 5, 7):
            assert chunking.cut(data, **params, threads=threads) == one


def test_blocks_that_start_small_and_double_cut_as_one_pass():
    data = np.random.default_rng(8).integers(0, 256, 40 << 20, dtype=np.uint8)
    params = chunking.DEFAULT_PARAMS.as_kwargs()
    blocks = list(chunking.cut_blocks(data, **params, block_size=8 << 20, first_block=1 << 20))
    assert [length for block in blocks for length in block] == chunking.cut(data, **params)
    spans = [sum(block) for block in blocks]
    assert [round(s / (1 << 20)) for s in spans[:5]] == [1, 2, 4, 8, 8]
    with pytest.raises(InvalidParameter, match="first_block must be a positive integer"):
        chunking.cut_blocks(data, **params, first_block=0)
