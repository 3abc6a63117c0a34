"""Integrity check of the monitoring data in every place: each array readable, shapes consistent
with the baseline, counts non-negative, edges sorted."""

import math
from collections.abc import Callable

import numpy as np

from ..registry.samples import NUMERIC
from .arrays import PREFIX, MonitoringArrays, Place, version_path


def verify_monitoring(arrays: MonitoringArrays) -> list[str]:
    problems: list[str] = []
    for place in arrays.places:
        models = set()
        for stored in arrays.stored_versions(place):
            models.add(stored.model)
            where = f"monitoring {place.name} {PREFIX}/{stored.path}"
            _check(problems, where, lambda: _check_version(arrays, place, stored.model, stored.version))
        if place is arrays.store:
            for key in place.backend.list(PREFIX):
                parts = key.split("/")
                if len(parts) == 8 and parts[3] == "labelled" and parts[6:] == ["examples", "zarr.json"]:
                    path = "/".join(parts[1:7])
                    _check(problems, f"monitoring {PREFIX}/{path}", lambda: _check_labelled(arrays, place, path))
    return problems


def _check(problems: list[str], where: str, check: Callable[[], list[str]]) -> None:
    try:
        problems.extend(f"{where}: {p}" for p in check())
    except Exception as exc:  # whatever a damaged object makes Zarr or its codecs raise
        problems.append(f"{where}: not readable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")


def _check_version(arrays: MonitoringArrays, place: Place, model, version: str) -> list[str]:
    path = version_path(model, version)
    attributes = arrays.root_attributes(place, path)
    problems = [] if isinstance(attributes.get("bundle"), str) else ["the root names no bundle"]
    found = arrays.read_baseline(place, model, version)
    width = None
    if found is not None:
        baseline, window = found
        width = baseline.width
        if window <= 0:
            problems.append(f"baseline window of {window} s")
        for feature in baseline.features:
            if feature.kind == NUMERIC:
                if not np.isfinite(feature.edges).all() or (np.diff(feature.edges) <= 0).any():
                    problems.append(f"baseline edges of {feature.name} are not finite and strictly increasing")
            elif list(feature.categories) != sorted(set(feature.categories)):
                problems.append(f"baseline categories of {feature.name} are not distinct and sorted")
        if (baseline.reference < 0).any():
            problems.append("baseline reference counts are negative")
        for node, array in arrays.node_arrays(place, path, "counts"):
            rows = np.asarray(array[:])
            if rows.dtype != np.int64 or rows.ndim != 2 or rows.shape[1] != 1 + width:
                problems.append(f"node {node}: counts are {rows.dtype} {rows.shape}, not int64 (rows, {1 + width})")
                continue
            if (rows < 0).any():
                problems.append(f"node {node}: negative counts")
            starts = rows[rows.any(axis=1), 0]  # all-zero rows: what a torn append leaves
            if (starts % window).any():
                problems.append(f"node {node}: a window start is not a multiple of {window} s")
    elif any(True for _ in arrays.node_arrays(place, path, "counts")):
        problems.append("counts without a complete baseline")
    for node, array in arrays.node_arrays(place, path, "evals"):
        rows, metrics = np.asarray(array[:]), array.attrs.get("metrics")
        if not isinstance(metrics, list) or rows.dtype != np.float64 or rows.ndim != 2 or \
                rows.shape[1] != 1 + len(metrics):
            problems.append(f"node {node}: evals are {rows.dtype} {rows.shape} for metrics {metrics!r}")
        elif any(not math.isnan(t) and t < 0 for t in rows[:, 0]):
            problems.append(f"node {node}: an eval run before 1970")
    return problems


def _check_labelled(arrays: MonitoringArrays, place: Place, path: str) -> list[str]:
    import zarr

    rows = np.asarray(zarr.open_array(arrays.zarr_store(place), path=path, mode="r")[:])
    if rows.dtype != np.int64 or rows.ndim != 2 or rows.shape[1] != 2:
        return [f"labelled-data counts are {rows.dtype} {rows.shape}, not int64 (rows, 2)"]
    return ["negative labelled-data counts"] if (rows < 0).any() else []


