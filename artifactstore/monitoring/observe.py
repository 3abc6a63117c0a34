"""Observing a version: its baseline, the ``Monitor`` that counts served requests, recording a file.

A ``Monitor`` bins each request's features against the frozen baseline of the version that
served it, counts them per window in memory, and on ``flush`` appends one row per window to this
node's array (docs/monitoring.md, "Observation"). Batches of feature values are binned with numpy:
a binary search per value and one ``bincount`` per feature and batch.
"""

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..clock import now, parse_duration, timestamp
from ..errors import ArtifactStoreError, Conflict, InvalidInput, InvalidParameter, NotFound
from ..registry.registry import Registry
from ..registry.samples import NUMERIC, SAMPLES_FILE, Column, Samples, SamplesBuilder, parse_samples, read_samples
from .alerts import Alert, Deliver, raise_alerts
from .arrays import DEFAULT_WINDOW, MonitoringArrays, check_node, default_node, version_path
from .baseline import Baseline, take_baseline
from .psi import Thresholds
from .report import iso, read_baseline
from .versions import Served, check_stamp, served

BUFFERED_REQUESTS = 4096  # single requests are binned in batches of this many
# a window must start at a time a report can print (a datetime): from year 1 to year 9999
FIRST_WINDOW_START = datetime.min.replace(tzinfo=UTC).timestamp()
LAST_WINDOW_START = datetime.max.replace(tzinfo=UTC).timestamp()
MIN_WINDOW, MAX_WINDOW = 60, 366 * 86400  # a minute; a year, leap day included

_log = logging.getLogger(__name__)


# -- baselines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineReport:
    ref: str
    features: list[str]
    samples: int
    window_seconds: int
    source: str
    taken_at: str


def take_file_baseline(registry: Registry, arrays: MonitoringArrays, ref: str, path: Path | None, *,
                       window: str = "1h", like: str | None = None) -> BaselineReport:
    """Freeze ``ref``'s baseline: the bins of the requests in ``path`` (JSON Lines), or those of
    version ``like`` (with ``path``: the file's requests counted in them; without: a copy of its
    baseline, so that the two versions' counts compare window by window)."""
    version = served(registry, ref)
    seconds = int(parse_duration(window))
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise InvalidParameter(f"--window {window}: a window lasts at least a minute and at most 366 days")
    if like is None:
        if path is None:
            raise InvalidParameter("a baseline needs --from FILE.jsonl, --like REF, or both")
        baseline = take_baseline(read_samples(path), timestamp(), path.name)
    else:
        other = served(registry, like)
        _, frozen, seconds = read_baseline(arrays, other.model, other.version)
        baseline = replace(frozen, source=f"like {other.ref}: {frozen.source}", taken_at=timestamp()) \
            if path is None else _count_in(frozen, read_samples(path), other.ref, path.name)
    _write(arrays, version, baseline, seconds)
    return BaselineReport(version.ref, baseline.names, baseline.samples, seconds, baseline.source,
                          baseline.taken_at)


def _count_in(frozen: Baseline, samples: Samples, other: str, file: str) -> Baseline:
    """``samples`` (from ``file``) counted in the bins of ``other``'s baseline ``frozen``: a
    reference for another version with the same bins."""
    # a feature without reference values would have no PSI in any window: its drift would go unseen
    lacking = [feature for feature in frozen.names if feature not in samples.columns]
    if lacking:
        raise InvalidInput(f"{samples.where}: no value of {', '.join(lacking)}, which the baseline of {other} "
                           "counts: every feature of a baseline needs reference values")
    reference = np.zeros(frozen.width, dtype=np.int64)
    for name, column in samples.columns.items():
        i = frozen.find(name)
        if i is None:
            continue
        feature = frozen.features[i]
        _check_column_kind(feature.kind, name, column, samples)
        values = np.array(column.values, dtype=np.float64) if feature.kind == NUMERIC else column.values
        reference[frozen.offsets[i]:frozen.offsets[i] + feature.bins] += np.bincount(feature.bin(values),
                                                                                       minlength=feature.bins)
    return Baseline(frozen.features, reference, len(samples), timestamp(), f"{file} in the bins of {other}")


def _write(arrays: MonitoringArrays, version: Served, baseline: Baseline, window: int) -> None:
    with arrays.writing():
        place = arrays.locate(version.model, version.version)
        if place is not None:
            check_stamp(arrays, place, version)
            existing = arrays.read_baseline(place, version.model, version.version)
            if existing is not None:
                raise Conflict(f"{version.ref} already has a drift baseline (taken {existing[0].taken_at} from "
                               f"{existing[0].source}): a baseline is frozen, so that every window compares alike")
        place = arrays.ensure_root(version.model, version.version, version.bundle)
        arrays.write_baseline(place, version.model, version.version, baseline, window)


@dataclass(frozen=True)
class PendingBaseline:
    """A default baseline computed before a promotion and written after it."""

    version: Served
    baseline: Baseline

    def write(self, arrays: MonitoringArrays) -> None:
        try:
            _write(arrays, self.version, self.baseline, DEFAULT_WINDOW)
        except Conflict:  # someone took one meanwhile: theirs stands
            pass


def promotion_baseline(registry: Registry, arrays: MonitoringArrays, ref: str) -> PendingBaseline | None:
    """The default baseline of the version ``ref`` names, from its bundle's eval_samples.jsonl, when it
    has none yet and its bundle carries that file."""
    version = served(registry, ref)
    place = arrays.locate(version.model, version.version)
    if place is not None and arrays.read_baseline(place, version.model, version.version) is not None:
        return None
    data = registry.content.read_tree_file(version.bundle, SAMPLES_FILE)
    if data is None:
        return None
    try:
        samples = parse_samples(data.decode("utf-8").splitlines(), f"{version.ref} {SAMPLES_FILE}")
    except UnicodeDecodeError:
        raise InvalidInput(f"{version.ref} {SAMPLES_FILE}: not UTF-8 text") from None
    return PendingBaseline(version, take_baseline(samples, timestamp(), SAMPLES_FILE))


# -- the monitor ----------------------------------------------------------------------------------


def _wrong_kind(kind: str, name: str, given: str) -> str | None:
    """Why values of kind ``given`` cannot be counted in a feature the baseline counts as ``kind``."""
    if kind == given:
        return None
    said = "a number" if given == NUMERIC else "text or true/false"
    return f"{name} is {said}, but the baseline counts it as a {kind} feature"


def _check_column_kind(kind: str, name: str, column: Column, samples: Samples) -> None:
    wrong = _wrong_kind(kind, name, column.kind)
    if wrong is not None:
        raise InvalidInput(f"{samples.where} line {samples.lines[column.rows[0]]}: {wrong}")


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _is_missing(value) -> bool:
    return value is None or isinstance(value, float | np.floating) and math.isnan(value)


def _numeric_column(name: str, values) -> np.ndarray:
    """A batch's values of a numeric feature as floats (NaN where a request has none). What a single
    request would not count as a number (text, true/false) is refused, not converted."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        numbers = values.astype(np.float64, copy=False)
    elif (isinstance(values, np.ndarray) and values.dtype.kind != "O") or \
            not all(v is None or _is_number(v) for v in values):
        raise InvalidParameter(f"{name} is a numeric feature: its values must be numbers "
                               "(NaN or None where a request has none)")
    else:
        numbers = np.asarray(values, dtype=np.float64)
    if np.isinf(numbers).any():  # a single request's infinity is refused too
        raise InvalidParameter(f"{name}: a value is infinite, not a number a request can have")
    return numbers


def _categorical_column(name: str, values) -> tuple[Any, np.ndarray | None]:
    """A batch's values of a categorical feature as a single request spells them (true/false for
    booleans), and the requests that have one (None: all). Numbers are refused, not counted as other."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "bU":
        return values, None
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        values = values.tolist()  # bytes and the like: refused below
    texts, rows = [], []
    for row, value in enumerate(values):
        if isinstance(value, bool | np.bool_):
            texts.append("true" if value else "false")
        elif isinstance(value, str):
            texts.append(value)
        elif _is_missing(value):
            continue
        else:
            raise InvalidParameter(f"{name} is a categorical feature: its values must be text or true/false "
                                   f"(None or NaN where a request has none), not {value!r}")
        rows.append(row)
    return texts, None if len(rows) == len(values) else np.array(rows, dtype=np.intp)


def _seconds(at: datetime | float | None) -> float:
    if at is None:
        return now().timestamp()
    if isinstance(at, datetime):  # without a zone it is UTC, as "at" in JSON Lines is, not the machine's time
        return (at.replace(tzinfo=UTC) if at.tzinfo is None else at).timestamp()
    return float(at)


class Monitor:
    """Counts the features of requests one version served, per window, for one node.

    ``observe`` takes one request, ``observe_batch`` many as columns (one array per feature);
    ``flush`` appends what was counted to this node's array, then (given ``deliver``) raises the
    drift alerts of the version's finished windows. Use it as a context manager to flush at the end.
    Not thread-safe: a server gives each thread its own, or a lock.
    """

    def __init__(self, arrays: MonitoringArrays, version: Served, *, node: str | None = None,
                 deliver: Deliver | None = None, thresholds: Thresholds = Thresholds()):
        place, self.baseline, self.window_seconds = read_baseline(arrays, version.model, version.version)
        check_stamp(arrays, place, version)
        self.arrays, self.version = arrays, version
        self.node = check_node(node or default_node())
        self.deliver, self.thresholds = deliver, thresholds
        self.ignored: set[str] = set()  # features that are not in the baseline
        self.values = 0  # values counted
        self._index = {f.name: i for i, f in enumerate(self.baseline.features)}
        self._offsets = self.baseline.offsets
        self._pending: dict[int, np.ndarray] = {}  # window start -> counts
        self._request_where = f"a request to {version.ref}"
        self._buffered_at: list[float] = []  # the time of each buffered request
        self._buffered: dict[str, Column] = {}  # their values of the features the baseline knows

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.flush()

    @property
    def windows(self) -> list[int]:
        """The starts of the windows counted and not flushed yet."""
        return sorted(self._pending)

    def observe(self, inputs: Mapping | None = None, outputs: Mapping | None = None,
                at: datetime | float | None = None) -> None:
        """One request (features as in the JSON Lines form); ``at``: a datetime or seconds since
        the epoch, default now. A malformed request, or one with a feature whose kind differs from the
        baseline's, is refused here, so that every buffered request can be counted."""
        seconds, row = _seconds(at), len(self._buffered_at)
        self._windows(seconds)  # refuses a bad time now: in the buffer it would fail every flush
        request = SamplesBuilder(self._request_where)
        request.add({"inputs": inputs, "outputs": outputs}, row + 1, seconds)
        features = request.build().columns
        for name, column in features.items():
            i = self._index.get(name)
            wrong = None if i is None else _wrong_kind(self.baseline.features[i].kind, name, column.kind)
            if wrong is not None:
                raise InvalidParameter(f"{self._request_where}: {wrong}")
        for name, column in features.items():
            if name in self._index:
                buffered = self._buffered.setdefault(name, Column(column.kind, [], [], row + 1))
                buffered.rows.append(row)
                buffered.values += column.values
            else:
                self.ignored.add(name)
        self._buffered_at.append(seconds)
        if len(self._buffered_at) >= BUFFERED_REQUESTS:
            self._count_requests()

    def observe_batch(self, features: Mapping[str, Any], at=None) -> None:
        """Many requests as columns: ``features`` maps a feature's name to one value per request (NaN or
        None where a request has none), ``at`` is one time for all (datetime or seconds; default
        now) or an array of seconds, one per request."""
        times = np.asarray(at, dtype=np.float64) if isinstance(at, np.ndarray | list | tuple) else _seconds(at)
        windows = self._windows(times)
        sizes = {name: len(values) for name, values in features.items()} | (
            {"at": len(times)} if isinstance(times, np.ndarray) and times.ndim else {})
        if len(set(sizes.values())) > 1:  # numpy would broadcast one value over every request, or miscount
            raise InvalidParameter("a batch gives one value per request in every column (and in at): got "
                                   + ", ".join(f"{name} {size}" for name, size in sizes.items()))
        columns: list[tuple[int, Any, np.ndarray | None]] = []  # every column is checked before any is counted
        for name, values in features.items():
            i = self._index.get(name)
            if i is None:
                self.ignored.add(name)
            elif self.baseline.features[i].kind == NUMERIC:
                numbers = _numeric_column(name, values)
                present = ~np.isnan(numbers)
                columns.append((i, numbers, None) if present.all() else
                               (i, numbers[present], np.flatnonzero(present)))
            else:
                columns.append((i, *_categorical_column(name, values)))
        for i, values, rows in columns:
            self._add(i, self.baseline.features[i].bin(values), windows, rows)

    def observe_samples(self, samples: Samples, default_at: float | None = None) -> None:
        """Requests parsed from JSON Lines; those without "at" count at ``default_at`` (default now).
        A feature whose kind differs from the baseline's is refused naming its first line."""
        for name, column in samples.columns.items():
            i = self._index.get(name)
            if i is None:
                self.ignored.add(name)
            else:
                _check_column_kind(self.baseline.features[i].kind, name, column, samples)
        times = np.where(np.isnan(samples.at), _seconds(default_at), samples.at)
        windows = self._windows(times)
        for name, column in samples.columns.items():
            i = self._index.get(name)
            if i is not None:
                feature = self.baseline.features[i]
                values = np.array(column.values, dtype=np.float64) if feature.kind == NUMERIC else column.values
                self._add(i, feature.bin(values), windows, np.array(column.rows, dtype=np.intp))

    def flush(self) -> list[Alert]:
        """Append the counted windows to this node's array (one row each), then, given ``deliver``, raise
        the alerts of the windows that are over, with nothing counted too (a window is over minutes after
        it ends); returns the alerts delivered. An error while raising them is logged, not raised."""
        self._count_requests()
        rows = [[start, *counts] for start, counts in sorted(self._pending.items()) if counts.any()]
        if rows:
            version = self.version
            with self.arrays.writing():
                place = self.arrays.locate(version.model, version.version)
                if place is None:
                    raise NotFound(f"the monitoring data of {version.ref} is gone (was the version deleted?)")
                self.arrays.append(place, f"{version_path(version.model, version.version)}/nodes/{self.node}/counts",
                                   np.array(rows, dtype=np.int64), 0)
        self._pending.clear()
        if self.deliver is None:
            return []
        try:
            return raise_alerts(self.arrays, self.version.model, self.version.version, self.deliver,
                                now().timestamp(), self.thresholds)
        except ArtifactStoreError as exc:  # the rows are appended: failing would have a retry count them twice
            _log.warning("%s: alerts not checked, the next check raises them: %s", self.version.ref, exc)
            return []

    def _windows(self, times) -> tuple[np.ndarray, np.ndarray] | int:
        """The window start of scalar ``times``, or (window starts, each request's index into them).
        A time that is not finite, or whose window would start outside years 1 to 9999, is refused:
        cast to a window start it would become a row no report can read."""
        starts = np.floor(np.asarray(times, dtype=np.float64) / self.window_seconds) * self.window_seconds
        usable = (starts >= FIRST_WINDOW_START) & (starts <= LAST_WINDOW_START)  # false for NaN
        if not usable.all():
            refused = np.asarray(times, dtype=np.float64).ravel()[~usable.ravel()][0]
            raise InvalidParameter(f"a request's time must be finite seconds since the epoch, from year 1 to 9999: "
                                   f"got {refused}")
        if np.ndim(starts) == 0:
            return int(starts)
        return np.unique(starts.astype(np.int64), return_inverse=True)

    def _add(self, i: int, bins: np.ndarray, windows, rows: np.ndarray | None) -> None:
        """Count feature ``i``'s ``bins`` (of the requests ``rows``, default all) in their windows."""
        width, first, count = self.baseline.width, self._offsets[i], self.baseline.features[i].bins
        self.values += len(bins)
        if isinstance(windows, int):
            counts = self._pending.get(windows)
            if counts is None:
                counts = self._pending[windows] = np.zeros(width, dtype=np.int64)
            counts[first:first + count] += np.bincount(bins, minlength=count)
            return
        starts, inverse = windows
        which = inverse if rows is None else inverse[rows]
        block = np.bincount(which * count + bins, minlength=len(starts) * count).reshape(len(starts), count)
        for start, counted in zip(starts.tolist(), block):
            if counted.any():
                counts = self._pending.get(start)
                if counts is None:
                    counts = self._pending[start] = np.zeros(width, dtype=np.int64)
                counts[first:first + count] += counted

    def _count_requests(self) -> None:
        if self._buffered_at:
            lines = list(range(1, len(self._buffered_at) + 1))
            self.observe_samples(Samples(self._request_where, np.array(self._buffered_at), lines, self._buffered))
            self._buffered_at, self._buffered = [], {}


# -- recording a file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordReport:
    ref: str
    node: str
    requests: int
    values: int
    windows: list[str]
    ignored_features: list[str]
    alerts: list[dict] = field(default_factory=list)


def record_file(registry: Registry, arrays: MonitoringArrays, ref: str, path: Path, *, node: str | None = None,
                deliver: Deliver | None = None, thresholds: Thresholds = Thresholds()) -> RecordReport:
    """Count the requests of a JSON Lines file for ``ref`` and append them as this node's rows. Every
    line is checked before anything is written."""
    monitor = Monitor(arrays, served(registry, ref), node=node, deliver=deliver, thresholds=thresholds)
    samples = read_samples(path)
    monitor.observe_samples(samples)
    windows = [iso(start) for start in monitor.windows]
    alerts = monitor.flush()
    return RecordReport(monitor.version.ref, monitor.node, len(samples), monitor.values, windows,
                        sorted(monitor.ignored), [a.to_json() for a in alerts])
