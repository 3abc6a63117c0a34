"""Serving metrics: per-window aggregates that inference servers report per version, for canary analysis.

A server (or a follower, for it) reports *records*: one node's traffic to one version over one window
(requests, errors, latency percentiles, quality scores, a histogram of some output characteristic).
``record_metrics`` stores them as immutable *batches*, content-addressed and filed by the hour their
windows end (``metrics/<client>/<model>/<YYYY-MM-DDTHH>/<hex>.json``), so that many servers report
at once without a lock and the same report sent twice is stored once. ``records_in_window`` reads
what a canary analysis window needs; ``aggregate`` sums it per version. docs/release.md, "Metrics
records"; docs/format.md, "Metrics batches".
"""

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import blake3
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from ..clock import now, parse_time, timestamp
from ..content.manifest import canonical_json
from ..errors import CorruptObject, InvalidInput, InvalidParameter, NotFound
from .policy import BUILTIN_METRICS, ScoreName
from .refs import ModelName, parse_version
from .registry import Registry

METRICS_CONTEXT = "artifactstore 2026-11 metrics batch v1"
METRICS = "metrics"
MAX_WINDOW = timedelta(days=1)  # a record covers at most a day: the analysis files it by its end
# Records a follower keeps while its writes fail: one per version per flush (60 s by default), so
# more than a day of a canary's two versions.
UNWRITTEN_LIMIT = 4096
_STORED = {"stored": True}  # the validation context of records read back from batches
NODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Percentile = Literal["p50", "p95", "p99"]
PERCENTILES: tuple[Percentile, ...] = ("p50", "p95", "p99")


def _finite(value: float, info: ValidationInfo) -> float:
    # A NaN compares False with every threshold, so it would pass any of them. Batches stored before
    # this rule still read: the analysis fails a metric whose value is not finite, where refusing
    # them would stop every tick that reads their hour.
    if not math.isfinite(value) and info.context != _STORED:
        raise ValueError(f"{value} is not a finite number")
    return value


def _not_builtin(name: str) -> str:
    if name in BUILTIN_METRICS:
        raise ValueError(f"{name} is a built-in metric's name")
    return name


NodeName = Annotated[str, Field(pattern=NODE_PATTERN)]
VersionName = Annotated[str, Field(pattern=r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")]
Finite = Annotated[float, AfterValidator(_finite)]
Latency = Annotated[Finite, Field(ge=0)]
ReportedScoreName = Annotated[ScoreName, AfterValidator(_not_builtin)]
OutputLabel = Annotated[str, Field(min_length=1, max_length=64)]
_NODE_NAME: TypeAdapter[str] = TypeAdapter(NodeName)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Score(_Strict):
    mean: Finite
    count: int = Field(ge=1)  # how many requests were scored


class MetricsRecord(_Strict):
    """One node's traffic to one version over one window ``(start, end]``."""

    version: VersionName
    node: NodeName
    start: str
    end: str
    requests: int = Field(ge=0)
    errors: int = Field(default=0, ge=0)
    latency_ms: dict[Percentile, Latency] = {}
    scores: dict[ReportedScoreName, Score] = {}
    outputs: dict[OutputLabel, Annotated[int, Field(ge=0)]] = {}

    @model_validator(mode="after")
    def _consistent(self):
        start, end = parse_time(self.start, "start"), parse_time(self.end, "end")
        if not start < end or end - start > MAX_WINDOW:  # not start + MAX_WINDOW: past year 9999 it overflows
            raise ValueError(f"end must follow start by at most a day ({self.start} .. {self.end})")
        if self.errors > self.requests:
            raise ValueError(f"{self.errors} errors in {self.requests} requests")
        return self

    def normalized(self) -> dict[str, Any]:
        """The record as stored: times in the registry's form."""
        fields = self.model_dump(mode="json")
        return fields | {"start": timestamp(parse_time(self.start, "start")), "end": timestamp(self.end_time)}

    @property
    def end_time(self) -> datetime:
        return parse_time(self.end, "end")


def _hour(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H")


def _prefix(model: ModelName) -> str:
    return f"{METRICS}/{model.client}/{model.model}"


def record_metrics(registry: Registry, model: ModelName | str, records: Iterable[MetricsRecord | dict[str, Any]]
                   ) -> dict[str, Any]:
    """Store servers' records for ``model``; every record is checked (its version must exist) before
    anything is written. Returns ``{"records": n, "batches": [ids]}``."""
    name = ModelName.parse(model) if isinstance(model, str) else model
    parsed, problems = [], []
    for number, record in enumerate(records, 1):
        try:
            # an instance too: one read back from a batch stored before non-finite values were refused
            fields = record.model_dump() if isinstance(record, MetricsRecord) else record
            parsed.append(MetricsRecord.model_validate(fields))
        except ValidationError as exc:
            problems += [f"record {number}: {problem}" for problem in _problems(exc)]
    if problems:
        raise InvalidInput("; ".join(problems))
    versions = registry.state(name).versions
    unknown = sorted({r.version for r in parsed} - set(versions), key=parse_version)
    if unknown:
        raise NotFound(f"{name} has no version {', '.join(unknown)}: nothing recorded")
    by_hour: dict[str, list[dict[str, Any]]] = {}
    for record in parsed:
        by_hour.setdefault(_hour(record.end_time), []).append(record.normalized())
    batches = []
    for hour, items in sorted(by_hour.items()):
        items.sort(key=canonical_json)
        encoded = canonical_json({"kind": "metrics-batch", "model": str(name), "records": items})
        digest = blake3.blake3(encoded, derive_key_context=METRICS_CONTEXT).hexdigest()
        key = f"{_prefix(name)}/{hour}/{digest}.json"
        if not registry.backend.exists(key):  # the same report sent again is stored once
            registry.backend.write(key, encoded)
        batches.append(f"b3:{digest}")
    return {"records": len(parsed), "batches": batches}


def batches_before(registry: Registry, model: ModelName, before: datetime) -> list[str]:
    """The keys of the model's batches filed under hours that ended by ``before`` (what a
    retention period lets gc delete)."""
    expired = []
    for key in registry.backend.list(_prefix(model)):
        try:
            hour = datetime.strptime(key.split("/")[3], "%Y-%m-%dT%H").replace(tzinfo=UTC)
        except (IndexError, ValueError):  # not a batch's name: not ours to delete
            continue
        if hour <= before - timedelta(hours=1):  # not hour + 1 h: a batch of the year 9999 must not overflow
            expired.append(key)
    return expired


def records_in_window(registry: Registry, model: ModelName, start: datetime, end: datetime
                      ) -> tuple[list[MetricsRecord], list[str]]:
    """The records whose window ends in ``(start, end]``, and the ids of the batches they came from."""
    records, batches = [], []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour <= end:
        for key in sorted(registry.backend.list(f"{_prefix(model)}/{_hour(hour)}")):
            found = [r for r in _read_batch(registry, key) if start < r.end_time <= end]
            if found:
                records += found
                batches.append("b3:" + key.rsplit("/", 1)[-1].removesuffix(".json"))
        hour += timedelta(hours=1)
    return records, batches


def _problems(error: ValidationError) -> list[str]:
    return [f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in error.errors()]


def _read_batch(registry: Registry, key: str) -> list[MetricsRecord]:
    encoded = registry.backend.read(key)
    if blake3.blake3(encoded, derive_key_context=METRICS_CONTEXT).hexdigest() != key.rsplit("/", 1)[-1][:-5]:
        raise CorruptObject(f"metrics batch {key} does not match its name (damaged): delete it or restore it")
    try:
        return [MetricsRecord.model_validate(r, context=_STORED) for r in json.loads(encoded)["records"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"metrics batch {key}: malformed ({str(exc).splitlines()[0]})") from None


@dataclass(frozen=True)
class Traffic:
    """One version's reported traffic in one window, summed over its nodes' records.

    Latency percentiles cannot be merged exactly from percentiles: each is the mean of the nodes'
    values weighted by their requests (exact for one node, and the same rule for both versions).
    """

    requests: int = 0
    errors: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # name -> mean over every scored request
    scored: dict[str, int] = field(default_factory=dict)  # name -> requests scored
    outputs: dict[str, int] = field(default_factory=dict)  # output histogram, summed
    nodes: tuple[str, ...] = ()

    def values(self) -> dict[str, float]:
        """The metrics an analysis can judge: error_rate, latency_pXX_ms, each score."""
        values = {f"latency_{p}_ms": v for p, v in self.latency_ms.items()} | dict(self.scores)
        if self.requests:
            values["error_rate"] = self.errors / self.requests
        return values

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"nodes": list(self.nodes)}


def aggregate(records: Iterable[MetricsRecord]) -> dict[str, Traffic]:
    """Records summed per version."""
    grouped: dict[str, list[MetricsRecord]] = {}
    for record in records:
        grouped.setdefault(record.version, []).append(record)
    traffic = {}
    for version, items in grouped.items():
        latency: dict[str, float] = {}
        for p in PERCENTILES:
            weighted = [(r.latency_ms[p], r.requests) for r in items if p in r.latency_ms and r.requests]
            if weighted:
                latency[p] = sum(v * n for v, n in weighted) / sum(n for _, n in weighted)
        scored: Counter[str] = Counter()
        sums: dict[str, float] = {}
        outputs: Counter[str] = Counter()
        for r in items:
            for name, score in r.scores.items():
                scored[name] += score.count
                sums[name] = sums.get(name, 0.0) + score.mean * score.count
            outputs.update(r.outputs)
        traffic[version] = Traffic(sum(r.requests for r in items), sum(r.errors for r in items), latency,
                                   {n: sums[n] / scored[n] for n in sorted(scored)}, dict(sorted(scored.items())),
                                   dict(sorted(outputs.items())), tuple(sorted({r.node for r in items})))
    return traffic


class _Request(_Strict):
    """One observed request, held to the rules of a record of it alone: then the record of every
    request a version served since the last take is valid too, and taking it cannot fail."""

    version: VersionName
    latency_ms: Latency
    error: bool
    scores: dict[ReportedScoreName, Finite]
    output: OutputLabel | None


class MetricsCollector:
    """What a follower gathers for its server between two flushes: per version, every request's
    latency, whether it failed, its quality scores and an output bin. ``take`` turns them into records;
    ``flush`` writes them, and keeps what a failed write did not store for the next flush."""

    def __init__(self, node: str):
        try:
            self.node = _NODE_NAME.validate_python(node)
        except ValidationError as exc:
            raise InvalidParameter(f"node name {node!r}: {exc.errors()[0]['msg']}") from None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._since = now()
        self._requests: dict[str, list[_Request]] = {}
        self._unwritten: list[list[MetricsRecord]] = []  # the records of each failed write, oldest first

    def flush(self, write: Callable[[list[MetricsRecord]], object]) -> int:
        """``write`` the records of the requests observed since the last take, after those of each
        earlier flush whose write failed: every failed write's records again in a call of their own,
        exactly as they were. A write may have stored its batches and failed after (an answer lost on
        its way back): sent again alone, its records are the same bytes, which ``record_metrics``
        stores once; merged with other records they would be another batch, counted twice. A store
        unreachable for a while loses no traffic: the newest failed writes, up to UNWRITTEN_LIMIT
        records, are kept. Returns how many records were written; a failed write raises."""
        with self._flushing:
            attempts = [records for records in self._unwritten + [self.take()] if records]
            written = 0
            for tried, records in enumerate(attempts):
                try:
                    write(records)
                except BaseException:
                    self._unwritten = _newest(attempts[tried:])
                    raise
                written += len(records)
            self._unwritten = []
            return written

    def observe(self, version: str, latency_ms: float, *, error: bool = False, scores: dict[str, float] | None = None,
                output: str | None = None) -> None:
        """Count one request. One that no record could hold (a latency or a score that is not a
        finite number, a negative latency, a score named like a built-in metric or not as a score
        name must be, an output label over 64 characters) is refused with InvalidParameter, and
        the requests counted before it stay."""
        try:
            request = _Request(version=version, latency_ms=latency_ms, error=error, scores=scores or {},
                               output=output)
        except ValidationError as exc:
            raise InvalidParameter(f"request to {version} not counted: {'; '.join(_problems(exc))}") from None
        with self._lock:
            self._requests.setdefault(version, []).append(request)

    def take(self, until: datetime | None = None) -> list[MetricsRecord]:
        """One record per version for the requests observed since the last take (none: no record)."""
        until = until or now()
        with self._lock:
            requests, self._requests = self._requests, {}
            since, self._since = self._since, until
        if until <= since:  # a clock that stood still (ARTIFACTSTORE_NOW): the window still needs a length
            until = since + timedelta(microseconds=1)
        # a record covers at most a day: the requests of a longer pause between takes are the last day's
        start = max(since, until - MAX_WINDOW)
        records = []
        for version, seen in sorted(requests.items()):
            latencies = sorted(request.latency_ms for request in seen)
            scores: dict[str, list[float]] = {}
            for request in seen:
                for name, value in request.scores.items():
                    scores.setdefault(name, []).append(value)
            records.append(MetricsRecord(
                version=version, node=self.node, start=timestamp(start), end=timestamp(until), requests=len(seen),
                errors=sum(request.error for request in seen),
                latency_ms={p: _nearest_rank(latencies, int(p[1:])) for p in PERCENTILES},
                scores={name: Score(mean=_mean(values), count=len(values)) for name, values in sorted(scores.items())},
                outputs=dict(Counter(request.output for request in seen if request.output is not None))))
        return records


def _newest(attempts: list[list[MetricsRecord]]) -> list[list[MetricsRecord]]:
    """The newest attempts that hold at most UNWRITTEN_LIMIT records together, each whole: part of
    one would be other bytes."""
    kept: list[list[MetricsRecord]] = []
    total = 0
    for records in reversed(attempts):
        total += len(records)
        if total > UNWRITTEN_LIMIT:
            break
        kept.insert(0, records)
    return kept


def _mean(values: list[float]) -> float:
    return math.fsum(value / len(values) for value in values)  # of quotients: a sum of finite scores may overflow


def _nearest_rank(ordered: list[float], percent: int) -> float:
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]
