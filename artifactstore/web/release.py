"""Where canary rollouts, serving nodes and drills (issue #11) come into the dashboard.

The dashboard asks a ``ReleaseStatus`` for each model; the pages render what it returns, and
nothing while it returns None (today: ``no_release_status``). Wiring #11's ``status`` in is one
function that fills a ``ReleaseView`` from it, given to ``create_app(..., release_status=...)``:

    def rollout_status(store, model):
        status = store.status(str(model))
        return ReleaseView(rollout=..., nodes=[...], drill=...)

Its actions (rollout start, pause, abort) are entries of ``actions.ACTIONS``.
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
    measurements: list[dict[str, Any]] = field(default_factory=list)  # {"metric", "value", "threshold", "ok"}


@dataclass(frozen=True)
class DrillView:
    at: str
    seconds: float | None
    passed: bool
    overdue: bool = False


@dataclass(frozen=True)
class ReleaseView:
    """One model's rollout, fleet and drill, as #11's ``status`` reports them."""

    rollout: RolloutView | None = None
    nodes: list[NodeView] = field(default_factory=list)
    drill: DrillView | None = None


ReleaseStatus = Callable[[Store, ModelName], ReleaseView | None]


def no_release_status(store: Store, model: ModelName) -> ReleaseView | None:
    """Until #11 lands: nothing to show."""
    return None
