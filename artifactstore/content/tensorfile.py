"""Strict reader for safetensors file headers.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then
the data buffer. The reader accepts exactly what the reference implementation
(the `safetensors` Rust crate, 0.8) accepts, including the quirks that come
from its serde/serde_json deserialisation; those are called out where handled.
It never depends on the `safetensors` package.
"""

from __future__ import annotations

import json
import math
import os
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from ..errors import InvalidInput

__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "TensorInfo",
    "header_size",
    "parse_header",
    "read_header",
    "read_header_from_path",
]

MAX_HEADER_SIZE = 100_000_000
_LENGTH_PREFIX = 8
_U64_MAX = 2**64 - 1
_I64_MIN = -(2**63)
# serde_json's recursion limit admits 127 nested arrays/objects, the header object included.
_MAX_JSON_DEPTH = 127
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Every digit as 0 (the only byte that becomes one): a run of 19 digits becomes 19 zeros.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
# As bytes: an opening bracket +1, a closing one -1 (signed), every other byte deleted.
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))
_MAX_SHOWN_TEXT = 80

# Bits per element of every dtype of the format (crate `Dtype::bitsize`). Sub-byte
# dtypes are packed; a tensor must fill a whole number of bytes.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor; `begin`/`end` are absolute byte offsets within the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header. `tensors` is in data-buffer order (ties keep header order)."""

    header_size: int
    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] | None
    file_size: int


def header_size(first8: bytes, file_size: int) -> int:
    """The header length N from the file's first bytes (at least 8), checked against the file size."""
    if file_size < _LENGTH_PREFIX:
        raise InvalidInput(f"safetensors: file of {file_size} bytes is too small for the 8-byte header length")
    if len(first8) < _LENGTH_PREFIX:
        raise InvalidInput(f"safetensors: got {len(first8)} of the 8 header length bytes")
    size = int.from_bytes(first8[:_LENGTH_PREFIX], "little")
    _check_header_size(size, file_size)
    return size


def parse_header(header_bytes: bytes, file_size: int) -> SafetensorsHeader:
    """Validate the N header bytes (those after the length prefix) of a file of `file_size` bytes."""
    size = len(header_bytes)
    _check_header_size(size, file_size)
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"safetensors: header is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    entries, metadata = _split_header(_decode_json(text))
    data_start = _LENGTH_PREFIX + size
    tensors = _validate_layout(entries, data_start, file_size - data_start)
    return SafetensorsHeader(size, data_start, tensors, metadata, file_size)


def read_header(read_range: Callable[[int, int], bytes], file_size: int) -> SafetensorsHeader:
    """Read and validate the header through `read_range(offset, length)`."""
    first8 = read_range(0, _LENGTH_PREFIX) if file_size >= _LENGTH_PREFIX else b""
    size = header_size(first8, file_size)
    header_bytes = read_range(_LENGTH_PREFIX, size)
    if len(header_bytes) != size:
        raise InvalidInput(f"safetensors: read {len(header_bytes)} of the {size} header bytes; file truncated?")
    return parse_header(header_bytes, file_size)


def read_header_from_path(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of the file at `path` (OSError propagates)."""
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size

        def read_range(offset: int, length: int) -> bytes:
            file.seek(offset)
            return file.read(length)

        return read_header(read_range, file_size)


def _check_header_size(size: int, file_size: int) -> None:
    if size > MAX_HEADER_SIZE:
        raise InvalidInput(f"safetensors: header length {size} exceeds the {MAX_HEADER_SIZE}-byte limit")
    if _LENGTH_PREFIX + size > file_size:
        raise InvalidInput(f"safetensors: header length {size} runs past the end of the {file_size}-byte file")


# A tensor's header entry: dtype, shape, and begin/end relative to the data buffer.
_Entry = tuple[str, tuple[int, ...], int, int]


class _JsonObject(list[tuple[str, Any]]):
    """A JSON object's (key, value) pairs in order, duplicates kept: the crate
    rejects some duplicate keys and lets the last win for others."""


def _decode_json(text: str) -> Any:
    try:
        value = json.loads(
            text,
            object_pairs_hook=_JsonObject,
            # int itself is parsed in C, where the hook costs a call per number (thousands in a header)
            parse_int=_parse_json_int if _may_need_int_hook(text) else int,
            parse_float=_parse_json_float,
            parse_constant=_reject_json_constant,
        )
    except RecursionError:
        raise InvalidInput("safetensors: header JSON nests too deeply") from None
    except ValueError as error:  # JSONDecodeError, or raised by a hook
        raise InvalidInput(f"safetensors: header is not valid JSON: {error}") from None
    _check_serde_json_limits(text, value)
    return value


def _may_need_int_hook(text: str) -> bool:
    """Whether an integer literal of ``text`` may be one that _parse_json_int does not read as int
    does: "-0", or one of 19 digits or more (all of 18 digits are within i64). Seen in a string,
    it only costs the hook."""
    return "-0" in text or b"0" * 19 in text.encode().translate(_DIGITS_AS_ZEROS)


def _parse_json_int(literal: str) -> int | float:
    # serde_json reads integers outside the i64/u64 range, and "-0", as floats,
    # which no integer field accepts; the length test keeps int() off huge literals.
    if len(literal) <= 20:
        value = int(literal)
        if _I64_MIN <= value <= _U64_MAX and literal != "-0":
            return value
    return _parse_json_float(literal)


def _parse_json_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise ValueError(f"number out of range: {_show(literal)}")
    return value


def _reject_json_constant(literal: str) -> None:
    raise ValueError(f"{literal} is not JSON")


def _check_serde_json_limits(text: str, root: Any) -> None:
    """Reject what Python's json accepts but serde_json refuses anywhere in the
    document, even in values the crate then ignores: unpaired UTF-16 surrogate
    escapes and nesting deeper than its recursion limit. ``text`` parsed as JSON
    into ``root``, so its brackets outside strings are its structure."""
    if _SURROGATE_ESCAPE.search(text):  # decoded UTF-8 holds no surrogates: only escapes make them
        for value in _strings(root):
            if _LONE_SURROGATE.search(value):
                raise InvalidInput("safetensors: header is not valid JSON: unpaired surrogate escape in a string")
    # without a backslash there is no escape, and every quote begins or ends a string
    outside_strings = "".join(text.split('"')[::2]) if "\\" not in text else _JSON_STRING.sub("", text)
    steps = array("b", outside_strings.encode().translate(_BRACKET_STEPS, _NOT_BRACKETS))
    if max(accumulate(steps), default=0) > _MAX_JSON_DEPTH:
        raise InvalidInput(f"safetensors: header JSON nests deeper than {_MAX_JSON_DEPTH} levels")


def _strings(root: Any) -> Iterator[str]:
    """Every string in a decoded document, object keys included."""
    pending = [root]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, _JsonObject):
            pending.extend(item for pair in value for item in pair)
        elif isinstance(value, list):
            pending.extend(value)


def _split_header(root: Any) -> tuple[dict[str, _Entry], dict[str, str] | None]:
    """The tensor entries by name, and the metadata."""
    if not isinstance(root, _JsonObject):
        raise InvalidInput(f"safetensors: header is a JSON {_json_kind(root)}, not an object")
    entries: dict[str, _Entry] = {}
    metadata: dict[str, str] | None = None
    seen_metadata = False
    for key, value in root:
        if key == "__metadata__":
            if seen_metadata:
                raise InvalidInput("safetensors: duplicate __metadata__ in header")
            seen_metadata = True
            metadata = _parse_metadata(value)
        elif key in entries:
            # The crate lets the last entry win; a reader keeping the first would see other weights.
            raise InvalidInput(f"safetensors: duplicate tensor name {key!r} in header")
        else:
            entries[key] = _parse_tensor_entry(key, value)
    return entries, metadata


def _parse_metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, _JsonObject):
        raise InvalidInput(f"safetensors: __metadata__ is a JSON {_json_kind(value)}, not an object")
    for key, item in value:
        if not isinstance(item, str):
            raise InvalidInput(f"safetensors: __metadata__ {_show(key)} is a JSON {_json_kind(item)}, not a string")
    return dict(value)


_FIELDS = ("dtype", "shape", "data_offsets")


def _parse_tensor_entry(name: str, value: Any) -> _Entry:
    if isinstance(value, _JsonObject):
        found: dict[str, Any] = {}
        for key, item in value:
            if key in _FIELDS:  # serde ignores unknown fields but refuses repeated ones
                if key in found:
                    raise InvalidInput(f"{_tensor(name)}: duplicate field {key!r}")
                found[key] = item
        if len(found) < len(_FIELDS):
            missing = next(field for field in _FIELDS if field not in found)
            raise InvalidInput(f"{_tensor(name)}: missing field {missing!r}")
        dtype, shape, offsets = found["dtype"], found["shape"], found["data_offsets"]
    elif isinstance(value, list) and len(value) == len(_FIELDS):
        # serde derives a sequence form for structs: [dtype, shape, data_offsets]
        dtype, shape, offsets = value
    else:
        raise InvalidInput(f"{_tensor(name)}: entry is a JSON {_json_kind(value)}, "
                           f"not an object with {', '.join(_FIELDS)}")
    begin, end = _parse_offsets(name, offsets)
    return _parse_dtype(name, dtype), _parse_shape(name, shape), begin, end


def _tensor(name: str) -> str:
    """How messages name a tensor; made only for a message (a header has thousands of tensors)."""
    return f"safetensors: tensor {_show(name)}"


def _parse_dtype(name: str, value: Any) -> str:
    # serde also reads an enum's unit variant written as a one-key object: {"F32": null}
    if isinstance(value, _JsonObject):
        if len(value) != 1 or value[0][1] is not None:
            raise InvalidInput(f"{_tensor(name)}: dtype object must be a single dtype name mapped to null")
        value = value[0][0]
    if not isinstance(value, str):
        raise InvalidInput(f"{_tensor(name)}: dtype is a JSON {_json_kind(value)}, not a string")
    if value not in DTYPE_BITS:
        raise InvalidInput(f"{_tensor(name)}: unknown dtype {_show(value)}")
    return value


def _parse_shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or isinstance(value, _JsonObject):
        raise InvalidInput(f"{_tensor(name)}: shape is a JSON {_json_kind(value)}, not an array")
    for dim in value:
        if not _is_u64(dim):
            raise InvalidInput(f"{_tensor(name)}: shape {_show_json(value)} has a dimension that is not an integer "
                               "in [0, 2**64)")
    return tuple(value)


def _parse_offsets(name: str, value: Any) -> tuple[int, int]:
    if not isinstance(value, list) or isinstance(value, _JsonObject) or len(value) != 2:
        raise InvalidInput(f"{_tensor(name)}: data_offsets {_show_json(value)} is not a [begin, end] pair")
    begin, end = value
    if not (_is_u64(begin) and _is_u64(end)):
        raise InvalidInput(f"{_tensor(name)}: data_offsets {_show_json(value)} are not integers in [0, 2**64)")
    return begin, end


def _is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _U64_MAX  # type(): bool is an int subclass


def _validate_layout(entries: dict[str, _Entry], data_start: int, data_size: int) -> dict[str, TensorInfo]:
    """The crate's `Metadata::validate`: in offset order, tensors tile the data
    buffer from 0 without holes or overlaps, each exactly as long as its shape
    and dtype need, and the last one ends where the file ends."""
    ordered = sorted(entries.items(), key=lambda entry: (entry[1][2], entry[1][3]))
    tensors: dict[str, TensorInfo] = {}
    covered = 0
    for name, (dtype, shape, begin, end) in ordered:
        if begin != covered or end < begin:
            raise InvalidInput(f"{_tensor(name)}: data_offsets [{begin}, {end}] "
                               f"{_offset_problem(begin, end, covered)}")
        covered = end
        nbytes = _tensor_nbytes(name, dtype, shape)
        if end - begin != nbytes:
            raise InvalidInput(f"{_tensor(name)}: data_offsets [{begin}, {end}] do not match shape {list(shape)} "
                               f"of {dtype} ({nbytes} bytes)")
        tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
    if covered != data_size:
        raise InvalidInput(f"safetensors: tensors cover {covered} bytes but the data buffer holds {data_size}")
    return tensors


def _offset_problem(begin: int, end: int, covered: int) -> str:
    if end < begin:
        return "end before they begin"
    if begin > covered:
        return f"leave a gap after byte {covered} of the data buffer"
    return f"overlap the bytes before {covered} of the data buffer"


def _tensor_nbytes(name: str, dtype: str, shape: tuple[int, ...]) -> int:
    # The crate multiplies with overflow checks in u64, one dimension at a time,
    # so [2**32, 2**32, 0] overflows before the 0 is reached.
    count = 1
    for dim in shape:
        count *= dim
        if count > _U64_MAX:
            raise InvalidInput(f"{_tensor(name)}: element count of shape {list(shape)} overflows 64 bits")
    nbits = count * DTYPE_BITS[dtype]
    if nbits > _U64_MAX:
        raise InvalidInput(f"{_tensor(name)}: bit size of shape {list(shape)} of {dtype} overflows 64 bits")
    if nbits % 8:
        raise InvalidInput(f"{_tensor(name)}: shape {list(shape)} of {dtype} is {nbits} bits, "
                           "not a whole number of bytes")
    return nbits // 8


def _json_kind(value: Any) -> str:
    if isinstance(value, _JsonObject):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _show(text: str) -> str:
    """`text` quoted on one line, shortened if long."""
    if len(text) > _MAX_SHOWN_TEXT:
        text = text[:_MAX_SHOWN_TEXT] + "..."
    return repr(text)


def _show_json(value: Any) -> str:
    """A parsed JSON value on one line, shortened if long."""
    text = "{...}" if isinstance(value, _JsonObject) else repr(value)
    return text if len(text) <= _MAX_SHOWN_TEXT else text[:_MAX_SHOWN_TEXT] + "..."
