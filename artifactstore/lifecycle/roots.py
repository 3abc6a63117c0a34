"""What is live and what is hot: the one place that decides it.

Roots are what the registry names (every current version's bundle; the hot set of versions that
pointers, pins and recency keep on local disk) and what was stored without the registry (what a
plain put recorded as kept, trees no version ever named, files no tree lists). gc keeps what is
live, ``tier`` keeps what is hot in the hot tier, and verify checks that every root is present. A
new kind of registry-owned object becomes live by being named here.

Monitoring data (drift counts, eval runs) belongs to its version: it is live while that version
exists with the bundle it was recorded for, and hot while that version is; a model's labelled-data
counts and alert record are live while the model has a version.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from ..content.kept import kept_objects
from ..content.manifest import FileManifest, TreeManifest
from ..content.store import ContentStore
from ..errors import CorruptObject, NotFound
from ..ids import format_id
from ..monitoring.arrays import StoredVersion
from ..registry.pointers import KINDS
from ..registry.refs import ModelName
from ..registry.registry import Registry
from ..registry.state import ModelState


@dataclass(frozen=True)
class Roots:
    """What the registry names, read at one moment."""

    bundles: dict[str, str]  # "client/model@vX.Y.Z" of every current version -> its bundle's tree id
    hot_versions: list[str]  # the hot set: each model's newest ``keep_hot`` versions and every named one
    retired: frozenset[str]  # bundles that only deleted versions named: neither live nor "stored without"
    tokens: dict[str, str | None] = field(default_factory=dict)  # each model's ref token when read

    @property
    def hot_bundles(self) -> set[str]:
        return {self.bundles[v] for v in self.hot_versions}


def read_roots(registry: Registry, keep_hot: int, bundles_of: dict[str, str] | None = None) -> Roots:
    """The registry's roots. ``bundles_of`` caches version record id -> bundle id across calls
    (records are immutable)."""
    bundles_of = {} if bundles_of is None else bundles_of

    def bundle(record_id: str) -> str:
        if record_id not in bundles_of:
            bundles_of[record_id] = registry.read_version_record(record_id)["bundle"]
        return bundles_of[record_id]

    tokens = registry.ref_tokens()
    bundles: dict[str, str] = {}
    hot: list[str] = []
    ever: set[str] = set()
    for model in registry.models():
        state = registry.state(model)
        if state.map_era:  # it keeps the bundles of its deleted versions
            ever |= set(state.retired)
        else:  # written before: only its history tells
            ever |= {bundle(r) for _, older in registry.states(model) for r in older.versions.values()}
        for version, record_id in state.versions.items():
            bundles[f"{model}@{version}"] = bundle(record_id)
        hot.extend(f"{model}@{v}" for v in hot_versions(state, keep_hot))
    current = set(bundles.values())
    return Roots(bundles, hot, frozenset(ever - current), tokens)


def hot_versions(state: ModelState, keep_hot: int) -> list[str]:
    """The versions of one model that belong on local disk, oldest first: every one a pointer or a
    pin names, and the newest ``keep_hot``."""
    named = {state.pointer(kind.name) for kind in KINDS} | set(state.pins)
    newest = state.sorted_versions()[-keep_hot:] if keep_hot else []
    return [v for v in state.sorted_versions() if v in named or v in newest]


@dataclass(frozen=True)
class ContentGraph:
    """Every manifest of the store: trees and files by id, and the ids plain puts kept."""

    trees: dict[str, TreeManifest]
    files: dict[str, FileManifest]
    kept: frozenset[str] = frozenset()

    @classmethod
    def read(cls, content: ContentStore) -> "ContentGraph":
        kept = frozenset(object_id for _, object_id in kept_objects(content.home) if object_id is not None)
        trees, files = {}, {}
        for object_id, manifest in content.manifests():
            if isinstance(manifest, TreeManifest):
                trees[format_id(object_id)] = manifest
            else:
                files[format_id(object_id)] = manifest
        return cls(trees, files, kept)

    def files_of(self, trees: set[str]) -> set[str]:
        return {format_id(e.file) for t in trees if t in self.trees for e in self.trees[t].entries}

    def chunks_of(self, files: set[str]) -> set[bytes]:
        return {c for f in files if f in self.files for c, _ in self.files[f].chunks}


def stored_without_registry(roots: Roots, graph: ContentGraph,
                            abandoned: Callable[[str], bool] = lambda _: False) -> tuple[set[str], set[str]]:
    """(trees, files) put without the registry: those a plain put kept that no current version names
    (those are its own: hot only if it is), trees no version ever named, and files no tree lists
    unless ``abandoned`` (gc's judgement of a file whose tree it deleted)."""
    versioned = set(roots.bundles.values())
    trees = (set(graph.trees) - versioned - roots.retired) | (graph.kept & graph.trees.keys() - versioned)
    listed = graph.files_of(set(graph.trees))
    kept_files = graph.kept & graph.files.keys() - graph.files_of(versioned) if graph.kept else set()
    return trees, {f for f in set(graph.files) - listed if not abandoned(f)} | kept_files


def live_objects(roots: Roots, graph: ContentGraph,
                 abandoned: Callable[[str], bool]) -> tuple[set[str], set[str], set[bytes]]:
    """(trees, files, chunks) that must be kept: every current version's and every object stored
    without the registry."""
    extra_trees, extra_files = stored_without_registry(roots, graph, abandoned)
    trees = (set(roots.bundles.values()) & set(graph.trees)) | extra_trees
    files = graph.files_of(trees) | extra_files
    return trees, files, graph.chunks_of(files)


def hot_chunks(roots: Roots, graph: ContentGraph) -> set[bytes]:
    """Chunks that belong in the hot tier: the hot versions', and those of every object stored
    without the registry."""
    extra_trees, extra_files = stored_without_registry(roots, graph)
    trees = (roots.hot_bundles & set(graph.trees)) | extra_trees
    return graph.chunks_of(graph.files_of(trees) | extra_files)


def live_monitoring(roots: Roots, stored: StoredVersion) -> bool:
    """gc keeps a version's monitoring data while the version exists with the bundle it was written for
    (a version deleted and pushed again under its number is another version)."""
    return stored.bundle is not None and roots.bundles.get(stored.key) == stored.bundle


def hot_monitoring(roots: Roots, stored: StoredVersion) -> bool:
    """``tier`` keeps a version's monitoring data in the store while the version is hot."""
    return stored.key in roots.hot_versions


def live_model(roots: Roots, model: ModelName) -> bool:
    """gc keeps a model's own monitoring data (labelled-data counts, alerts raised) while it has a version."""
    return any(key.partition("@")[0] == str(model) for key in roots.bundles)


def missing_roots(registry: Registry, content: ContentStore) -> list[str]:
    """A problem for each current version whose bundle is not in the store (a state or version
    record that cannot be read is left to the registry's own check), and for each object a plain
    put kept that is not."""
    problems = []
    for key, object_id in kept_objects(content.home):
        try:
            if object_id is None:
                raise CorruptObject("not a kept object's name")
            content.read_manifest(object_id)
        except (CorruptObject, NotFound) as exc:
            problems.append(f"{key}: {exc}")
    for model in registry.models():
        try:
            state = registry.state(model)
        except (CorruptObject, NotFound):
            continue
        for version in state.sorted_versions():
            try:
                bundle = registry.record(state, version)["bundle"]
            except (CorruptObject, NotFound, ValueError, KeyError):
                continue
            try:
                content.read_manifest(bundle)
            except (CorruptObject, NotFound) as exc:
                problems.append(f"registry {model}@{version}: {exc}")
    return problems
