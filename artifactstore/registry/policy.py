"""A model's release policy: what a version must pass before it serves traffic, and whom to tell.

The policy is a YAML (or JSON) file read under the rules of a bundle's files (JSON data only,
bounded size and depth), validated field by field, and refused whole if any section or field is
unknown. It is stored as an immutable registry object and the model's state names it
(``ModelState.policy``), so setting it is one audited transaction like a pointer move, and a
version's gate result can say which policy it ran under. docs/release.md explains every field.

Sections: ``gate`` (the eval gate, gate.py), ``review`` (human sign-off, review.py), ``hooks``
(who hears about events, hooks.py), ``display`` (how metrics read in client-facing texts),
``drift`` (PSI thresholds and retrain triggers, monitoring/), ``canary`` (a rollout's steps and
analysis, rollout.py and analysis.py), ``smoke`` (known inputs checked at every swap, fleet.py),
``keep_loaded`` (how long a follower keeps a replaced production resident), ``drill`` (rollback
rehearsals, release/drill.py). A later section is one more field of ``Policy``. A stored policy
written before a section existed reads as having that section's defaults, so each section's
defaults leave the behaviour it adds off or advisory (a canary plan is used only by ``rollout
start``; smoke tests are required only when ``smoke.required`` says so).
"""

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..backends.remote import mask_url
from ..clock import parse_duration
from ..content.manifest import canonical_json
from ..errors import Conflict, CorruptObject, InvalidParameter
from .pointers import ROLLBACK_TARGET
from .refs import ModelName
from .registry import Move, Registry
from .state import ModelState

POLICY_CONTEXT = "artifactstore 2026-11 release policy v1"
NO_POLICY = "none"  # what --expect says for a model without a policy
MAX_DRILL_SECONDS = 3600  # a drill's limit: production stays at the rollback target until it ends

# The events a hook may ask for.
EVENTS = ("gate_passed", "gate_failed", "review_recorded", "promoted", "rolled_back",
          "canary_started", "canary_advanced", "canary_paused", "canary_resumed", "canary_aborted",
          "canary_completed", "drill_passed", "drill_failed", "drift_watch", "drift_investigate")

# Whole-string rules: pydantic's ``pattern`` searches, so each is anchored at both ends (pydantic's
# regex engine reads ``$`` as the end of the text, never before a final newline).
_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_HEADER_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
_VARIABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class _Section(BaseModel):
    # strict: "2" is not the number 2 and 1 is not true; extra="forbid": an unknown field is refused,
    # never ignored, so a misspelt threshold cannot silently fall back to a default
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


LIMITS = ("max_drop_points", "max_drop", "max_drop_percent")


class Tolerance(_Section):
    """How much worse than production a metric may get, and what its absence means."""

    max_drop_points: float | None = Field(default=None, ge=0)  # percentage points of a rate
    max_drop: float | None = Field(default=None, ge=0)  # in the metric's own units
    max_drop_percent: float | None = Field(default=None, ge=0)  # percent of production's value
    missing: Literal["fail", "pass"] | None = None

    @model_validator(mode="after")
    def _one_limit(self):
        given = [name for name in LIMITS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(given)}, not several")
        return self


class MetricRule(Tolerance):
    """One metric of the gate, by dotted path into eval_results.json."""

    direction: Literal["higher", "lower"] | None = None  # which way is better; default: from the name
    scale: Literal["fraction", "percent"] | None = None  # how a rate is written; default: from its values
    floor: float | None = None  # the candidate fails below this, whatever production had
    ceiling: float | None = None  # the candidate fails above this

    @model_validator(mode="after")
    def _floor_below_ceiling(self):
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise ValueError(f"floor {self.floor} is above ceiling {self.ceiling}")
        return self


MetricPath = Annotated[str, Field(pattern=r"^[^.]+(\.[^.]+)*$", max_length=256)]


class GateSection(_Section):
    required: bool = True  # production (and a canary) takes only a version whose gate passed
    defaults: Tolerance = Tolerance()  # for every metric a rule below does not settle
    metrics: dict[MetricPath, MetricRule] = {}
    unlisted: Literal["check", "ignore"] = "check"  # metrics found in the results but not listed above


class ReviewSection(_Section):
    required: bool = True  # production (and a canary) takes only an approved version
    min_samples: int = Field(default=20, ge=1)  # outputs an approval must have looked at (seed: 20-30)


class MetricDisplay(_Section):
    """How a metric reads in what clients see (the change log, notices)."""

    label: str | None = Field(default=None, min_length=1, max_length=80)  # default: the metric's path
    unit: str = Field(default="", max_length=16)  # written after the value: "s", " ms", " tokens"
    percent: bool | None = None  # a fraction shown as a percentage (0.958 -> 95.8%); default: by its name
    decimals: int | None = Field(default=None, ge=0, le=6)  # default: 1 for percentages, else as needed
    hidden: bool = False  # an internal metric clients need not see


class DriftSection(_Section):
    """Where drift stops being fine, and when the retrain check fires (docs/monitoring.md)."""

    watch: float = Field(default=0.1, gt=0)  # PSI from which a feature is to watch (seed: 0.1)
    investigate: float = Field(default=0.2, gt=0)  # PSI above which it is to investigate (seed: 0.2)
    eval_metric: str = Field(default="accuracy", pattern=r"^[^.]+(\.[^.]+)*$", max_length=256)
    max_eval_drop: float = Field(default=0.05, gt=0, lt=1)  # relative drop below launch (seed: 3-5% by risk tier)
    min_data_growth: float = Field(default=0.2, gt=0)  # labelled data beyond training's, relative (seed: 20-30%)

    @model_validator(mode="after")
    def _watch_below_investigate(self):
        if self.watch >= self.investigate:
            raise ValueError(f"watch {self.watch} must be below investigate {self.investigate}")
        return self


class Hook(_Section):
    """Where events go: an HTTP endpoint (JSON POST) or a command (the event JSON on stdin)."""

    name: str = Field(pattern=_NAME_PATTERN)
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2048)
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    events: list[Literal[EVENTS]] | None = None  # type: ignore[valid-type]  # None: every event
    timeout: float = Field(default=2.0, gt=0, le=30)  # seconds per attempt
    retries: int = Field(default=3, ge=0, le=10)  # further attempts of `hooks deliver` after a failed one
    backoff: float = Field(default=1.0, ge=0, le=60)  # seconds before the first retry, doubled before each next
    env_headers: dict[Annotated[str, Field(pattern=_HEADER_PATTERN)],
                      Annotated[str, Field(pattern=_VARIABLE_PATTERN)]] = {}  # header -> environment variable

    @model_validator(mode="after")
    def _one_target(self):
        if (self.url is None) == (self.command is None):
            raise ValueError("give a url or a command (one of them)")
        if self.env_headers and self.url is None:
            raise ValueError("env_headers go with a url")
        return self


Duration = Annotated[str, Field(pattern=r"^[0-9]{1,9}[smhd]$")]  # 30s, 15m, 24h, 7d


class CanaryStep(_Section):
    """One step of a canary plan: ``percent`` of the traffic for at least ``hold``."""

    percent: int = Field(ge=1, le=100)
    hold: Duration = "0s"  # how long the step runs before it may advance (the final 100% step has none)


# What the analysis can judge in a window, beside the quality scores servers report by name:
# name -> which way is better (output_psi: the canary's output distribution against production's).
BUILTIN_METRICS = {"error_rate": "lower", "latency_p50_ms": "lower", "latency_p95_ms": "lower",
                   "latency_p99_ms": "lower", "output_psi": "lower"}
ScoreName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class CanaryAnalysis(_Section):
    """How each window of a canary step is judged: pass, fail or inconclusive."""

    interval: Duration = "1h"  # the length of a measured window (at least 1 minute)
    failure_limit: int = Field(default=1, ge=0)  # failed windows a rollout survives; one more aborts it
    inconclusive_limit: int = Field(default=3, ge=0)  # inconclusive windows in a row it holds through; one more pauses
    min_requests: int = Field(default=100, ge=1)  # per version and window; fewer makes the window inconclusive
    # metric -> thresholds: absolute (floor, ceiling) and/or relative to production in the same window
    # (max_drop_points, max_drop, max_drop_percent), as the gate's rules say them
    metrics: dict[ScoreName, MetricRule] = {"error_rate": MetricRule(max_drop_points=1),
                                            "latency_p95_ms": MetricRule(max_drop_percent=20)}

    @model_validator(mode="after")
    def _judgeable(self):
        if parse_duration(self.interval) < 60:
            raise ValueError(f"interval {self.interval} is shorter than a minute")
        if not self.metrics:
            raise ValueError("name at least one metric: a canary nothing judges is a promotion on a timer")
        for name, rule in self.metrics.items():
            if rule.floor is None and rule.ceiling is None and all(getattr(rule, limit) is None for limit in LIMITS):
                raise ValueError(f"metrics.{name}: give a floor, a ceiling or a limit relative to production "
                                 f"({', '.join(LIMITS)})")
        if any(getattr(self.metrics.get("output_psi"), limit, None) is not None for limit in LIMITS):
            raise ValueError("metrics.output_psi compares the canary's outputs with production's already: "
                             "give it a ceiling, not a limit relative to production")
        return self


class CanarySection(_Section):
    """A rollout's plan (the seeds: 10% for 24 h, 50% for 24 h, then 100%) and its analysis."""

    steps: list[CanaryStep] = [CanaryStep(percent=10, hold="24h"), CanaryStep(percent=50, hold="24h"),
                               CanaryStep(percent=100)]
    analysis: CanaryAnalysis = CanaryAnalysis()

    @model_validator(mode="after")
    def _ends_at_100(self):
        percents = [step.percent for step in self.steps]
        if len(percents) < 2 or percents[-1] != 100:
            raise ValueError(f"a plan must end at 100% after at least one smaller step, not {percents}")
        if any(a >= b for a, b in zip(percents, percents[1:])):
            raise ValueError(f"each step must send more traffic than the one before: {percents}")
        if parse_duration(self.steps[-1].hold):
            raise ValueError("the final 100% step completes the rollout: it takes no hold")
        return self


class SmokeSection(_Section):
    """The known inputs a bundle carries (smoke_tests.jsonl), which every follower runs at every swap."""

    required: bool = False  # production and the canary take only versions whose bundle carries smoke tests
    on_failure: Literal["rollback", "keep"] = "rollback"  # a node's failed check: roll the registry back, or only report


class DrillSection(_Section):
    """Rollback rehearsals (the seeds: monthly, confirmed within 60 s)."""

    every: Duration = "30d"  # a drill older than this is overdue
    max_seconds: float = Field(default=60, gt=0, le=MAX_DRILL_SECONDS)  # from the decision to every node's confirmation


class Policy(_Section):
    """A model's release policy; a section left out takes its defaults."""

    gate: GateSection = GateSection()
    review: ReviewSection = ReviewSection()
    hooks: list[Hook] = []
    display: dict[MetricPath, MetricDisplay] = {}
    drift: DriftSection = DriftSection()
    canary: CanarySection = CanarySection()
    smoke: SmokeSection = SmokeSection()
    keep_loaded: Duration = "7d"  # how long a follower keeps a replaced production resident, for instant rollback
    drill: DrillSection = DrillSection()

    @model_validator(mode="after")
    def _unique_hook_names(self):
        names = [hook.name for hook in self.hooks]
        if len(names) != len(set(names)):
            raise ValueError(f"hook names must differ: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        return self

    def encode(self) -> bytes:
        return canonical_json({"kind": "release-policy", "policy": self.model_dump(mode="json")})


def read_policy_file(path: str | os.PathLike) -> Policy:
    """A policy file, validated; InvalidInput names every problem (file and field) on one line."""
    from .bundle import read_data_file  # here: a command that only reads a stored policy needs no YAML

    return read_data_file(Path(path), Policy)


def read_policy(registry: Registry, policy_id: str) -> Policy:
    encoded = registry.read_object(policy_id, POLICY_CONTEXT)
    try:
        return Policy.model_validate(json.loads(encoded)["policy"])
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise CorruptObject(f"policy {policy_id}: malformed ({str(exc).splitlines()[0]})") from None


def policy_of(registry: Registry, state: ModelState) -> Policy | None:
    """The policy ``state`` names, or None: the model has none."""
    return None if state.policy is None else read_policy(registry, state.policy)


def set_policy(registry: Registry, model: ModelName | str, path: str | os.PathLike, *, expect: str | None = None,
               actor: str | None = None, reason: str = "") -> ModelState:
    """Store the policy in ``path`` and make it ``model``'s, in one transaction (a model that does not
    exist yet is created, so guardrails can come before the first push). ``expect``: refuse unless
    the current policy is this id (``"none"``: no policy)."""
    name = ModelName.parse(model) if isinstance(model, str) else model
    policy = read_policy_file(path)
    if expect is not None and expect != NO_POLICY and not re.fullmatch(r"b3:[0-9a-f]{64}", expect):
        raise InvalidParameter(f"--expect takes a policy id (b3:<64 hex>) or {NO_POLICY!r}, not {expect!r}")
    encoded = policy.encode()

    def change(current: ModelState) -> list[Move]:
        if expect is not None and (current.policy or NO_POLICY) != expect:
            raise Conflict(f"{name}'s policy is {current.policy or NO_POLICY}, not {expect} as expected; "
                           "nothing changed")
        if current.policy is not None and registry.read_object(current.policy, POLICY_CONTEXT) == encoded:
            raise InvalidParameter(f"{name}'s policy is already {current.policy}")
        _check_rollback_target(registry, current, policy)
        policy_id = registry.write_object(encoded, POLICY_CONTEXT)  # only a lost race leaves it unnamed
        return [{"action": "policy", "pointer": None, "from": current.policy, "to": policy_id,
                 "state": {"policy": policy_id}}]

    return registry.transact(name, change, actor, reason, create=True)


def _check_rollback_target(registry: Registry, state: ModelState, policy: "Policy") -> None:
    """Refuse a policy under which the rollback target could not be named: a rollback to the target
    is never checked (release.md), so a target that never served production must have passed the
    rules now in force, not those of an earlier policy, or none."""
    target = state.pointer(ROLLBACK_TARGET)
    if target is None or target in state.deployments:
        return
    from .checks import missing_checks  # checks reads policies: imported when a target needs it

    missing = missing_checks(registry, state, target, policy)
    if missing:
        raise InvalidParameter(f"{state.model}'s rollback target {target} never served production, and under this "
                               f"policy it lacks: {'; '.join(missing)}. Name a version that has its checks or "
                               f"served before (`artifactstore target set`), then set the policy")


def show_policy(registry: Registry, model: ModelName | str) -> dict[str, Any]:
    """The model's policy id and its settings (every field, defaults included; hook URLs without their
    passwords and secret-looking query values), and who set it when."""
    name = ModelName.parse(model) if isinstance(model, str) else model
    state = registry.state(name)
    policy = policy_of(registry, state)
    set_by = next((e for e in reversed(registry.log(name)) if e.action == "policy"), None) if policy else None
    settings = policy.model_dump(mode="json") if policy else None
    for hook in settings["hooks"] if settings else []:
        hook["url"] = mask_url(hook["url"])
    return {"model": str(name), "policy": state.policy, "settings": settings,
            "set_at": set_by.at if set_by else None, "set_by": set_by.actor if set_by else None,
            "reason": set_by.reason if set_by else None}


def policy_yaml(settings: dict[str, Any]) -> str:
    """A policy's settings as YAML a person reads (and could set again), unset fields left out."""
    def without_nulls(value):
        if isinstance(value, dict):
            return {k: without_nulls(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [without_nulls(v) for v in value]
        return value

    import yaml

    return yaml.safe_dump(without_nulls(settings), sort_keys=False)
