"""The transition rules (pointers.py) a store's registry applies to every pointer move.

``release_rule`` refuses, with ``Refused``, to point ``production`` or the canary at a version that
lacks a check its model's policy requires. A model without a policy is never refused, and neither
is a rollback or a drill's move: restoring a version that served before must always be possible.
``rollout_rule`` refuses hand-made canary moves while a rollout drives the canary.

Both are cheap to import: every command opens a registry with them, and only a model with a policy
needs the policy code (pydantic), which ``release_rule`` imports when it meets one.
"""

from ..errors import Refused
from .pointers import CANARY, PRODUCTION, Transition
from .registry import Registry
from .state import ModelState


def release_rule(registry: Registry, state: ModelState, transition: Transition) -> None:
    """Refuse a move of production or the canary to a version that lacks its required checks."""
    if state.policy is None or transition.to is None or transition.action in ("rollback", "drill") \
            or transition.pointer not in (PRODUCTION, CANARY):
        return
    from .checks import missing_checks  # here: a command on a model without a policy never loads it

    missing = missing_checks(registry, state, transition.to)
    if missing:
        raise Refused(f"{transition.model}@{transition.to} may not become {transition.pointer} under its policy: "
                      f"{'; '.join(missing)}")


def rollout_rule(registry: Registry, state: ModelState, transition: Transition) -> None:
    """Refuse a hand-made canary move while a rollout drives the canary (``--force`` overrides it; the
    next tick then ends the rollout)."""
    if state.rollout is not None and transition.pointer == CANARY and transition.action == "canary":
        raise Refused(f"{transition.model}'s canary is driven by the rollout of {state.rollout['version']}: "
                      f"use `artifactstore rollout pause|abort`")
