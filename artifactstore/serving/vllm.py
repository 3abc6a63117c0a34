"""A vLLM ``LoRAResolver``: vLLM asks the store for an adapter by its immutable name.

vLLM (>= 0.8) resolves a ``model`` it does not know through the resolvers that plugins of the
entry-point group ``vllm.general_plugins`` register (``register`` below, enabled with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``), and then keeps that name's adapter for the server's life.
So the names it is given must be immutable: ``client/model@vX.Y.Z`` or a bundle id ``b3:…``. A
pointer (``@production``) is refused with a message saying to route it (``artifactstore route``,
or the gateway). docs/serving.md, "vLLM".

vLLM is imported only inside ``register`` and ``resolve_lora``: this module imports without it.
"""

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..content.store import ContentStore
from ..errors import InvalidInput, InvalidParameter, NotFound
from ..ids import PREFIX, parse_id
from ..registry.bundle import METADATA, read_metadata
from ..registry.pointers import NAMES
from ..registry.refs import Ref
from ..registry.registry import Registry
from .adapters import AdapterCache, parse_size

log = logging.getLogger(__name__)

RESOLVER_NAME = "artifactstore"
DEFAULT_CACHE_SIZE = "10GiB"


class StoreResolver:
    """Resolves immutable adapter names from a store into checked-out directories in ``cache``.

    A version is served only if its base model (metadata.yaml's ``base_model``) is the one vLLM
    runs: vLLM passes its ``--model`` value, a hub id or a local path, as ``base_model_name``;
    ``base_model_aliases`` are the other names that base model has in the registry.
    """

    def __init__(self, registry: Registry, cache: AdapterCache, base_model_aliases: Iterable[str] = ()):
        self.registry = registry
        self.content = registry.content
        self.cache = cache
        self.base_model_aliases = frozenset(base_model_aliases)

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
        """vLLM's ``LoRAResolver.resolve_lora``: a ``LoRARequest``, or None for a name that is not
        this store's or names nothing in it. A name refused (a pointer, another base model) raises
        ``InvalidParameter``, a ``ValueError``, which vLLM answers with 400 and the message."""
        from vllm.lora.request import LoRARequest

        found = await asyncio.to_thread(self.resolve, base_model_name, lora_name)
        if found is None:
            return None
        path, bundle_id = found
        return LoRARequest(lora_name=lora_name, lora_int_id=adapter_int_id(bundle_id), lora_path=str(path))

    def resolve(self, base_model_name: str, lora_name: str) -> tuple[Path, str] | None:
        """(adapter directory, bundle id) of ``lora_name``, checked out if need be; blocking."""
        if not (lora_name.startswith(PREFIX) or "@" in lora_name):
            return None  # a name for another resolver
        ref = Ref.parse(lora_name)
        if ref.model is not None and not ref.is_version:
            kind = "pointer" if ref.target in NAMES else "moving name"
            raise InvalidParameter(
                f"{lora_name} is a {kind}, and vLLM keeps what a name resolved to for good: route it to a version "
                f"first (`artifactstore route {lora_name}`, or send requests through `artifactstore gateway`)")
        try:
            if ref.model is not None:
                record = self.registry.version_record(ref)
                bundle_id, base_model = record["bundle"], record["base_model"]
            else:
                bundle_id = lora_name
                base_model = self._bundle_base_model(bundle_id)
        except NotFound as exc:
            log.info("artifactstore: %s: %s", lora_name, exc)
            return None
        if base_model != base_model_name and base_model not in self.base_model_aliases:
            served = ", ".join(sorted({base_model_name, *self.base_model_aliases}))
            raise InvalidParameter(
                f"{lora_name} is an adapter for {base_model}, and this server runs {served} "
                f"(if that is the same model, add {base_model} to ARTIFACTSTORE_BASE_MODEL)")
        try:
            return self.cache.get(bundle_id, label=lora_name), bundle_id
        except NotFound as exc:  # a bundle that is no adapter (no adapter_weights/): the request is wrong
            raise InvalidParameter(str(exc)) from None

    def _bundle_base_model(self, bundle_id: str) -> str:
        """metadata.yaml's base model, read from the bundle itself (a bundle id names no version)."""
        data = self.content.read_tree_file(bundle_id, METADATA)
        if data is None:
            raise NotFound(f"{bundle_id} is not a bundle (no {METADATA})")
        try:
            return read_metadata(data, bundle_id).base_model
        except InvalidInput as exc:  # a client named a tree no push would take: its request is wrong
            raise InvalidParameter(str(exc)) from None


def adapter_int_id(bundle_id: str) -> int:
    """A positive id that is the same for the same bundle in every process (vLLM's ``lora_int_id``:
    its server numbers adapters itself, its offline ``LLM`` trusts equal ids to mean equal adapters)."""
    return int.from_bytes(parse_id(bundle_id)[:8], "big") >> 1 or 1


def resolver_from_environment(environ: Mapping[str, str] | None = None,
                              resolver_class: type[StoreResolver] = StoreResolver) -> StoreResolver:
    """The resolver configured as docs/serving.md says: ``ARTIFACTSTORE_STORE`` (required),
    ``ARTIFACTSTORE_ADAPTER_CACHE``, ``ARTIFACTSTORE_ADAPTER_CACHE_SIZE``, ``ARTIFACTSTORE_BASE_MODEL``
    (and ``ARTIFACTSTORE_CACHE``, a shared store's chunk cache)."""
    env = os.environ if environ is None else environ
    location = env.get("ARTIFACTSTORE_STORE")
    if not location:
        raise InvalidParameter("set ARTIFACTSTORE_STORE to the store vLLM should load adapters from")
    content = ContentStore.open(location, cache=env.get("ARTIFACTSTORE_CACHE") or None)
    directory = env.get("ARTIFACTSTORE_ADAPTER_CACHE") or Path.home() / ".cache" / "artifactstore" / "adapters"
    size = parse_size(env.get("ARTIFACTSTORE_ADAPTER_CACHE_SIZE") or DEFAULT_CACHE_SIZE)
    aliases = [name.strip() for name in env.get("ARTIFACTSTORE_BASE_MODEL", "").split(",") if name.strip()]
    return resolver_class(Registry(content), AdapterCache(content, directory, size), aliases)


def register() -> None:
    """The ``vllm.general_plugins`` entry point: registers the resolver in this vLLM process.

    vLLM calls it once in each of its processes; only the API server resolves adapters, so a
    missing configuration is logged, not raised, and the store is opened here (a few small reads).
    """
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    class ArtifactStoreLoRAResolver(StoreResolver, LoRAResolver):
        pass

    try:
        resolver = resolver_from_environment(resolver_class=ArtifactStoreLoRAResolver)
    except Exception as exc:  # a plugin that raises stops nothing in vLLM: say what is missing instead
        log.error("artifactstore: the vLLM adapter resolver is not registered: %s", exc)
        return
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
    if os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() not in ("1", "true"):
        log.warning("artifactstore: set VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, or vLLM never asks a resolver")
