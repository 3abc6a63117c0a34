"""Rollback drills: rehearse the 3am rollback on the real fleet, timed from decision to confirmation.

``drill`` swaps production and the rollback target (one transaction, action ``drill``), then waits
until every node that was live when it decided reports serving the rollback target with its smoke
check passed (its heartbeat, registry/fleet.py); a node that goes quiet does not confirm. The time
from the decision to the last confirmation is the drill's result, against the policy's limit (the
seeds: 60 s). Then it swaps back, waits for the fleet again, and records the drill. A node whose
smoke check fails the rollback target only reports it: the drill fails at its limit and rolls
forward as always; if production moved during the drill (a person), it fails and does not move it
again.
"""

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..clock import now, timestamp
from ..errors import Conflict, InvalidParameter, NotFound
from ..registry.drills import record_drill, swap_for_drill
from ..registry.fleet import read_fleet
from ..registry.pointers import PRODUCTION, ROLLBACK_TARGET
from ..registry.policy import MAX_DRILL_SECONDS, Policy, policy_of
from ..registry.refs import ModelName
from ..registry.registry import Registry
from ..registry.state import ModelState

LOCAL_POLL = 0.002
REMOTE_POLL = 0.1


@dataclass(frozen=True)
class DrillReport:
    model: str
    at: str
    from_: str  # production before the drill
    to: str  # the rollback target it rolled back to
    nodes: dict[str, float]  # node -> seconds from the decision until it confirmed
    unconfirmed: list[str]  # live nodes that did not confirm within the limit
    seconds: float | None  # decision to the last confirmation (None: not every node confirmed)
    max_seconds: float
    passed: bool
    forward_seconds: float | None  # the same for the swap back
    forward_unconfirmed: list[str]
    note: str
    id: str | None = None  # the drill record
    state: ModelState | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k not in ("state", "from_")}
        return {"from": self.from_, **fields}


def drill(registry: Registry, model: ModelName | str, *, max_seconds: float | None = None, actor: str | None = None,
          reason: str = "") -> DrillReport:
    """Roll ``model``'s production back to its rollback target, wait for the fleet, roll forward."""
    name = ModelName.parse(model) if isinstance(model, str) else model
    state = registry.state(name)
    policy = policy_of(registry, state) or Policy()
    limit = max_seconds if max_seconds is not None else policy.drill.max_seconds
    if not 0 < limit <= MAX_DRILL_SECONDS:  # NaN too: a drill that never gives up holds production back
        raise InvalidParameter(f"--max-seconds must be more than 0 and at most {MAX_DRILL_SECONDS}, not {limit:g}")
    production, target = state.pointer(PRODUCTION), state.pointer(ROLLBACK_TARGET)
    if production is None or target is None:
        raise InvalidParameter(f"{name} needs a production version and a rollback target to drill "
                               f"(production {production or 'unset'}, rollback target {target or 'unset'})")
    if state.rollout is not None:
        raise InvalidParameter(f"{name} is rolling out {state.rollout['version']}: drill after it ends")
    nodes = sorted(h.node for h in read_fleet(registry, name).live(now()))
    if not nodes:
        raise InvalidParameter(f"no serving node reports on {name}@production: a drill confirms a fleet "
                               f"(run followers with a node name: `artifactstore follow … --node NAME`)")
    poll = LOCAL_POLL if registry.backend.capabilities.local_directory is not None else REMOTE_POLL
    at, decided = timestamp(), time.monotonic()
    swap_for_drill(registry, name, production=production, target=target, actor=actor,
                   reason=f"drill: roll back to {target}" + (f" ({reason})" if reason else ""))
    back = _wait_for(registry, name, nodes, target, decided, limit, poll)
    seconds = max(back.values()) if len(back) == len(nodes) else None
    passed = seconds is not None and seconds <= limit
    notes = [f"{len(back)} of {len(nodes)} nodes confirmed {target}"
             + (f" in {seconds:.3f} s (limit {limit:g} s)" if seconds is not None else f" within {limit:g} s")]
    forward: dict[str, float] = {}
    moved = time.monotonic()
    try:
        swap_for_drill(registry, name, production=target, target=production, actor=actor,
                       reason=f"drill: roll forward to {production}" + (f" ({reason})" if reason else ""))
    except Conflict:  # a person moved production (or the target) during the drill: theirs stands
        passed = False
        notes.append(f"production is {registry.state(name).pointer(PRODUCTION)} now, moved during the drill: "
                     f"not rolled forward")
    else:
        forward = _wait_for(registry, name, nodes, production, moved, limit, poll)
        notes.append(f"rolled forward to {production}: {len(forward)} of {len(nodes)} nodes confirmed")
    report = DrillReport(str(name), at, production, target, back, [n for n in nodes if n not in back], seconds,
                         limit, passed, max(forward.values()) if len(forward) == len(nodes) else None,
                         [n for n in nodes if n not in forward], "; ".join(notes))
    record = report.to_json() | {"by": actor or ""}
    del record["id"], record["model"]
    recorded = record_drill(registry, name, {"model": str(name), **record}, actor=actor,
                            reason=f"drill {'passed' if passed else 'failed'}: {report.note}")
    return replace(report, id=recorded.drill, state=recorded)


def _wait_for(registry: Registry, model: ModelName, nodes: list[str], version: str, decided: float, limit: float,
              poll: float) -> dict[str, float]:
    """Node -> seconds from ``decided`` until its heartbeat showed ``version`` served with its smoke check
    passed; gives up at the limit, or when production no longer is ``version``."""
    confirmed: dict[str, float] = {}
    while len(confirmed) < len(nodes):
        for heartbeat in read_fleet(registry, model).heartbeats:
            if heartbeat.node in nodes and heartbeat.node not in confirmed and heartbeat.confirms(version):
                confirmed[heartbeat.node] = round(time.monotonic() - decided, 6)
        if len(confirmed) == len(nodes) or time.monotonic() - decided > limit:
            break
        try:
            if registry.state(model).pointer(PRODUCTION) != version:
                break
        except NotFound:
            break
        time.sleep(poll)
    return confirmed
