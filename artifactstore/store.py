"""``Store``: the whole product behind one object, for the CLI and for Python users.

A thin facade: it opens a content store and a registry over it and hands each call to the wing
that does the work (docs/architecture.md). Everything it offers can also be done by composing
``ContentStore``, ``Registry`` and the functions of ``lifecycle`` and ``serving`` directly.
"""

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.remote import mask_secrets, mask_url
from .content.chunking import DEFAULT_PARAMS, ChunkerParams
from .content.config import DEFAULT_KEEP_HOT
from .content.store import ContentStore, PutResult, StoreStats
from .content.verify import verify_content
from .errors import NotFound
from .lifecycle.gc import GcReport, collect_garbage
from .lifecycle.roots import Roots, missing_roots, read_roots
from .lifecycle.tier import PullReport, TierReport, pull
from .lifecycle.tier import tier as tier_packs
from .progress import Progress, no_progress
from .registry import queries
from .registry.registry import PushResult, Registry
from .registry.state import AuditEntry, ModelState
from .registry.verify import verify_registry
from .serving.load import WEIGHTS_DIR, Loader


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    problems: list[str]
    repaired: list[str]


class Store:
    """A store: content-addressed data plus the version registry.

    Open an existing one with ``Store(path)`` (a directory, or ``s3://bucket/prefix`` for a store
    shared by many machines), create one with ``Store.init(path)``.
    """

    def __init__(self, location: str | os.PathLike, *, cache: str | os.PathLike | None = None):
        """See ``ContentStore.open`` for ``location`` and ``cache``."""
        self.content = ContentStore.open(location, cache=cache)
        self.registry = Registry(self.content)
        self.loader = Loader(self.content)  # one per store: it remembers how it loaded recent files

    @classmethod
    def init(cls, location: str | os.PathLike, chunker: ChunkerParams = DEFAULT_PARAMS, *, cold: str | None = None,
             keep_hot: int = DEFAULT_KEEP_HOT, cache: str | os.PathLike | None = None) -> "Store":
        """Create a store; see ``ContentStore.init``."""
        ContentStore.init(location, chunker, cold=cold, keep_hot=keep_hot, cache=cache)
        return cls(location, cache=cache)

    # -- where things are -------------------------------------------------------------------

    @property
    def location(self) -> str:
        return self.content.location

    @property
    def path(self) -> Path:
        return self.content.path

    @property
    def backend(self):
        return self.content.home

    @property
    def hot(self):
        return self.content.hot

    @property
    def cold(self):
        return self.content.cold

    @property
    def cold_url(self) -> str | None:
        return self.content.cold_url

    @property
    def shared(self) -> bool:
        return self.content.shared

    @property
    def keep_hot(self) -> int:
        return self.content.config.keep_hot

    @property
    def chunker(self) -> ChunkerParams:
        return self.content.config.chunker

    @property
    def index(self):
        return self.content.index

    def effective_config(self) -> dict[str, Any]:
        """What this store runs with, including the AWS settings from the environment, secrets masked."""
        aws = {k: v for k, v in sorted(os.environ.items()) if k.startswith("AWS_")}
        return {"store": mask_url(self.location), "hot": str(self.path.resolve()),
                "format_version": self.content.config.version, "chunker": self.chunker.as_kwargs(),
                "cold": mask_url(self.cold_url), "keep_hot": self.keep_hot, "environment": mask_secrets(aws)}

    # -- content ----------------------------------------------------------------------------

    def put(self, path: str | os.PathLike, *, progress: Progress = no_progress) -> PutResult:
        return self.content.put(path, progress=progress)

    def identify(self, path: str | os.PathLike) -> str:
        return self.content.identify(path)

    def get(self, object_id: str, dest: str | os.PathLike, *, progress: Progress = no_progress) -> None:
        self.content.get(object_id, dest, progress=progress)

    def read_manifest(self, object_id: str):
        return self.content.read_manifest(object_id)

    def stats(self) -> StoreStats:
        return self.content.stats()

    def checkout(self, ref: str, dest: str | os.PathLike, *, progress: Progress = no_progress) -> Path:
        """Write a version's ``adapter_weights/`` as a PEFT / vLLM adapter directory at ``dest``."""
        tree = self.content.subtree(self.resolve(ref), WEIGHTS_DIR)
        if not tree.entries:
            raise NotFound(f"{ref} has no {WEIGHTS_DIR} to check out")
        return self.content.materialize(tree, dest, progress)

    def verify(self, *, tier: str = "all", sample: float = 100.0, repair: bool = False,
               progress: Progress = no_progress) -> VerifyReport:
        """Re-hash chunks and check index files, manifests and the registry; name what is damaged.

        See ``verify_content`` for ``tier``, ``sample`` and ``repair``.
        """
        problems, repairs = verify_content(self.content, progress, tier=tier, sample=sample, repair=repair)
        problems += verify_registry(self.registry)
        problems += missing_roots(self.registry, self.content)
        return VerifyReport(not problems, problems, repairs)

    # -- registry ---------------------------------------------------------------------------

    def push(self, bundle_dir, ref: str, *, bump: str | None = None, actor: str | None = None,
             reason: str = "") -> PushResult:
        return self.registry.push(bundle_dir, ref, bump=bump, actor=actor, reason=reason)

    def stage(self, ref: str, *, actor: str | None = None, reason: str = "", expect: str | None = None) -> ModelState:
        return self.registry.stage(ref, actor=actor, reason=reason, expect=expect)

    def promote(self, ref: str, *, actor: str | None = None, reason: str = "", expect: str | None = None) -> ModelState:
        return self.registry.promote(ref, actor=actor, reason=reason, expect=expect)

    def rollback(self, model: str, *, to: str | None = None, actor: str | None = None, reason: str = "",
                 expect: str | None = None) -> ModelState:
        return self.registry.rollback(model, to=to, actor=actor, reason=reason, expect=expect)

    def set_canary(self, ref: str, percent: int, *, actor: str | None = None, reason: str = "",
                   expect: str | None = None) -> ModelState:
        return self.registry.set_canary(ref, percent, actor=actor, reason=reason, expect=expect)

    def pin(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        return self.registry.pin(ref, actor=actor, reason=reason)

    def unpin(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        return self.registry.unpin(ref, actor=actor, reason=reason)

    def delete(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        return self.registry.delete(ref, actor=actor, reason=reason)

    def state(self, model) -> ModelState:
        return self.registry.state(model)

    def states(self, model) -> Iterator[tuple[str, ModelState]]:
        return self.registry.states(model)

    def log(self, model) -> list[AuditEntry]:
        return self.registry.log(model)

    def models(self):
        return self.registry.models()

    def resolve(self, ref: str) -> str:
        return self.registry.resolve(ref)

    def resolve_version(self, ref) -> tuple[ModelState, str]:
        return self.registry.resolve_version(ref)

    def version_record(self, ref) -> dict[str, Any]:
        return self.registry.version_record(ref)

    def show(self, ref: str) -> dict[str, Any]:
        return queries.show(self.registry, ref)

    def ls(self, model: str | None = None) -> list[dict[str, Any]]:
        return queries.ls(self.registry, model)

    def export_registry(self) -> str:
        return queries.export_registry(self.registry)

    def lineage(self, *, training_data: str | None = None, adapter: str | None = None,
                base_model: str | None = None) -> list[dict[str, Any]]:
        return queries.lineage(self.registry, training_data=training_data, adapter=adapter, base_model=base_model)

    def diff(self, ref_a: str, ref_b: str) -> dict[str, Any]:
        return queries.diff(self.registry, ref_a, ref_b)

    def changelog(self, ref_a: str, ref_b: str) -> str:
        return queries.changelog(self.registry, ref_a, ref_b)

    # -- lifecycle --------------------------------------------------------------------------

    def roots(self) -> Roots:
        return read_roots(self.registry, self.keep_hot)

    def hot_versions(self) -> list[str]:
        return self.roots().hot_versions

    def tier(self, *, dry_run: bool = False, progress: Progress = no_progress) -> TierReport:
        return tier_packs(self.content, self.roots(), dry_run=dry_run, progress=progress)

    def pull(self, ref: str, *, progress: Progress = no_progress) -> PullReport:
        return pull(self.content, self.resolve(ref), progress=progress)

    def gc(self, *, dry_run: bool = False, grace: str = "1h", progress: Progress = no_progress) -> GcReport:
        return collect_garbage(self.content, self.registry, dry_run=dry_run, grace=grace, progress=progress)

    # -- serving ----------------------------------------------------------------------------

    def load(self, ref_or_id: str, *, device: str = "cpu", framework: str = "numpy",
             names: Iterable[str] | None = None) -> dict[str, Any]:
        """The tensors of a version (``client/model@vX.Y.Z``, ``@POINTER``, ``@latest``) or of a
        stored safetensors file or tree (``b3:…``); see ``Loader.load``."""
        return self.loader.load(self.resolve(ref_or_id), device=device, framework=framework, names=names,
                                label=ref_or_id)
