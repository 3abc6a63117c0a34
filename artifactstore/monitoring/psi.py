"""The Population Stability Index, defined so that any two implementations agree (docs/monitoring.md).

Pure numpy. A numeric feature's bins are cut at the reference sample's deciles
(``numpy.quantile``, linear interpolation) with duplicate edges collapsed; the outer bins are open
and a value equal to an edge falls in the bin above it (``numpy.digitize``'s default). A
categorical feature has a bin per reference category and one for every other value. Proportions
are floored at 1e-4 and renormalised to sum to 1; PSI = sum((cur - ref) * ln(cur / ref)). An
empty window has no PSI (NaN).
"""

from dataclasses import dataclass

import numpy as np

# written out, not np.linspace: 0.1 + 2 * 0.1 is not the double nearest 0.3, and the edges must not
# depend on how the levels were computed
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FLOOR = 1e-4
FINE, WATCH, INVESTIGATE, EMPTY = "fine", "watch", "investigate", "empty"
RANK = {EMPTY: -1, FINE: 0, WATCH: 1, INVESTIGATE: 2}


def numeric_edges(reference) -> np.ndarray:
    """The frozen edges of a numeric feature: the reference's deciles, sorted, duplicates collapsed."""
    return np.unique(np.quantile(np.asarray(reference, dtype=np.float64), DECILES))


def numeric_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin, 0 .. len(edges): ``numpy.digitize(values, edges)``, computed as a
    right-sided binary search (the same result, without digitize's monotonicity check)."""
    return np.searchsorted(edges, values, side="right")


def feature_sums(bins: np.ndarray | list[int]) -> np.ndarray:
    """The (sum(bins), len(bins)) matrix that sums each feature's columns: ``x @ feature_sums(bins)``
    (one matrix product is much faster than ``reduceat`` over many rows of short segments)."""
    bins = np.asarray(bins, dtype=np.intp)
    return (np.repeat(np.arange(len(bins)), bins)[:, None] == np.arange(len(bins))).astype(np.float64)


def proportions(counts: np.ndarray, bins: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(floored, renormalised proportions of ``counts`` (..., sum(bins)), each feature's ``bins``
    columns normalised on their own; whether each feature is empty (..., len(bins))). An empty
    feature's proportions are uniform, to keep NaN out of the sums: its PSI is NaN all the same."""
    counts = np.asarray(counts, dtype=np.float64)
    sums = feature_sums(bins)
    totals = counts @ sums
    empty = totals == 0
    floored = np.maximum(counts / (np.where(empty, 1.0, totals) @ sums.T), FLOOR)
    return floored / ((floored @ sums) @ sums.T), empty


def psi(reference: np.ndarray, current: np.ndarray, bins: np.ndarray | list[int]) -> np.ndarray:
    """PSI of each feature (``bins[i]`` columns each) of ``current`` (..., sum(bins)) against
    ``reference`` (broadcast against it): shape (..., len(bins)); NaN where a window is empty."""
    (ref, ref_empty), (cur, cur_empty) = proportions(reference, bins), proportions(current, bins)
    values = ((cur - ref) * np.log(cur / ref)) @ feature_sums(bins)
    return np.where(ref_empty | cur_empty, np.nan, values)


@dataclass(frozen=True)
class Thresholds:
    """Where a PSI stops being fine: ``fine`` below ``watch``, ``watch`` up to ``investigate``
    inclusive, ``investigate`` above. The seed's values are the defaults; a model's policy may set others."""

    watch: float = 0.1
    investigate: float = 0.2

    def status(self, value: float) -> str:
        if np.isnan(value):
            return EMPTY
        return FINE if value < self.watch else WATCH if value <= self.investigate else INVESTIGATE

    def statuses(self, values: np.ndarray) -> np.ndarray:
        """``status`` of every element."""
        out = np.where(values < self.watch, FINE, np.where(values <= self.investigate, WATCH, INVESTIGATE))
        return np.where(np.isnan(values), EMPTY, out)

    def as_json(self) -> dict[str, float]:
        return {"watch": self.watch, "investigate": self.investigate}
