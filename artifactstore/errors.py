"""The package's one exception hierarchy.

Every error a user can cause derives from ``ArtifactStoreError``; the CLI prints
its message on one line and exits non-zero. Anything else is a bug.
"""


class ArtifactStoreError(Exception):
    """Base class: a problem the user can act on, with a one-line message."""


class InvalidParameter(ArtifactStoreError, ValueError):
    """An argument is outside what the operation accepts."""


class InvalidInput(ArtifactStoreError):
    """Input content or paths the store refuses (symlinks, special files, escapes)."""


class NotFound(ArtifactStoreError, KeyError):
    """A path, id or store that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreError(ArtifactStoreError):
    """The store is unusable: not initialised, wrong format version, unreadable."""


class CorruptObject(ArtifactStoreError):
    """Stored bytes do not match their id."""


class HistoryDamaged(CorruptObject):
    """A state in the middle of a model's history is damaged: its audit log reads only down to it.
    ``entries``: what could be read, the newest entries, oldest first."""

    def __init__(self, message: str, entries: list):
        super().__init__(message)
        self.entries = entries


class Conflict(ArtifactStoreError):
    """A compare-and-swap lost: someone else changed the pointer or version first."""


class Refused(ArtifactStoreError):
    """A rule refused a pointer move (a release policy: a version without the gate or review it needs).
    ``--force`` with a ``--reason`` overrides it, and the audit entry records ``refusal`` as the override."""

    def __init__(self, refusal: str):
        super().__init__(f"{refusal} (or --force with a --reason, recorded as an override)")
        self.refusal = refusal
