"""The version registry: immutable versions, deployment pointers, an audit log, all inside the store.

Each model has one mutable ref, ``registry/refs/<client>/<model>.json`` = ``{"state": "b3:…"}``,
moved only by compare-and-swap. It names an immutable *state* object holding the model's versions,
pointers and pins, the audit entries of the change that produced it, and its parent state: the
chain of states is the hash-chained audit log. Version records are immutable objects too.
See docs/format.md, "Registry".
"""

import getpass
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3

from .bundle import WEIGHTS, Bundle, load_bundle
from .errors import Conflict, CorruptObject, InvalidParameter, NotFound
from .ids import format_id, parse_id
from .manifest import canonical_json
from .refs import LATEST, ModelName, Ref, parse_version

STATE_CONTEXT = "artifactstore 2026-11 model state v1"
VERSION_CONTEXT = "artifactstore 2026-11 version record v1"
CHANGE_KINDS = ("major", "minor", "patch")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def default_actor() -> str:
    return os.environ.get("ARTIFACTSTORE_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def ref_key(model: ModelName) -> str:
    return f"registry/refs/{model.client}/{model.model}.json"


def object_key(object_id: bytes) -> str:
    hex_id = object_id.hex()
    return f"registry/objects/{hex_id[:2]}/{hex_id}.json"


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

    def to_json(self) -> dict[str, Any]:
        entry = {"seq": self.seq, "at": self.at, "actor": self.actor, "action": self.action,
                 "pointer": self.pointer, "from": self.from_, "to": self.to, "reason": self.reason}
        if self.percent is not None:
            entry["percent"] = self.percent
        return entry

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "AuditEntry":
        return cls(obj["seq"], obj["at"], obj["actor"], obj["action"], obj["pointer"], obj["from"], obj["to"],
                   obj["reason"], obj.get("percent"))


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

    def encode(self) -> bytes:
        return canonical_json({
            "kind": "model-state", "client": self.model.client, "model": self.model.model,
            "versions": self.versions, "pointers": self.pointers, "canary": self.canary,
            "pins": list(self.pins), "seq": self.seq, "parent": self.parent,
            "entries": [e.to_json() for e in self.entries]})

    @classmethod
    def decode(cls, data: bytes, where: str) -> "ModelState":
        try:
            obj = json.loads(data)
            if obj["kind"] != "model-state":
                raise ValueError("not a model state")
            return cls(ModelName(obj["client"], obj["model"]), dict(obj["versions"]), dict(obj["pointers"]),
                       obj["canary"], tuple(obj["pins"]), obj["seq"], obj["parent"],
                       tuple(AuditEntry.from_json(e) for e in obj["entries"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"{where}: malformed model state ({exc})") from None

    def where(self, version: str) -> list[str]:
        """The pointers and pins that name ``version``."""
        names = [p for p, v in self.pointers.items() if v == version]
        if self.canary and self.canary["version"] == version:
            names.append(f"canary ({self.canary['percent']}%)")
        if version in self.pins:
            names.append("pinned")
        return names

    def sorted_versions(self) -> list[str]:
        return sorted(self.versions, key=parse_version)


@dataclass(frozen=True)
class Change:
    """What differs between two versions' bundles, as the versioning rules see it."""

    base_model: bool
    tensors_changed: int
    tensors_total: int
    adapter_settings: bool
    serving: bool

    @property
    def kind(self) -> str:
        if self.base_model:
            return "major"
        if self.tensors_changed or self.adapter_settings:
            return "minor"
        return "patch"

    def describe(self) -> str:
        if self.base_model:
            return "the base model changed"
        if self.tensors_changed:
            return f"the adapter weights changed ({self.tensors_changed} of {self.tensors_total} tensors differ)"
        if self.adapter_settings:
            return "the adapter config changed"
        if self.serving:
            return "only the inference config changed; the weights are identical"
        return "the weights and inference config are identical"


def compare(previous: dict[str, Any], bundle: Bundle) -> Change:
    old_tensors = previous["tensors"]
    new_tensors = {name: t.__dict__ | {"shape": list(t.shape)} for name, t in bundle.tensors.items()}
    names = set(old_tensors) | set(new_tensors)
    return Change(
        base_model=previous["base_model"] != bundle.metadata.base_model,
        tensors_changed=sum(old_tensors.get(n) != new_tensors.get(n) for n in names),
        tensors_total=len(names),
        adapter_settings=previous["adapter_settings"] != bundle.adapter_settings,
        serving=previous["inference_config"] != bundle.inference_config)


@dataclass(frozen=True)
class PushResult:
    ref: str
    version: str
    bundle: str
    adapter_hash: str
    change: str
    created: bool
    logical_bytes: int
    new_bytes: int


class RegistryOperations:
    """Registry methods of ``Store`` (it provides ``backend`` and ``put``)."""

    # -- objects and refs ---------------------------------------------------------------------

    def _write_object(self, encoded: bytes, context: str) -> str:
        object_id = blake3.blake3(encoded, derive_key_context=context).digest()
        if not self.backend.exists(object_key(object_id)):
            self.backend.write(object_key(object_id), encoded)
        return format_id(object_id)

    def _read_object(self, object_id: str, context: str) -> bytes:
        """An immutable registry object, checked against its id."""
        digest = parse_id(object_id)
        encoded = self.backend.read(object_key(digest))
        if blake3.blake3(encoded, derive_key_context=context).digest() != digest:
            raise CorruptObject(f"registry object {object_id} does not match its id (tampered or damaged)")
        return encoded

    def _read_state(self, model: ModelName) -> tuple[ModelState | None, str | None]:
        data, token = self.backend.read_ref(ref_key(model))
        if data is None:
            return None, None
        try:
            state_id = json.loads(data)["state"]
        except (ValueError, KeyError, TypeError):
            raise CorruptObject(f"{ref_key(model)}: malformed ref") from None
        return replace(ModelState.decode(self._read_object(state_id, STATE_CONTEXT), state_id), id=state_id), token

    def state(self, model: ModelName | str) -> ModelState:
        model = ModelName.parse(model) if isinstance(model, str) else model
        state, _ = self._read_state(model)
        if state is None:
            raise NotFound(f"no model {model} in the registry")
        return state

    def _transact(self, model: ModelName, change: Callable[[ModelState], list[dict]], actor: str | None,
                  reason: str, create: bool = False) -> ModelState:
        """Apply ``change`` (returning audit fields) to the current state and swap the ref once.

        The new state records the current one as its parent: the hash chain of the audit log.
        Losing the compare-and-swap raises Conflict; nothing is retried behind the caller's back.
        """
        current, token = self._read_state(model)
        if current is None:
            if not create:
                raise NotFound(f"no model {model} in the registry")
            current = ModelState(model)
        moves = change(current)
        updated = _apply(current, moves)
        at, actor = now(), actor or default_actor()
        entries = tuple(AuditEntry(current.seq + i + 1, at, actor, m["action"], m.get("pointer"), m.get("from"),
                                   m.get("to"), reason, m.get("percent")) for i, m in enumerate(moves))
        updated = replace(updated, seq=current.seq + len(entries), entries=entries, parent=current.id, id=None)
        state_id = self._write_object(updated.encode(), STATE_CONTEXT)
        try:
            self.backend.swap_ref(ref_key(model), canonical_json({"state": state_id}), token)
        except Conflict:
            raise Conflict(f"{model} changed while this command ran (another push or pointer move won); "
                           "nothing was changed: check `artifactstore ls` and retry") from None
        return replace(updated, id=state_id)

    # -- resolving ------------------------------------------------------------------------------

    def resolve_version(self, ref: Ref | str) -> tuple[ModelState, str]:
        """(state, version) named by a ``client/model@…`` ref."""
        ref = Ref.parse(ref) if isinstance(ref, str) else ref
        if ref.model is None:
            raise InvalidParameter(f"{ref} is a content id; this needs client/model@VERSION or @POINTER")
        state = self.state(ref.model)
        if ref.is_version:
            if ref.target not in state.versions:
                raise NotFound(f"{ref.model} has no version {ref.target}")
            return state, ref.target
        if ref.target == LATEST:
            if not state.versions:
                raise NotFound(f"{ref.model} has no versions")
            return state, state.sorted_versions()[-1]
        version = state.canary["version"] if ref.target == "canary" and state.canary else \
            state.pointers.get(ref.target)
        if version is None:
            raise NotFound(f"{ref.model}@{ref.target} is not set")
        return state, version

    def version_record(self, ref: Ref | str) -> dict[str, Any]:
        state, version = self.resolve_version(ref)
        return self._record(state, version)

    def resolve(self, ref: str) -> str:
        """The content id (``b3:…``) a ref names: a version's bundle, or the id itself."""
        parsed = Ref.parse(ref)
        if parsed.object_id is not None:
            return parsed.object_id
        return self.version_record(parsed)["bundle"]

    # -- push -----------------------------------------------------------------------------------

    def push(self, bundle_dir, ref: str, *, bump: str | None = None, actor: str | None = None,
             reason: str = "") -> PushResult:
        """Store a bundle as a new immutable version.

        ``ref`` is ``client/model@vX.Y.Z``, or ``client/model`` with ``bump="auto"`` to let the
        store pick the next version from what changed. A version whose label disagrees with
        what changed, or an existing version with other content, is refused.
        """
        model, version = self._push_target(ref, bump)
        bundle = load_bundle(Path(bundle_dir))
        actor = actor or default_actor()
        state, _ = self._read_state(model)
        state = state or ModelState(model)
        if version in state.versions:
            existing = self._record(state, version)
            if existing["bundle"] != self.identify(bundle.path):
                raise Conflict(f"{model}@{version} already exists with different content; versions are immutable: "
                               f"push a new version")
            return PushResult(f"{model}@{version}", version, existing["bundle"], existing["adapter_hash"],
                              existing["change"], False, 0, 0)
        if bump == "auto":
            version = self._next_version(state, bundle)
        previous = self._previous_version(state, version)
        change = compare(self._record(state, previous), bundle) if previous else None
        _check_label(version, previous, change)
        if bundle.metadata.version not in (None, version):
            raise InvalidParameter(f"metadata.yaml says version {bundle.metadata.version}, but the push is {version}")
        from_bundle = {
            "base_model": bundle.metadata.base_model, "training_data_hash": bundle.training_data_hash,
            "training_config": bundle.training_config, "eval_scores": bundle.eval_scores,
            "inference_config": bundle.inference_config, "adapter_settings": bundle.adapter_settings,
            "change_description": bundle.metadata.change_description,
        }
        # load_bundle admits only data canonical JSON holds; encoding it here as well means that if it
        # ever admits more, the push fails before its first write instead of after the packs are stored.
        canonical_json(from_bundle)
        stored = self.put(bundle.path)
        adapter_hash = self._file_id_in_tree(stored.id, WEIGHTS)
        record = from_bundle | {
            "kind": "version", "client": model.client, "model": model.model, "version": version,
            "adapter_hash": adapter_hash, "bundle": stored.id,
            "change": change.kind if change else "initial", "previous": previous,
            "created_at": now(), "created_by": actor,
            "tensors": {name: t.__dict__ | {"shape": list(t.shape)} for name, t in bundle.tensors.items()},
        }
        record_id = self._write_object(canonical_json(record), VERSION_CONTEXT)

        def add_version(current: ModelState) -> list[dict]:
            if version in current.versions:
                raise Conflict(f"{model}@{version} was pushed by someone else while this push ran")
            if self._previous_version(current, version) != previous:
                raise Conflict(f"{model} gained a version below {version} while this push ran; push again")
            return [{"action": "push", "from": previous, "to": version, "version_record": record_id}]

        self._transact(model, add_version, actor, reason or bundle.metadata.change_description, create=True)
        return PushResult(f"{model}@{version}", version, stored.id, adapter_hash, record["change"], True,
                          stored.logical_bytes, stored.new_bytes)

    def _push_target(self, ref: str, bump: str | None) -> tuple[ModelName, str | None]:
        if bump not in (None, "auto"):
            raise InvalidParameter(f"unknown --bump {bump!r}: the only choice is 'auto'")
        name, at, target = ref.partition("@")
        model = ModelName.parse(name)
        if bump == "auto":
            if at:
                raise InvalidParameter("--bump auto picks the version: give client/model without @VERSION")
            return model, None
        if not at:
            raise InvalidParameter(f"push needs a version: {ref}@vX.Y.Z, or --bump auto")
        parse_version(target)
        return model, target

    def _record(self, state: ModelState, version: str) -> dict[str, Any]:
        return json.loads(self._read_object(state.versions[version], VERSION_CONTEXT))

    @staticmethod
    def _previous_version(state: ModelState, version: str) -> str | None:
        below = [v for v in state.sorted_versions() if parse_version(v) < parse_version(version)]
        return below[-1] if below else None

    def _next_version(self, state: ModelState, bundle: Bundle) -> str:
        if not state.versions:
            return "v1.0.0"
        latest = state.sorted_versions()[-1]
        return str(parse_version(latest).bump(compare(self._record(state, latest), bundle).kind))

    def _file_id_in_tree(self, tree_id: str, path: str) -> str:
        tree = self.read_manifest(tree_id)
        return next(format_id(e.file) for e in tree.entries if e.path == path)

    # -- pointer moves --------------------------------------------------------------------------

    def stage(self, ref: str, *, actor: str | None = None, reason: str = "", expect: str | None = None) -> ModelState:
        """Point ``staging`` at a version."""
        return self._move(ref, "stage", "staging", actor, reason, expect)

    def promote(self, ref: str, *, actor: str | None = None, reason: str = "", expect: str | None = None) -> ModelState:
        """Point ``production`` at a version; the previous production becomes the rollback target."""
        return self._move(ref, "promote", "production", actor, reason, expect)

    def _move(self, ref: str, action: str, pointer: str, actor, reason, expect) -> ModelState:
        state, version = self.resolve_version(ref)

        def move(current: ModelState) -> list[dict]:
            _check_expected(current, pointer, expect)
            _check_known(current, version)
            old = current.pointers.get(pointer)
            if old == version:
                raise InvalidParameter(f"{current.model}@{pointer} is already {version}")
            moves = [{"action": action, "pointer": pointer, "from": old, "to": version}]
            if pointer == "production":
                if old is not None:
                    moves.append({"action": action, "pointer": "rollback_target",
                                  "from": current.pointers.get("rollback_target"), "to": old})
                if current.canary and current.canary["version"] == version:
                    moves.append({"action": action, "pointer": "canary", "from": version, "to": None})
            return moves

        return self._transact(state.model, move, actor, reason)

    def rollback(self, model: str, *, to: str | None = None, actor: str | None = None, reason: str = "",
                 expect: str | None = None) -> ModelState:
        """Point ``production`` back at the rollback target (or ``to``); the target is then cleared."""
        name = ModelName.parse(model)
        if to is not None:
            parse_version(to)

        def move(current: ModelState) -> list[dict]:
            _check_expected(current, "production", expect)
            target = to or current.pointers.get("rollback_target")
            if target is None:
                raise InvalidParameter(f"{name} has no rollback target: name a version with --to")
            _check_known(current, target)
            old = current.pointers.get("production")
            if old == target:
                raise InvalidParameter(f"{name}@production is already {target}")
            moves = [{"action": "rollback", "pointer": "production", "from": old, "to": target}]
            if "rollback_target" in current.pointers:
                moves.append({"action": "rollback", "pointer": "rollback_target",
                              "from": current.pointers["rollback_target"], "to": None})
            return moves

        return self._transact(name, move, actor, reason)

    def set_canary(self, ref: str, percent: int, *, actor: str | None = None, reason: str = "",
                   expect: str | None = None) -> ModelState:
        """Send ``percent`` of traffic to a version; 0 ends the canary."""
        if not 0 <= percent <= 100:
            raise InvalidParameter(f"canary percent must be between 0 and 100, not {percent}")
        state, version = self.resolve_version(ref)

        def move(current: ModelState) -> list[dict]:
            old = current.canary["version"] if current.canary else None
            _check_expected(current, "canary", expect)
            _check_known(current, version)
            if percent == 0:
                if current.canary is None:
                    raise InvalidParameter(f"{current.model} has no canary")
                return [{"action": "canary", "pointer": "canary", "from": old, "to": None}]
            return [{"action": "canary", "pointer": "canary", "from": old, "to": version, "percent": percent}]

        return self._transact(state.model, move, actor, reason)

    def pin(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        """Keep a version in the hot tier and out of garbage collection."""
        return self._pin(ref, True, actor, reason)

    def unpin(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        return self._pin(ref, False, actor, reason)

    def _pin(self, ref: str, pinned: bool, actor, reason) -> ModelState:
        state, version = self.resolve_version(ref)

        def move(current: ModelState) -> list[dict]:
            _check_known(current, version)
            if (version in current.pins) == pinned:
                raise InvalidParameter(f"{current.model}@{version} is {'already' if pinned else 'not'} pinned")
            return [{"action": "pin" if pinned else "unpin", "pointer": "pins",
                     "from": None if pinned else version, "to": version if pinned else None}]

        return self._transact(state.model, move, actor, reason)

    # -- history --------------------------------------------------------------------------------

    def states(self, model: ModelName | str) -> Iterator[tuple[str, ModelState]]:
        """Every state of a model, newest first, with its id."""
        state = self.state(model)
        state_id = state.id
        while state_id is not None:
            state = ModelState.decode(self._read_object(state_id, STATE_CONTEXT), state_id)
            yield state_id, state
            state_id = state.parent

    def log(self, model: ModelName | str) -> list[AuditEntry]:
        """The audit log, oldest first."""
        entries = [e for _, state in self.states(model) for e in reversed(state.entries)]
        return entries[::-1]

    def models(self) -> list[ModelName]:
        found = []
        for key in self.backend.list("registry/refs"):
            if key.endswith(".json"):
                client, model = key.removeprefix("registry/refs/").removesuffix(".json").split("/")
                found.append(ModelName(client, model))
        return sorted(found, key=str)


def _apply(state: ModelState, moves: list[dict]) -> ModelState:
    versions, pointers = dict(state.versions), dict(state.pointers)
    canary, pins = state.canary, set(state.pins)
    for m in moves:
        if m["action"] == "push":
            versions[m["to"]] = m["version_record"]
        elif m["action"] == "delete":
            del versions[m["from"]]
        elif m["pointer"] == "canary":
            canary = {"version": m["to"], "percent": m["percent"]} if m["to"] else None
        elif m["pointer"] == "pins":
            (pins.add if m["to"] else pins.discard)(m["to"] or m["from"])
        elif m["to"] is None:
            pointers.pop(m["pointer"], None)
        else:
            pointers[m["pointer"]] = m["to"]
    return replace(state, versions=versions, pointers=pointers, canary=canary,
                   pins=tuple(sorted(pins, key=parse_version)))


def _check_expected(state: ModelState, pointer: str, expect: str | None) -> None:
    if expect is None:
        return
    parse_version(expect)
    current = state.canary["version"] if pointer == "canary" and state.canary else state.pointers.get(pointer)
    if current != expect:
        raise Conflict(f"{state.model}@{pointer} is {current or 'unset'}, not {expect} as expected; nothing changed")


def _check_known(state: ModelState, version: str) -> None:
    if version not in state.versions:
        raise NotFound(f"{state.model} has no version {version}")


def _check_label(version: str, previous: str | None, change: Change | None) -> None:
    """Refuse a version number that does not say what changed since ``previous``."""
    if previous is None:
        return
    label = parse_version(version).kind_of_bump_from(parse_version(previous))
    if label != change.kind:
        expected = parse_version(previous).bump(change.kind)
        said = f"a {label} bump over {previous}" if label else f"not a valid bump over {previous}"
        raise InvalidParameter(f"{version} is {said}, but {change.describe()}: push it as {expected} "
                               f"(a {change.kind} bump)")
