"""Retraining signals: the seed's triggers, each with its evidence, and the records behind them.

The seed says to retrain only when the data says so: input PSI above 0.2; eval accuracy more than
3-5% below the launch baseline (by risk tier); 20-30% more labelled data than at the last
training; systematic failures found by human sampling; a declared domain shift. ``retrain_check``
reports each for the model's production version (else its newest), fired or not, with what it
measured; artifactstore records no human sampling or domain shift yet, and says so.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..clock import now
from ..errors import InvalidInput, InvalidParameter, NotFound
from ..registry.refs import ModelName
from ..registry.registry import Registry
from .arrays import MonitoringArrays, check_node, default_node, labelled_path, version_path
from .psi import EMPTY, Thresholds
from .report import drift_report, iso
from .versions import Served, check_stamp, served

MAX_EVAL_BYTES = 1 << 20
INPUTS = "inputs."
MAX_EXAMPLES = np.iinfo(np.int64).max  # the labelled array holds int64
# a drop or a growth exactly at its limit must neither fire nor miss by float rounding
# (14,400 / 12,000 - 1 < 0.2; (0.9 - 0.855) / 0.9 > 0.05)
TOLERANCE = 1e-9


# -- eval runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalTrend:
    """A version's eval runs against its launch baseline (the bundle's eval_results.json)."""

    ref: str
    launch: dict[str, float]
    runs: list[dict]  # {"at", "node", "scores": {metric: value or None}}, oldest first

    def latest(self, metric: str) -> tuple[str, float] | None:
        """(when, value) of the newest run that measured ``metric``."""
        return next(((run["at"], run["scores"][metric]) for run in reversed(self.runs)
                     if run["scores"].get(metric) is not None), None)

    def changes(self) -> dict[str, dict]:
        """Each launch metric's newest value, its change and its relative change."""
        changes = {}
        for metric, launch in self.launch.items():
            latest = self.latest(metric)
            if latest is not None:
                changes[metric] = {"launch": launch, "latest": latest[1], "at": latest[0],
                                   "change": latest[1] - launch,
                                   "relative": (latest[1] - launch) / launch if launch else None}
        return changes

    def to_json(self) -> dict:
        return {"ref": self.ref, "launch": self.launch, "runs": self.runs, "changes": self.changes()}


def read_scores(path: Path, launch: dict[str, float]) -> dict[str, float]:
    """An eval run's scores (a JSON object of metric -> number, like eval_results.json)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_EVAL_BYTES + 1)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    if len(data) > MAX_EVAL_BYTES:
        raise InvalidInput(f"{path}: more than {MAX_EVAL_BYTES:,} bytes")
    try:
        scores = json.loads(data, parse_constant=lambda name: math.nan)
    except ValueError as exc:
        raise InvalidInput(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(scores, dict) or not scores:
        raise InvalidInput(f'{path}: expected a JSON object of metrics, e.g. {{"accuracy": 0.93}}')
    for metric, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise InvalidInput(f"{path}: {metric}: {_shown(value)} is not a finite number")
        if metric not in launch:
            raise InvalidInput(f"{path}: {metric} is not a metric of the launch baseline "
                               f"({', '.join(sorted(launch)) or 'it has none'})")
    return {k: float(v) for k, v in scores.items()}


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond every float
        return False


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def record_eval(registry: Registry, arrays: MonitoringArrays, ref: str, path: Path, *,
                node: str | None = None) -> EvalTrend:
    """Append an eval run of ``ref`` (scores from ``path``, now) to this node's eval array."""
    version = served(registry, ref)
    node = check_node(node or default_node())
    launch = _launch(registry, version)
    scores = read_scores(path, launch)
    metrics = sorted(launch)
    row = np.array([[now().timestamp(), *(scores.get(m, math.nan) for m in metrics)]], dtype=np.float64)
    with arrays.writing():
        place = arrays.ensure_root(version.model, version.version, version.bundle)
        check_stamp(arrays, place, version)
        arrays.append(place, f"{version_path(version.model, version.version)}/nodes/{node}/evals", row, math.nan,
                      {"metrics": metrics})
    return eval_trend(registry, arrays, ref)


def _launch(registry: Registry, version: Served) -> dict[str, float]:
    record = registry.version_record(version.ref)
    return {k: float(v) for k, v in record.get("eval_scores", {}).items()}


def eval_trend(registry: Registry, arrays: MonitoringArrays, ref: str) -> EvalTrend:
    version = served(registry, ref)
    launch = _launch(registry, version)
    place = arrays.locate(version.model, version.version)
    runs: list[dict[str, Any]] = []
    if place is not None:
        for node, array in arrays.node_arrays(place, version_path(version.model, version.version), "evals"):
            metrics = list(array.attrs.get("metrics", []))
            for row in array[:]:
                if not math.isnan(row[0]):  # NaN: a torn append
                    runs.append({"at": iso(row[0]), "node": node,
                                 "scores": {m: None if math.isnan(v) else float(v) for m, v in zip(metrics, row[1:])}})
    runs.sort(key=lambda run: run["at"])
    return EvalTrend(version.ref, launch, runs)


# -- labelled data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledData:
    model: str
    version: str | None  # the version whose training the growth is measured against
    training_examples: int | None
    examples: int | None  # the newest count recorded
    recorded_at: str | None

    @property
    def growth(self) -> float | None:
        if self.examples is None or self.training_examples is None:
            return None
        if self.training_examples == 0:
            return math.inf if self.examples else 0.0
        return self.examples / self.training_examples - 1

    def to_json(self) -> dict:
        growth = self.growth
        return asdict(self) | {"growth": None if growth is None or math.isinf(growth) else round(growth, 6)}


def record_labelled(registry: Registry, arrays: MonitoringArrays, model: str, examples: int, *,
                    node: str | None = None) -> LabelledData:
    """Record how many labelled examples the model's client has now."""
    name = ModelName.parse(model)
    if not registry.state(name).versions:  # gc deletes the monitoring data of a model without versions
        raise InvalidParameter(f"{name} has no version yet: labelled data is compared with a version's training "
                               "examples (push one first)")
    node = check_node(node or default_node())
    if type(examples) is not int or not 0 <= examples <= MAX_EXAMPLES:
        raise InvalidParameter(f"--examples must be a whole number >= 0 (at most {MAX_EXAMPLES:,}), not {examples!r}")
    row = np.array([[int(now().timestamp()), examples]], dtype=np.int64)
    with arrays.writing():
        arrays.append(arrays.store, f"{labelled_path(name)}/nodes/{node}/examples", row, 0)
    return labelled_data(registry, arrays, model)


def labelled_data(registry: Registry, arrays: MonitoringArrays, model: str) -> LabelledData:
    name = ModelName.parse(model)
    version = _current(registry, name)
    training = registry.version_record(version.ref).get("training_examples") if version else None
    rows = [rows for _, rows in arrays.read_rows(arrays.store, labelled_path(name), "examples")]
    recorded = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
    recorded = recorded[recorded[:, 0] > 0]  # a zero time: a torn append
    if not len(recorded):
        return LabelledData(str(name), version.version if version else None, training, None, None)
    newest = recorded[np.argsort(recorded[:, 0], kind="stable")[-1]]  # of equal times, the last appended
    return LabelledData(str(name), version.version if version else None, training, int(newest[1]),
                        iso(int(newest[0])))


def _current(registry: Registry, model: ModelName) -> Served | None:
    """The production version, else the newest; None for a model without versions."""
    for ref in (f"{model}@production", f"{model}@latest"):
        try:
            return served(registry, ref)
        except NotFound:
            continue
    return None


# -- the retrain check ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainPolicy:
    """The limits of the triggers: the seed's, until a model's policy sets its own."""

    thresholds: Thresholds = Thresholds()  # input drift fires above thresholds.investigate
    eval_metric: str = "accuracy"
    max_eval_drop: float = 0.05  # relative drop below the launch baseline: 0.03 for a high risk tier
    min_data_growth: float = 0.2  # labelled examples beyond those at training, relative


@dataclass(frozen=True)
class Trigger:
    name: str
    fired: bool
    measured: bool
    evidence: str
    value: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class RetrainCheck:
    model: str
    version: str | None
    triggers: list[Trigger]

    @property
    def retrain(self) -> bool:
        return any(t.fired for t in self.triggers)

    def verdict(self) -> str:
        fired = [t.name for t in self.triggers if t.fired]
        return f"retrain: {', '.join(fired)}" if fired else "do not retrain: no trigger fired"

    def to_json(self) -> dict:
        return {"model": self.model, "version": self.version, "retrain": self.retrain, "verdict": self.verdict(),
                "triggers": [asdict(t) for t in self.triggers]}


def retrain_check(registry: Registry, arrays: MonitoringArrays, model: str,
                  policy: RetrainPolicy = RetrainPolicy()) -> RetrainCheck:
    name = ModelName.parse(model)
    version = _current(registry, name)
    if version is None:
        raise NotFound(f"{name} has no versions")
    triggers = [_input_drift(arrays, version, policy), _eval_drop(registry, arrays, version, policy),
                _data_growth(registry, arrays, str(name), policy),
                Trigger("human sampling", False, False, "no human-sampling results: artifactstore does not record "
                        "them yet"),
                Trigger("domain shift", False, False, "none declared: artifactstore does not record declarations yet")]
    return RetrainCheck(str(name), version.version, triggers)


def _input_drift(arrays: MonitoringArrays, version: Served, policy: RetrainPolicy) -> Trigger:
    name, limit = "input drift", policy.thresholds.investigate
    try:
        report = drift_report(arrays, version.model, version.version, thresholds=policy.thresholds)
    except NotFound:
        return Trigger(name, False, False, f"{version.ref} has no drift baseline", limit=limit)
    inputs = [f for f, feature in enumerate(report.features) if feature.startswith(INPUTS)]
    if not inputs:
        return Trigger(name, False, False, "the baseline has no inputs.* feature", limit=limit)
    values = report.psi[:, inputs]
    statuses = report.statuses()[:, inputs]
    over = (report.starts + report.window_seconds <= now().timestamp()) & (statuses != EMPTY).any(axis=1)
    if not over.any():
        return Trigger(name, False, False, "no finished window with input values recorded yet", limit=limit)
    w = int(np.flatnonzero(over)[-1])
    worst = int(np.nanargmax(values[w]))
    value, feature = float(values[w, worst]), report.features[inputs[worst]]
    fired = value > limit
    return Trigger(name, fired, True, f"{feature} PSI {value:.3f} in the window from {iso(int(report.starts[w]))}: "
                   f"{'above' if fired else 'at most'} {limit:g}" + ("" if fired else " (the highest input PSI)"),
                   round(value, 6), limit)


def _eval_drop(registry: Registry, arrays: MonitoringArrays, version: Served, policy: RetrainPolicy) -> Trigger:
    name, metric, limit = f"eval {policy.eval_metric}", policy.eval_metric, policy.max_eval_drop
    trend = eval_trend(registry, arrays, version.ref)
    launch = trend.launch.get(metric)
    if launch is None:
        return Trigger(name, False, False, f"the launch baseline of {version.ref} has no {metric}", limit=limit)
    latest = trend.latest(metric)
    if latest is None:
        return Trigger(name, False, False, f"no eval run of {version.ref} recorded (artifactstore eval record)",
                       limit=limit)
    drop = (launch - latest[1]) / launch if launch else 0.0
    fired = drop > limit + TOLERANCE
    return Trigger(name, fired, True, f"{metric} {latest[1]:g} on {latest[0][:19]}Z: {drop:.1%} below the launch "
                   f"baseline {launch:g} (limit {limit:.0%})", round(drop, 6), limit)


def _data_growth(registry: Registry, arrays: MonitoringArrays, model: str, policy: RetrainPolicy) -> Trigger:
    name, limit = "labelled data", policy.min_data_growth
    data = labelled_data(registry, arrays, model)
    if data.training_examples is None:
        return Trigger(name, False, False, f"the bundle of {data.version} records no training_examples "
                       "(metadata.yaml)", limit=limit)
    if data.examples is None:
        return Trigger(name, False, False, "no labelled-data count recorded (artifactstore data record)", limit=limit)
    growth = data.growth
    assert growth is not None
    fired = growth >= limit - TOLERANCE
    return Trigger(name, fired, True, f"{data.examples:,} labelled examples on {data.recorded_at}: {growth:+.0%} "
                   f"over the {data.training_examples:,} at training (limit +{limit:.0%})",
                   None if math.isinf(growth) else round(growth, 6), limit)
