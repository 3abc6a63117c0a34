"""A model's registry state and its audit entries: immutable objects, chained by their ids.

Each model has one mutable ref, ``registry/refs/<client>/<model>.json`` = ``{"state": "b3:…"}``,
moved only by compare-and-swap. It names an immutable *state* object holding the model's versions,
pointers and pins, the audit entries of the change that produced it, and its parent state: the
chain of states is the hash-chained audit log. See docs/format.md, "Registry".
"""

import getpass
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..content.manifest import canonical_json
from ..errors import CorruptObject, NotFound
from .pointers import CANARY, KINDS
from .refs import ModelName, parse_version

STATE_CONTEXT = "artifactstore 2026-11 model state v1"
VERSION_CONTEXT = "artifactstore 2026-11 version record v1"
VERSION_MAP_CONTEXT = "artifactstore 2026-11 version map v1"


def default_actor() -> str:
    return os.environ.get("ARTIFACTSTORE_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def ref_key(model: ModelName) -> str:
    return f"registry/refs/{model.client}/{model.model}.json"


def object_key(object_id: bytes) -> str:
    hex_id = object_id.hex()
    return f"registry/objects/{hex_id[:2]}/{hex_id}.json"


class VersionMapUnreadable(CorruptObject):
    """An intact state whose versions map is missing or damaged: the state, its pointers and its
    audit entries read; its versions do not (verify --repair rebuilds the map where it can)."""

    def __init__(self, map_id: str, state_id: str, what: str):
        super().__init__(f"versions map {map_id} of state {state_id} {what}")
        self.map_id = map_id
        self.state_id = state_id


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    action: str
    pointer: str | None
    from_: str | None
    to: str | None
    reason: str
    percent: int | None = None
    override: str | None = None  # the refusal a forced move overrode (a release policy's, say)
    evidence: dict[str, Any] | None = None  # what an automatic decision rested on (measurements, a node's smoke check)

    def to_json(self) -> dict[str, Any]:
        entry = {"seq": self.seq, "at": self.at, "actor": self.actor, "action": self.action,
                 "pointer": self.pointer, "from": self.from_, "to": self.to, "reason": self.reason}
        if self.percent is not None:
            entry["percent"] = self.percent
        if self.override is not None:
            entry["override"] = self.override
        if self.evidence is not None:
            entry["evidence"] = self.evidence
        return entry

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "AuditEntry":
        return cls(obj["seq"], obj["at"], obj["actor"], obj["action"], obj["pointer"], obj["from"], obj["to"],
                   obj["reason"], obj.get("percent"), obj.get("override"), obj.get("evidence"))


@dataclass(frozen=True)
class ModelState:
    """One model's registry at one moment. ``entries`` are the audit entries that made it."""

    model: ModelName
    versions: dict[str, str] = field(default_factory=dict)  # version -> version record id
    pointers: dict[str, str] = field(default_factory=dict)  # production/staging/rollback_target -> version
    canary: dict[str, Any] | None = None  # {"version": ..., "percent": ...}
    pins: tuple[str, ...] = ()
    seq: int = 0
    parent: str | None = None
    entries: tuple[AuditEntry, ...] = ()
    id: str | None = None  # the id this state is stored under; not part of its bytes
    policy: str | None = None  # the release policy object's id (registry/policy.py), if the model has one
    checks: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> {"gate"|"review": record id}
    # version -> the production version it replaced when it last went to production: where a
    # rollback to it leaves the next rollback target (the seeds: "usually the previous production
    # version, but sometimes you want to skip back further")
    predecessors: dict[str, str] = field(default_factory=dict)
    rollout: dict[str, Any] | None = None  # the canary rollout in progress (registry/rollout.py), if any
    drill: str | None = None  # the latest rollback drill's record id (release/drill.py), if any
    # The versions map is its own object (a pointer move writes a small state that names the same
    # map); None: the versions are written inline, as states were before maps (docs/format.md).
    versions_id: str | None = None
    # What only the history used to tell, kept so that nothing reads the history for it (states of
    # the map era): the bundles of deleted versions (gc: neither live nor stored without the
    # registry), and when each version last went to production and by whom (show).
    retired: tuple[str, ...] = ()
    deployments: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> {"at", "by"}
    # version -> its bundle id, of every version deleted and not pushed again: such a number never
    # names other content (a server that loaded it may still serve its weights under that name).
    # None: a state written before it was kept, for which only the history tells.
    deleted: dict[str, str] | None = None

    def encode(self) -> bytes:
        fields = {
            "kind": "model-state", "client": self.model.client, "model": self.model.model,
            "versions": self.versions_id if self.versions_id is not None else self.versions,
            "pointers": self.pointers, "canary": self.canary,
            "pins": list(self.pins), "seq": self.seq, "parent": self.parent,
            "entries": [e.to_json() for e in self.entries]}
        # written only when set, so that a state without them has the bytes it had before they existed
        if self.policy is not None:
            fields["policy"] = self.policy
        if self.checks:
            fields["checks"] = self.checks
        if self.predecessors:
            fields["predecessors"] = self.predecessors
        if self.rollout is not None:
            fields["rollout"] = self.rollout
        if self.drill is not None:
            fields["drill"] = self.drill
        if self.retired:
            fields["retired"] = list(self.retired)
        if self.deployments:
            fields["deployments"] = self.deployments
        if self.deleted is not None:  # even when empty: it says that no version was deleted
            fields["deleted"] = self.deleted
        return canonical_json(fields)

    @property
    def map_era(self) -> bool:
        """Whether this state names its versions map (and so keeps ``retired`` and ``deployments``)."""
        return self.versions_id is not None

    @classmethod
    def decode(cls, data: bytes, where: str, version_map: Callable[[str], dict[str, str]],
               check_owner: Callable[[ModelName], None] = lambda _: None) -> "ModelState":
        """``version_map(id)`` reads the versions map a state of the map era names, once
        ``check_owner`` (which raises) has passed the model the state says it belongs to."""
        try:
            obj = json.loads(data)
            if obj["kind"] != "model-state":
                raise ValueError("not a model state")
            named = obj["versions"]
            versions_id = named if isinstance(named, str) else None
            state = cls(ModelName(obj["client"], obj["model"]), {} if versions_id is not None else dict(named),
                        dict(obj["pointers"]), obj["canary"], tuple(obj["pins"]), obj["seq"], obj["parent"],
                        tuple(AuditEntry.from_json(e) for e in obj["entries"]), policy=obj.get("policy"),
                        checks={v: dict(c) for v, c in obj.get("checks", {}).items()},
                        predecessors=dict(obj.get("predecessors", {})), rollout=obj.get("rollout"),
                        drill=obj.get("drill"), versions_id=versions_id, retired=tuple(obj.get("retired", ())),
                        deployments={v: dict(d) for v, d in obj.get("deployments", {}).items()},
                        deleted=_strings_by_version(obj["deleted"]) if "deleted" in obj else None)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"{where}: malformed model state ({exc})") from None
        check_owner(state.model)
        if versions_id is None:
            return state
        try:
            return replace(state, versions=version_map(versions_id))
        except NotFound:
            raise VersionMapUnreadable(versions_id, where, "is missing") from None
        except CorruptObject as exc:
            raise VersionMapUnreadable(versions_id, where, f"is damaged ({exc})") from None

    def pointer(self, name: str) -> str | None:
        """The version a pointer names, if it is set."""
        if name == CANARY:
            return self.canary["version"] if self.canary else None
        return self.pointers.get(name)

    def pointer_fields(self) -> dict[str, Any]:
        """Every pointer by name (None when unset); one that carries a percent as
        ``{"version": …, "percent": …}``, as the canary is stored."""
        return {kind.name: self.canary if kind.carries_percent else self.pointer(kind.name) for kind in KINDS}

    def where(self, version: str) -> list[str]:
        """The pointers and pins that name ``version``."""
        names = [f"{kind.name} ({self.canary['percent']}%)" if kind.carries_percent and self.canary else kind.name
                 for kind in KINDS if self.pointer(kind.name) == version]
        if version in self.pins:
            names.append("pinned")
        return names

    def previous_production(self, version: str, skipping: str | None = None) -> str | None:
        """The production version before ``version`` (what it replaced when it last went to
        production), passing over ``skipping``."""
        seen = {version}
        previous = self.predecessors.get(version)
        while previous is not None and previous == skipping and previous not in seen:
            seen.add(previous)
            previous = self.predecessors.get(previous)
        return None if previous in seen else previous  # a chain that loops (drills once wrote one) ends

    def sorted_versions(self) -> list[str]:
        return sorted(self.versions, key=parse_version)



def decode_trail(data: bytes, where: str) -> tuple[tuple[AuditEntry, ...], str | None, ModelName]:
    """A state's audit entries, its parent's id and its model, without its versions: what reading
    the audit log needs of each state, at a cost that does not grow with the number of versions."""
    try:
        obj = json.loads(data)
        if obj["kind"] != "model-state":
            raise ValueError("not a model state")
        return tuple(AuditEntry.from_json(e) for e in obj["entries"]), obj["parent"], \
            ModelName(obj["client"], obj["model"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"{where}: malformed model state ({exc})") from None


def encode_version_map(model: ModelName, versions: dict[str, str]) -> bytes:
    return canonical_json({"kind": "version-map", "client": model.client, "model": model.model,
                           "versions": versions})


def decode_version_map(data: bytes, where: str) -> dict[str, str]:
    try:
        obj = json.loads(data)
        if obj["kind"] != "version-map":
            raise ValueError("not a version map")
        return _strings_by_version(obj["versions"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"{where}: malformed version map ({exc})") from None


def _strings_by_version(obj: Any) -> dict[str, str]:
    """A decoded JSON object of version -> id (a record's, a bundle's)."""
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise ValueError("not a map of versions to ids")
    return dict(obj)
