"""Rebuilding a model's ref when the ref, or the state it names, is damaged or gone.

States are immutable, content-addressed and chained by ``parent``, so a model's history can be found
without its ref: every object under ``registry/objects/`` that hashes to its name as a model state is
an intact state of the model it names. The repair picks the newest committed one as docs/format.md
("Repairing a ref") describes, and is itself a transaction: a new state whose one audit entry
(action ``repair``) says what was lost, its parent the chosen state, put in place by compare-and-swap
from the damaged ref's token so that it never overwrites a ref someone else wrote meanwhile.

A versions map the ref's state names that is missing or damaged is rebuilt instead, from the newest
readable map below it and the versions pushed and deleted since: content-addressed, the rebuilt map
is the lost one exactly when it hashes to the id the state names, and only then is it written.
"""

import json
import re
from dataclasses import dataclass, replace
from typing import Any

import blake3

from ..clock import timestamp
from ..content.manifest import canonical_json
from ..errors import Conflict, CorruptObject, NotFound
from ..ids import parse_id
from .changes import note_change
from .refs import ModelName
from .registry import Registry, ref_target, registry_object_id
from .state import (
    STATE_CONTEXT,
    VERSION_MAP_CONTEXT,
    AuditEntry,
    ModelState,
    VersionMapUnreadable,
    default_actor,
    encode_version_map,
    object_key,
    ref_key,
)

REPAIR = "repair"  # the audit action of a rebuilt ref

_OBJECT_KEY = re.compile(r"registry/objects/([0-9a-f]{2})/(\1[0-9a-f]{62})\.json")
_PARENT = re.compile(rb'"parent":"(b3:[0-9a-f]{64})"')
_LEGIBLE_ID = re.compile(r"b3:(.{1,64})", re.DOTALL)
# A damaged ref is taken to name an intact state when at least this many of its hex digits agree
# with that state's id, in place, and at most _DISAGREEING do not: 48 bits no other id shares by chance.
_AGREEING, _DISAGREEING = 12, 2


@dataclass(frozen=True)
class RegistryScan:
    """Every intact model state in the registry by model and id, the bytes of every registry
    object that may be a damaged state (it is no intact state, and not JSON of another kind), and
    the ids of the version records by (client, model, version): a record that lost its push's race
    shares its version with the committed one."""

    states: dict[ModelName, dict[str, ModelState]]
    damaged: dict[str, bytes]
    records: dict[tuple[Any, Any, Any], list[str]]  # (client, model, version) -> ids

    def committed_without_ref(self, with_ref: list[ModelName]) -> list[ModelName]:
        """Models with committed history (a state that names a parent: the ref once named that
        parent) whose ref is missing. A model whose only states are first states is not one of
        them: a first push that lost its race or was interrupted leaves such a state behind."""
        return sorted((model for model, states in self.states.items()
                       if model not in with_ref and any(s.parent for s in states.values())), key=str)

    def newest_dropped(self, model: ModelName, head: str) -> ModelState | None:
        """The newest state after ``head`` in the model's history that was committed, if any: the
        ref was set back over it. A later state is proved committed by a state naming it as its
        parent (a transaction reads its parent from the ref); a state that merely follows the head
        proves nothing, since a transaction that loses its compare-and-swap leaves just that."""
        states = self.states.get(model, {})
        later = _descendants(states, head)
        committed = [states[s.parent] for i, s in states.items() if i in later and s.parent in later]
        return max(committed, key=lambda s: s.seq, default=None)


def scan_registry(registry: Registry) -> RegistryScan:
    """Read every registry object once (states and version records share ``registry/objects/``)."""
    states: dict[ModelName, dict[str, ModelState]] = {}
    damaged: dict[str, bytes] = {}
    records: dict[tuple[Any, Any, Any], list[str]] = {}
    for key in registry.backend.list("registry/objects"):
        named = _OBJECT_KEY.fullmatch(key)
        if named is None:
            continue
        object_id = "b3:" + named[2]
        try:
            data = registry.backend.read(key)
        except NotFound:
            continue
        state = _as_state(data) if blake3.blake3(data, derive_key_context=STATE_CONTEXT).hexdigest() == named[2] else None
        if state is not None:
            states.setdefault(state.model, {})[object_id] = replace(state, id=object_id)
            continue
        obj = _json_object(data)
        if obj is None or obj.get("kind") == "model-state":
            damaged[object_id] = data
        elif obj.get("kind") == "version":
            records.setdefault((obj.get("client"), obj.get("model"), obj.get("version")), []).append(object_id)
    return RegistryScan(states, damaged, records)


def repair_refs(registry: Registry, actor: str | None = None) -> tuple[list[str], list[str]]:
    """(repairs, problems): rebuild every ref that is damaged, names a damaged or missing state, or
    is missing while its model has committed history, then the versions map of the state the ref
    names where that is missing or damaged; a problem for each that cannot be rebuilt."""
    scan = scan_registry(registry)
    with_ref = registry.models()
    repairs: list[str] = []
    problems: list[str] = []
    for model in sorted(set(with_ref) | set(scan.committed_without_ref(with_ref)), key=str):
        damage = _inspect_ref(registry, model)
        if damage is not None:
            try:
                repairs.append(_rebuild(registry, scan, model, damage, actor or default_actor()))
            except _Unrepairable as exc:
                problems.append(f"registry {model}: {damage.key} {damage.cause} and cannot be rebuilt: {exc}")
                continue
        try:
            registry.state(model)
        except VersionMapUnreadable as unreadable:
            try:
                repairs.append(_restore_versions_map(registry, scan, model, unreadable))
            except _Unrepairable as exc:
                problems.append(f"registry {model}: {unreadable} and cannot be rebuilt: {exc}; which version "
                                f"record each of the model's versions is, is lost (its pointers and audit log "
                                f"are not); the ref is left alone")
    return repairs, problems


class _Unrepairable(Exception):
    pass


@dataclass(frozen=True)
class _RefDamage:
    key: str
    token: str | None  # the damaged ref's, for the compare-and-swap (None: there is no ref)
    cause: str
    legible: str | None  # what can still be read of the id the ref held (hex digits after "b3:")
    named: str | None  # the well-formed state id the ref holds, when it holds one


def _inspect_ref(registry: Registry, model: ModelName) -> _RefDamage | None:
    """What is wrong with a model's ref, or None when it names an intact state of that model."""
    key = ref_key(model)
    data, token = registry.backend.read_ref(key)
    if data is None:
        return _RefDamage(key, None, "is missing", None, None)
    legible = _LEGIBLE_ID.search(data.decode("utf-8", "replace"))
    try:
        named = ref_target(data, key)
    except CorruptObject:
        return _RefDamage(key, token, "is damaged", legible[1] if legible else None, None)
    try:
        state = _read_without_versions(registry, named)  # a missing versions map is no damage of the ref
        if state.model == model:
            return None
        named_is = f"a state of {state.model}"
    except NotFound:
        named_is = "missing"
    except CorruptObject:
        named_is = "damaged"
    return _RefDamage(key, token, f"names {named}, which is {named_is}", named[3:], named)


def _rebuild(registry: Registry, scan: RegistryScan, model: ModelName, damage: _RefDamage, actor: str) -> str:
    states = scan.states.get(model, {})
    if not states:
        raise _Unrepairable("no intact state of the model was found: every version of it is lost")
    notes: list[str] = []
    meant = _meant_by(damage.legible, states)
    if meant is not None:
        head, lost = states[meant], "nothing lost (enough of that state's id is still legible in the ref)"
    elif damage.named is not None:
        head, lost = _before_named_state(scan, states, damage.named, notes)
    else:
        head = _newest_committed(states, notes)
        lost = _lost_after(head, scan, model)
    reason = f"{damage.key} {damage.cause}; rebuilt from the state {head.id} (entry {head.seq}): {lost}"
    entry = AuditEntry(head.seq + 1, timestamp(), actor, REPAIR, None, None, None, reason)
    repaired = replace(head, seq=head.seq + 1, entries=(entry,), parent=head.id, id=None)
    state_id = registry.write_object(repaired.encode(), STATE_CONTEXT)
    try:
        registry.backend.swap_ref(damage.key, canonical_json({"state": state_id}), damage.token)
    except Conflict:
        raise _Unrepairable("the ref changed while it was being rebuilt; run verify --repair again") from None
    note_change(registry.backend, model, state_id)
    return f"registry {model}: {reason}; the repair is entry {entry.seq}" + "".join(f"; {note}" for note in notes)


def _restore_versions_map(registry: Registry, scan: RegistryScan, model: ModelName,
                          unreadable: VersionMapUnreadable) -> str:
    """Rebuild the unreadable versions map of the ref's state, and every unreadable map between it
    and the newest readable one below it, state by state: that map, then each state's pushes (the
    version records the scan found for the version pushed) and deletes. Each rebuilt map must hash
    to the id its state names; nothing is written unless all of them do."""
    pending: list[tuple[ModelState, str]] = []  # newest first: the states whose maps are unreadable, with the map's id
    versions: dict[str, str] = {}
    source = "nothing (the model's first state)"
    state_id: str | None = unreadable.state_id
    while state_id is not None:
        try:
            state = _read_without_versions(registry, state_id)
        except (CorruptObject, NotFound) as exc:
            raise _Unrepairable(f"the state {state_id} below it cannot be read ({exc})") from None
        if state.versions_id is None:
            versions, source = state.versions, f"the versions of the state {state_id} (entry {state.seq})"
            break
        if not pending or state.versions_id != pending[-1][1]:
            try:
                versions = registry.read_version_map(state.versions_id)
                source = f"the versions map of the state {state_id} (entry {state.seq})"
                break
            except (CorruptObject, NotFound):
                pass
        pending.append((state, state.versions_id))
        state_id = state.parent
    rebuilt: dict[str, bytes] = {}
    for state, map_id in reversed(pending):
        candidates = [versions]
        for entry in state.entries:
            if entry.action == "push" and entry.to is not None:
                records = scan.records.get((model.client, model.model, entry.to), [])
                if not records:
                    raise _Unrepairable(f"no version record of {model}@{entry.to} (entry {entry.seq}) is in the store")
                candidates = [c | {entry.to: record} for c in candidates for record in records]
            elif entry.action == "delete":
                candidates = [{v: r for v, r in c.items() if v != entry.from_} for c in candidates]
        matching = [c for c in candidates
                    if registry_object_id(encode_version_map(model, c), VERSION_MAP_CONTEXT) == map_id]
        if not matching:
            raise _Unrepairable(f"the versions pushed and deleted up to the state {state.id} (entry {state.seq}) "
                                f"do not give the map {map_id} it names")
        versions = matching[0]
        rebuilt[map_id] = encode_version_map(model, versions)
    for map_id, encoded in rebuilt.items():
        registry.backend.write(object_key(parse_id(map_id)), encoded)  # its exact bytes, over any damaged ones
    return (f"registry {model}: {unreadable}; rebuilt exactly (it hashes to its id) from {source} and the "
            f"versions pushed and deleted since")


def _read_without_versions(registry: Registry, state_id: str) -> ModelState:
    """An intact state with its id, its versions map unread (``versions`` empty where it names one)."""
    data = registry.read_object(state_id, STATE_CONTEXT)
    return replace(ModelState.decode(data, state_id, _unread_versions), id=state_id)


def _before_named_state(scan: RegistryScan, states: dict[str, ModelState], named: str,
                        notes: list[str]) -> tuple[ModelState, str]:
    """(head, what was lost) when the ref names a state that is damaged or missing: that state was
    the newest committed one, its intact descendants were never committed, and its parent is the
    head: read from its damaged bytes when they still name an intact state, else chosen by scan."""
    candidates = {i: s for i, s in states.items() if i not in _descendants(states, named)}
    if not candidates:
        raise _Unrepairable(f"no intact state older than {named} was found")
    damaged = scan.damaged.get(named)
    hint = _PARENT.search(damaged) if damaged is not None else None
    if hint is not None and hint[1].decode() in candidates:
        head = candidates[hint[1].decode()]
        notes.append(f"the damaged state still names {head.id} as its parent")
    else:
        head = _newest_committed(candidates, notes)
        notes.append(f"the parent of {named} could not be read: {head.id} is taken for it "
                     "(a state that lost a race to it would look the same)")
    readable = _as_state(damaged)
    if readable is not None and readable.parent == head.id and readable.entries:
        entries = _entries(readable.entries[0].seq, readable.seq)  # its id no longer vouches for them
    else:
        entries = f"entries from {head.seq + 1} on"
    return head, f"{entries}, that state's transaction, are lost"


def _newest_committed(states: dict[str, ModelState], notes: list[str]) -> ModelState:
    """The head of the history among ``states``: a state no other names, with the highest seq,
    leaving out each such state whose parent another state already succeeded (a transaction that
    lost its compare-and-swap: the ref moved from that parent once, to the successor that others
    name). States that share the chosen one's parent are rivals the scan cannot rule out."""
    named = {s.parent for s in states.values()}
    succeeded = {s.parent for i, s in states.items() if i in named}
    heads = [s for i, s in states.items() if i not in named]
    open_heads = [s for s in heads if s.parent not in succeeded] or heads
    open_heads.sort(key=lambda s: (-s.seq, s.entries[-1].at if s.entries else "", s.id))
    head = open_heads[0]
    rivals = [s for s in open_heads[1:] if s.parent == head.parent]
    if rivals:
        notes.append("there was a choice: " + ", ".join(f"{s.id} (entry {s.seq}, {_actions(s)})" for s in rivals)
                     + " has the same parent; only one of these was committed, and the one with the highest seq "
                       "(then the earliest) was taken")
    left_out = len(heads) - 1 - len(rivals)
    if left_out:
        notes.append(f"{left_out} other state(s) that no state follows were left out "
                     "(transactions that lost a race or were interrupted)")
    return head


def _lost_after(head: ModelState, scan: RegistryScan, model: ModelName) -> str:
    """What was lost when the ref itself is unreadable or missing: a newer state can then only show
    as a damaged object, which names the head as its parent or cannot be told apart."""
    successors = [i for i, data in scan.damaged.items() if (hint := _PARENT.search(data)) and hint[1].decode() == head.id]
    if successors:
        return (f"entries from {head.seq + 1} on are lost if the damaged state {', '.join(successors)}, "
                f"which follows {head.id}, was committed")
    unknown = [i for i, data in scan.damaged.items() if _belongs(data, model)]
    if unknown:
        return (f"nothing lost unless the damaged registry object {', '.join(unknown)} held a newer state; "
                "nothing newer was found")
    return "nothing lost"


def _meant_by(legible: str | None, states: dict[str, ModelState]) -> str | None:
    """The one intact state whose id a damaged ref still shows (a truncated or bit-flipped id)."""
    if legible is None:
        return None
    close = []
    for state_id in states:
        agreeing = sum(a == b for a, b in zip(legible, state_id[3:]))
        if agreeing >= _AGREEING and min(len(legible), 64) - agreeing <= _DISAGREEING:
            close.append(state_id)
    return close[0] if len(close) == 1 else None


def _descendants(states: dict[str, ModelState], ancestor: str) -> set[str]:
    children: dict[str | None, list[str]] = {}
    for state_id, state in states.items():
        children.setdefault(state.parent, []).append(state_id)
    found: set[str] = set()
    todo = [ancestor]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _json_object(data: bytes) -> dict[str, Any] | None:
    """A registry object that parses as a JSON object, else None."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _unread_versions(_: str) -> dict[str, str]:
    # choosing a head or checking a ref needs no versions, and a rebuilt state names the head's map itself
    return {}


def _as_state(data: bytes | None) -> ModelState | None:
    """The state ``data`` holds if it parses as one (a damaged state's bytes are used for the report only)."""
    if data is None:
        return None
    try:
        return ModelState.decode(data, "damaged state", _unread_versions)
    except CorruptObject:
        return None


def _belongs(data: bytes, model: ModelName) -> bool:
    """Whether a damaged object may have been a state of ``model`` (unreadable, or still saying so)."""
    readable = _as_state(data)
    return readable is None or readable.model == model


def _entries(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first}–{last}"


def _actions(state: ModelState) -> str:
    return ", ".join(dict.fromkeys(e.action for e in state.entries)) or "no entries"
