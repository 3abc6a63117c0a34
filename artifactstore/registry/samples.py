"""Requests as JSON Lines: what ``monitor baseline`` and ``monitor record`` read, and what a bundle's
optional ``eval_samples.jsonl`` holds (docs/format.md, "Request samples").

One JSON object per line, ``{"inputs": {...}, "outputs": {...}, "at": "2026-11-26T10:00:00Z"}``, all
three optional. A feature is named by its path (``inputs.length``, ``outputs.usage.tokens``);
numbers make numeric features, text and booleans categorical ones (a boolean is the category
``true`` or ``false``), ``null`` is a missing value. Everything else is refused, naming the file
and line, before anything is written.

The registry owns this format because a bundle carries it: a push checks ``eval_samples.jsonl``
like every other bundle file; the monitoring wing reads the same format.
"""

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..clock import parse_time
from ..errors import InvalidInput, InvalidParameter

SAMPLES_FILE = "eval_samples.jsonl"
MAX_SAMPLES_BYTES = 64 << 20  # in a bundle; a file given to a command may be larger
MAX_DEPTH = 8  # objects nested inside "inputs" or "outputs"
SECTIONS = ("inputs", "outputs")
NUMERIC, CATEGORICAL = "numeric", "categorical"
MAX_FEATURES = 256  # a baseline's

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Column:
    """One feature's values: ``rows`` says which request (index into ``Samples.at``) each came from."""

    kind: str
    rows: list[int]
    values: list
    first_line: int  # where the feature first appeared, for messages


@dataclass
class Samples:
    where: str
    at: "np.ndarray"  # float64 seconds since the epoch per request; NaN where the line gave no "at"
    lines: list[int]  # the line number of each request
    columns: dict[str, Column]

    def __len__(self) -> int:
        return len(self.lines)

    def check_reference(self) -> None:
        """Refuse samples no drift baseline can be taken from (InvalidInput): a push checks a
        bundle's eval_samples.jsonl so, so that its promotion's baseline cannot fail."""
        if not len(self):
            raise InvalidInput(f"{self.where}: holds no request, so there is nothing to take a baseline from")
        if not self.columns:
            raise InvalidInput(f"{self.where}: no request has a feature value (every one is null or absent), "
                               "so there is nothing to take a baseline from")
        if len(self.columns) > MAX_FEATURES:
            raise InvalidInput(f"{self.where}: {len(self.columns)} features, more than the limit of {MAX_FEATURES}")


class _Refused(Exception):
    pass


def _refuse_constant(name: str):
    raise _Refused(f"{name} is not a finite number")


def read_samples(path: Path) -> Samples:
    """Every request of a JSON Lines file; InvalidInput names the file and the first bad line."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_samples(f, str(path))
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory, not a JSON Lines file") from None


def parse_samples(lines: Iterable[str], where: str) -> Samples:
    """Parse JSON Lines text (blank lines are skipped)."""
    builder = SamplesBuilder(where)
    for number, line in enumerate(lines, 1):
        if line.strip():
            builder.add(_parse_line(line, where, number), number)
    return builder.build()


class SamplesBuilder:
    """Requests (parsed JSON objects) gathered into columns, each checked as it is added."""

    def __init__(self, where: str):
        self.where = where
        self._at: list[float] = []
        self._lines: list[int] = []
        self._columns: dict[str, Column] = {}

    def add(self, request: dict, line: int, at: float | None = None) -> None:
        """Add one request; ``at`` (seconds since the epoch) overrides the request's own "at"."""
        try:
            unknown = sorted(set(request) - {*SECTIONS, "at"})
            if unknown:
                raise _Refused(f"unknown key {unknown[0]!r} (a request has inputs, outputs and at)")
            features: dict[str, float | str] = {}
            for section in SECTIONS:
                if request.get(section) is not None:
                    _flatten(request[section], section, features, 0)
            if at is None:
                moment = request.get("at")
                if moment is not None and not isinstance(moment, str):
                    raise _Refused('"at" must be an ISO 8601 time in a string')
                at = parse_time(moment, '"at"').timestamp() if moment is not None else math.nan
        except (_Refused, InvalidParameter) as exc:
            raise InvalidInput(f"{self.where} line {line}: {exc}") from None
        row = len(self._lines)
        for name, value in features.items():
            kind = CATEGORICAL if isinstance(value, str) else NUMERIC
            column = self._columns.get(name)
            if column is None:
                column = self._columns[name] = Column(kind, [], [], line)
            elif column.kind != kind:
                raise InvalidInput(f"{self.where} line {line}: {name} is {_kind_text(kind)} here but "
                                   f"{_kind_text(column.kind)} on line {column.first_line}")
            column.rows.append(row)
            column.values.append(value)
        self._lines.append(line)
        self._at.append(at)

    def __len__(self) -> int:
        return len(self._lines)

    def build(self) -> Samples:
        import numpy as np  # here: a push checks a bundle's samples without numpy, which registry commands never load

        return Samples(self.where, np.array(self._at, dtype=np.float64), self._lines, self._columns)


def _kind_text(kind: str) -> str:
    return "a number" if kind == NUMERIC else "text or true/false"


def _parse_line(line: str, where: str, number: int) -> dict:
    try:
        request = json.loads(line, parse_constant=_refuse_constant)
    except _Refused as exc:
        raise InvalidInput(f"{where} line {number}: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{where} line {number}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidInput(f"{where} line {number}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(request, dict):
        raise InvalidInput(f'{where} line {number}: expected a JSON object '
                           '{"inputs": {...}, "outputs": {...}, "at": "..."}')
    return request


def _flatten(value, path: str, features: dict[str, float | str], depth: int) -> None:
    if isinstance(value, dict):
        if depth == MAX_DEPTH:
            raise _Refused(f"{path}: nested deeper than {MAX_DEPTH} levels")
        for key, item in value.items():
            if not key or "." in key:
                raise _Refused(f"{path}: key {key!r} is empty or holds '.', which separates the parts of a "
                               "feature's name")
            _flatten(item, f"{path}.{key}", features, depth + 1)
    elif depth == 0:
        raise _Refused(f"{path} must be a JSON object of features")
    elif isinstance(value, bool):
        features[path] = "true" if value else "false"
    elif isinstance(value, str):
        features[path] = value
    elif isinstance(value, int | float):
        number = float(value) if -1e308 < value < 1e308 else math.inf  # float() of a huge int raises
        if not math.isfinite(number):
            raise _Refused(f"{path}: a number too large for a double")
        features[path] = number
    elif value is not None:
        raise _Refused(f"{path}: a list is not a feature value (numbers, text, true/false or null)")
