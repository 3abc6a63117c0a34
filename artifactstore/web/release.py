"""Canary rollouts, serving nodes and drills in the dashboard, from ``Store.status`` (release/status.py).

The dashboard asks a ``ReleaseStatus`` for each model (``fleet_status`` by default; a test may
give another) and renders the ``ReleaseView`` it returns, nothing for None. The rollout's actions
(start, pause, resume, abort) are entries of ``actions.ACTIONS``.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..registry.refs import ModelName
from ..store import Store


@dataclass(frozen=True)
class NodeView:
    node: str
    serving: str | None  # the version it serves
    resident: list[str] = field(default_factory=list)  # versions it keeps loaded
    smoke: str | None = None  # its last smoke check: "passed", "failed: ..."
    seen_at: str | None = None  # its last heartbeat
    stale: bool = False  # stopped reporting: not counted as confirming


@dataclass(frozen=True)
class RolloutView:
    version: str
    state: str  # running, paused, aborted, complete
    step: int  # 1-based
    steps: int
    percent: int
    since: str | None = None  # when the current step began
    next_at: str | None = None  # when the step's hold ends
    measurements: list[dict[str, Any]] = field(default_factory=list)  # newest first: {"window", "outcome", "note"}


@dataclass(frozen=True)
class DrillView:
    at: str
    seconds: float | None
    passed: bool
    overdue: bool = False


@dataclass(frozen=True)
class ReleaseView:
    """One model's rollout, fleet and drill, as ``status`` reports them."""

    rollout: RolloutView | None = None
    nodes: list[NodeView] = field(default_factory=list)
    drill: DrillView | None = None


ReleaseStatus = Callable[[Store, ModelName], ReleaseView | None]


def fleet_status(store: Store, model: ModelName) -> ReleaseView | None:
    """The model's rollout, nodes and last drill as ``artifactstore status`` reports them; None when
    there is none of the three."""
    status = store.status(str(model), last_rollout=False)
    running, drill = status["rollout"], status["drill"]
    rollout = None if running is None else RolloutView(
        version=running["version"], state="paused" if running["paused"] else "running", step=running["step"] + 1,
        steps=len(running["steps"]), percent=running["percent"], since=running["step_started"],
        next_at=running["hold_ends"],
        measurements=[{"window": f"{m['start']} – {m['end']}", "outcome": m["outcome"], "note": m["note"]}
                      for m in reversed(running["measurements"])])
    nodes = [NodeView(node=n["node"], serving=n["serving"], resident=list(n["resident"]),
                      smoke=_smoke(n["smoke"].get(n["serving"])) if n["serving"] else None, seen_at=n["at"],
                      stale=n["stale"])
             for n in status["nodes"]]
    if rollout is None and not nodes and drill is None:
        return None
    return ReleaseView(rollout=rollout, nodes=nodes, drill=None if drill is None else DrillView(
        at=drill["at"], seconds=drill["seconds"], passed=drill["passed"], overdue=drill["overdue"]))


def _smoke(result: dict[str, Any] | None) -> str | None:
    if result is None:
        return None
    return "passed" if result["ok"] else f"failed: {result['detail']}"
