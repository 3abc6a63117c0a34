"""What a version must have passed, under its model's policy, before it serves traffic (enforced by
``rules.release_rule``)."""

from ..errors import InvalidInput
from .gate import gate_result
from .pointers import PRODUCTION
from .policy import Policy, policy_of
from .registry import Registry
from .review import review_of
from .state import ModelState


def missing_checks(registry: Registry, state: ModelState, version: str, policy: Policy | None = None) -> list[str]:
    """What ``version`` lacks, under ``policy`` (default: the model's), to take production's traffic
    now: a gate passed (or its failures accepted) against the current production (its record, not
    only its version name) under the current gate settings, an approval on enough outputs, and smoke
    tests when the policy requires them. Empty: nothing."""
    policy = policy or policy_of(registry, state)
    if policy is None:
        return []
    missing = []
    if policy.gate.required:
        result = gate_result(registry, state, version)
        production = state.pointer(PRODUCTION)
        if result is None:
            missing.append("no gate result (run `artifactstore gate`)")
        elif result.production != production:
            missing.append(f"the gate compared it with {result.production or 'no production'}, but production is "
                           f"{production or 'unset'} now (run the gate again)")
        elif production is not None and result.production_record != state.versions.get(production):
            missing.append(f"the gate compared it with another {production}, since deleted and pushed again "
                           f"(run the gate again)")
        elif result.settings != policy.gate.model_dump(mode="json"):
            missing.append("the gate ran under other gate settings than the policy's now (run it again)")
        elif not result.passed:
            missing.append(f"the gate failed on {', '.join(result.failed())} "
                           f"(fix them, or accept a trade-off: gate --accept METRIC --reason TEXT)")
    if policy.review.required:
        review = review_of(registry, state, version)
        if review is None:
            missing.append(f"no review (approve after at least {policy.review.min_samples} outputs: "
                           f"`artifactstore review`)")
        elif not review.approved:
            missing.append(f"rejected by {review.by} at {review.at}")
        elif review.samples < policy.review.min_samples:
            missing.append(f"approved after {review.samples} outputs; the policy asks for "
                           f"{policy.review.min_samples}")
    if policy.smoke.required:
        from .bundle import SMOKE_TESTS, smoke_tests_of  # here: bundle validation loads pydantic models and YAML

        try:
            if not smoke_tests_of(registry.content, registry.record(state, version)["bundle"]):
                missing.append(f"no {SMOKE_TESTS} in its bundle (the policy requires known inputs to check "
                               f"every swap with)")
        except InvalidInput as exc:
            missing.append(f"its {SMOKE_TESTS} is unusable ({exc})")
    return missing
