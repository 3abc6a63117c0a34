"""A model's whole release status: pointers, the rollout, what every serving node reports, the last
drill, and the alerts that need a person (``artifactstore status``)."""

from typing import Any

from ..clock import duration, now, parse_time, timestamp
from ..registry.drills import drill_summary, unfinished_drill
from ..registry.fleet import Heartbeat, read_fleet
from ..registry.pointers import CANARY, PRODUCTION, ROLLBACK_TARGET
from ..registry.policy import Policy, policy_of
from ..registry.refs import ModelName
from ..registry.registry import Registry
from ..registry.rollout import rollout_status


def model_status(registry: Registry, model: ModelName | str, *, last_rollout: bool = True) -> dict[str, Any]:
    """Pointers, the rollout, every serving node, the last drill and the alerts of a model;
    ``last_rollout``: also how the last rollout ended, when none runs (it reads the history)."""
    name = ModelName.parse(model) if isinstance(model, str) else model
    state = registry.state(name)
    policy = policy_of(registry, state) or Policy()
    moment = now()
    production, canary = state.pointer(PRODUCTION), state.pointer(CANARY)
    alerts: list[str] = []

    rollout = rollout_status(registry, name, last=last_rollout)
    running = rollout["rollout"]
    if running is not None:
        if running["paused"]:
            alerts.append(f"the rollout of {running['version']} is paused: {running['paused']['reason']}")
        if running["failed"]:
            alerts.append(f"the rollout of {running['version']} has {len(running['failed'])} failed windows "
                          f"(it aborts after {running['failure_limit'] + 1})")

    fleet = read_fleet(registry, name)
    named = {production, canary, state.pointer(ROLLBACK_TARGET)}
    nodes = []
    for heartbeat in fleet.heartbeats:
        shown = _node(heartbeat, moment, production, canary)
        nodes.append(shown)
        if shown["stale"]:
            alerts.append(f"node {heartbeat.node} last reported at {heartbeat.at}: stale, not counted")
            continue
        if heartbeat.pointer == PRODUCTION and not shown["agrees"]:
            alerts.append(f"node {heartbeat.node} serves {heartbeat.serving} (canary {heartbeat.canary}), the "
                          f"registry says production {production} (canary {canary})")
        for version, smoke in heartbeat.smoke.items():
            if not smoke["ok"] and version in named:  # a refused version nothing names any more is history
                alerts.append(f"node {heartbeat.node}: smoke check failed {version}: {smoke['detail']}")
        if heartbeat.error:
            alerts.append(f"node {heartbeat.node}: {heartbeat.error}")
    alerts += [f"{key}: heartbeat unreadable" for key in fleet.unreadable]

    if production is not None and state.pointer(ROLLBACK_TARGET) is None:
        alerts.append("no rollback target: a rollback has nowhere to go")
    drill = drill_summary(registry, state.drill) if state.drill else None
    every = duration(policy.drill.every)
    due = timestamp(parse_time(drill["at"], "at") + every) if drill else None
    if production is not None:
        if drill is None:
            alerts.append(f"no rollback drill recorded (the policy asks for one every {policy.drill.every})")
        elif parse_time(drill["at"], "at") + every < moment:
            alerts.append(f"the last drill, at {drill['at']}, is older than the policy's {policy.drill.every}: "
                          f"drill again (`artifactstore drill {name}`)")
        elif not drill["passed"]:
            alerts.append(f"the last drill, at {drill['at']}, failed: {drill['note']}")
    swap = unfinished_drill(registry, state)
    if swap is not None:
        alerts.append(f"a drill moved production to {swap.to} at {swap.at} and has not finished "
                      f"(running, or interrupted: then restore production by hand)")
    return {"model": str(name), "at": timestamp(moment), "policy": state.policy, "pointers": state.pointer_fields(),
            "rollout": running, "last_rollout": rollout["last"], "nodes": nodes,
            "drill": drill and drill | {"due": due, "overdue": due is not None and parse_time(due, "due") < moment},
            "alerts": alerts}


def _node(heartbeat: Heartbeat, moment, production: str | None, canary: str | None) -> dict[str, Any]:
    stale = heartbeat.stale(moment)
    return {"node": heartbeat.node, "pointer": heartbeat.pointer, "at": heartbeat.at,
            "age_seconds": round((moment - parse_time(heartbeat.at, "at")).total_seconds(), 3), "stale": stale,
            "serving": heartbeat.serving, "canary": heartbeat.canary, "resident": heartbeat.resident,
            "smoke": heartbeat.smoke, "last_swap": heartbeat.last_swap, "error": heartbeat.error,
            "agrees": heartbeat.serving == production and heartbeat.canary == canary,
            "host": heartbeat.host, "pid": heartbeat.pid}
