"""The frozen drift reference of a model version (reference.json, written by training at registration).

Per feature and for the score: the interior edges of 10 equal-frequency bins on the training set and each bin's
training share, with training's binning rule — value v falls in bin `searchsorted(edges, v, side="left")`, i.e.
(-inf, e0], (e0, e1], …, (e_last, +inf), a NaN in the last bin — and a seeded sample of training rows with their
scores (the KS test's second sample). The monitor never imports `training`; it reads the document.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

SCORE_PREFIX = "score:"
"""Series name of a variant's score: `score:<variant>`."""

Kind = Literal["continuous", "categorical"]


def bin_index(edges: NDArray[np.float64], values: ArrayLike) -> NDArray[np.intp]:
    """Training's binning rule (training.registry.bin_shares): NaN sorts last, so it lands in the last bin."""
    return np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="left")


@dataclass(frozen=True, eq=False)
class SeriesReference:
    """What one monitored series (a feature, or one variant's score) is compared with."""

    name: str
    kind: Kind
    edges: NDArray[np.float64]
    """Interior edges of the frozen bins (PSI, and χ²'s categories when they separate the values)."""
    shares: NDArray[np.float64]
    """Training share of each of the len(edges) + 1 bins."""
    sample: NDArray[np.float64]
    """The reference sample's finite values, sorted (KS's second sample)."""
    points: NDArray[np.float64]
    """The distinct values of `sample`: a window is kept as counts in the 2·len(points) + 1 cells below, at and
    between these points, which is all the two-sample KS statistic against `sample` depends on."""
    categories_from_bins: bool
    """χ² categories: the frozen bins when each holds at most one distinct reference value (their training
    shares are then exact category shares); otherwise the reference sample's distinct values (see docs)."""

    @functools.cached_property
    def edge_list(self) -> list[float]:
        return [float(e) for e in self.edges]

    @functools.cached_property
    def point_list(self) -> list[float]:
        return [float(p) for p in self.points]

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @property
    def cells(self) -> int:
        return 2 * len(self.points) + 1


def series_reference(
    name: str, kind: Kind, block: Mapping[str, Sequence[float]], sample: Sequence[float | None]
) -> SeriesReference:
    """One series from a reference.json block ({"edges", "shares"}) and its column of the reference sample."""
    edges = np.asarray(block["edges"], dtype=np.float64)
    shares = np.asarray(block["shares"], dtype=np.float64)
    if edges.ndim != 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"reference series {name!r}: edges must be finite and increasing")
    if shares.shape != (len(edges) + 1,):
        raise ValueError(f"reference series {name!r}: {len(shares)} shares for {len(edges) + 1} bins")
    column = np.asarray([np.nan if v is None else v for v in sample], dtype=np.float64)
    finite = np.sort(column[np.isfinite(column)])
    points = np.unique(finite)
    by_bin = bin_index(edges, points)
    return SeriesReference(
        name=name,
        kind=kind,
        edges=edges,
        shares=shares,
        sample=finite,
        points=points,
        categories_from_bins=bool(len(by_bin) == len(np.unique(by_bin))),
    )


@dataclass(frozen=True, eq=False)
class DriftReference:
    """Every series of a window, in a fixed order: the model features, then `score:<variant>` per variant."""

    series: tuple[SeriesReference, ...]
    _positions: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        positions = {s.name: i for i, s in enumerate(self.series)}
        if len(positions) != len(self.series):
            raise ValueError("series names must be unique")
        object.__setattr__(self, "_positions", positions)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._positions)

    def index(self, name: str) -> int:
        """Position of a series (KeyError for a name outside the reference)."""
        return self._positions[name]

    def __contains__(self, name: object) -> bool:
        return name in self._positions


def drift_reference(
    features: Mapping[str, Any],
    scores: Mapping[str, Mapping[str, Any]],
    *,
    categorical: Collection[str] = (),
) -> DriftReference:
    """The reference of a drift window: every feature of `features` (the champion's reference.json: features
    are the same inputs whichever variant scores) and the score of each variant against its own model's
    reference.json (`scores`: variant → document)."""
    names = list(features["feature_names"])
    rows = features["sample"]["features"]
    unknown = set(categorical) - set(names)
    if unknown:
        raise ValueError(f"categorical features not in the reference: {sorted(unknown)}")
    series = [
        series_reference(
            name,
            "categorical" if name in categorical else "continuous",
            features["features"][name],
            [row[j] for row in rows],
        )
        for j, name in enumerate(names)
    ]
    series += [
        series_reference(SCORE_PREFIX + variant, "continuous", document["score"], document["sample"]["scores"])
        for variant, document in scores.items()
    ]
    return DriftReference(tuple(series))
