"""artifactstore: a content-addressed artifact store and version registry for model weights.

The package is built in wings (docs/architecture.md), each a subpackage that may import only the
wings below it: ``backends`` < ``content`` < ``registry`` < ``monitoring`` < ``lifecycle`` | ``serving``
< ``release``, with the ``Store`` facade, the dashboard, the CLI and the demo on top. The layers are
checked by import-linter.
"""

from .errors import (
    ArtifactStoreError,
    Conflict,
    CorruptObject,
    HistoryDamaged,
    InvalidInput,
    InvalidParameter,
    NotFound,
    Refused,
    StoreError,
)
from .store import PutResult, Store, StoreStats, VerifyReport

__all__ = [
    "ArtifactStoreError", "Conflict", "CorruptObject", "HistoryDamaged", "InvalidInput", "InvalidParameter",
    "NotFound", "PutResult", "Refused", "Store", "StoreError", "StoreStats", "VerifyReport",
]
