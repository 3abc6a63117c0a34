"""The fleet: what each serving node reports back, and what the registry does when a node's smoke
check fails.

Each follower with a node name writes one small *heartbeat* per model it follows,
``fleet/<client>/<model>/<node>.json``, replaced whole (atomic write) by that node only: the version
it serves, the canary it serves beside it, what it keeps resident, the result of its smoke checks,
when it last swapped, the registry state it acted on. A node whose heartbeat is older than three of
its own intervals is *stale*: shown, never counted as confirming anything. docs/format.md, "Fleet
heartbeats".

A node whose smoke check fails on a new production (or on the canary) makes the registry agree with
the fleet instead of serving the old version silently: per ``smoke.on_failure`` it rolls production
back (or aborts the rollout) in one transaction naming the node and the failure. That transaction
expects the failing version to still be there, so several nodes failing at once produce one
rollback: the others find it done. A node rolls production back only to the version it serves, when
that is the rollback target, and never a production that a rollback or a drill restored: a node
that serves nothing (just started, its inference broken) would otherwise roll production back
through the whole history, one failed look at a time.
"""

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from ..clock import parse_time
from ..content.manifest import canonical_json
from ..errors import Conflict, CorruptObject, InvalidParameter, NotFound, Refused
from .hooks import announce
from .pointers import PRODUCTION, ROLLBACK_TARGET
from .policy import Policy, policy_of
from .refs import ModelName
from .registry import Registry
from .rollout import abort_rollout
from .state import AuditEntry, ModelState

FLEET = "fleet"
NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
STALE_INTERVALS = 3  # a node is stale once this many of its heartbeat intervals pass without one
MIN_STALE = timedelta(seconds=3)
MAX_HEARTBEAT_INTERVAL = 86_400.0  # seconds, as `follow --heartbeat-s` takes them
RESTORING = ("rollback", "drill")  # the moves of production that bring back a version that served before

_log = logging.getLogger(__name__)


def check_node(node: str) -> str:
    if NODE.fullmatch(node) is None:
        raise InvalidParameter(f"node name {node!r}: use letters, digits, '.', '_', '-' (at most 128, "
                               f"starting with a letter or digit)")
    return node


def heartbeat_key(model: ModelName, node: str) -> str:
    return f"{FLEET}/{model.client}/{model.model}/{node}.json"


@dataclass(frozen=True)
class Heartbeat:
    """One node's report on one model."""

    node: str
    model: str
    pointer: str  # what it follows: production, staging, ...
    at: str  # when it wrote this
    interval: float  # seconds between its heartbeats when nothing changes
    serving: str | None  # the version live for the pointer
    bundle: str | None  # its bundle id
    canary: str | None  # the canary version it serves beside production (a share of keys), if any
    resident: list[str]  # versions loaded
    smoke: dict[str, dict[str, Any]]  # version -> {"ok", "at", "tests", "failed", "detail"}
    last_swap: str | None
    state: str | None  # the registry state it looked at last (and served, or refused, what it names)
    error: str | None  # its last error, if the last look failed
    host: str = ""
    pid: int = 0

    def encode(self) -> bytes:
        return canonical_json({"kind": "heartbeat", **asdict(self)})

    @classmethod
    def decode(cls, data: bytes, where: str) -> "Heartbeat":
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict) or obj.pop("kind") != "heartbeat":
                raise ValueError("not a heartbeat")
            heartbeat = cls(**obj)
            heartbeat._check()
            return heartbeat
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"{where}: malformed heartbeat ({exc})") from None

    def _check(self) -> None:
        """Refuse (ValueError) field values that would break a reader later: ``status`` of the whole
        model reads every node's heartbeat, and one bad node must show as unreadable, not fail it."""
        def text(value, optional: bool = False) -> bool:
            return isinstance(value, str) or optional and value is None

        wrong = [name for name in ("node", "model", "pointer", "at", "host") if not text(getattr(self, name))]
        wrong += [name for name in ("serving", "bundle", "canary", "last_swap", "state", "error")
                  if not text(getattr(self, name), optional=True)]
        if isinstance(self.interval, bool) or not isinstance(self.interval, int | float) or \
                not 0 <= self.interval <= MAX_HEARTBEAT_INTERVAL:  # NaN too; a longer one overflows stale()
            wrong.append("interval")
        if not isinstance(self.resident, list) or not all(map(text, self.resident)):
            wrong.append("resident")
        if not isinstance(self.smoke, dict) or not all(
                isinstance(result, dict) and isinstance(result.get("ok"), bool)
                and text(result.get("detail")) for result in self.smoke.values()):
            wrong.append("smoke")
        if isinstance(self.pid, bool) or not isinstance(self.pid, int):
            wrong.append("pid")
        if wrong:
            raise ValueError(f"bad {', '.join(wrong)}")
        parse_time(self.at, "at")

    def stale(self, now: datetime) -> bool:
        return now - parse_time(self.at, "at") > max(MIN_STALE, timedelta(seconds=STALE_INTERVALS * self.interval))

    def confirms(self, version: str) -> bool:
        """Whether this node serves ``version`` with its smoke check passed."""
        return self.serving == version and self.smoke.get(version, {}).get("ok") is True


def write_heartbeat(registry: Registry, heartbeat: Heartbeat) -> None:
    registry.backend.write(heartbeat_key(ModelName.parse(heartbeat.model), heartbeat.node), heartbeat.encode())


def forget_silent_nodes(registry: Registry, model: ModelName, since: float, dry_run: bool = False) -> list[str]:
    """Remove the heartbeats of ``model``'s nodes that wrote none since ``since`` (seconds since the
    epoch), by the modification time of their objects: the store's clock, not the nodes' own. Each
    is looked at right before it goes, so a node that came back meanwhile keeps its own."""
    prefix = f"{FLEET}/{model.client}/{model.model}/"
    nodes = [key.removeprefix(prefix).removesuffix(".json") for key in registry.backend.list(prefix.rstrip("/"))
             if key.endswith(".json")]
    forgotten = []
    for node in filter(NODE.fullmatch, nodes):
        try:
            if registry.backend.modified(heartbeat_key(model, node)) >= since:
                continue
        except NotFound:  # removed by its node meanwhile
            continue
        if not dry_run:
            remove_heartbeat(registry, model, node)
        forgotten.append(node)
    return forgotten


def remove_heartbeat(registry: Registry, model: ModelName, node: str) -> None:
    """A node that stops on purpose leaves the fleet (one that dies stays, and turns stale)."""
    try:
        registry.backend.delete(heartbeat_key(model, node))
    except NotFound:
        pass


@dataclass(frozen=True)
class FleetView:
    heartbeats: list[Heartbeat] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # keys whose heartbeat could not be read

    def live(self, now: datetime, pointer: str = PRODUCTION) -> list[Heartbeat]:
        return [h for h in self.heartbeats if h.pointer == pointer and not h.stale(now)]


def read_fleet(registry: Registry, model: ModelName | str) -> FleetView:
    """Every node's latest heartbeat for ``model``, by node name."""
    name = ModelName.parse(model) if isinstance(model, str) else model
    beats, unreadable = [], []
    for key in sorted(registry.backend.list(f"{FLEET}/{name.client}/{name.model}")):
        if not key.endswith(".json"):
            continue
        try:
            beats.append(Heartbeat.decode(registry.backend.read(key), key))
        except NotFound:  # a node's file replaced while listing: it is there again in a moment
            continue
        except CorruptObject:
            unreadable.append(key)
    return FleetView(beats, unreadable)


Role = Literal["production", "canary"]


def act_on_smoke_failure(registry: Registry, model: ModelName, node: str, version: str, role: Role,
                         detail: str, *, serving: str | None) -> ModelState | None:
    """What the registry does when ``node``, which serves ``serving``, fails ``version`` (production's
    or the canary's) in its smoke check, per the model's policy: roll production back to the version
    the node serves / abort the rollout or canary, unless ``smoke.on_failure`` is ``keep``. The new
    state, or None when nothing was changed (policy says keep, another node did it first, nothing to
    roll back to, a rollback that would not bring the registry to what the node serves)."""
    state = registry.state(model)
    policy = policy_of(registry, state) or Policy()
    if policy.smoke.on_failure != "rollback":
        return None
    evidence = {"node": node, "version": version, "smoke": detail}
    actor = f"node:{node}"
    try:
        if role == PRODUCTION:
            committed = registry.rollback(str(model), to=_rollback_version(registry, state, serving), expect=version,
                                          actor=actor, evidence=evidence,
                                          reason=f"automatic rollback: node {node}'s smoke check failed {version}: "
                                                 f"{detail}")
        elif state.rollout is not None:
            committed = abort_rollout(registry, model, actor=actor, expect=version, evidence=evidence,
                                      reason=f"automatic abort: node {node}'s smoke check failed the canary "
                                             f"{version}: {detail}")
        else:
            committed = registry.set_canary(f"{model}@{version}", 0, actor=actor, expect=version, evidence=evidence,
                                            reason=f"canary ended: node {node}'s smoke check failed {version}: "
                                                   f"{detail}")
    except Conflict:  # another node (or a person) moved it first: one rollback, not several
        return None
    # no rollback target, no canary any more, not this node's call; a rollout that took the canary meanwhile
    except (InvalidParameter, NotFound, Refused) as exc:
        _log.warning("%s: node %s's smoke check failed %s, and the registry was not changed: %s",
                     model, node, version, exc)
        return None
    announce(registry, committed, wait=0)
    return committed


def _rollback_version(registry: Registry, state: ModelState, serving: str | None) -> str:
    """The version a node serving ``serving`` rolls production back to: the rollback target, when the
    node serves it (the rollback then makes the registry agree with the node) and production came by a
    move forward. A rollback of a restored version would undo a person's rollback or a drill, and one
    by a node that serves something else would move the fleet to a version this node has not shown
    it can serve: InvalidParameter, saying why."""
    if serving is None:
        raise InvalidParameter("the node serves nothing: no rollback would make the registry agree with it")
    target = state.pointer(ROLLBACK_TARGET)
    if serving != target:
        raise InvalidParameter(f"the node serves {serving} and the rollback target is {target or 'unset'}: "
                               f"a rollback would not make the registry agree with it")
    arrival = _production_move(registry, state)
    if arrival is None:
        raise InvalidParameter("the move that set production is not in the history: it may have been a restoration")
    if arrival.action in RESTORING:
        raise InvalidParameter(f"production came back by a {arrival.action}, and a restored version is rolled "
                               f"back by a person, not by a node")
    return serving


def _production_move(registry: Registry, state: ModelState) -> AuditEntry | None:
    """The audit entry that put production where it is in ``state`` (later changes, a gate run or a
    canary step, may have come since)."""
    for _, made in registry.trail(state.model, state.id):
        for entry in reversed(made):
            if entry.pointer == PRODUCTION:
                return entry
    return None
