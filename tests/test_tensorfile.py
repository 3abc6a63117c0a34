"""The safetensors header reader against the reference implementation.

Every file here is also given to the `safetensors` library: what it accepts we
must accept with the same tensors, and what it rejects we must reject.
"""

import json
import random
import re
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors
from safetensors.numpy import save

from artifactstore.content.tensorfile import (
    DTYPE_BITS,
    MAX_HEADER_SIZE,
    SafetensorsHeader,
    TensorInfo,
    header_size,
    parse_header,
    read_header,
    read_header_from_path,
)
from artifactstore.errors import InvalidInput

SAVEABLE_DTYPES = [
    np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
    np.float16, np.float32, np.float64, np.complex64,
    ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2,
    ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2fnuz, ml_dtypes.float8_e8m0fnu,
]


def build(header: str | bytes, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def parse(file: bytes) -> SafetensorsHeader:
    return read_header(lambda offset, length: file[offset:offset + length], len(file))


def library_tensors(file: bytes) -> dict[str, tuple[str, list[int], bytes]] | None:
    """name -> (dtype, shape, data) as the reference reader sees `file`; None if it rejects it."""
    try:
        parsed = safetensors.deserialize(file)
    except safetensors.SafetensorError:
        return None
    return {name: (view["dtype"], view["shape"], bytes(view["data"])) for name, view in parsed}


def our_tensors(file: bytes, header: SafetensorsHeader) -> dict[str, tuple[str, list[int], bytes]]:
    return {t.name: (t.dtype, list(t.shape), file[t.begin:t.end]) for t in header.tensors.values()}


def assert_tiles_data_buffer(header: SafetensorsHeader) -> None:
    position = header.data_start
    for tensor in header.tensors.values():
        assert tensor.begin == position <= tensor.end
        position = tensor.end
    assert position == header.file_size


def random_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    tensors = {}
    for index in range(rng.integers(0, 8)):
        shape = tuple(int(dim) for dim in rng.integers(0, 4, size=rng.integers(0, 4)))
        dtype = np.dtype(SAVEABLE_DTYPES[rng.integers(len(SAVEABLE_DTYPES))])
        raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
        tensors[f"layer.{index}.weight"] = raw.view(dtype).reshape(shape)
    return tensors


def test_agrees_with_library_on_saved_files(tmp_path):
    rng = np.random.default_rng(20240611)
    for index in range(50):
        tensors = random_tensors(rng)
        metadata = {"format": "np", "index": str(index)} if index % 3 == 0 else None
        file = save(tensors, metadata=metadata)
        path = tmp_path / f"{index}.safetensors"
        path.write_bytes(file)

        header = read_header_from_path(path)
        assert header == parse(file)
        assert header.file_size == len(file)
        assert header.data_start == 8 + header.header_size
        assert_tiles_data_buffer(header)
        assert our_tensors(file, header) == library_tensors(file)
        with safetensors.safe_open(path, framework="numpy") as opened:
            assert sorted(header.tensors) == sorted(opened.keys())
            assert header.metadata == opened.metadata()
            for name, tensor in header.tensors.items():
                assert tensor.dtype == opened.get_slice(name).get_dtype()
                assert list(tensor.shape) == opened.get_slice(name).get_shape()
                assert file[tensor.begin:tensor.end] == tensors[name].tobytes()


def test_tensor_info_fields():
    file = build(json.dumps({"__metadata__": {"k": "v"}, "b": entry("F32", [2], 4, 12), "a": entry("U8", [4], 0, 4)}),
                 bytes(12))
    header = parse(file)
    start = 8 + header.header_size
    assert header.data_start == start
    assert header.metadata == {"k": "v"}
    assert list(header.tensors) == ["a", "b"]
    assert header.tensors["b"] == TensorInfo("b", "F32", (2,), start + 4, start + 12)


def test_dtype_table_is_the_crates():
    unknown = build(json.dumps({"x": entry("NOPE", [], 0, 0)}))
    with pytest.raises(safetensors.SafetensorError) as raised:
        safetensors.deserialize(unknown)
    assert set(re.findall(r"`(\w+)`", str(raised.value).split("expected one of")[1])) == set(DTYPE_BITS)
    for dtype, bits in DTYPE_BITS.items():
        eight = build(json.dumps({"x": entry(dtype, [8], 0, bits)}), bytes(bits))
        assert parse(eight).tensors["x"].end - parse(eight).tensors["x"].begin == bits
        assert library_tensors(eight) is not None
        one = build(json.dumps({"x": entry(dtype, [1], 0, bits // 8)}), bytes(bits // 8))
        assert (library_tensors(one) is not None) == (bits % 8 == 0)


VALID = {
    "empty": ("{}", b""),
    "empty with metadata": ('{"__metadata__": {"a": "b"}}', b""),
    "metadata null": ('{"__metadata__": null}', b""),
    "metadata empty": ('{"__metadata__": {}}', b""),
    "scalar": (json.dumps({"s": entry("F64", [], 0, 8)}), bytes(8)),
    "zero-sized tensors sharing an offset": (
        json.dumps({"z1": entry("U8", [0], 0, 0), "z2": entry("F32", [3, 0], 0, 0), "a": entry("U8", [2], 0, 2)}),
        b"ab"),
    "zero-sized tensor at the end": (json.dumps({"z": entry("U8", [0], 2, 2), "a": entry("U8", [2], 0, 2)}), b"ab"),
    "zero dimension before huge ones": (json.dumps({"z": entry("U8", [0, 2**32, 2**32], 0, 0)}), b""),
    "offsets in any header order": (
        json.dumps({"b": entry("U8", [1], 1, 2), "a": entry("U8", [1], 0, 1)}), b"ab"),
    "padded with spaces": ("{}" + " " * 6, b""),
    "leading and trailing JSON whitespace": ("\t\r\n {}\n", b""),
    "unknown fields ignored": ('{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": [1, {"y": null}]}}',
                               b"a"),
    "repeated metadata key, last wins": ('{"__metadata__": {"k": "1", "k": "2"}}', b""),
    "entry as a [dtype, shape, data_offsets] array": ('{"a": ["U8", [2], [0, 2]]}', b"ab"),
    "dtype as a one-key object": ('{"a": {"dtype": {"U8": null}, "shape": [2], "data_offsets": [0, 2]}}', b"ab"),
    "escaped names": ('{"\\u0061\\ud83d\\ude00": {"\\u0064type": "\\u00558", "shape": [1], "data_offsets": [0, 1]}}',
                      b"a"),
    "F4 pairs fill bytes": (json.dumps({"f": entry("F4", [2, 3], 0, 3)}), b"abc"),
    "F6 quads fill bytes": (json.dumps({"f": entry("F6_E3M2", [4], 0, 3)}), b"abc"),
    "nesting at serde_json's limit": ('{"a": {"dtype": "U8", "shape": [], "data_offsets": [0, 1], "x": '
                                      + "[" * 125 + "]" * 125 + "}}", b"a"),
    "large finite numbers in an ignored field": (
        '{"a": {"dtype": "U8", "shape": [], "data_offsets": [0, 1], "x": [' + "9" * 308 + ", -1e308, 1e-400]}}", b"a"),
    "DEL character in a string": ('{"__metadata__": {"k": "\x7f"}}', b""),
    "brackets inside strings do not nest": (
        '{"__metadata__": {"k": "' + "[{" * 200 + '\\\" ]", "' + "}" * 300 + '": "\\\\"}}', b""),
}


@pytest.mark.parametrize("header, data", VALID.values(), ids=VALID.keys())
def test_accepts_what_the_library_accepts(header, data):
    file = build(header, data)
    expected = library_tensors(file)
    assert expected is not None
    parsed = parse(file)
    assert our_tensors(file, parsed) == expected
    assert_tiles_data_buffer(parsed)


def test_metadata_as_the_library_reports_it(tmp_path):
    for header in ['{"__metadata__": {"k": "1", "k": "2"}}', '{"__metadata__": null}', '{"__metadata__": {}}', "{}"]:
        path = tmp_path / "m.safetensors"
        path.write_bytes(build(header))
        with safetensors.safe_open(path, framework="numpy") as opened:
            assert read_header_from_path(path).metadata == opened.metadata()


U8_4 = '"dtype": "U8", "shape": [4], "data_offsets": [0, 4]'

INVALID = {
    "no length prefix": (b"\x02\x00\x00", "too small"),
    "empty file": (b"", "too small"),
    "header over 100 MB": (struct.pack("<Q", MAX_HEADER_SIZE + 1) + b"{}", "exceeds"),
    "length beyond u64 header limit": (b"\xff" * 8 + b"{}", "exceeds"),
    "header past end of file": (struct.pack("<Q", 10) + b"{}", "runs past the end"),
    "empty header": (build(""), "not valid JSON"),
    "not UTF-8": (build(b'{"__metadata__": {"k": "\xff"}}'), "not valid UTF-8"),
    "UTF-8 encoded surrogate": (build(b'{"__metadata__": {"k": "\xed\xa0\x80"}}'), "not valid UTF-8"),
    "byte order mark": (build(b"\xef\xbb\xbf{}"), "not valid JSON"),
    "invalid JSON": (build('{"a": '), "not valid JSON"),
    "NUL padding": (build("{}\x00\x00"), "not valid JSON"),
    "form feed is not JSON whitespace": (build("{}\x0c"), "not valid JSON"),
    "NaN": (build('{"a": {' + U8_4 + ', "x": NaN}}', b"abcd"), "not valid JSON"),
    "float out of range": (build('{"a": {' + U8_4 + ', "x": 1e400}}', b"abcd"), "out of range"),
    "integer out of float range": (build('{"a": {' + U8_4 + ', "x": ' + "9" * 400 + "}}", b"abcd"), "out of range"),
    "unpaired surrogate escape": (build('{"a": {' + U8_4 + ', "x": "\\ud800"}}', b"abcd"), "surrogate"),
    "lone low surrogate escape": (build('{"__metadata__": {"\\udc00": "v"}}'), "surrogate"),
    "raw control character": (build('{"__metadata__": {"k": "a\nb"}}'), "not valid JSON"),
    "nesting past serde_json's limit": (build('{"a": {' + U8_4 + ', "x": ' + "[" * 126 + "]" * 126 + "}}", b"abcd"),
                                        "nests deeper"),
    "nesting past Python's limit": (build("[" * 100_000), "nests too deeply"),
    "header is an array": (build("[]"), "not an object"),
    "header is a string": (build('"{}"'), "not an object"),
    "duplicate __metadata__": (build('{"__metadata__": {}, "__metadata__": null}'), "duplicate __metadata__"),
    "metadata not an object": (build('{"__metadata__": ["k", "v"]}'), "__metadata__ is a JSON array"),
    "metadata value not a string": (build('{"__metadata__": {"k": 1}}'), "'k' is a JSON number"),
    "metadata value null": (build('{"__metadata__": {"k": null}}'), "'k' is a JSON null"),
    "tensor entry not an object": (build('{"a": 4}'), "tensor 'a': entry is a JSON number"),
    "tensor entry array too long": (build('{"a": ["U8", [4], [0, 4], 1]}', b"abcd"),
                                    "tensor 'a': entry is a JSON array"),
    "invalid first of repeated names": (build('{"a": null, "a": {' + U8_4 + "}}", b"abcd"), "tensor 'a': entry"),
    "missing field": (build('{"a": {"dtype": "U8", "shape": [4]}}', b"abcd"), "missing field 'data_offsets'"),
    "duplicate field": (build('{"a": {"dtype": "U8", ' + U8_4 + "}}", b"abcd"), "duplicate field 'dtype'"),
    "unknown dtype": (build(json.dumps({"a": entry("F128", [1], 0, 16)}), bytes(16)), "unknown dtype 'F128'"),
    "lowercase dtype": (build(json.dumps({"a": entry("u8", [4], 0, 4)}), b"abcd"), "unknown dtype 'u8'"),
    "dtype a number": (build('{"a": {"dtype": 4, "shape": [4], "data_offsets": [0, 4]}}', b"abcd"),
                       "dtype is a JSON number"),
    "dtype object with a value": (build('{"a": {"dtype": {"U8": 1}, "shape": [4], "data_offsets": [0, 4]}}', b"abcd"),
                                  "dtype object"),
    "dtype object with two keys": (
        build('{"a": {"dtype": {"U8": null, "I8": null}, "shape": [4], "data_offsets": [0, 4]}}', b"abcd"),
        "dtype object"),
    "shape not an array": (build('{"a": {"dtype": "U8", "shape": 4, "data_offsets": [0, 4]}}', b"abcd"),
                           "shape is a JSON number"),
    "negative dimension": (build(json.dumps({"a": entry("U8", [-1], 0, 0)})), "shape [-1]"),
    "negative zero dimension": (build('{"a": {"dtype": "U8", "shape": [-0], "data_offsets": [0, 0]}}'), "shape"),
    "fractional dimension": (build('{"a": {"dtype": "U8", "shape": [4.0], "data_offsets": [0, 4]}}', b"abcd"),
                             "shape [4.0]"),
    "exponent dimension": (build('{"a": {"dtype": "U8", "shape": [4e0], "data_offsets": [0, 4]}}', b"abcd"), "shape"),
    "boolean dimension": (build('{"a": {"dtype": "U8", "shape": [true], "data_offsets": [0, 1]}}', b"a"), "shape"),
    "dimension beyond u64": (build(json.dumps({"a": entry("U8", [2**64], 0, 0)})), "shape"),
    "negative offset": (build(json.dumps({"a": entry("U8", [0], -1, -1)})), "data_offsets [-1, -1] are not"),
    "string offset": (build('{"a": {"dtype": "U8", "shape": [4], "data_offsets": ["0", 4]}}', b"abcd"),
                      "data_offsets ['0', 4] are not"),
    "one offset": (build('{"a": {"dtype": "U8", "shape": [4], "data_offsets": [4]}}', b"abcd"),
                   "not a [begin, end] pair"),
    "three offsets": (build('{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4, 4]}}', b"abcd"),
                      "not a [begin, end] pair"),
    "offsets an object": (build('{"a": {"dtype": "U8", "shape": [4], "data_offsets": {"begin": 0, "end": 4}}}',
                                b"abcd"), "not a [begin, end] pair"),
    "not starting at 0": (build(json.dumps({"a": entry("U8", [4], 1, 5)}), bytes(5)),
                          "tensor 'a': data_offsets [1, 5] leave a gap after byte 0"),
    "hole between tensors": (build(json.dumps({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 3, 5)}), bytes(5)),
                             "tensor 'b': data_offsets [3, 5] leave a gap after byte 2"),
    "overlapping tensors": (build(json.dumps({"a": entry("U8", [4], 0, 4), "b": entry("U8", [2], 2, 4)}), bytes(4)),
                            "tensor 'b': data_offsets [2, 4] overlap"),
    "zero-sized tensor inside another": (
        build(json.dumps({"a": entry("U8", [4], 0, 4), "z": entry("U8", [0], 2, 2)}), bytes(4)), "tensor 'z'"),
    "begin after end": (build(json.dumps({"a": entry("U8", [0], 4, 0)})), "data_offsets [4, 0] end before"),
    "size does not match shape": (
        build(json.dumps({"x": entry("F32", [2, 3], 0, 10)}), bytes(10)),
        "tensor 'x': data_offsets [0, 10] do not match shape [2, 3] of F32 (24 bytes)"),
    "scalar with no bytes": (build(json.dumps({"x": entry("F32", [], 0, 0)})), "shape [] of F32 (4 bytes)"),
    "F4 half byte": (build(json.dumps({"x": entry("F4", [3], 0, 2)}), bytes(2)), "12 bits, not a whole number"),
    "F6 partial byte": (build(json.dumps({"x": entry("F6_E2M3", [2], 0, 2)}), bytes(2)), "12 bits"),
    "element count overflows": (build(json.dumps({"x": entry("U8", [2**32, 2**32], 0, 0)})), "overflows 64 bits"),
    "overflow before a zero dimension": (build(json.dumps({"x": entry("U8", [2**32, 2**32, 0], 0, 0)})),
                                         "element count of shape [4294967296, 4294967296, 0] overflows"),
    "bit size overflows": (build(json.dumps({"x": entry("F64", [2**61], 0, 0)})), "bit size"),
    "trailing bytes": (build(json.dumps({"a": entry("U8", [4], 0, 4)}), bytes(5)),
                       "tensors cover 4 bytes but the data buffer holds 5"),
    "trailing bytes, no tensors": (build("{}", b"\x00"), "cover 0 bytes but the data buffer holds 1"),
    "tensor past end of file": (build(json.dumps({"a": entry("U8", [4], 0, 4)}), bytes(3)), "holds 3"),
}


@pytest.mark.parametrize("file, message", INVALID.values(), ids=INVALID.keys())
def test_rejects_what_the_library_rejects(file, message):
    assert library_tensors(file) is None
    with pytest.raises(InvalidInput, match=re.escape(message)) as raised:
        parse(file)
    assert "\n" not in str(raised.value)


def test_header_size():
    assert header_size(struct.pack("<Q", 2) + b"{}", 10) == 2
    assert header_size(struct.pack("<Q", MAX_HEADER_SIZE), 8 + MAX_HEADER_SIZE) == MAX_HEADER_SIZE
    with pytest.raises(InvalidInput, match="too small"):
        header_size(b"\x00" * 7, 7)
    with pytest.raises(InvalidInput, match="got 7 of the 8"):
        header_size(b"\x00" * 7, 100)
    with pytest.raises(InvalidInput, match="exceeds"):
        header_size(struct.pack("<Q", MAX_HEADER_SIZE + 1), 2 * MAX_HEADER_SIZE)
    with pytest.raises(InvalidInput, match="runs past the end"):
        header_size(struct.pack("<Q", 3), 10)


def test_parse_header_checks_the_file_size():
    with pytest.raises(InvalidInput, match="runs past the end"):
        parse_header(b"{}", 9)
    with pytest.raises(InvalidInput, match="holds 1"):
        parse_header(b"{}", 11)


def test_short_read_is_rejected():
    file = build("{}  ")
    with pytest.raises(InvalidInput, match="read 2 of the 4 header bytes"):
        read_header(lambda offset, length: file[offset:offset + (length if offset == 0 else 2)], len(file))


def test_long_names_are_shortened_in_messages():
    name = "n" * 10_000
    with pytest.raises(InvalidInput) as raised:
        parse(build(json.dumps({name: entry("U8", [1], 0, 2)}), bytes(2)))
    assert len(str(raised.value)) < 300


def test_agrees_with_library_on_mutated_headers():
    """Random edits of valid headers: same verdict and, when accepted, same tensors."""
    rng = random.Random(7)
    alphabet = '{}[]":,0123456789-.e ' + "FUI8_"
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.uint8),
               "c": np.zeros((0, 2), np.int16)}
    original = save(tensors, metadata={"k": "v"})
    length = struct.unpack("<Q", original[:8])[0]
    accepted = 0
    for _ in range(400):
        header, data = list(original[8:8 + length].decode()), original[8 + length:]
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(header))
            if rng.random() < 0.5:
                header[position] = rng.choice(alphabet)
            else:
                header.insert(position, rng.choice(alphabet))
        file = build("".join(header), data)
        expected = library_tensors(file)
        if expected is None:
            with pytest.raises(InvalidInput):
                parse(file)
        else:
            accepted += 1
            assert our_tensors(file, parse(file)) == expected
    assert accepted > 10


def test_duplicate_tensor_names_are_refused_although_the_library_lets_the_last_win():
    header = (b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},'
              b' "a": {"dtype": "I8", "shape": [2, 2], "data_offsets": [0, 4]}}')
    with pytest.raises(InvalidInput, match="duplicate tensor name 'a'"):
        parse_header(header, 8 + len(header) + 4)
