"""Canary analysis, the pure part: a window's traffic judged against the policy's thresholds, and the
decision a tick takes from the windows it measured. No I/O: rollout.py reads and writes.

A rollout walks the plan's steps (``canary.steps``). Each step's time is cut into windows of
``analysis.interval`` from the moment the step began; a window that has ended is *measured* once:
``pass``, ``fail`` or ``inconclusive`` (too little traffic, or a metric nobody reported). Then:

- more failed windows over the whole rollout than ``failure_limit``: **abort** (canary to 0%);
- more inconclusive windows in a row than ``inconclusive_limit``: **pause** (a person resumes it);
- the step's ``hold`` is over and its latest window passed: **advance** to the next step, or
  **complete** when the next one is the final 100% step (production = the new version);
- else **hold** (windows were measured) or **nothing** (no window had ended).

The vocabulary is Argo Rollouts': steps of weight and pause, analysis with an interval and a
failure limit, inconclusive holding the rollout. docs/release.md, "Rollouts".
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any, Literal

from ..clock import duration, parse_time, timestamp
from .gate import MetricCheck, direction_of, evaluate
from .metrics import Traffic
from .pointers import PRODUCTION
from .policy import BUILTIN_METRICS, LIMITS, CanaryAnalysis, CanarySection, GateSection, MetricRule
from .state import ModelState

Outcome = Literal["pass", "fail", "inconclusive"]
PSI_FLOOR = 1e-4  # the proportion an empty bin counts as (the drift definition of issue 12)


def population_stability_index(expected: Mapping[str, int], actual: Mapping[str, int]) -> float:
    """PSI of ``actual`` against ``expected`` (bin -> count): proportions floored at 1e-4 and
    renormalised to sum to 1, then the sum over bins of (actual - expected) * ln(actual / expected)."""
    bins = sorted(set(expected) | set(actual))

    def proportions(counts: Mapping[str, int]) -> list[float]:
        total = sum(counts.values()) or 1
        floored = [max(counts.get(b, 0) / total, PSI_FLOOR) for b in bins]
        return [p / sum(floored) for p in floored]

    return sum((a - e) * math.log(a / e) for e, a in zip(proportions(expected), proportions(actual)))


Psi = Callable[[Mapping[str, int], Mapping[str, int]], float]


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    note: str
    metrics: list[MetricCheck]


def judge(analysis: CanaryAnalysis, canary: Traffic | None, production: Traffic | None,
          psi: Psi = population_stability_index) -> Judgement:
    """One window: the canary's traffic against production's in the same window."""
    canary, production = canary or Traffic(), production or Traffic()
    short = [f"{who} had {t.requests} requests" for who, t in (("the canary", canary), ("production", production))
             if t.requests < analysis.min_requests]
    if short:
        return Judgement("inconclusive", f"too little traffic to judge: {' and '.join(short)} "
                                         f"(at least {analysis.min_requests} each)", [])
    candidate, baseline = canary.values(), production.values()
    if sum(canary.outputs.values()) and sum(production.outputs.values()):  # an empty histogram has no PSI
        candidate["output_psi"] = psi(production.outputs, canary.outputs)
    rules, failing_unreported, unjudged = {}, {}, []
    for metric, rule in analysis.metrics.items():
        unreported = _unreported_by(metric, rule, candidate, baseline)
        if unreported and rule.missing is None:
            unjudged.append(metric)
            continue
        if unreported and rule.missing == "fail":
            failing_unreported[metric] = unreported
        rules[metric] = rule if rule.direction else rule.model_copy(
            update={"direction": BUILTIN_METRICS.get(metric) or direction_of(metric)})
    if unjudged:
        return Judgement("inconclusive", f"not reported for both versions: {', '.join(unjudged)}", [])
    # evaluate passes a metric production lacks (the gate's "new"); a canary's `missing: fail` fails it
    checks = [replace(c, verdict="fail", note=f"not reported by {failing_unreported[c.metric]} (missing: fail)")
              if c.metric in failing_unreported else c
              for c in evaluate(GateSection(metrics=rules, unlisted="ignore"), baseline, candidate, default_limit=None)]
    failed = [f"{c.metric} {c.note}" for c in checks if c.verdict == "fail"]
    if failed:
        return Judgement("fail", "; ".join(failed), checks)
    shown = ", ".join(f"{c.metric} {_shown(c.candidate)} (production {_shown(c.production)})" for c in checks)
    return Judgement("pass", shown, checks)


def _unreported_by(metric: str, rule: MetricRule, candidate: Mapping[str, float], baseline: Mapping[str, float]
                   ) -> str:
    """Who did not report a metric that the rule needs from them ("" when both did): the canary
    always, production for a threshold relative to it."""
    relative = any(getattr(rule, limit) is not None for limit in LIMITS)
    return " and ".join(who for who, values, needed in (("the canary", candidate, True),
                                                        ("production", baseline, relative))
                        if needed and metric not in values)


def _shown(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class Rollout:
    """A rollout in progress, as ``ModelState.rollout`` holds it (docs/format.md, "Rollout")."""

    version: str  # the canary
    production: str  # production when it started: what the canary is compared with, and replaces
    policy: str | None  # the policy it runs under (None: the defaults)
    step: int  # index into the plan's steps
    started: str
    step_started: str
    windows: int = 0  # windows of this step measured
    inconclusive: int = 0  # inconclusive windows in a row
    last: Outcome | None = None  # this step's latest window
    measurement: str | None = None  # the latest measurement record (each names the one before)
    failed: tuple[str, ...] = ()  # the failed measurements of the whole rollout
    paused: dict[str, str] | None = None  # {"at", "reason"} while paused
    # when production last went to ``production`` before the start (its deployment): another one since
    # means production moved away and came back; None in rollouts started before it was kept
    production_deployed: str | None = None

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self) | {"failed": list(self.failed)}
        if self.production_deployed is None:
            del fields["production_deployed"]
        return fields

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Rollout":
        return cls(**(obj | {"failed": tuple(obj["failed"])}))


@dataclass(frozen=True)
class Window:
    index: int
    start: datetime
    end: datetime


def due_windows(rollout: Rollout, analysis: CanaryAnalysis, now: datetime) -> list[Window]:
    """The windows of the current step that have ended and were not measured, oldest first."""
    begin, interval = parse_time(rollout.step_started, "step_started"), duration(analysis.interval)
    windows, index = [], rollout.windows
    while begin + (index + 1) * interval <= now:
        windows.append(Window(index, begin + index * interval, begin + (index + 1) * interval))
        index += 1
    return windows


DecisionKind = Literal["advance", "complete", "abort", "pause", "hold", "nothing", "paused"]


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    rollout: Rollout  # after the windows measured (and, for advance, at the new step)
    note: str


def decide(rollout: Rollout, plan: CanarySection, now: datetime, measured: Sequence[tuple[str, Outcome]]
           ) -> Decision:
    """What a tick does, given the windows it just measured (measurement id, outcome), in order."""
    if rollout.paused is not None:
        return Decision("paused", rollout, f"paused since {rollout.paused['at']}: {rollout.paused['reason']}")
    analysis, current = plan.analysis, rollout
    for measurement, outcome in measured:
        current = replace(current, windows=current.windows + 1, last=outcome, measurement=measurement,
                          failed=current.failed + ((measurement,) if outcome == "fail" else ()),
                          inconclusive=current.inconclusive + 1 if outcome == "inconclusive" else 0)
        if len(current.failed) > analysis.failure_limit:
            return Decision("abort", current, f"{len(current.failed)} windows failed, more than the failure limit "
                                              f"of {analysis.failure_limit}")
        if current.inconclusive > analysis.inconclusive_limit:
            reason = (f"{current.inconclusive} inconclusive windows in a row, more than the limit of "
                      f"{analysis.inconclusive_limit}: resume once the canary gets enough traffic")
            return Decision("pause", replace(current, paused={"at": timestamp(now), "reason": reason}), reason)
    step = plan.steps[current.step]
    hold_ends = parse_time(current.step_started, "step_started") + duration(step.hold)
    if now >= hold_ends and current.last == "pass":
        following = current.step + 1
        passed = f"step {following} of {len(plan.steps)} ({step.percent}%) passed"
        if following == len(plan.steps) - 1:
            return Decision("complete", replace(current, step=following),
                            f"{passed}: {current.version} becomes production")
        advanced = replace(current, step=following, step_started=timestamp(now), windows=0, inconclusive=0, last=None)
        return Decision("advance", advanced, f"{passed}: canary to {plan.steps[following].percent}%")
    waiting = (f"the hold ends at {timestamp(hold_ends)}" if now < hold_ends
               else "waiting for a passing window" if current.last else "waiting for the first window")
    if measured:
        return Decision("hold", current, f"{len(measured)} windows measured, the latest {current.last}; {waiting}")
    return Decision("nothing", current, f"no window has ended since the last tick; {waiting}")


def interference(rollout: Rollout, state: ModelState, plan: CanarySection
                 ) -> tuple[Literal["complete", "abort"], str] | None:
    """Whether someone moved production or the canary (its version or its percent, against the
    rollout's ``plan``) outside the rollout, which then ends: as complete when its version is
    production now, else as aborted."""
    production, canary = state.pointer(PRODUCTION), state.canary
    if production == rollout.version:
        return "complete", f"{rollout.version} is production already (promoted outside the rollout)"
    if production != rollout.production:
        return "abort", f"production moved from {rollout.production} to {production} outside the rollout"
    deployed = (state.deployments.get(production) or {}).get("at")
    if rollout.production_deployed is not None and deployed != rollout.production_deployed:
        return "abort", (f"production moved away from {production} and back outside the rollout, at "
                         f"{deployed}: the windows measured since it started compared another production")
    if canary is None or canary["version"] != rollout.version:
        now_set = f"is {canary['version']}" if canary else "was ended"
        return "abort", f"the canary {now_set} outside the rollout"
    if canary["percent"] != plan.steps[rollout.step].percent:
        return "abort", (f"the canary was set to {canary['percent']}% outside the rollout (its step "
                         f"{rollout.step + 1} is at {plan.steps[rollout.step].percent}%)")
    return None
