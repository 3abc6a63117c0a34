"""Rollback drills in the registry: the two moves a drill makes and the record it leaves.

The seeds: "once a month, practice rolling back; time it; if it takes more than 60 seconds, fix
your tooling". A drill (release/drill.py) swaps production and the rollback target, waits for the
fleet to confirm, and swaps them back; each swap is one transaction with the action ``drill``
(never refused by a release rule: it restores versions that served before). Its timings are an
immutable *drill record*, named from the state (``ModelState.drill``) by a third transaction, so
``status`` can say when the last drill was and whether it passed. docs/release.md, "Drills".
"""

import itertools
import json
from typing import Any

from ..content.manifest import canonical_json
from ..errors import Conflict, CorruptObject, InvalidParameter
from .pointers import PRODUCTION, ROLLBACK_TARGET
from .refs import ModelName
from .registry import Move, Registry
from .state import AuditEntry, ModelState

DRILL_CONTEXT = "artifactstore 2026-11 rollback drill v1"
DRILL_LOOKBACK = 64  # states: a drill's swaps and record follow each other, with little between them


def swap_for_drill(registry: Registry, model: ModelName, *, production: str, target: str, actor: str | None,
                   reason: str) -> ModelState:
    """Production ``production`` -> ``target`` and the rollback target ``target`` -> ``production``, in
    one transaction that refuses (Conflict) unless both are as expected and no rollout runs."""
    def change(current: ModelState) -> list[Move]:
        now = (current.pointer(PRODUCTION), current.pointer(ROLLBACK_TARGET))
        if now != (production, target):
            raise Conflict(f"{model}: production is {now[0]} and the rollback target {now[1]}, not {production} "
                           f"and {target} as the drill expected; nothing changed")
        if current.rollout is not None:
            raise InvalidParameter(f"{model} is rolling out {current.rollout['version']}: drill after it ends")
        return [{"action": "drill", "pointer": PRODUCTION, "from": production, "to": target},
                {"action": "drill", "pointer": ROLLBACK_TARGET, "from": target, "to": production}]

    return registry.transact(model, change, actor, reason)


def record_drill(registry: Registry, model: ModelName, record: dict[str, Any], *, actor: str | None,
                 reason: str) -> ModelState:
    """Store a drill's record and name it from the model's state (one transaction)."""
    encoded = canonical_json({"kind": "rollback-drill", **record})

    def change(current: ModelState) -> list[Move]:
        drill_id = registry.write_object(encoded, DRILL_CONTEXT)
        return [{"action": "drill", "pointer": None, "from": record["from"], "to": record["to"],
                 "state": {"drill": drill_id}}]

    return registry.transact(model, change, actor, reason)


def unfinished_drill(registry: Registry, state: ModelState) -> AuditEntry | None:
    """The first swap of a drill that has not swapped back (running, or killed between its moves):
    production then is the drill's stand-in. Production's latest moves are drill swaps since the
    last drill record or move by a person, and there is an odd number of them (a drill killed after
    its swap back left production as it was). A person's move of production ends it. Read within
    the newest DRILL_LOOKBACK states (a status reads no further, whatever the history's length), and
    as far as the history reads: verify reports a damaged one."""
    swaps: list[AuditEntry] = []
    try:
        for _, made in itertools.islice(registry.trail(state.model, state.id), DRILL_LOOKBACK):
            for entry in reversed(made):
                if entry.pointer == PRODUCTION and entry.action == "drill":
                    swaps.append(entry)
                elif entry.pointer == PRODUCTION or (entry.action == "drill" and entry.pointer is None):
                    # a person's move of production, or a drill's record
                    return swaps[-1] if len(swaps) % 2 else None
    except CorruptObject:
        pass
    return swaps[-1] if len(swaps) % 2 else None


def read_drill(registry: Registry, drill_id: str) -> dict[str, Any]:
    try:
        record = json.loads(registry.read_object(drill_id, DRILL_CONTEXT))
        if record.pop("kind") != "rollback-drill":
            raise ValueError("not a drill record")
        return record | {"id": drill_id}
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"drill record {drill_id}: malformed ({exc})") from None


def drill_summary(registry: Registry, drill_id: str) -> dict[str, Any]:
    """What events and ``status`` say of a drill."""
    record = read_drill(registry, drill_id)
    return {k: record[k] for k in ("id", "at", "from", "to", "passed", "seconds", "max_seconds", "nodes",
                                   "unconfirmed", "note")}
