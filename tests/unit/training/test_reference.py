"""reference.json (schema 2) as `build_reference` writes it: float32 values, each sample row's time of day,
per-stratum shares, categories for flags and a bin of its own for a value holding a large share at an edge."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from training.registry import DAY_STRATA, REFERENCE_BINS, build_reference

NAMES = ("amount_log", "count_log", "flag_95", "flag_rare", "rate")


def training_set(n: int = 20_000, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000 + np.sort(rng.uniform(0, 30 * 86_400, size=n))
    counts = rng.poisson(0.3, size=n)
    x = np.stack(
        [
            rng.normal(3, 1, size=n),
            np.log1p(counts),
            (rng.random(n) < 0.95).astype(float),
            (rng.random(n) < 0.004).astype(float),
            rng.integers(0, 4, size=n) / rng.integers(4, 9, size=n),
        ],
        axis=1,
    ).astype(np.float32)
    return x, rng.random(n).astype(np.float32), ts


def document() -> dict[str, Any]:
    """A document built without event times (as before schema 2), through JSON as the registry stores it."""
    x, scores, _ = training_set()
    built = build_reference(x, scores, feature_names=NAMES, feature_service="svc", seed=3, sample_size=2000)
    loaded: dict[str, Any] = json.loads(json.dumps(built))
    return loaded


def test_the_sample_holds_float32_values_and_each_rows_time_of_day() -> None:
    x, scores, ts = training_set()
    doc = build_reference(
        x.astype(np.float64), scores, feature_names=NAMES, feature_service="svc", seed=3, sample_size=2000, event_ts=ts
    )
    assert doc["schema_version"] == 2
    assert doc["precision"] == "float32"
    rows = np.sort(np.random.default_rng(3).choice(len(scores), size=2000, replace=False))
    sample = np.asarray(doc["sample"]["features"])
    assert np.array_equal(sample, x[rows].astype(np.float64))  # float32 values, exactly
    assert doc["day_strata"] == DAY_STRATA
    assert doc["sample"]["time_of_day_s"] == pytest.approx((ts[rows] % 86_400).tolist(), abs=0)


def test_strata_shares_and_categories() -> None:
    x, scores, ts = training_set()
    doc = json.loads(
        json.dumps(
            build_reference(
                x, scores, feature_names=NAMES, feature_service="svc", seed=3, sample_size=2000, event_ts=ts
            )
        )
    )
    hours = ((ts % 86_400) // 3600).astype(int)
    for j, name in enumerate(NAMES):
        block = doc["features"][name]
        table = np.asarray(block["strata_shares"])
        assert table.shape == (DAY_STRATA, len(block["edges"]) + 1)
        assert table.sum(axis=1) == pytest.approx(np.ones(DAY_STRATA))
        edges = np.asarray(block["edges"])
        in_13 = x[hours == 13, j].astype(np.float64)
        assert table[13].tolist() == pytest.approx(
            (np.bincount(np.searchsorted(edges, in_13, side="left"), minlength=len(edges) + 1) / len(in_13)).tolist()
        )
    flag = doc["features"]["flag_95"]
    assert flag["categories"]["values"] == [0.0, 1.0]
    assert flag["categories"]["shares"][1] == pytest.approx(float((x[:, 2] == 1).mean()))
    assert np.asarray(flag["categories"]["strata_shares"]).shape == (DAY_STRATA, 2)
    assert "categories" not in doc["score"]
    assert "categories" not in doc["features"]["amount_log"]  # continuous: more than 64 values
    assert len(doc["features"]["rate"]["categories"]["values"]) <= 64


def test_a_value_holding_many_rows_at_an_edge_gets_a_bin_of_its_own() -> None:
    """A flag that is 1 in 95 % of rows: all deciles are 1, edges [1.0] and one bin held both values (PSI 0 when
    the flag vanished). Now an edge just below 1 isolates it."""
    doc = document()
    edges = doc["features"]["flag_95"]["edges"]
    assert edges == [float(np.nextafter(1.0, -np.inf)), 1.0]
    shares = doc["features"]["flag_95"]["shares"]
    assert shares[0] == pytest.approx(0.05, abs=0.01)
    assert shares[1] == pytest.approx(0.95, abs=0.01)
    # A count with ~74 % zeros: the zero bin is already its own ((-inf, 0]), no extra edge.
    assert doc["features"]["count_log"]["edges"][0] == 0.0
    assert len(doc["features"]["amount_log"]["edges"]) == REFERENCE_BINS - 1


def test_without_event_times_the_document_has_no_strata() -> None:
    doc = document()
    assert "day_strata" not in doc
    assert "time_of_day_s" not in doc["sample"]
    assert all("strata_shares" not in b for b in doc["features"].values())
    with pytest.raises(ValueError, match="event times"):
        build_reference(
            np.zeros((10, 1), dtype=np.float32),
            np.zeros(10),
            feature_names=("a",),
            feature_service="svc",
            seed=1,
            sample_size=5,
            event_ts=np.zeros(9),
        )
