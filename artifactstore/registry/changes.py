"""The store-wide change marker: one small object rewritten after every ref swap of a shared store.

A follower of object storage cannot watch a ref; it polls. Polling one object for the whole store
instead of each model's ref makes a node's idle request rate independent of the number of models
it follows: it reads a model's ref only when the marker changed (docs/format.md, "Change marker").
The marker is a hint, never the truth: it is written with a plain PUT after the swap committed, so
a writer that dies in between, or loses a race to another writer's marker, leaves it stale, and a
writer of an older version never writes it. Followers therefore also look at their own ref slowly.
A store in a local directory has no marker: its followers watch the ref's file itself.
"""

import logging
import uuid

from ..backends import Backend
from ..clock import timestamp
from ..content.manifest import canonical_json
from ..errors import ArtifactStoreError
from .refs import ModelName

CHANGES_KEY = "registry/changes"

_log = logging.getLogger(__name__)


def has_marker(backend: Backend) -> bool:
    """Whether the store keeps a change marker: where its refs are not local files."""
    return backend.capabilities.local_directory is None


def note_change(backend: Backend, model: ModelName, state_id: str) -> None:
    """Rewrite the marker after ``model``'s ref was swapped to ``state_id``. The swap has committed:
    a marker that cannot be written is logged, never raised (followers find the move on their slow
    look at the ref)."""
    if not has_marker(backend):
        return
    marker = canonical_json({"at": timestamp(), "model": str(model), "state": state_id, "write": uuid.uuid4().hex})
    try:
        backend.write(CHANGES_KEY, marker)
    except (ArtifactStoreError, OSError) as exc:
        _log.warning("%s moved to %s, but the change marker %s was not written (%s): followers of the store "
                     "notice the move on their next slow look at its ref", model, state_id, CHANGES_KEY, exc)


def marker_token(backend: Backend) -> str | None:
    """What changes whenever the marker is rewritten (its ETag on S3; None while there is none):
    one GET of a small object."""
    return backend.read_ref(CHANGES_KEY)[1]
