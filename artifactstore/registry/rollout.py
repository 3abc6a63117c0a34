"""Canary rollouts: the registry is their control plane.

A rollout lives in the model's state (``ModelState.rollout``), so every change to it is a
transaction like any pointer move: ``start_rollout`` sets the canary to the plan's first step,
``tick`` measures the windows that ended, stores each measurement as an immutable registry object
and applies the decision (analysis.py) in one compare-and-swap, ``pause``/``resume``/``abort`` are
a person's. Two ticks racing from a cron on two machines cannot both advance a step: the loser's
compare-and-swap fails, and it looks again at the state the winner wrote. A tick killed at any point
leaves either the old state (its measurements unreferenced) or the new one; the next tick
continues from it. docs/release.md, "Rollouts".
"""

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from ..clock import duration, parse_time, timestamp
from ..clock import now as clock_now
from ..content.manifest import canonical_json
from ..errors import Conflict, CorruptObject, InvalidParameter, NotFound
from .analysis import Decision, Outcome, Psi, Rollout, Window, decide, due_windows, interference, judge
from .analysis import population_stability_index as default_psi
from .drills import unfinished_drill
from .metrics import aggregate, records_in_window
from .pointers import CANARY, PRODUCTION, ROLLBACK_TARGET
from .policy import Policy, policy_of, read_policy
from .refs import ModelName
from .registry import Move, Registry, registry_object_id
from .state import ModelState

MEASUREMENT_CONTEXT = "artifactstore 2026-11 canary measurement v1"
TICK_ATTEMPTS = 5  # a tick that lost a race looks again; this many losses in a row are reported
ROLLOUT_ACTIONS = ("rollout-start", "rollout-measure", "rollout-step", "rollout-pause", "rollout-resume",
                   "rollout-abort", "rollout-complete")


def rollout_of(state: ModelState) -> Rollout | None:
    return None if state.rollout is None else Rollout.from_json(state.rollout)


def plan_policy(registry: Registry, rollout: Rollout) -> Policy:
    """The policy a rollout runs under: the one it started with (a policy changed meanwhile applies to
    the next rollout), or the defaults."""
    return read_policy(registry, rollout.policy) if rollout.policy else Policy()


def _name(model: ModelName | str) -> ModelName:
    return ModelName.parse(model) if isinstance(model, str) else model


def _require_reason(reason: str, what: str) -> None:
    if not reason.strip():
        raise InvalidParameter(f"{what} needs a --reason: it is recorded in the audit log")


# -- a person's commands ------------------------------------------------------------------------

def start_rollout(registry: Registry, ref: str, *, actor: str | None = None, reason: str = "",
                  force: bool = False) -> ModelState:
    """Start rolling version ``ref`` out: the canary goes to the plan's first step. The move passes the
    registry's rules like any canary move (with a policy: gate and review required)."""
    version, read = registry.resolve_current(ref)
    state = read[0]
    policy = policy_of(registry, state) or Policy()
    first = policy.canary.steps[0]

    def change(current: ModelState) -> list[Move]:
        if current.rollout is not None:
            raise InvalidParameter(f"{current.model} is already rolling out {current.rollout['version']} "
                                   f"(`rollout status`; abort it first)")
        if current.policy != state.policy:
            raise Conflict(f"{current.model}'s policy changed while the rollout started; start it again")
        production = current.pointer(PRODUCTION)
        if production is None:
            raise InvalidParameter(f"{current.model} has no production version: a canary takes a share of "
                                   f"production's traffic (promote a first version)")
        if production == version:
            raise InvalidParameter(f"{current.model}@{version} is production already")
        if version not in current.versions:
            raise NotFound(f"{current.model} has no version {version}")
        canary = current.pointer(CANARY)
        if canary not in (None, version):
            raise InvalidParameter(f"{current.model} has a canary of {canary}: end it first "
                                   f"(`artifactstore canary {current.model}@{canary} --percent 0`)")
        drill = unfinished_drill(registry, current)
        if drill is not None:  # production is the drill's stand-in: the rollout would measure against it
            raise InvalidParameter(f"a drill moved {current.model}'s production to {drill.to} at {drill.at} and has "
                                   f"not finished: start the rollout after it (or, if it was interrupted, once "
                                   f"production is restored by hand)")
        at = timestamp()
        deployed = (current.deployments.get(production) or {}).get("at")
        rollout = Rollout(version, production, current.policy, 0, at, at, production_deployed=deployed)
        return [{"action": "rollout-start", "pointer": CANARY, "from": canary, "to": version,
                 "percent": first.percent, "state": {"rollout": rollout.to_json()}}]

    return registry.transact(state.model, change, actor, reason, force=force, read=read)


def pause_rollout(registry: Registry, model: ModelName | str, *, actor: str | None = None,
                  reason: str = "") -> ModelState:
    """Stop the rollout where it is: the canary keeps its share, ticks measure nothing until resumed."""
    _require_reason(reason, "rollout pause")

    def change(current: ModelState) -> list[Move]:
        rollout = _running(current)
        if rollout.paused is not None:
            raise InvalidParameter(f"{current.model}'s rollout of {rollout.version} is paused already")
        paused = replace(rollout, paused={"at": timestamp(), "reason": reason})
        return [{"action": "rollout-pause", "pointer": None, "from": None, "to": rollout.version,
                 "state": {"rollout": paused.to_json()}}]

    return registry.transact(_name(model), change, actor, reason)


def resume_rollout(registry: Registry, model: ModelName | str, *, actor: str | None = None,
                   reason: str = "") -> ModelState:
    """Resume a paused rollout. The current step starts again: its hold and windows count from now."""

    def change(current: ModelState) -> list[Move]:
        rollout = _running(current)
        if rollout.paused is None:
            raise InvalidParameter(f"{current.model}'s rollout of {rollout.version} is not paused")
        resumed = replace(rollout, paused=None, step_started=timestamp(), windows=0, inconclusive=0, last=None)
        return [{"action": "rollout-resume", "pointer": None, "from": None, "to": rollout.version,
                 "state": {"rollout": resumed.to_json()}}]

    return registry.transact(_name(model), change, actor, reason)


def abort_rollout(registry: Registry, model: ModelName | str, *, actor: str | None = None, reason: str = "",
                  expect: str | None = None, evidence: dict[str, Any] | None = None) -> ModelState:
    """End the rollout: the canary goes to 0%, production is untouched. ``expect``: refuse (Conflict)
    unless the rollout is of this version."""
    _require_reason(reason, "rollout abort")

    def change(current: ModelState) -> list[Move]:
        rollout = _running(current)
        if expect is not None and rollout.version != expect:
            raise Conflict(f"{current.model} is rolling out {rollout.version}, not {expect} as expected")
        return [_abort_move(current, rollout, evidence)]

    return registry.transact(_name(model), change, actor, reason)


def _running(state: ModelState) -> Rollout:
    rollout = rollout_of(state)
    if rollout is None:
        raise InvalidParameter(f"{state.model} has no rollout in progress")
    return rollout


def _abort_move(state: ModelState, rollout: Rollout, evidence: dict[str, Any] | None) -> Move:
    ours = state.pointer(CANARY) == rollout.version
    move: Move = {"action": "rollout-abort", "pointer": CANARY if ours else None,
                  "from": rollout.version if ours else None, "to": None, "state": {"rollout": None}}
    if not ours:  # the canary was changed by hand: the entry still names the version rolled out
        move["to"] = rollout.version
    if evidence is not None:
        move["evidence"] = evidence
    return move


# -- measurements and ticks ---------------------------------------------------------------------

def _measure(registry: Registry, model: ModelName, rollout: Rollout, policy: Policy, window: Window,
             psi: Psi, previous: str | None) -> tuple[str, Outcome, dict[str, Any]]:
    records, batches = records_in_window(registry, model, window.start, window.end)
    traffic = aggregate(records)
    judgement = judge(policy.canary.analysis, traffic.get(rollout.version), traffic.get(rollout.production), psi)
    record = {
        "kind": "canary-measurement", "model": str(model), "version": rollout.version,
        "production": rollout.production, "rollout_started": rollout.started, "step": rollout.step,
        "percent": policy.canary.steps[rollout.step].percent, "window": window.index,
        "start": timestamp(window.start), "end": timestamp(window.end), "outcome": judgement.outcome,
        "note": judgement.note, "metrics": [asdict(m) for m in judgement.metrics],
        "canary": traffic[rollout.version].to_json() if rollout.version in traffic else None,
        "production_traffic": traffic[rollout.production].to_json() if rollout.production in traffic else None,
        "batches": batches, "previous": previous}
    return registry_object_id(canonical_json(record), MEASUREMENT_CONTEXT), judgement.outcome, record


def read_measurement(registry: Registry, measurement_id: str) -> dict[str, Any]:
    try:
        record = json.loads(registry.read_object(measurement_id, MEASUREMENT_CONTEXT))
        if record["kind"] != "canary-measurement":
            raise ValueError("not a canary measurement")
        return record | {"id": measurement_id}
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"measurement {measurement_id}: malformed ({exc})") from None


def measurements(registry: Registry, newest: str | None, limit: int | None = None) -> list[dict[str, Any]]:
    """Measurement records from ``newest`` back along their chain, newest first."""
    found: list[dict[str, Any]] = []
    while newest is not None and (limit is None or len(found) < limit):
        found.append(read_measurement(registry, newest))
        newest = found[-1]["previous"]
    return found


@dataclass(frozen=True)
class TickReport:
    model: str
    decision: str  # advance, complete, abort, pause, hold, blocked, nothing, paused, idle
    note: str
    version: str | None = None
    step: int | None = None
    percent: int | None = None
    measured: list[dict[str, Any]] = field(default_factory=list)  # {id, window, start, end, outcome, note}
    state: ModelState | None = None  # the state the tick committed (None: it changed nothing)

    def to_json(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "state"}
        return fields | {"state": self.state.id if self.state else None}


def tick(registry: Registry, model: ModelName | str, *, actor: str | None = None, psi: Psi = default_psi,
         now: datetime | None = None) -> TickReport:
    """Measure the rollout's ended windows and act on them: advance, hold, pause, abort or complete.

    Idempotent: a window is measured once, a decision taken once; safe to run from cron on any number
    of machines. ``psi`` computes output PSI (the drift module's, once it lands)."""
    name = _name(model)
    for _ in range(TICK_ATTEMPTS):
        state = registry.state(name)
        rollout = rollout_of(state)
        if rollout is None:
            return TickReport(str(name), "idle", "no rollout in progress")
        moment = now or clock_now()
        try:
            return _tick_once(registry, state, rollout, actor, psi, moment)
        except Conflict:
            continue  # another tick (or command) committed first: look at what it left
    raise Conflict(f"{name} kept changing while the tick ran ({TICK_ATTEMPTS} tries); nothing was changed by this "
                   f"tick: run it again")


def _tick_once(registry: Registry, state: ModelState, rollout: Rollout, actor: str | None, psi: Psi,
               moment: datetime) -> TickReport:
    policy = plan_policy(registry, rollout)
    plan = policy.canary
    report = TickReport(str(state.model), "nothing", "", rollout.version, rollout.step,
                        plan.steps[rollout.step].percent)
    interfered = interference(rollout, state, plan)
    if interfered is not None:
        kind, why = interfered
        moves = ([{"action": "rollout-complete", "pointer": None, "from": None, "to": rollout.version,
                   "state": {"rollout": None}}] if kind == "complete" else [_abort_move(state, rollout, None)])
        committed = _commit(registry, state, moves, actor, f"rollout ended: {why}")
        return replace(report, decision=kind, note=why, state=committed)
    measured: list[tuple[str, Outcome]] = []
    shown: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    records: list[dict[str, Any]] = []  # written only once the tick's moves may be made
    previous = rollout.measurement
    if rollout.paused is None:
        for window in due_windows(rollout, plan.analysis, moment):
            measurement, outcome, record = _measure(registry, state.model, rollout, policy, window, psi, previous)
            previous = measurement
            measured.append((measurement, outcome))
            records.append(record)
            notes[measurement] = record["note"]
            shown.append({"id": measurement, "window": window.index, "start": record["start"],
                          "end": record["end"], "outcome": outcome, "note": record["note"]})
            if decide(rollout, plan, moment, measured).kind in ("abort", "pause"):
                break
    decision = decide(rollout, plan, moment, measured)
    report = replace(report, decision=decision.kind, note=decision.note, measured=shown)
    if decision.kind in ("nothing", "paused"):
        return report
    moves = _moves(registry, state, rollout, decision, plan.steps[decision.rollout.step].percent, measured, notes)
    reason = "; ".join([f"window {s['window']} {s['outcome']}: {s['note']}" for s in shown] + [decision.note])
    refused = registry.refusal(state, moves, actor, reason)
    if refused is not None:  # the policy stops the step (a forced start, a gate made stale): tell, change nothing
        return replace(report, decision="blocked", note=f"{decision.kind} refused: {refused.refusal}; run what is "
                                                        f"missing, or `rollout abort`")
    for record in records:
        registry.write_object(canonical_json(record), MEASUREMENT_CONTEXT)
    committed = _commit(registry, state, moves, actor, reason)
    return replace(report, step=decision.rollout.step, percent=plan.steps[decision.rollout.step].percent,
                   state=committed)


def _moves(registry: Registry, state: ModelState, rollout: Rollout, decision: Decision, percent: int,
           measured: list[tuple[str, Outcome]], notes: dict[str, str]) -> list[Move]:
    after = decision.rollout
    moves: list[Move] = []
    if measured:
        moves.append({"action": "rollout-measure", "pointer": None, "from": None, "to": rollout.version,
                      "state": {"rollout": after.to_json()},
                      "evidence": {"measurements": [m for m, _ in measured], "outcomes": [o for _, o in measured]}})
    if decision.kind == "pause":
        moves.append({"action": "rollout-pause", "pointer": None, "from": None, "to": rollout.version})
    elif decision.kind == "advance":
        moves.append({"action": "rollout-step", "pointer": CANARY, "from": rollout.version, "to": rollout.version,
                      "percent": percent, "state": {"rollout": after.to_json()}})
    elif decision.kind == "abort":
        failing = {m: notes.get(m) or read_measurement(registry, m)["note"] for m in after.failed}
        moves.append(_abort_move(state, rollout, {"measurements": list(failing), "failures": list(failing.values())}))
    elif decision.kind == "complete":
        moves += [{"action": "rollout-complete", "pointer": PRODUCTION, "from": rollout.production,
                   "to": rollout.version},
                  {"action": "rollout-complete", "pointer": ROLLBACK_TARGET, "from": state.pointer(ROLLBACK_TARGET),
                   "to": rollout.production},
                  {"action": "rollout-complete", "pointer": CANARY, "from": rollout.version, "to": None,
                   "state": {"rollout": None}}]
    return moves


def _commit(registry: Registry, seen: ModelState, moves: list[Move], actor: str | None, reason: str) -> ModelState:
    """One transaction that applies ``moves`` only to the state they were computed from."""
    def change(current: ModelState) -> list[Move]:
        if current.id != seen.id:
            raise Conflict(f"{seen.model} changed while the tick ran")
        return moves

    return registry.transact(seen.model, change, actor, reason)


# -- what it looks like -------------------------------------------------------------------------

def rollout_status(registry: Registry, model: ModelName | str, *, recent: int = 5, last: bool = True) -> dict[str, Any]:
    """The rollout in progress (plan, step, hold, counts, the latest measurements), or (``last``) how
    the last one ended."""
    name = _name(model)
    state = registry.state(name)
    rollout = rollout_of(state)
    status: dict[str, Any] = {"model": str(name), "production": state.pointer(PRODUCTION), "canary": state.canary,
                              "rollout": None, "last": None}
    if rollout is not None:
        policy = plan_policy(registry, rollout)
        plan = policy.canary
        step = plan.steps[rollout.step]
        begun = parse_time(rollout.step_started, "step_started")
        status["rollout"] = rollout.to_json() | {
            "steps": [s.model_dump() for s in plan.steps], "percent": step.percent,
            "hold_ends": timestamp(begun + duration(step.hold)),
            "next_window_ends": timestamp(begun + (rollout.windows + 1) * duration(plan.analysis.interval)),
            "failure_limit": plan.analysis.failure_limit, "inconclusive_limit": plan.analysis.inconclusive_limit,
            "measurements": [_brief(m) for m in measurements(registry, rollout.measurement, recent)]}
    elif last:
        status["last"] = _last_rollout(registry, name)
    return status


def _brief(measurement: dict[str, Any]) -> dict[str, Any]:
    return {k: measurement[k] for k in ("id", "step", "percent", "window", "start", "end", "outcome", "note")}


def _last_rollout(registry: Registry, model: ModelName) -> dict[str, Any] | None:
    """How the latest rollout ended (complete or abort), from the newest states back."""
    for _, made in registry.trail(model):
        for entry in reversed(made):
            if entry.action in ("rollout-complete", "rollout-abort"):
                return {"outcome": "complete" if entry.action == "rollout-complete" else "aborted",
                        "version": entry.from_ if entry.pointer == CANARY else entry.to, "at": entry.at,
                        "actor": entry.actor, "reason": entry.reason, "evidence": entry.evidence}
            if entry.action == "rollout-start":  # started and not ended, yet not in the state (a repaired ref)
                return None
    return None
