"""The eval gate: a candidate's metrics against production's, metric by metric (docs/release.md).

``evaluate`` is pure: the gate settings, production's and the candidate's eval results and the
accepted trade-offs in, one verdict per metric out. ``run_gate`` reads those from the registry,
records the result as an immutable registry object and names it from the model's state
(``checks[version]["gate"]``) in one transaction: version records are immutable, so the result
lives beside the version, and the audit log keeps every run.
"""

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ..clock import timestamp
from ..content.manifest import canonical_json
from ..errors import Conflict, CorruptObject, InvalidParameter
from .pointers import PRODUCTION
from .policy import LIMITS, GateSection, MetricRule, policy_of
from .registry import Move, Registry
from .state import ModelState, default_actor

GATE_CONTEXT = "artifactstore 2026-11 gate result v1"
DEFAULT_POINTS = 2.0  # the seeds: "if any metric drops by more than 2 percentage points, stop"
# A metric whose name has one of these words (or its plural) is better lower; every other one higher.
LOWER_IS_BETTER = ("latency", "error", "hallucination", "toxicity", "loss", "time", "perplexity")
# Float arithmetic must not fail a metric that is exactly at its limit (0.958 - 0.938 > 0.02).
_SLACK = 1e-9

Verdict = Literal["pass", "fail", "accepted"]


def direction_of(metric: str) -> Literal["higher", "lower"]:
    """Which way is better for a metric the policy does not describe, read from its dotted path:
    lower when one of its words (split at anything but letters and digits, and at camelCase) is in
    ``LOWER_IS_BETTER`` or is the plural of one."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", metric).lower())
    return "lower" if any(w in LOWER_IS_BETTER or w.removesuffix("s") in LOWER_IS_BETTER for w in words) else "higher"


@dataclass(frozen=True)
class MetricCheck:
    """One metric's row of a gate result."""

    metric: str
    direction: Literal["higher", "lower"]
    production: float | int | None
    candidate: float | int | None
    change: float | None  # candidate - production, in the metric's units
    allowed: float | None  # how much worse than production it may be, in the metric's units
    scale: Literal["fraction", "percent"] | None  # a rate written as 0.958 or as 95.8; None: not a rate
    floor: float | None
    ceiling: float | None
    verdict: Verdict
    note: str  # why, in words
    accepted: dict[str, str] | None = None  # {"by", "at", "reason"} of an accepted trade-off


@dataclass(frozen=True)
class GateResult:
    model: str
    version: str
    record: str  # the candidate's version record: the eval results compared
    production: str | None  # the production version compared against (None: there was none)
    production_record: str | None
    policy: str | None  # the policy it ran under (None: the seeds' default)
    settings: dict[str, Any]  # the gate section applied, every field
    at: str
    by: str
    metrics: list[MetricCheck] = field(default_factory=list)
    id: str | None = None  # the registry object it is stored as; not part of its bytes

    @property
    def verdict(self) -> Verdict:
        verdicts = {m.verdict for m in self.metrics}
        return "fail" if "fail" in verdicts else "accepted" if "accepted" in verdicts else "pass"

    @property
    def passed(self) -> bool:
        return self.verdict != "fail"

    def failed(self, verdict: Verdict = "fail") -> list[str]:
        return [m.metric for m in self.metrics if m.verdict == verdict]

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["id"]
        return {"kind": "gate-result", **fields, "verdict": self.verdict}

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def decode(cls, data: bytes, result_id: str) -> "GateResult":
        try:
            obj = json.loads(data)
            if obj.pop("kind") != "gate-result":
                raise ValueError("not a gate result")
            del obj["verdict"]
            return cls(**(obj | {"metrics": [MetricCheck(**m) for m in obj["metrics"]], "id": result_id}))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"gate result {result_id}: malformed ({exc})") from None

    def summary(self) -> dict[str, Any]:
        """What show, diff and export print of it."""
        return {"verdict": self.verdict, "production": self.production, "at": self.at, "by": self.by,
                "failed": self.failed(), "accepted": {m.metric: m.accepted["reason"] for m in self.metrics
                                                      if m.accepted and m.verdict == "accepted"},
                "id": self.id}


Limit = tuple[str, float]  # (max_drop_points | max_drop | max_drop_percent, amount)
SEED_LIMIT: Limit = ("max_drop_points", DEFAULT_POINTS)


def _rule(settings: GateSection, metric: str, default_limit: Limit | None) -> tuple[MetricRule, Limit | None, str]:
    """The metric's rule, its limit (kind, amount) and what a missing value means, defaults applied."""
    rule = settings.metrics.get(metric, MetricRule())
    limit = next(((name, getattr(source, name)) for source in (rule, settings.defaults) for name in LIMITS
                  if getattr(source, name) is not None), default_limit)
    return rule, limit, rule.missing or settings.defaults.missing or "fail"


def _scale(rule: MetricRule, production: float | None, candidate: float | None
           ) -> Literal["fraction", "percent"] | None:
    """How a rate is written: the rule's ``scale``, else read from production's value alone (the
    candidate's where production has none). Reading both would let a much worse candidate move a
    0.6 loss from "fraction" (2 points = 0.02) to "percent" (2 points = 2) and pass."""
    if rule.scale is not None:
        return rule.scale
    value = candidate if production is None else production
    if value is None or not 0 <= value <= 100:
        return None
    return "fraction" if value <= 1 else "percent"


def _allowed(limit: Limit, production: float, scale: str | None) -> float:
    kind, amount = limit
    if kind == "max_drop":
        return amount
    if kind == "max_drop_points" and scale is not None:
        return amount / 100 if scale == "fraction" else amount
    # percent of production's value; points of something that is not a rate read the same way
    return amount / 100 * abs(production)


def _amount(value: float, scale: str | None) -> str:
    if scale is not None:
        points = f"{value * 100 if scale == 'fraction' else value:.3g}"
        return f"{points} point" if points == "1" else f"{points} points"
    return f"{value:.6g}"


def evaluate(settings: GateSection, production: dict[str, float | int] | None, candidate: dict[str, float | int],
             accepted: dict[str, dict[str, str]] | None = None, *,
             default_limit: Limit | None = SEED_LIMIT) -> list[MetricCheck]:
    """Every metric's verdict. ``production`` and ``candidate`` map dotted paths to values
    (``metric_values``); ``production`` is None when there is no production version. A failing
    metric named in ``accepted`` is "accepted"; a passing one stays "pass". ``default_limit`` is the
    worsening allowed a metric whose rule and defaults set none (None: such a metric is held to its
    floor and ceiling only, as a canary's analysis wants)."""
    accepted = accepted or {}
    metrics = set(settings.metrics)
    if settings.unlisted == "check":
        metrics |= set(candidate) | set(production or {})
    checks = []
    for metric in sorted(metrics):
        rule, limit, missing = _rule(settings, metric, default_limit)
        direction = rule.direction or direction_of(metric)
        before, after = (production or {}).get(metric), candidate.get(metric)
        scale = _scale(rule, before, after)
        change = allowed = None
        problems = []
        if after is None:
            note = "missing from the candidate's eval results"
            if missing == "fail":
                problems.append(note)
            else:
                note += " (the policy lets that pass)"
        elif not math.isfinite(after):  # NaN passes every comparison it is in: a failed measurement fails
            note = f"the candidate's value is {after}, not a finite number"
            problems.append(note)
        elif before is not None and not math.isfinite(before):
            note = f"production's value is {before}, not a finite number to compare with"
            problems.append(note)
        else:
            if before is not None:
                change = after - before
                note = "no limit relative to production"
                if limit is not None:
                    allowed = _allowed(limit, before, scale)
                    worse = -change if direction == "higher" else change
                    if worse - allowed > _SLACK * max(1.0, abs(before), abs(after)):
                        problems.append(f"{'dropped' if direction == 'higher' else 'rose'} {_amount(worse, scale)}, "
                                        f"more than the {_amount(allowed, scale)} allowed")
                    note = f"within the {_amount(allowed, scale)} allowed"
            elif production is None:
                note = "no production version to compare with"
            else:
                note = "new: production has no such metric"
            if rule.floor is not None and after < rule.floor:
                problems.append(f"below the floor of {rule.floor:g}")
            if rule.ceiling is not None and after > rule.ceiling:
                problems.append(f"above the ceiling of {rule.ceiling:g}")
        verdict: Verdict = "pass"
        if problems:
            note, verdict = "; ".join(problems), "fail"
            if metric in accepted:
                verdict = "accepted"
        checks.append(MetricCheck(metric, direction, before, after, change, allowed, scale, rule.floor, rule.ceiling,
                                  verdict, note, accepted.get(metric) if verdict == "accepted" else None))
    return checks


def gate_result(registry: Registry, state: ModelState, version: str) -> GateResult | None:
    """The latest recorded gate result of one of ``state``'s versions."""
    result_id = state.checks.get(version, {}).get("gate")
    if result_id is None:
        return None
    return GateResult.decode(registry.read_object(result_id, GATE_CONTEXT), result_id)


def _compared(result: GateResult) -> tuple[Any, ...]:
    """What a result was computed from: production by its record, not its version name (a version
    deleted and pushed again is other bytes), the candidate's record and the gate settings."""
    return result.production, result.production_record, result.record, result.settings


def run_gate(registry: Registry, ref: str, *, accept: tuple[str, ...] | list[str] = (), reason: str = "",
             actor: str | None = None, record: bool = True) -> tuple[GateResult, ModelState | None]:
    """Gate version ``ref`` against production under the model's policy (without one, the seeds'
    default: no metric more than 2 points worse) and record the result, with the new state.

    ``accept`` names failing metrics whose trade-off is accepted, for ``reason``; acceptances of an
    earlier run against the same production (by its record) and settings carry over.
    ``record=False`` only computes.
    """
    if accept and not reason.strip():
        raise InvalidParameter("--accept needs a --reason: the trade-off's rationale is recorded")
    state, version = registry.resolve_version(ref)
    production = state.pointer(PRODUCTION)
    if production == version:
        raise InvalidParameter(f"{state.model}@{version} is production: the gate compares a candidate with production")
    policy = policy_of(registry, state)
    settings = policy.gate if policy else GateSection()
    at, actor = timestamp(), actor or default_actor()
    base_record = state.versions[production] if production else None
    result = GateResult(str(state.model), version, state.versions[version], production, base_record, state.policy,
                        settings.model_dump(mode="json"), at, actor)
    earlier = gate_result(registry, state, version)
    carried = ({m.metric: m.accepted for m in earlier.metrics if m.accepted}
               if earlier and _compared(earlier) == _compared(result) else {})
    acceptances = carried | {metric: {"by": actor, "at": at, "reason": reason} for metric in accept}
    from .bundle import metric_values  # here: bundle validation (pydantic, YAML) is no part of a promote

    candidate = metric_values(registry.record(state, version)["eval_scores"])
    base = metric_values(registry.record(state, production)["eval_scores"]) if production else None
    result = replace(result, metrics=evaluate(settings, base, candidate, acceptances))
    verdicts = {m.metric: m.verdict for m in result.metrics}
    for metric in accept:
        if metric not in verdicts:
            raise InvalidParameter(f"--accept {metric}: the gate has no such metric "
                                   f"(it checks {', '.join(verdicts) or 'none'})")
        if verdicts[metric] != "accepted":
            raise InvalidParameter(f"--accept {metric}: it passes the gate; only a failing metric's trade-off "
                                   "is accepted")
    if not record:
        return result, None
    encoded = result.encode()
    stored: list[str] = []

    def change(current: ModelState) -> list[Move]:
        if (current.pointer(PRODUCTION), current.policy, current.versions.get(version)) != \
                (production, state.policy, state.versions[version]):
            raise Conflict(f"{state.model}'s production or policy changed while the gate ran; run it again")
        stored.append(registry.write_object(encoded, GATE_CONTEXT))
        checks = {**current.checks, version: {**current.checks.get(version, {}), "gate": stored[-1]}}
        return [{"action": "gate", "pointer": None, "from": production, "to": version, "state": {"checks": checks}}]

    summary = {"pass": "passed", "fail": f"failed: {', '.join(result.failed())}",
               "accepted": f"passed, trade-off accepted: {', '.join(result.failed('accepted'))}"}[result.verdict]
    new_state = registry.transact(state.model, change, actor, f"{summary} ({reason})" if reason else summary)
    return replace(result, id=stored[-1]), new_state
