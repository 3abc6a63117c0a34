"""Deployment pointers, each defined once, and the one place where a pointer move can be refused.

A pointer names a version of a model for a purpose. The CLI, the reports, tiering and the
follower loop over ``KINDS`` instead of naming pointers, so a new kind is added here alone.

Every pointer move a registry command makes is offered, as a ``Transition``, to the registry's
rules before anything is written; a rule that raises ``Refused`` stops the whole command, unless
the command is forced with a reason: the move is then made and its audit entry records the
refusal as ``override`` (``Registry.transact``). This is where release policies (an eval gate, a
human review, canary rules) plug in: ``rules.py``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .refs import ModelName
    from .registry import Registry
    from .state import ModelState

PRODUCTION = "production"
STAGING = "staging"
CANARY = "canary"
ROLLBACK_TARGET = "rollback_target"


@dataclass(frozen=True)
class PointerKind:
    name: str
    meaning: str
    carries_percent: bool = False  # it routes a share of traffic, recorded with it


KINDS = (
    PointerKind(PRODUCTION, "the version that serves traffic"),
    PointerKind(STAGING, "the candidate being evaluated"),
    PointerKind(CANARY, "a version receiving a share of traffic beside production", carries_percent=True),
    PointerKind(ROLLBACK_TARGET, "the version a rollback returns production to"),
)
NAMES = tuple(kind.name for kind in KINDS)
EXPECT_UNSET = "none"  # what --expect says of a pointer that names no version (no version is called so)


@dataclass(frozen=True)
class Transition:
    """One pointer move, as the rules see it before it happens."""

    model: "ModelName"
    action: str  # the command: stage, promote, rollback, canary, target
    pointer: str
    from_: str | None
    to: str | None  # None: the pointer is cleared
    percent: int | None
    actor: str
    reason: str


# A rule raises ``Refused`` (errors.py) with the reason to stop a move; it sees the model's state
# before the command and may read anything else from the registry.
TransitionRule = Callable[["Registry", "ModelState", Transition], None]
