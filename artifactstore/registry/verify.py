"""Integrity check of the registry: every ref, every audit chain, its numbering, every pointer, and the
release records (policy, gate results, reviews, a rollout's measurements, the last drill) each
model's state names."""

from ..errors import CorruptObject, NotFound
from .drills import read_drill
from .gate import gate_result
from .pointers import KINDS
from .policy import policy_of
from .registry import Registry
from .repair import scan_registry
from .review import review_of
from .rollout import measurements, plan_policy, rollout_of
from .state import ref_key


def verify_registry(registry: Registry) -> list[str]:
    """Problems found: a broken or tampered audit chain, a gap in its numbering, a pointer or pin
    naming a version that does not exist, a version record that does not match its version, a ref
    that is missing while its model has committed states."""
    problems = []
    models = registry.models()
    for model in scan_registry(registry).committed_without_ref(models):
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
