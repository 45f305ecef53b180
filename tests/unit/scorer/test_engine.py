"""The scoring engine over a real ONNX Runtime session and an in-memory FeatureClient (no network)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from scorer.engine import Request, ScoringEngine, Serving, Variant, feature_status
from scorer.features.base import FeatureClient, FeatureStoreUnavailableError, OnlineRow
from scorer.models import LoadedModel, ModelLoadError, RuntimeOptions, load_model
from scorer.routing import Router
from streamscore.contracts import Score, Transaction
from streamscore.features import (
    AccountProfile,
    MerchantRisk,
    RealtimeSnapshot,
    TransactionFacts,
    transaction_features,
)
from streamscore.registry import ModelFiles
from streamscore.thresholds import Thresholds
from tests.support.models import expected_scores, linear_weights, logistic_onnx

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class FakeFeatureClient(FeatureClient):
    """A real FeatureClient over a dict; `down` makes every read fail like an unreachable Redis."""

    def __init__(self, rows: dict[tuple[str, str], OnlineRow] | None = None) -> None:
        self.rows = rows or {}
        self.down = False
        self.reads: list[int] = []

    def read(self, keys: Sequence[tuple[str, str]], as_of: Sequence[float] | None = None) -> list[OnlineRow]:
        if self.down:
            raise FeatureStoreUnavailableError("fake", "down for the test")
        self.reads.append(len(keys))
        return [self.rows.get(key, (None, None, None)) for key in keys]

    def ping(self) -> None:
        if self.down:
            raise FeatureStoreUnavailableError("fake", "down for the test")

    def close(self) -> None:
        pass


def tx(i: int, account: str | None = None, **overrides: object) -> Transaction:
    fields: dict[str, object] = {
        "event_id": f"e{i}",
        "account_id": account or f"acct-{i % 50}",
        "merchant_id": f"m{i % 7}",
        "merchant_category": "5411",
        "amount": 10.0 + i,
        "currency": "EUR",
        "country": "DE",
        "channel": "pos",
        "device_id": f"d{i % 3}",
        "event_time": NOW + timedelta(seconds=i),
    }
    fields.update(overrides)
    return Transaction(**fields)  # type: ignore[arg-type]


def model(tmp_path: Path, version: str, seed: int, *, service: str = "fraud_v1", poison: bool = False) -> LoadedModel:
    weights, bias = linear_weights(seed)
    path = tmp_path / f"v{version}.onnx"
    path.write_bytes(logistic_onnx(weights, bias, poison=poison))
    files = ModelFiles("fraud-detector", version, path, "sha", service, _names(), "run")
    return load_model(files, RuntimeOptions(warmup_batch=16))


def _names() -> tuple[str, ...]:
    from streamscore.features import FEATURE_NAMES

    return FEATURE_NAMES


def serving(
    models: dict[str, LoadedModel],
    weights: list[tuple[str, float]],
    shadows: list[tuple[str, float]],
    thresholds: dict[str, Thresholds] | None = None,
) -> Serving:
    variants = tuple(Variant(n, n, w) for n, w in weights) + tuple(Variant(n, n, s, shadow=True) for n, s in shadows)
    return Serving("exp-1", Router("salt", weights, shadows), variants, models, thresholds or {})


@pytest.fixture
def rows() -> dict[tuple[str, str], OnlineRow]:
    realtime = RealtimeSnapshot(2, 5, 9, 40.0, 100.0, 300.0, 3, NOW.timestamp() - 30, ("d0",), ("DE",))
    profile = AccountProfile(35.0, 12.0, 80, "DE", ("DE", "FR"), ("d0", "d1"))
    merchant = MerchantRisk(0.02, 500)
    return {(f"acct-{a}", f"m{m}"): (realtime, profile, merchant) for a in range(0, 50, 2) for m in range(7)}


def test_scores_equal_the_model_on_the_features_the_shared_code_computes(
    tmp_path: Path, rows: dict[tuple[str, str], OnlineRow]
) -> None:
    champion = model(tmp_path, "1", seed=1)
    engine = ScoringEngine(serving({"champion": champion}, [("champion", 1.0)], []), FakeFeatureClient(rows))
    txs = [tx(i) for i in range(200)]
    result = engine.score([Request(t, NOW.timestamp()) for t in txs])

    assert not result.failed
    assert sorted(s.index for s in result.scored) == list(range(200))
    weights, bias = linear_weights(1)
    for item in result.scored:
        t = txs[item.index]
        realtime, profile, merchant = rows.get((t.account_id, t.merchant_id), (None, None, None))
        expected_row = transaction_features(TransactionFacts.of(t), realtime, profile, merchant)
        expected = expected_scores(np.asarray([expected_row.values], dtype=np.float32), weights, bias)[0]
        assert item.score.score == pytest.approx(expected, abs=1e-6)
        assert item.score.features == expected_row.as_dict()
        assert item.score.feature_status == ("ok" if realtime else "missing")
        assert item.score.model_version == "1" and item.score.variant == "champion"
        assert item.score.experiment_id == "exp-1"
        # A Serving without thresholds for the variant decides with the documented defaults, and says so.
        assert item.score.decision == Thresholds(0.3, 0.7).decide(item.score.score)
        assert (item.score.review_threshold, item.score.decline_threshold) == (0.3, 0.7)
        assert item.score.thresholds == "default"
        # The score is a valid wire event.
        assert Score.model_validate_json(item.score.to_json()) == item.score


def test_one_feature_read_per_batch_and_missing_entities_get_defaults(tmp_path: Path) -> None:
    client = FakeFeatureClient({})
    engine = ScoringEngine(serving({"champion": model(tmp_path, "1", 1)}, [("champion", 1.0)], []), client)
    result = engine.score([Request(tx(i), NOW.timestamp()) for i in range(64)])
    assert client.reads == [64]
    assert {s.score.feature_status for s in result.scored} == {"missing"}
    defaults = transaction_features(TransactionFacts.of(tx(0)), None, None, None).as_dict()
    assert next(s for s in result.scored if s.index == 0).score.features == defaults


def test_split_is_sticky_and_shadows_score_on_top_without_replacing_the_live_score(tmp_path: Path) -> None:
    models = {
        "champion": model(tmp_path, "1", 1),
        "challenger": model(tmp_path, "2", 2),
        "shadow": model(tmp_path, "3", 3),
    }
    engine = ScoringEngine(
        serving(models, [("champion", 0.8), ("challenger", 0.2)], [("shadow", 0.5)]),
        FakeFeatureClient(),
    )
    txs = [tx(i, account=f"acct-{i % 400}") for i in range(4000)]
    result = engine.score([Request(t, NOW.timestamp()) for t in txs])
    live = [s for s in result.scored if not s.shadow]
    shadow = [s for s in result.scored if s.shadow]
    assert sorted(s.index for s in live) == list(range(4000))  # exactly one live score per event
    assert {s.score.variant for s in shadow} == {"shadow"}
    by_account: dict[str, set[str]] = {}
    for s in live:
        by_account.setdefault(s.score.account_id, set()).add(s.score.variant)
    assert all(len(v) == 1 for v in by_account.values())  # sticky
    challenger_share = sum("challenger" in v for v in by_account.values()) / len(by_account)
    assert 0.12 < challenger_share < 0.28  # 400 accounts: 0.2 ± ~4 standard errors
    shadowed_accounts = {s.score.account_id for s in shadow}
    assert 0.38 < len(shadowed_accounts) / 400 < 0.62
    assert {s.score.model_version for s in shadow} == {"3"}
    # Scores come back in input order, each live score before its shadow: a partition's outputs keep the order
    # of its transactions whatever variant scored them.
    assert [(s.index, s.shadow) for s in result.scored] == sorted((s.index, s.shadow) for s in result.scored)


def test_forced_variant_scores_every_request_with_it(tmp_path: Path) -> None:
    models = {"champion": model(tmp_path, "1", 1), "challenger": model(tmp_path, "2", 2)}
    engine = ScoringEngine(serving(models, [("champion", 0.5), ("challenger", 0.5)], []), FakeFeatureClient())
    result = engine.score([Request(tx(i), NOW.timestamp()) for i in range(50)], variant="challenger", source="api")
    assert {(s.score.variant, s.score.source, s.shadow) for s in result.scored} == {("challenger", "api", False)}


def test_a_model_returning_nan_fails_those_rows_only_and_a_nan_model_never_loads(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not probabilities"):
        model(tmp_path, "9", 1, poison=True)
    weights, bias = linear_weights(1)
    path = tmp_path / "nan.onnx"
    no_device = _names().index("no_device")
    path.write_bytes(logistic_onnx(weights, bias, nan_when=no_device))
    files = ModelFiles("fraud-detector", "5", path, "sha", "fraud_v1", _names(), "run")
    engine = ScoringEngine(
        serving({"champion": load_model(files, RuntimeOptions(warmup_batch=8))}, [("champion", 1.0)], []),
        FakeFeatureClient(),
    )
    txs = [tx(i, device_id=None if i % 10 == 0 else f"d{i}") for i in range(100)]
    result = engine.score([Request(t, NOW.timestamp()) for t in txs])
    assert sorted(i for i, _ in result.failed) == list(range(0, 100, 10))
    assert all("not a probability" in why for _, why in result.failed)
    assert len(result.scored) == 90


def test_feature_store_down_raises_for_the_transport_to_retry(tmp_path: Path) -> None:
    client = FakeFeatureClient()
    client.down = True
    engine = ScoringEngine(serving({"champion": model(tmp_path, "1", 1)}, [("champion", 1.0)], []), client)
    with pytest.raises(FeatureStoreUnavailableError):
        engine.score([Request(tx(1), NOW.timestamp())])


def test_lite_models_ignore_merchant_features_and_status_follows_their_views(
    rows: dict[tuple[str, str], OnlineRow],
) -> None:
    realtime, profile, merchant = next(iter(rows.values()))
    assert feature_status((realtime, profile, None), "fraud_v1_lite") == "ok"
    assert feature_status((realtime, profile, None), "fraud_v1") == "default"
    assert feature_status((None, profile, merchant), "fraud_v1") == "default"
    assert feature_status((None, None, merchant), "fraud_v1") == "missing"


def test_thresholds() -> None:
    t = Thresholds(0.3, 0.7)
    assert [t.decide(s) for s in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0)] == [
        "approve",
        "approve",
        "review",
        "review",
        "decline",
        "decline",
    ]
    with pytest.raises(ValueError, match="review <= decline"):
        Thresholds(0.8, 0.5)
    # None: that band is off (no threshold met its objective in training).
    assert [Thresholds(0.5, None).decide(s) for s in (0.49, 0.5, 1.0)] == ["approve", "review", "review"]
    assert Thresholds(None, None).decide(1.0) == "approve"
    with pytest.raises(ValueError, match="review <= decline"):
        Thresholds(None, 0.5)  # a decline band with no review band below it would need review = decline
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            Thresholds(bad, 1.0)


def test_each_variant_decides_with_its_own_thresholds_and_says_which(tmp_path: Path) -> None:
    models = {
        "champion": model(tmp_path, "1", 1),
        "challenger": model(tmp_path, "2", 2),
        "shadow": model(tmp_path, "3", 3),
    }
    split = ([("champion", 0.5), ("challenger", 0.5)], [("shadow", 1.0)])
    txs = [tx(i, account=f"acct-{i % 300}") for i in range(3000)]
    requests = [Request(t, NOW.timestamp()) for t in txs]
    # Each variant's thresholds at its own score quantiles: champion's low, challenger's high.
    first = ScoringEngine(serving(models, *split), FakeFeatureClient()).score(requests)
    values = {n: np.asarray([i.score.score for i in first.scored if i.score.variant == n]) for n in models}

    def at(name: str, review: float, decline: float | None) -> Thresholds:
        q = float(np.quantile(values[name], review))
        return Thresholds(q, None if decline is None else float(np.quantile(values[name], decline)), "model")

    own = {
        "champion": at("champion", 0.2, 0.5),
        "challenger": at("challenger", 0.6, 0.9),
        "shadow": at("shadow", 0.5, None),
    }
    engine = ScoringEngine(serving(models, *split, own), FakeFeatureClient())
    result = engine.score(requests)
    seen: dict[str, set[str]] = {}
    for item in result.scored:
        s = item.score
        applied = own[s.variant]
        assert s.decision == applied.decide(s.score)
        assert (s.review_threshold, s.decline_threshold, s.thresholds) == (applied.review, applied.decline, "model")
        seen.setdefault(s.variant, set()).add(s.decision)
        assert Score.model_validate_json(s.to_json()) == s
    # The same scores under one global pair would decide differently: the variants' own pairs really applied.
    assert seen["shadow"] <= {"approve", "review"} and "review" in seen["shadow"]
    assert len(seen["champion"]) > 1 and len(seen["challenger"]) > 1
    assert any(
        own["champion"].decide(i.score.score) != own["challenger"].decide(i.score.score) for i in result.scored
    ), "the two variants' thresholds disagree on some score"

    # An explicit version decides with the thresholds it is given (its own), else with the defaults.
    explicit = engine.score(
        [Request(t, NOW.timestamp()) for t in txs[:50]], model=models["challenger"], thresholds=own["challenger"]
    )
    assert {(s.score.variant, s.score.decline_threshold) for s in explicit.scored} == {
        ("explicit", own["challenger"].decline)
    }
    assert all(s.score.decision == own["challenger"].decide(s.score.score) for s in explicit.scored)
    fallback = engine.score([Request(tx(1), NOW.timestamp())], model=models["challenger"])
    assert fallback.scored[0].score.thresholds == "default"


class CountingSession:
    """An ONNX Runtime session that records the batch sizes it ran (the device-dispatch test's second slot)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(next(iter(feeds.values()))))
        return self.inner.run(outputs, feeds)  # type: ignore[attr-defined,no-any-return]


def test_device_choice_gpu_only_for_batches_at_the_cuda_threshold(tmp_path: Path) -> None:
    """Without a GPU (CI): `auto` serves on the CPU and `cuda` refuses to start. With a CUDA session in place,
    batches below `cuda_min_batch` stay on the CPU session and larger ones go to the CUDA one (here a second real
    ORT session stands in for it: this host has no GPU; the provider itself is checked on a GPU host)."""
    from scorer.models import CPU, cuda_available

    weights, bias = linear_weights(1)
    path = tmp_path / "v1.onnx"
    path.write_bytes(logistic_onnx(weights, bias))
    files = ModelFiles("fraud-detector", "1", path, "sha", "fraud_v1", _names(), "run")
    loaded = load_model(files, RuntimeOptions(warmup_batch=16, cuda_min_batch=64))
    if not cuda_available():
        assert loaded.providers == (CPU,) and loaded.cuda is None
        with pytest.raises(ModelLoadError, match="no working CUDA"):
            load_model(files, RuntimeOptions(device="cuda"))
    cpu, gpu = CountingSession(loaded.cpu), CountingSession(loaded.cpu)
    loaded.cpu, loaded.cuda = cpu, gpu
    x = np.zeros((100, len(_names())), dtype=np.float32)
    for rows in (1, 63, 64, 100):
        assert loaded.predict(x[:rows]).shape == (rows,)
    assert cpu.batches == [1, 63] and gpu.batches == [64, 100]
