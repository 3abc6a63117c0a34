"""Human review: someone who knows the client's domain looked at a version's outputs and signed off
(or did not). Recorded like a gate result: an immutable registry object named from the model's
state (``checks[version]["review"]``), in one audited transaction.
"""

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..clock import timestamp
from ..content.manifest import canonical_json
from ..errors import Conflict, CorruptObject, InvalidParameter
from .policy import policy_of
from .registry import Move, Registry
from .state import ModelState

REVIEW_CONTEXT = "artifactstore 2026-11 review v1"


@dataclass(frozen=True)
class Review:
    model: str
    version: str
    record: str  # the version record reviewed
    approved: bool
    by: str
    at: str
    samples: int  # outputs reviewed
    notes: str
    id: str | None = None  # the registry object it is stored as; not part of its bytes

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["id"]
        return {"kind": "review", **fields}

    @classmethod
    def decode(cls, data: bytes, review_id: str) -> "Review":
        try:
            obj = json.loads(data)
            if obj.pop("kind") != "review":
                raise ValueError("not a review")
            return cls(**obj, id=review_id)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"review {review_id}: malformed ({exc})") from None

    def summary(self) -> dict[str, Any]:
        return {"approved": self.approved, "by": self.by, "at": self.at, "samples": self.samples,
                "notes": self.notes, "id": self.id}


def review_of(registry: Registry, state: ModelState, version: str) -> Review | None:
    """The latest review recorded for one of ``state``'s versions."""
    review_id = state.checks.get(version, {}).get("review")
    if review_id is None:
        return None
    return Review.decode(registry.read_object(review_id, REVIEW_CONTEXT), review_id)


def record_review(registry: Registry, ref: str, *, approve: bool, actor: str, samples: int,
                  notes: str = "") -> tuple[Review, ModelState]:
    """Record a reviewer's verdict on version ``ref`` after looking at ``samples`` of its outputs.

    An approval on fewer outputs than the model's policy asks for is refused (a rejection needs no
    minimum). The latest review of a version is the one that counts.
    """
    if not actor or not actor.strip():
        raise InvalidParameter("a review needs the reviewer: --by WHO")
    if samples < 1:
        raise InvalidParameter(f"--samples must be at least 1 (outputs reviewed), not {samples}")
    state, version = registry.resolve_version(ref)
    policy = policy_of(registry, state)
    if approve and policy is not None and samples < policy.review.min_samples:
        raise InvalidParameter(f"{state.model}'s policy asks an approval to review at least "
                               f"{policy.review.min_samples} outputs; --samples {samples} is fewer")
    review = Review(str(state.model), version, state.versions[version], approve, actor, timestamp(), samples, notes)
    encoded = canonical_json(review.to_json())
    stored: list[str] = []

    def change(current: ModelState) -> list[Move]:
        if current.versions.get(version) != review.record:
            raise Conflict(f"{state.model}@{version} was deleted while the review was recorded")
        stored.append(registry.write_object(encoded, REVIEW_CONTEXT))
        checks = {**current.checks, version: {**current.checks.get(version, {}), "review": stored[-1]}}
        return [{"action": "review", "pointer": None, "from": None, "to": version, "state": {"checks": checks}}]

    verdict = f"{'approved' if approve else 'rejected'} after {samples} outputs"
    new_state = registry.transact(state.model, change, actor, f"{verdict}: {notes}" if notes else verdict)
    return replace(review, id=stored[-1]), new_state
