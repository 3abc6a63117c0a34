"""artifactstore: a content-addressed artifact store and version registry for model weights."""

from .errors import ArtifactStoreError, Conflict, CorruptObject, InvalidInput, InvalidParameter, NotFound, StoreError
from .store import PutResult, Store, StoreStats, VerifyReport

__all__ = [
    "ArtifactStoreError", "Conflict", "CorruptObject", "InvalidInput", "InvalidParameter", "NotFound",
    "PutResult", "Store", "StoreError", "StoreStats", "VerifyReport",
]
