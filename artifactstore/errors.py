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


class Conflict(ArtifactStoreError):
    """A compare-and-swap lost: someone else changed the pointer or version first."""
