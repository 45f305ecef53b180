"""The frozen drift reference of a model version (reference.json, written by training at registration).

Per feature and for the score: the interior edges of 10 equal-frequency bins on the training set and each bin's
training share, with training's binning rule — value v falls in bin `searchsorted(edges, v, side="left")`, i.e.
(-inf, e0], (e0, e1], …, (e_last, +inf), a NaN in the last bin — and a seeded sample of training rows with their
scores (the second sample of the two-sample tests). The monitor never imports `training`; it reads the document.

Schema 2 adds, all optional (a schema-1 document is read as before, without them):

- `precision` — the dtype the model's input tensor has (float32): window values are rounded to it, as the
  scorer's cast does, so both sides of a test hold the values the model saw.
- `day_strata` and `sample.time_of_day_s` — the number S of equal time-of-day strata and each sample row's
  seconds since UTC midnight: a window is compared with the sample rows re-drawn to its own mix of strata.
- per block `strata_shares` — the training share of each bin per stratum (S rows): PSI against the same mix.
- per feature block `categories` — {values, shares, strata_shares}: the feature's distinct training values
  (when there are at most 64) and their training shares; a categorical feature's PSI bins are its categories.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

SCORE_PREFIX = "score:"
"""Series name of a variant's score: `score:<variant>`."""

Kind = Literal["continuous", "categorical"]

DAY_S = 86_400.0
SUBSAMPLE_SEED = 20_240_613
"""Seed of the fixed random order in which a stratum's sample rows are drawn for a window's mix: the same rows
for every window with the same mix, whatever partition counted it (a pure function of the document)."""

_F32 = struct.Struct("f")


def model_precision(values: ArrayLike) -> NDArray[np.float64]:
    """Values as the model sees them: rounded to float32 (the scorer casts its input tensor to float32), held as
    float64. A value beyond float32's range becomes ±inf, as in the cast."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


def model_precision_one(value: float) -> float:
    """`model_precision` of one value in plain Python (the per-event path; ~0.2 µs against numpy's ~1 µs)."""
    try:
        rounded: float = _F32.unpack(_F32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)
    return rounded


def stratum_of(seconds: ArrayLike, strata: int) -> NDArray[np.intp]:
    """Time-of-day stratum (0 … strata-1) of epoch seconds or seconds since UTC midnight: equal slices of the UTC
    day (24 strata = the hour of day), the same rule for the reference's rows and a window's events."""
    t = np.asarray(seconds, dtype=np.float64) % DAY_S
    return np.minimum((t * (strata / DAY_S)).astype(np.intp), strata - 1)


def stratum_of_one(seconds: float, strata: int) -> int:
    return min(int(seconds % DAY_S * (strata / DAY_S)), strata - 1)


def bin_index(edges: NDArray[np.float64], values: ArrayLike) -> NDArray[np.intp]:
    """Training's binning rule (training.registry.bin_shares): NaN sorts last, so it lands in the last bin."""
    return np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="left")


@dataclass(frozen=True, eq=False)
class SeriesReference:
    """What one monitored series (a feature, or one variant's score) is compared with."""

    name: str
    kind: Kind
    edges: NDArray[np.float64]
    """Interior edges of the frozen bins (PSI of continuous series)."""
    shares: NDArray[np.float64]
    """Training share of each of the len(edges) + 1 bins."""
    sample: NDArray[np.float64]
    """The reference sample's finite values at model precision, sorted (the tests' second sample)."""
    points: NDArray[np.float64]
    """The distinct values of `sample` (and, for a categorical series, its training categories): a window is kept
    as counts in the 2·len(points) + 1 cells below, at and between these points, which is all the two-sample KS
    statistic against any subset of `sample` depends on, and a categorical series' category counts."""
    sample_point: NDArray[np.intp]
    """Index in `points` of each `sample` value."""
    strata: int = 0
    """Time-of-day strata of the document (0: the sample rows' times are unknown, no mixing)."""
    sample_stratum: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    """Stratum of each `sample` value's row."""
    sample_draw: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    """Position of each `sample` value's row in its stratum's fixed random order (`SUBSAMPLE_SEED`): a mix that
    needs k rows of a stratum takes the rows at positions 0 … k-1."""
    strata_shares: NDArray[np.float64] | None = None
    """Training share of each frozen bin per stratum, shape (strata, bins); None without times."""
    category_shares: NDArray[np.float64] | None = None
    """Categorical series: the share of each point and of "another value" (last) — training's when the document
    lists the categories, else the sample's; None for continuous series."""
    category_strata_shares: NDArray[np.float64] | None = None
    """Categorical series: `category_shares` per stratum (training's), shape (strata, points + 1), or None."""

    @functools.cached_property
    def edge_list(self) -> list[float]:
        return [float(e) for e in self.edges]

    @functools.cached_property
    def point_list(self) -> list[float]:
        return [float(p) for p in self.points]

    @functools.cached_property
    def sample_counts(self) -> NDArray[np.int64]:
        """Sample values at each point (the whole sample, no mixing)."""
        return np.bincount(self.sample_point, minlength=len(self.points)).astype(np.int64)

    @functools.cached_property
    def stratum_rows(self) -> NDArray[np.int64]:
        """Sample values per stratum."""
        return np.bincount(self.sample_stratum, minlength=self.strata).astype(np.int64)

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @property
    def cells(self) -> int:
        return 2 * len(self.points) + 1


def _strata_table(block: Mapping[str, Any], key: str, strata: int, width: int, name: str) -> NDArray[np.float64] | None:
    if not strata or key not in block:
        return None
    table = np.asarray(block[key], dtype=np.float64)
    if table.shape != (strata, width):
        raise ValueError(f"reference series {name!r}: {key} has shape {table.shape}, expected {(strata, width)}")
    return table


def series_reference(
    name: str,
    kind: Kind,
    block: Mapping[str, Any],
    sample: Sequence[float | None],
    *,
    times: Sequence[float] | None = None,
    strata: int = 0,
) -> SeriesReference:
    """One series from a reference.json block ({"edges", "shares"}, optionally "strata_shares" and
    "categories"), its column of the reference sample and, when the document has them, the sample rows' times of
    day (seconds since UTC midnight) and the number of strata."""
    edges = np.asarray(block["edges"], dtype=np.float64)
    shares = np.asarray(block["shares"], dtype=np.float64)
    if edges.ndim != 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"reference series {name!r}: edges must be finite and increasing")
    if shares.shape != (len(edges) + 1,):
        raise ValueError(f"reference series {name!r}: {len(shares)} shares for {len(edges) + 1} bins")
    if times is not None and len(times) != len(sample):
        raise ValueError(f"reference series {name!r}: {len(times)} times for {len(sample)} sample rows")
    strata = strata if times is not None else 0
    column = model_precision([np.nan if v is None else v for v in sample])
    finite_rows = np.flatnonzero(np.isfinite(column))
    categories = block.get("categories") if kind == "categorical" else None
    known = model_precision(categories["values"]) if categories else np.zeros(0)
    points = np.unique(np.concatenate([column[finite_rows], known[np.isfinite(known)]]))
    by_value = finite_rows[np.argsort(column[finite_rows], kind="stable")]
    values = column[by_value]
    if strata:
        row_stratum = stratum_of(np.asarray(times, dtype=np.float64), strata)
        order = np.random.default_rng(SUBSAMPLE_SEED).permutation(len(sample))
        # Position of each finite row in its stratum's fixed random order.
        ranked = finite_rows[np.lexsort((order[finite_rows], row_stratum[finite_rows]))]
        first = np.searchsorted(row_stratum[ranked], np.arange(strata), side="left")
        draw = np.empty(len(sample), dtype=np.intp)
        draw[ranked] = np.arange(len(ranked)) - first[row_stratum[ranked]]
        sample_stratum, sample_draw = row_stratum[by_value], draw[by_value]
    else:
        sample_stratum = sample_draw = np.zeros(0, dtype=np.intp)
    category_shares = category_strata = None
    if kind == "categorical":
        at = np.searchsorted(points, values)
        if categories:
            where = np.searchsorted(points, known)
            category_shares = np.zeros(len(points) + 1)
            category_shares[where] = np.asarray(categories["shares"], dtype=np.float64)
            table = _strata_table(categories, "strata_shares", strata, len(known), name)
            if table is not None:
                category_strata = np.zeros((strata, len(points) + 1))
                category_strata[:, where] = table
        else:
            category_shares = np.append(np.bincount(at, minlength=len(points)) / max(len(values), 1), 0.0)
    return SeriesReference(
        name=name,
        kind=kind,
        edges=edges,
        shares=shares,
        sample=values,
        points=points,
        sample_point=np.searchsorted(points, values).astype(np.intp),
        strata=strata,
        sample_stratum=sample_stratum,
        sample_draw=sample_draw,
        strata_shares=_strata_table(block, "strata_shares", strata, len(edges) + 1, name),
        category_shares=category_shares,
        category_strata_shares=category_strata,
    )


def sample_times(document: Mapping[str, Any]) -> tuple[list[float] | None, int]:
    """The sample rows' times of day and the number of strata, or (None, 0) for a document without them
    (schema 1: its windows are compared with the whole sample, as before)."""
    times = document["sample"].get("time_of_day_s")
    strata = int(document.get("day_strata") or 0)
    if times is None or strata < 1:
        return None, 0
    return [float(t) for t in times], strata


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
    times, strata = sample_times(features)
    series = [
        series_reference(
            name,
            "categorical" if name in categorical else "continuous",
            features["features"][name],
            [row[j] for row in rows],
            times=times,
            strata=strata,
        )
        for j, name in enumerate(names)
    ]
    series += [score_reference(SCORE_PREFIX + variant, document) for variant, document in scores.items()]
    return DriftReference(tuple(series))


def score_reference(name: str, document: Mapping[str, Any]) -> SeriesReference:
    """The score series `name` of a model version's document (its sample's scores, with their rows' times)."""
    times, strata = sample_times(document)
    return series_reference(
        name, "continuous", document["score"], document["sample"]["scores"], times=times, strata=strata
    )
