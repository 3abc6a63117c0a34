"""Monitoring data as Zarr v3 arrays under ``monitoring/`` in the store's own places (docs/format.md,
"Monitoring data").

A local store keeps them in its directory, a shared store in its bucket (through fsspec); a local
store with a cold tier keeps the versions outside the hot set there (``tier`` moves them). Each
node appends only to its own arrays, because a Zarr append (rewrite the array's shape, then the
last chunk) is not safe with two writers; readers sum across nodes. On one machine the writers of
a store take one lock (``locks/monitoring`` in its directory or cache), so two commands with the
same node name, or a ``tier`` and a ``record``, take turns.

Zarr (and fsspec) are imported only when monitoring data is touched.
"""

import atexit
import fcntl
import json
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Backend
from ..content.store import ContentStore
from ..errors import CorruptObject, InvalidParameter, NotFound
from ..registry.refs import NAME, VERSION, ModelName
from ..registry.samples import CATEGORICAL, NUMERIC
from .baseline import Baseline, Feature

PREFIX = "monitoring"
FORMAT = 1
CHUNK_ROWS = 1024
ROOT_MARK = "artifactstore-monitoring"
ZARR_JSON = "zarr.json"
DEFAULT_WINDOW = 3600


def default_node() -> str:
    """This machine's node name: its host name, as a name (lowercase letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().lower()).lstrip("._-")[:63]
    return name or "node"


def _close_at_exit(filesystem) -> None:
    """Close an S3 filesystem's HTTP session at exit: Zarr opens s3fs asynchronously, and s3fs then
    leaves that to its user (unclosed, aiohttp reports it on stderr)."""
    def close() -> None:
        creator = getattr(filesystem, "_s3creator", None)
        if creator is not None:
            from zarr.core.sync import sync

            try:
                sync(creator.__aexit__(None, None, None))
            except Exception:  # exiting anyway: a session that does not close is no error of the command
                pass

    atexit.register(close)


def check_node(node: str) -> str:
    if NAME.fullmatch(node) is None:
        raise InvalidParameter(f"invalid node name {node!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
                               "starting with a letter or digit")
    return node


def version_path(model: ModelName, version: str) -> str:
    """Where a version's data lies, relative to ``monitoring/``."""
    return f"{model.client}/{model.model}/{version}"


def labelled_path(model: ModelName) -> str:
    """Where a model's labelled-data counts lie, relative to ``monitoring/``."""
    return f"{model.client}/{model.model}/labelled"


@dataclass(frozen=True)
class Place:
    """One of the store's places that can hold monitoring data: ``store`` (its directory or bucket)
    or ``cold`` (a local store's cold tier)."""

    name: str
    backend: Backend  # keys "monitoring/..."
    location: str  # a directory or URL: where Zarr opens it

    def root_key(self, path: str) -> str:
        return f"{PREFIX}/{path}/{ZARR_JSON}"

    def has_root(self, path: str) -> bool:
        return self.backend.exists(self.root_key(path))


@dataclass(frozen=True)
class StoredVersion:
    """A version whose data a place holds: its root (``zarr.json`` and attributes) is there."""

    model: ModelName
    version: str
    bundle: str | None

    @property
    def key(self) -> str:
        return f"{self.model}@{self.version}"

    @property
    def path(self) -> str:
        return version_path(self.model, self.version)


class MonitoringArrays:
    """The monitoring data of one store."""

    def __init__(self, content: ContentStore):
        self.content = content
        home_location = str(content.home.capabilities.local_directory or content.location)
        self.places = [Place("store", content.home, home_location)]
        if content.cold is not None and not content.shared and content.cold_url is not None:
            self.places.append(Place("cold", content.cold, content.cold_url))
        self._zarr_stores: dict[str, Any] = {}

    # -- places --------------------------------------------------------------------------------

    @property
    def store(self) -> Place:
        return self.places[0]

    @property
    def cold(self) -> Place | None:
        return self.places[1] if len(self.places) > 1 else None

    def zarr_store(self, place: Place):
        if place.name not in self._zarr_stores:
            import zarr

            directory = place.backend.capabilities.local_directory
            if directory is not None:
                self._zarr_stores[place.name] = zarr.storage.LocalStore(Path(directory) / PREFIX)
            else:
                from ..backends.remote import fsspec_options

                store = zarr.storage.FsspecStore.from_url(f"{place.location.rstrip('/')}/{PREFIX}",
                                                          storage_options=fsspec_options(place.location))
                _close_at_exit(store.fs)
                self._zarr_stores[place.name] = store
        return self._zarr_stores[place.name]

    @contextmanager
    def writing(self) -> Iterator[None]:
        """This machine's lock on the store's monitoring data, held by every writer while it writes."""
        path = self.content.path / "locks" / "monitoring"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def locate(self, model: ModelName, version: str) -> Place | None:
        """The place holding a version's data (the store first: a move that stopped halfway left
        the complete copy where the root still is)."""
        path = version_path(model, version)
        return next((p for p in self.places if p.has_root(path)), None)

    # -- a version's root and baseline ---------------------------------------------------------

    def ensure_root(self, model: ModelName, version: str, bundle: str) -> Place:
        """The place of a version's data, created in the store if there is none yet."""
        place = self.locate(model, version)
        if place is not None:
            return place
        import zarr

        path, place = version_path(model, version), self.store
        attributes = {ROOT_MARK: FORMAT, "model": str(model), "version": version, "bundle": bundle}
        try:
            zarr.create_group(self.zarr_store(place), path=path, attributes=attributes)
        except zarr.errors.ContainsGroupError:  # another node created it a moment ago
            pass
        return place

    def root_attributes(self, place: Place, path: str) -> dict[str, Any]:
        key = place.root_key(path)
        try:
            metadata = json.loads(place.backend.read(key))
        except ValueError:
            raise CorruptObject(f"{place.name} {key} is not JSON") from None
        attributes = metadata.get("attributes") if isinstance(metadata, dict) else None
        if not isinstance(attributes, dict) or attributes.get(ROOT_MARK) != FORMAT:
            raise CorruptObject(f"{place.name} {key}: not the root of a version's monitoring data, format {FORMAT}")
        return attributes

    def write_baseline(self, place: Place, model: ModelName, version: str, baseline: Baseline,
                       window_seconds: int) -> None:
        """Write the baseline's arrays, then its attributes: with them it is complete."""
        import zarr

        path, store = f"{version_path(model, version)}/baseline", self.zarr_store(place)
        self.delete(place, path)
        edges = np.concatenate([f.edges for f in baseline.features if f.kind == NUMERIC] + [np.empty(0)])
        for name, values in (("edges", edges.astype(np.float64)), ("reference", baseline.reference)):
            array = zarr.create_array(store, name=f"{path}/{name}", shape=values.shape, dtype=values.dtype,
                                      chunks=(max(len(values), 1),), fill_value=0)
            array[:] = values
        features: list[Any] = [{"name": f.name, "kind": f.kind, "bins": f.bins}
                               | ({"categories": list(f.categories)} if f.kind == CATEGORICAL else {})
                               for f in baseline.features]
        zarr.open_group(store, path=path, mode="r+").attrs.update({
            "features": features, "samples": baseline.samples, "taken_at": baseline.taken_at,
            "source": baseline.source, "window_seconds": window_seconds,
        })

    def read_baseline(self, place: Place, model: ModelName, version: str) -> tuple[Baseline, int] | None:
        """(baseline, window seconds), or None while the version has no complete baseline."""
        import zarr

        path, store = f"{version_path(model, version)}/baseline", self.zarr_store(place)
        if not place.backend.exists(f"{PREFIX}/{path}/{ZARR_JSON}"):
            return None
        attributes: dict[str, Any] = zarr.open_group(store, path=path, mode="r").attrs.asdict()
        if "features" not in attributes:
            return None
        where = f"{place.name} {PREFIX}/{path}"
        try:
            edges = np.asarray(zarr.open_array(store, path=f"{path}/edges", mode="r")[:])
            reference = np.asarray(zarr.open_array(store, path=f"{path}/reference", mode="r")[:])
            features, at = [], 0
            for spec in attributes["features"]:
                if spec["kind"] == NUMERIC:
                    features.append(Feature(spec["name"], NUMERIC, edges=edges[at:at + spec["bins"] - 1]))
                    at += spec["bins"] - 1
                elif spec["kind"] == CATEGORICAL:
                    features.append(Feature(spec["name"], CATEGORICAL, categories=tuple(spec["categories"])))
                else:
                    raise CorruptObject(f"{where}: feature {spec['name']!r} of unknown kind {spec['kind']!r}")
                if features[-1].bins != spec["bins"]:
                    raise CorruptObject(f"{where}: feature {spec['name']!r} has {features[-1].bins} bins, "
                                        f"its attributes say {spec['bins']}")
            baseline = Baseline(tuple(features), reference.astype(np.int64), int(attributes["samples"]),
                                str(attributes["taken_at"]), str(attributes["source"]))
            window = int(attributes["window_seconds"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptObject(f"{where}: malformed baseline ({exc})") from None
        if at != len(edges) or len(reference) != baseline.width:
            raise CorruptObject(f"{where}: {len(edges)} edges and {len(reference)} reference counts do not fit "
                                f"the features ({at} edges, {baseline.width} bins)")
        return baseline, window

    # -- rows appended by nodes ----------------------------------------------------------------

    def append(self, place: Place, path: str, rows: np.ndarray, fill_value, attributes: dict | None = None) -> None:
        """Append ``rows`` to the array at ``path`` (relative to ``monitoring/``), created if missing."""
        import zarr

        store = self.zarr_store(place)
        try:
            array = zarr.open_array(store, path=path, mode="r+")
        except FileNotFoundError:
            array = zarr.create_array(store, name=path, shape=(0, rows.shape[1]), dtype=rows.dtype,
                                      chunks=(CHUNK_ROWS, rows.shape[1]), fill_value=fill_value,
                                      attributes=attributes or {})
        if array.shape[1:] != rows.shape[1:] or array.dtype != rows.dtype:
            raise CorruptObject(f"{place.name} {PREFIX}/{path}: {array.dtype} {array.shape} cannot take rows of "
                                f"{rows.dtype} {rows.shape}")
        array.append(rows)

    def node_arrays(self, place: Place, path: str, name: str) -> Iterator[tuple[str, Any]]:
        """(node, array) of every node that wrote an array ``name`` under ``path/nodes``."""
        import zarr

        store = self.zarr_store(place)
        try:
            nodes = sorted(zarr.open_group(store, path=f"{path}/nodes", mode="r").group_keys())
        except FileNotFoundError:
            return
        for node in nodes:
            try:
                yield node, zarr.open_array(store, path=f"{path}/nodes/{node}/{name}", mode="r")
            except FileNotFoundError:
                continue

    def read_rows(self, place: Place, path: str, name: str) -> list[tuple[str, np.ndarray]]:
        return [(node, np.asarray(array[:])) for node, array in self.node_arrays(place, path, name)]

    # -- listing, moving and deleting (gc, tier) -----------------------------------------------

    def stored_versions(self, place: Place) -> list[StoredVersion]:
        """The versions whose root ``place`` holds."""
        found = []
        for key in place.backend.list(PREFIX):
            parts = key.split("/")
            if len(parts) == 5 and parts[4] == ZARR_JSON and VERSION.fullmatch(parts[3]):
                model = ModelName(parts[1], parts[2])
                try:
                    bundle = self.root_attributes(place, version_path(model, parts[3])).get("bundle")
                except (CorruptObject, NotFound):
                    bundle = None
                found.append(StoredVersion(model, parts[3], bundle))
        return found

    def stored_models(self, place: Place) -> set[ModelName]:
        """Every model under which ``place`` holds any key."""
        return {ModelName(*key.split("/")[1:3]) for key in place.backend.list(PREFIX) if len(key.split("/")) > 3}

    def stored_prefixes(self, place: Place) -> set[str]:
        """Every ``client/model/version`` under which ``place`` holds any key, root or not."""
        return {"/".join(key.split("/")[1:4]) for key in place.backend.list(PREFIX)
                if len(key.split("/")) > 4 and VERSION.fullmatch(key.split("/")[3])}

    def keys(self, place: Place, path: str) -> list[str]:
        # a Zarr LocalStore writes through "<name>.<uuid>.partial" files: never data
        return [k for k in place.backend.list(f"{PREFIX}/{path}") if not k.endswith(".partial")]

    def delete(self, place: Place, path: str) -> None:
        """Delete everything under ``path``, its root (if it is a version's) first: a delete that stops
        halfway leaves no root naming missing data."""
        root = place.root_key(path)
        if place.backend.exists(root):
            place.backend.delete(root)
        directory = place.backend.capabilities.local_directory
        if directory is not None:
            if (Path(directory) / PREFIX / path).exists():
                shutil.rmtree(Path(directory) / PREFIX / path)
            return
        for key in place.backend.list(f"{PREFIX}/{path}"):
            place.backend.delete(key)

    def move(self, path: str, source: Place, target: Place) -> int:
        """Copy a version's data to ``target`` (each object read back and compared), its root last;
        then delete it from ``source``, its root first. Returns the bytes moved."""
        self.delete(target, path)
        root = source.root_key(path)
        keys = sorted(self.keys(source, path), key=lambda k: k == root)
        moved = 0
        for key in keys:
            data = source.backend.read(key)
            target.backend.write(key, data)
            if target.backend.read(key) != data:
                raise CorruptObject(f"{target.name} {key}: the copy does not read back intact; kept the original")
            moved += len(data)
        self.delete(source, path)
        return moved
