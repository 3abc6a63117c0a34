"""Which version serves a request: the canary split of ``@production``, sticky per request key.

A request names a pointer (``acme/support@production``); an inference server must be given an
immutable version (``acme/support@v1.3.0``), because vLLM and other servers cache what a name
meant. While a canary is set, ``percent``% of request keys go to it: a key's bucket is the first
8 bytes of ``BLAKE3(client/model NUL key)``, big-endian, modulo 10,000, and it goes to the canary
when the bucket is below ``percent * 100``. The same key keeps its version while the canary is
unchanged, and a key in the canary stays in it as the percent grows. docs/serving.md, "Routing".
"""

import secrets

import blake3

from ..errors import InvalidParameter, NotFound
from .pointers import NAMES, PRODUCTION
from .refs import ModelName, Ref
from .registry import Registry
from .state import ModelState

BUCKETS = 10_000


def bucket(model: ModelName, key: str) -> int:
    """The key's bucket, 0 to 9,999, for this model."""
    digest = blake3.blake3(f"{model}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def route(state: ModelState, pointer: str, key: str) -> str:
    """The version a request for ``state.model@pointer`` from ``key`` goes to."""
    version = state.pointer(pointer)
    if version is None:
        raise NotFound(f"{state.model}@{pointer} is not set")
    canary = state.canary
    if pointer == PRODUCTION and canary and bucket(state.model, key) < canary["percent"] * BUCKETS // 100:
        return canary["version"]
    return version


def route_ref(registry: Registry, ref: str, key: str | None = None) -> str:
    """The immutable name ``client/model@vX.Y.Z`` that serves a request for ``ref``.

    A pointer is routed (``route``); a version is checked to exist; ``@latest`` is resolved.
    Without a key each call is its own key: the split holds on average, with no stickiness.
    """
    parsed = Ref.parse(ref)
    if parsed.model is None:
        raise InvalidParameter(f"{ref} is a content id, already immutable; route takes client/model@POINTER")
    if parsed.target in NAMES:
        version = route(registry.state(parsed.model), parsed.target, secrets.token_hex(16) if key is None else key)
    else:
        version = registry.resolve_version(parsed)[1]
    return f"{parsed.model}@{version}"
