"""Helpers of the monitor's tests: synthetic model inputs shaped like ours, reference documents shaped like
training's reference.json, and Score / Label events built from them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.references import ReferenceBook
from streamscore.contracts import Decision, Label, Score
from streamscore.features import FEATURE_NAMES

N_FEATURES = len(FEATURE_NAMES)
COLUMN = {name: j for j, name in enumerate(FEATURE_NAMES)}
REVIEW, DECLINE = 0.3, 0.7


def draw_features(rng: np.random.Generator, n: int, shift: Mapping[str, float] | None = None) -> NDArray[np.float64]:
    """`n` rows of the 24 model inputs: continuous features (some skewed), counts with ties, 0/1 flags from
    common to rare, one-hot channels. `shift` adds a constant to named columns (a drift)."""
    x = np.zeros((n, N_FEATURES))

    def put(name: str, values: NDArray[Any]) -> None:
        x[:, COLUMN[name]] = values

    put("amount_log", rng.normal(3.5, 1.0, n))
    put("amount_vs_usual", rng.lognormal(0.0, 0.5, n))
    put("amount_zscore", rng.normal(0.0, 1.0, n))
    put("seconds_since_last_log", rng.normal(8.0, 2.0, n))
    put("tx_count_5m", rng.poisson(0.5, n))
    put("tx_count_1h", rng.poisson(2.0, n))
    put("tx_count_24h", rng.poisson(8.0, n))
    put("amount_sum_5m_log", np.clip(rng.normal(2.0, 1.5, n), 0.0, None))
    put("amount_sum_1h_log", rng.normal(4.0, 1.0, n))
    put("amount_sum_24h_log", rng.normal(6.0, 1.0, n))
    put("distinct_merchants_1h", rng.poisson(1.5, n))
    put("new_device", rng.random(n) < 0.05)
    put("new_country", rng.random(n) < 0.03)
    put("foreign_country", rng.random(n) < 0.10)
    put("no_device", rng.random(n) < 0.20)
    put("profile_tx_count_30d_log", rng.normal(4.0, 0.7, n))
    put("profile_amount_mean_30d_log", rng.normal(3.5, 0.6, n))
    put("merchant_fraud_rate_30d", rng.beta(1.0, 50.0, n))
    put("merchant_tx_count_30d_log", rng.normal(7.0, 1.0, n))
    hour = rng.uniform(0.0, 2 * math.pi, n)
    put("hour_sin", np.sin(hour))
    put("hour_cos", np.cos(hour))
    channel = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    for k, name in enumerate(("channel_pos", "channel_ecommerce", "channel_contactless")):
        put(name, channel == k)
    for name, delta in (shift or {}).items():
        x[:, COLUMN[name]] += delta
    return x


def model_scores(x: NDArray[np.float64], strength: float = 1.0) -> NDArray[np.float64]:
    """A fixed logistic model of the inputs. It ignores amount_log, so shifting that input moves no score."""
    z = -3.0 + strength * (
        1.2 * x[:, COLUMN["new_device"]]
        + 0.8 * x[:, COLUMN["foreign_country"]]
        + 0.6 * x[:, COLUMN["amount_zscore"]]
        + 0.3 * x[:, COLUMN["tx_count_5m"]]
        + 20.0 * x[:, COLUMN["merchant_fraud_rate_30d"]]
    )
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _edges(values: NDArray[np.float64], bins: int = 10) -> list[float]:
    # training.registry.quantile_edges: deciles of the training set, duplicates removed.
    return [float(v) for v in np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))]


def _block(values: NDArray[np.float64]) -> dict[str, list[float]]:
    edges = _edges(values)
    shares = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1) / len(values)
    return {"edges": edges, "shares": [float(s) for s in shares]}


def reference_document(
    x: NDArray[np.float64], scores: NDArray[np.float64], *, seed: int = 0, sample_size: int = 2000
) -> dict[str, Any]:
    """A reference.json with training's layout (training.registry.build_reference) over a "training set"."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(scores), size=min(sample_size, len(scores)), replace=False))
    return {
        "schema_version": 1,
        "feature_service": "fraud_v1",
        "feature_names": list(FEATURE_NAMES),
        "bins": 10,
        "features": {name: _block(x[:, j]) for j, name in enumerate(FEATURE_NAMES)},
        "score": _block(scores),
        "sample": {
            "seed": seed,
            "rows": len(rows),
            "features": [[float(v) for v in row] for row in x[rows]],
            "scores": [float(v) for v in scores[rows]],
        },
    }


def decision(score: float) -> Decision:
    return "decline" if score >= DECLINE else "review" if score >= REVIEW else "approve"


def score_event(
    event_id: str,
    account: str,
    at: float,
    value: float,
    *,
    variant: str = "champion",
    version: str = "1",
    experiment: str = "exp-1",
    features: NDArray[np.float64] | None = None,
    amount: float = 25.0,
    source: str = "stream",
    decision_: Decision | None = None,
) -> Score:
    when = datetime.fromtimestamp(at, tz=UTC)
    return Score(
        event_id=event_id,
        account_id=account,
        score=float(value),
        decision=decision_ or decision(value),
        model_name="fraud-detector",
        model_version=version,
        variant=variant,
        experiment_id=experiment,
        feature_status="ok",
        amount=amount,
        currency="EUR",
        event_time=when,
        scored_time=when,
        latency_ms=1.0,
        source=source,  # type: ignore[arg-type]
        features=None if features is None else dict(zip(FEATURE_NAMES, (float(v) for v in features), strict=True)),
    )


def label_event(event_id: str, account: str, at: float, fraud: bool, delay_s: float) -> Label:
    return Label(
        event_id=event_id,
        account_id=account,
        is_fraud=fraud,
        event_time=datetime.fromtimestamp(at, tz=UTC),
        labeled_at=datetime.fromtimestamp(at + delay_s, tz=UTC),
    )


def two_versions(seed: int, *, sample_seed: int, strength: float, categorical: Sequence[str]) -> ReferenceBook:
    """A reference book of model versions "1" and "2" over one synthetic training set (version 2's scores from a
    model `strength` times as steep), loaded: what the partition and merge tests measure drift against."""
    x = draw_features(np.random.default_rng(seed), 20_000)
    docs = {
        "1": reference_document(x, model_scores(x), seed=sample_seed),
        "2": reference_document(x, model_scores(x, strength)),
    }
    book = ReferenceBook(lambda version: docs[version], categorical=categorical)
    for version in docs:
        assert book.load(version)
    return book
