"""Integrity check of the registry: every ref, every audit chain, its numbering, what each state's
entries say against the state, a ref set back over committed states, every pointer, and the release
records (policy, gate results, reviews, a rollout's measurements, the last drill) each model's state
names."""

from typing import Any

from ..errors import CorruptObject, NotFound
from .drills import read_drill
from .gate import gate_result
from .pointers import CANARY, KINDS, NAMES
from .policy import policy_of
from .registry import Registry
from .repair import scan_registry
from .review import review_of
from .rollout import measurements, plan_policy, rollout_of
from .state import AuditEntry, ModelState, ref_key

PINS = "pins"  # the pointer field of a pin's and an unpin's audit entry


def verify_registry(registry: Registry) -> list[str]:
    """Problems found: a broken or tampered audit chain, a gap in its numbering, a state whose entries
    do not account for it, a ref set back over committed states, a pointer or pin naming a version
    that does not exist, a version record that does not match its version, a ref that is missing
    while its model has committed states."""
    problems = []
    models = registry.models()
    scan = scan_registry(registry)
    for model in scan.committed_without_ref(models):
        problems.append(f"registry {model}: {ref_key(model)} is missing, but committed states of the model exist")
    for model in models:
        try:
            current = registry.state(model)
            chain = list(registry.trail(model, current.id))
        except (CorruptObject, NotFound) as exc:
            problems.append(f"registry {model}: {exc}")
            continue
        expected_seq = current.seq
        for state_id, made in chain:
            for entry in reversed(made):
                if entry.seq != expected_seq:
                    problems.append(f"registry {model}: audit entry {entry.seq} found where {expected_seq} belongs "
                                    f"(state {state_id})")
                expected_seq = entry.seq - 1
        if expected_seq != 0:
            problems.append(f"registry {model}: audit log ends at entry {expected_seq + 1}, not 1")
        head_id = chain[0][0]  # the current state's
        # the scan may predate a transaction that committed since: its states are then not in it
        states = scan.states.get(model, {}) | {head_id: current}
        for state_id, made in chain:
            if state_id in states:
                problems += [f"registry {model}: state {state_id} {problem}"
                             for problem in _unaccounted(states[state_id], made, states)]
        problems += [f"registry {model}: state {head_id} {problem}" for problem in _versions_unaccounted(current)]
        dropped = scan.newest_dropped(model, head_id)
        if dropped is not None:
            problems.append(f"registry {model}: {ref_key(model)} names {head_id} (entry {current.seq}), but "
                            f"{dropped.id} (entry {dropped.seq}), which follows it, was committed: the ref was set "
                            f"back, and the entries from {current.seq + 1} on are gone from the log")
        named = [current.pointer(kind.name) for kind in KINDS] + list(current.pins)
        for version in filter(None, named):
            if version not in current.versions:
                problems.append(f"registry {model}: a pointer names {version}, which does not exist")
        for version, record_id in current.versions.items():
            try:
                record = registry.record(current, version)
                if record["version"] != version:
                    raise CorruptObject(f"record {record_id} is for {record['version']}")
            except (CorruptObject, NotFound, ValueError, KeyError) as exc:
                problems.append(f"registry {model}@{version}: {exc}")
        problems += _release_problems(registry, model, current)
    return problems


def _unaccounted(state: ModelState, made: tuple[AuditEntry, ...], states: dict[str, ModelState]) -> list[str]:
    """What ``state``'s own entries do not account for: no entry at all, a ``seq`` that is not its
    last entry's, a pointer or pin that is not where its parent had it after the entries' moves,
    a versions map that changed with no push or delete (only where the parent is at hand)."""
    problems = []
    if not made:
        problems.append("has no audit entry: every transaction records at least one")
    elif state.seq != made[-1].seq:
        problems.append(f"has seq {state.seq}, but its last audit entry is {made[-1].seq}")
    parent = states.get(state.parent) if state.parent is not None else ModelState(state.model)
    if parent is None:
        return problems
    expected = _pointers_and_pins(parent)
    for entry in made:
        if entry.pointer == CANARY:
            expected[CANARY] = {"version": entry.to, "percent": entry.percent} if entry.to else None
        elif entry.pointer in NAMES:
            expected[entry.pointer] = entry.to
        elif entry.pointer == PINS:
            expected[PINS] = (expected[PINS] | {entry.to}) if entry.to else (expected[PINS] - {entry.from_})
    found = _pointers_and_pins(state)
    for name, value in found.items():
        if value != expected[name]:
            problems.append(f"has {name} {_shown(value)}, but its parent and its audit entries make it "
                            f"{_shown(expected[name])}")
    pushed_or_deleted = any(entry.action in ("push", "delete") for entry in made)
    if parent.map_era and not pushed_or_deleted and state.versions_id != parent.versions_id:
        problems.append(f"names the versions map {state.versions_id}, but no audit entry of it pushes or deletes a "
                        f"version (its parent names {parent.versions_id})")
    return problems


def _versions_unaccounted(state: ModelState) -> list[str]:
    """What the entries of a state whose versions were read say against them: a pushed version must
    be there, a deleted one not, and among the deleted numbers where the state keeps them."""
    deleted = state.deleted or {}
    return ([f"has no version {e.to}, which its audit entry {e.seq} pushed"
             for e in state.entries if e.action == "push" and e.to not in state.versions]
            + [f"still has version {e.from_}, which its audit entry {e.seq} deleted"
               for e in state.entries if e.action == "delete" and e.from_ in state.versions]
            + [f"does not keep the number of {e.from_}, which its audit entry {e.seq} deleted, among its deleted "
               f"versions" for e in state.entries
               if e.action == "delete" and state.deleted is not None and e.from_ not in deleted]
            + [f"has version {v}, and keeps it among its deleted versions too" for v in deleted if v in state.versions])


def _pointers_and_pins(state: ModelState) -> dict[str, Any]:
    return state.pointer_fields() | {PINS: set(state.pins)}


def _shown(value: Any) -> str:
    if isinstance(value, set):
        return "[" + ", ".join(sorted(value)) + "]"
    if isinstance(value, dict):
        return f"{value['version']} ({value['percent']}%)"
    return value or "unset"


def _release_problems(registry: Registry, model, state) -> list[str]:
    """The policy and the gate results and reviews the current state names must read back intact
    (promote reads them)."""
    problems = []
    try:
        policy_of(registry, state)
    except (CorruptObject, NotFound) as exc:
        problems.append(f"registry {model}: policy: {exc}")
    for version in state.checks:
        if version not in state.versions:
            problems.append(f"registry {model}: checks name {version}, which does not exist")
        for read in (gate_result, review_of):
            try:
                read(registry, state, version)
            except (CorruptObject, NotFound) as exc:
                problems.append(f"registry {model}@{version}: {exc}")
    rollout = rollout_of(state)
    try:
        if rollout is not None:
            plan_policy(registry, rollout)
            measurements(registry, rollout.measurement)
            for failed in rollout.failed:
                measurements(registry, failed, limit=1)
        if state.drill is not None:
            read_drill(registry, state.drill)
    except (CorruptObject, NotFound) as exc:
        problems.append(f"registry {model}: {exc}")
    return problems
