"""The transition rules (pointers.py) a store's registry applies to every pointer move.

``release_rule`` refuses, with ``Refused``, to point ``production``, the canary or (by hand) the
rollback target at a version that lacks a check its model's policy requires. A model without a
policy is never refused, and neither is restoring a version that served before: a rollback or a
drill to a version production had, or to the rollback target (named under this rule), and naming
a version production had as the target. A rollback to a version that never served is a promote.
``rollout_rule`` refuses hand-made canary moves while a rollout drives the canary.

Both are cheap to import: every command opens a registry with them, and only a model with a policy
needs the policy code (pydantic), which ``release_rule`` imports when it meets one.
"""

from ..errors import Refused
from .pointers import CANARY, PRODUCTION, ROLLBACK_TARGET, Transition
from .registry import Registry
from .state import ModelState


def release_rule(registry: Registry, state: ModelState, transition: Transition) -> None:
    """Refuse to put a version in traffic's way (production, the canary, the rollback target)
    unless it has its required checks or served before."""
    if state.policy is None or transition.to is None or not _needs_checks(state, transition):
        return
    from .checks import missing_checks  # here: a command on a model without a policy never loads it

    missing = missing_checks(registry, state, transition.to)
    if missing:
        raise Refused(f"{transition.model}@{transition.to} may not become {transition.pointer} under its policy: "
                      f"{'; '.join(missing)}")


def _needs_checks(state: ModelState, transition: Transition) -> bool:
    if transition.pointer == CANARY:
        return True
    served = transition.to in state.deployments
    if transition.pointer == PRODUCTION:
        restores = transition.action in ("rollback", "drill")
        return not (restores and (served or transition.to == state.pointer(ROLLBACK_TARGET)))
    # a promote, rollback or drill names the production it replaced; a hand-made target may be anything
    return transition.pointer == ROLLBACK_TARGET and transition.action == "target" and not served


def rollout_rule(registry: Registry, state: ModelState, transition: Transition) -> None:
    """Refuse a hand-made canary move while a rollout drives the canary (``--force`` overrides it; the
    next tick then ends the rollout)."""
    if state.rollout is not None and transition.pointer == CANARY and transition.action == "canary":
        raise Refused(f"{transition.model}'s canary is driven by the rollout of {state.rollout['version']}: "
                      f"use `artifactstore rollout pause|abort`")
