"""Drift reports: the PSI of every feature in every window, from the raw counts of every node.

The counts are kept raw, so a report can use any thresholds, and compare a version's windows
either with its baseline (``drift_report``) or with another version's counts in the same windows
(``compare_versions``: the canary's outputs against production's).
"""

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from ..clock import now, parse_duration, parse_time
from ..errors import InvalidParameter, NotFound
from ..registry.refs import ModelName
from ..registry.registry import Registry
from .arrays import MonitoringArrays, version_path
from .baseline import Baseline
from .psi import Thresholds, psi
from .versions import served


@dataclass(frozen=True, eq=False)
class DriftReport:
    model: str
    version: str
    against: str  # "baseline", or the version whose counts in the same windows are the reference
    thresholds: Thresholds
    window_seconds: int
    features: list[str]
    starts: np.ndarray  # int64 [W]: each window's start, seconds since the epoch
    counts: np.ndarray  # int64 [W, F]: values counted per window and feature
    psi: np.ndarray  # float64 [W, F]: NaN where the window holds no value of the feature

    def statuses(self) -> np.ndarray:
        return self.thresholds.statuses(self.psi)

    def only(self, prefix: str) -> "DriftReport":
        """The features whose names start with ``prefix``; refused when none does (a typo)."""
        keep = [i for i, f in enumerate(self.features) if f.startswith(prefix)]
        if not keep:
            raise InvalidParameter(f"--prefix {prefix!r} matches no feature of {self.model}@{self.version} "
                                   f"(it has {', '.join(self.features)})")
        return replace(self, features=[self.features[i] for i in keep], counts=self.counts[:, keep],
                       psi=self.psi[:, keep])

    def to_json(self) -> dict:
        """Columns of windows: ``psi[w][f]`` (null where empty), ``status[w][f]`` and ``counts[w][f]``
        belong to window ``windows[w]`` and feature ``features[f]``."""
        return {"model": self.model, "version": self.version, "against": self.against,
                "thresholds": self.thresholds.as_json(), "window_seconds": self.window_seconds,
                "features": self.features, "windows": [iso(start) for start in self.starts.tolist()],
                "psi": [[None if math.isnan(v) else v for v in row] for row in self.psi.round(6).tolist()],
                "status": self.statuses().tolist(), "counts": self.counts.tolist()}


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def read_baseline(arrays: MonitoringArrays, model: ModelName, version: str):
    """(place, baseline, window seconds) of a version; NotFound while it has no baseline."""
    place = arrays.locate(model, version)
    found = arrays.read_baseline(place, model, version) if place is not None else None
    if place is None or found is None:
        raise NotFound(f"{model}@{version} has no drift baseline: take one with `artifactstore monitor baseline "
                       f"{model}@{version} --from FILE.jsonl` (or promote a bundle with eval_samples.jsonl)")
    return place, found[0], found[1]


def window_counts(arrays: MonitoringArrays, model: ModelName, version: str, baseline: Baseline
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(window starts [W], counts [W, bins]) summed over every node and every row of a window,
    in time order. Rows of a torn append (all zero) add nothing and are dropped."""
    place = arrays.locate(model, version)
    parts = [rows for _, rows in arrays.read_rows(place, version_path(model, version), "counts")] if place else []
    parts = [rows[rows.any(axis=1)] for rows in parts]
    starts = np.unique(np.concatenate([rows[:, 0] for rows in parts] + [np.zeros(0, dtype=np.int64)]))
    total = np.zeros((len(starts), baseline.width), dtype=np.int64)
    for rows in parts:
        at = np.searchsorted(starts, rows[:, 0])
        if (np.diff(at) > 0).all():  # the usual case: a node flushed each window once, in time order
            total[at] += rows[:, 1:]
        else:
            np.add.at(total, at, rows[:, 1:])
    return starts, total


def _report(model: ModelName, version: str, against: str, thresholds: Thresholds, window: int,
            features: list[str], bins: np.ndarray, starts: np.ndarray, counts: np.ndarray,
            reference: np.ndarray) -> DriftReport:
    offsets = np.concatenate(([0], np.cumsum(bins)[:-1])).astype(np.intp)
    if len(starts):
        per_feature = np.add.reduceat(counts, offsets, axis=1)
        values = psi(reference, counts, bins)
    else:
        per_feature = np.zeros((0, len(bins)), dtype=np.int64)
        values = np.zeros((0, len(bins)))
    return DriftReport(str(model), version, against, thresholds, window, features, starts, per_feature, values)


def drift_report(arrays: MonitoringArrays, model: ModelName, version: str, *, since: float | None = None,
                 thresholds: Thresholds = Thresholds()) -> DriftReport:
    """The PSI of every feature in every window of ``version`` against its baseline; ``since``
    (seconds since the epoch) keeps the windows that end after it."""
    _, baseline, window = read_baseline(arrays, model, version)
    starts, counts = window_counts(arrays, model, version, baseline)
    if since is not None:
        keep = starts + window > since
        starts, counts = starts[keep], counts[keep]
    return _report(model, version, "baseline", thresholds, window, baseline.names, baseline.bins, starts, counts,
                   baseline.reference)


def compare_versions(arrays: MonitoringArrays, model: ModelName, version: str, against: str, *,
                     since: float | None = None, prefix: str = "", thresholds: Thresholds = Thresholds()
                     ) -> DriftReport:
    """The PSI of ``version``'s counts against ``against``'s counts in the same windows (the
    canary's outputs against production's: ``prefix="outputs."``).

    Only features whose names start with ``prefix`` and that both baselines bin alike are
    compared: take the canary's baseline with the same file as production's, or with
    ``monitor baseline --like``, so that they do.
    """
    _, mine, window = read_baseline(arrays, model, version)
    _, theirs, their_window = read_baseline(arrays, model, against)
    if window != their_window:
        raise InvalidParameter(f"{model}@{version} counts {window} s windows, {against} {their_window} s ones")
    shared = [(i, theirs.find(f.name)) for i, f in enumerate(mine.features) if f.name.startswith(prefix)]
    shared = [(i, j) for i, j in shared if j is not None and mine.features[i].same_bins(theirs.features[j])]
    if not shared:
        raise InvalidParameter(f"{model}@{version} and {against} bin no {prefix or 'feature'}* feature alike: take "
                               f"the baseline of one with `monitor baseline --like` the other")

    def columns(baseline: Baseline, picked: list[int]) -> np.ndarray:
        return np.concatenate([np.arange(baseline.offsets[i], baseline.offsets[i] + baseline.bins[i])
                               for i in picked])

    my_starts, my_counts = window_counts(arrays, model, version, mine)
    their_starts, their_counts = window_counts(arrays, model, against, theirs)
    starts, mine_at, theirs_at = np.intersect1d(my_starts, their_starts, return_indices=True)
    if since is not None:
        keep = starts + window > since
        starts, mine_at, theirs_at = starts[keep], mine_at[keep], theirs_at[keep]
    picked_mine, picked_theirs = [i for i, _ in shared], [j for _, j in shared]
    current = my_counts[np.ix_(mine_at, columns(mine, picked_mine))]
    reference = their_counts[np.ix_(theirs_at, columns(theirs, picked_theirs))]
    return _report(model, version, f"{model}@{against}", thresholds, window, [mine.features[i].name for i in picked_mine],
                   mine.bins[picked_mine], starts, current, reference)


def parse_since(text: str) -> float:
    """``--since``: a duration back from now (``24h``, ``7d``) or an ISO 8601 time; seconds since the epoch."""
    try:
        return now().timestamp() - parse_duration(text)
    except InvalidParameter:
        pass
    try:
        return parse_time(text, "--since").timestamp()
    except InvalidParameter:
        raise InvalidParameter(f"--since {text!r}: give a duration (24h, 7d) or an ISO 8601 time") from None


def drift_of(registry: Registry, arrays: MonitoringArrays, ref: str, *, since: str | float | None = None,
             against: str | None = None, prefix: str = "", thresholds: Thresholds = Thresholds()) -> DriftReport:
    """The drift report of the version ``ref`` names (``client/model``: its production version),
    against its baseline or, with ``against``, against that version's counts in the same windows."""
    version = served(registry, ref)
    start = parse_since(since) if isinstance(since, str) else since
    if against is None:
        return drift_report(arrays, version.model, version.version, since=start, thresholds=thresholds).only(prefix)
    other = served(registry, against if "@" in against else f"{version.model}@{against}")
    if other.model != version.model:
        raise InvalidParameter(f"--against {against}: compare versions of {version.model} only")
    return compare_versions(arrays, version.model, version.version, other.version, since=start, prefix=prefix,
                            thresholds=thresholds)
