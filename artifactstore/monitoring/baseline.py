"""A version's baseline: each feature's frozen bins and the reference sample's counts in them.

The bins are frozen when the baseline is taken, so that the PSI of every later window is measured
against the same cuts (docs/monitoring.md, "PSI"). Features are kept in name order; the counts of
feature *i* occupy ``bins[i]`` consecutive columns of every count row, after those of the
features before it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInput
from ..registry.samples import CATEGORICAL, NUMERIC, Samples
from .psi import numeric_bins, numeric_edges

MAX_CATEGORIES = 100  # a categorical feature keeps its most frequent reference categories; the rest are "other"
FEW_CATEGORIES = 8


@dataclass(frozen=True, eq=False)
class Feature:
    name: str
    kind: str  # NUMERIC or CATEGORICAL
    edges: np.ndarray = field(default_factory=lambda: np.empty(0))  # numeric: sorted, distinct
    categories: tuple[str, ...] = ()  # categorical: in text (code point) order; bin len(categories) is other

    @property
    def bins(self) -> int:
        return len(self.edges) + 1 if self.kind == NUMERIC else len(self.categories) + 1

    def same_bins(self, other: "Feature") -> bool:
        return (self.name, self.kind, self.categories) == (other.name, other.kind, other.categories) and \
            np.array_equal(self.edges, other.edges)

    def bin(self, values) -> np.ndarray:
        """Each value's bin (0 .. bins-1). Numeric values: floats (NaN is not counted: drop it
        first). Categorical values: a list of text, or a numpy text or bool array."""
        if self.kind == NUMERIC:
            return numeric_bins(values, self.edges)
        other = len(self.categories)
        if isinstance(values, np.ndarray) and values.dtype.kind == "b":
            values = np.where(values, "true", "false")
        if isinstance(values, np.ndarray) and values.dtype.kind == "U" and other:
            if other <= FEW_CATEGORIES:  # a vectorised comparison per category beats a search
                bins = np.full(len(values), other, dtype=np.intp)
                for i, category in enumerate(self.categories):
                    bins[values == category] = i
                return bins
            # the categories are sorted, so a category's index is its position in a binary search
            known = np.array(self.categories)
            position = np.minimum(np.searchsorted(known, values), other - 1)
            return np.where(known[position] == values, position, other)
        index = {c: i for i, c in enumerate(self.categories)}
        return np.fromiter((index.get(v, other) for v in values), dtype=np.intp, count=len(values))


@dataclass(frozen=True, eq=False)
class Baseline:
    features: tuple[Feature, ...]
    reference: np.ndarray  # int64 counts of the reference sample, sum(bins) columns
    samples: int  # requests in the reference sample
    taken_at: str
    source: str  # where the reference came from: a file name, or the bundle's eval_samples.jsonl

    @property
    def bins(self) -> np.ndarray:
        return np.array([f.bins for f in self.features], dtype=np.intp)

    @property
    def offsets(self) -> np.ndarray:
        """The first count column of each feature."""
        return np.concatenate(([0], np.cumsum(self.bins)[:-1])).astype(np.intp)

    @property
    def width(self) -> int:
        return int(self.bins.sum())

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def find(self, name: str) -> int | None:
        return next((i for i, f in enumerate(self.features) if f.name == name), None)


def take_baseline(samples: Samples, taken_at: str, source: str) -> Baseline:
    """Freeze the bins of every feature of ``samples`` and count the reference in them."""
    samples.check_reference()
    features: list[Feature] = []
    counts: list[np.ndarray] = []
    for name in sorted(samples.columns):
        column = samples.columns[name]
        if column.kind == NUMERIC:
            numbers = np.array(column.values, dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):  # refused below, with the feature's name
                edges = numeric_edges(numbers)
            if not np.isfinite(edges).all():
                raise InvalidInput(f"{samples.where}: {name}: the reference's values span more than a float can "
                                   f"hold (from {numbers.min():g} to {numbers.max():g}), so its deciles are not "
                                   "finite")
            feature = Feature(name, NUMERIC, edges=edges)
            bins = feature.bin(numbers)
        else:
            feature = Feature(name, CATEGORICAL, categories=_categories(column.values))
            bins = feature.bin(column.values)
        features.append(feature)
        counts.append(np.bincount(bins, minlength=feature.bins))
    return Baseline(tuple(features), np.concatenate(counts).astype(np.int64), len(samples), taken_at, source)


def _categories(values: Sequence[str]) -> tuple[str, ...]:
    """The reference's categories in text order; past MAX_CATEGORIES, the most frequent ones (ties
    broken by text order)."""
    found, frequency = np.unique(np.array(values, dtype=object), return_counts=True)
    if len(found) > MAX_CATEGORIES:
        keep = sorted(range(len(found)), key=lambda i: (-frequency[i], found[i]))[:MAX_CATEGORIES]
        found = found[sorted(keep)]
    return tuple(str(c) for c in found)
