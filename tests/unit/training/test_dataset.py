"""The training set is point-in-time correct: every transaction sees only state written strictly before it,
whether the join is Feast's or the in-process one, and its inputs come from the shared feature code."""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_repo import batch as feature_batch
from feature_repo.settings import FeastSettings
from producers.generator import GeneratorConfig, TransactionGenerator
from producers.history import write_history
from producers.world import build_world
from streamscore.features import FEATURE_NAMES, replay, transaction_features
from training import dataset
from training.dataset import (
    ENTITY_TIMESTAMP,
    MERCHANT,
    PROFILE,
    REALTIME,
    SERVICE_VIEWS,
    VIEW_FIELDS,
    VIEW_TTL,
    FeatureStoreUnavailableError,
    build_dataset,
    column,
    entity_frame,
    facts,
    feature_matrix,
    joined_columns,
    joined_frame,
    load_history,
    local_joined_frame,
    point_in_time_join,
    split_by_time,
)

DAY1 = pd.Timestamp("2026-03-02", tz="UTC")


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A history in load_history's shape from the fields a test cares about."""
    defaults = {
        "merchant_id": "m1",
        "merchant_category": "5411",
        "amount": 10.0,
        "currency": "EUR",
        "country": "DE",
        "channel": "pos",
        "device_id": "d1",
        "is_fraud": False,
    }
    records = []
    for i, row in enumerate(rows):
        record = {"event_id": f"e{i}", **defaults, **row}
        record.setdefault("labeled_at", record["event_time"] + pd.Timedelta(seconds=30))
        records.append(record)
    history = pd.DataFrame(records)
    history["event_time"] = pd.to_datetime(history["event_time"], utc=True).dt.as_unit("us")
    history["labeled_at"] = pd.to_datetime(history["labeled_at"], utc=True).dt.as_unit("us")
    return history.sort_values(["event_time", "event_id"], kind="mergesort").reset_index(drop=True)


@pytest.fixture(scope="module")
def history_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = build_world(3, accounts=300, merchants=60)
    generator = TransactionGenerator(world, GeneratorConfig(seed=4, fraud_rate=0.05))
    out = tmp_path_factory.mktemp("history")
    end = datetime(2026, 3, 4, tzinfo=UTC)
    write_history(generator, 2.0, out, end=end, rate_per_s=0.05, label_delay=timedelta(seconds=30))
    return out


@pytest.fixture(scope="module")
def history(history_dir: Path) -> pd.DataFrame:
    return load_history(history_dir)


def test_realtime_state_is_the_one_before_each_event() -> None:
    history = frame(
        [
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(hours=10), "amount": 5.0},
            {"account_id": "a2", "event_time": DAY1 + pd.Timedelta(hours=10, seconds=30)},
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(hours=10, seconds=60), "amount": 7.0},
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(hours=10, seconds=90), "device_id": "d2"},
        ]
    )
    rt = local_joined_frame(history, "fraud_v1_lite")
    assert rt[column(REALTIME, "tx_count_5m")].isna().tolist() == [True, True, False, False]
    assert rt[column(REALTIME, "tx_count_5m")].iloc[2:].tolist() == [1.0, 2.0]
    assert rt[column(REALTIME, "amount_sum_5m")].iloc[3] == 12.0
    assert rt[column(REALTIME, "last_event_ts")].iloc[3] == (DAY1 + pd.Timedelta(hours=10, seconds=60)).timestamp()
    assert list(rt[column(REALTIME, "known_devices")].iloc[3]) == ["d1"]
    x = feature_matrix(history, local_joined_frame(history, "fraud_v1")).x
    new_device = FEATURE_NAMES.index("new_device")
    assert x[:, new_device].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_a_row_older_than_its_view_ttl_does_not_join() -> None:
    history = frame(
        [
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(hours=10)},
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(days=1, hours=10)},
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(days=3, hours=11)},
        ]
    )
    rt = local_joined_frame(history, "fraud_v1")[column(REALTIME, "tx_count_24h")]
    # One day after: the snapshot joins; more than two days (the view's TTL) after: the account looks new.
    assert np.isnan(rt.iloc[0]) and rt.iloc[1] == 1.0 and np.isnan(rt.iloc[2])


def test_batch_rows_join_only_after_their_day_has_ended() -> None:
    history = frame(
        [
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(hours=10), "amount": 10.0},
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(hours=15), "amount": 30.0, "country": "FR"},
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(hours=23, minutes=59), "amount": 20.0},
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(days=1, hours=9), "amount": 50.0},
        ]
    )
    joined = local_joined_frame(history, "fraud_v1")
    mean = joined[column(PROFILE, "amount_mean_30d")]
    assert mean.iloc[:3].isna().all()  # the day-1 row is stamped at midnight, after these events
    assert mean.iloc[3] == pytest.approx(20.0)
    assert joined[column(PROFILE, "tx_count_30d")].iloc[3] == 3
    assert joined[column(PROFILE, "amount_std_30d")].iloc[3] == pytest.approx(np.std([10, 30, 20], ddof=1))
    assert joined[column(PROFILE, "home_country")].iloc[3] == "DE"
    assert list(joined[column(PROFILE, "usual_countries")].iloc[3]) == ["DE", "FR"]


def test_merchant_fraud_rate_counts_only_labels_known_at_the_row_time() -> None:
    late = DAY1 + pd.Timedelta(days=1, hours=1)
    history = frame(
        [
            {"account_id": "a1", "event_time": DAY1 + pd.Timedelta(hours=9)},
            {"account_id": "a2", "event_time": DAY1 + pd.Timedelta(hours=10), "is_fraud": True},
            {"account_id": "a3", "event_time": DAY1 + pd.Timedelta(hours=11), "is_fraud": True, "labeled_at": late},
            {"account_id": "a4", "event_time": DAY1 + pd.Timedelta(hours=12)},
            {"account_id": "a5", "event_time": DAY1 + pd.Timedelta(days=1, hours=2)},
            {"account_id": "a6", "event_time": DAY1 + pd.Timedelta(days=1, hours=3), "merchant_id": "m2"},
        ]
    )
    joined = local_joined_frame(history, "fraud_v1")
    rate = joined[column(MERCHANT, "fraud_rate_30d")]
    assert rate.iloc[:4].isna().all()
    # At midnight m1 has four transactions and three known labels, one of them fraud (the other fraud label
    # arrives at 01:00): the smoothed rate of one fraud in three labels.
    prior = feature_batch.PRIOR_FRAUD_RATE * feature_batch.PRIOR_WEIGHT
    assert rate.iloc[4] == pytest.approx((1 + prior) / (3 + feature_batch.PRIOR_WEIGHT))
    assert joined[column(MERCHANT, "tx_count_30d")].iloc[4] == 4
    assert np.isnan(rate.iloc[5])  # m2 has no history


def test_point_in_time_join_takes_the_latest_row_at_or_before_the_entity_time() -> None:
    t = DAY1 + pd.Timedelta(hours=5)
    entities = pd.DataFrame({"account_id": ["a", "a", "b", "a"], ENTITY_TIMESTAMP: [t, t - pd.Timedelta(days=2), t, t]})
    view = pd.DataFrame(
        {
            "account_id": ["a", "a", "a", "b"],
            ENTITY_TIMESTAMP: [
                t - pd.Timedelta(days=1),
                t,
                t + pd.Timedelta(microseconds=1),
                t - pd.Timedelta(days=40),
            ],
            "v": [1.0, 2.0, 3.0, 4.0],
        }
    )
    joined = point_in_time_join(entities, view, "account_id", ["v"], ttl=pd.Timedelta(days=30))
    # equal timestamp joins, a later one never; b's only row is older than the TTL.
    assert joined["v"].tolist()[:1] == [2.0]
    assert np.isnan(joined["v"].iloc[1]) and np.isnan(joined["v"].iloc[2])
    assert joined["v"].iloc[3] == 2.0


def test_point_in_time_join_ttl_bound_is_inclusive_as_in_feast() -> None:
    # Feast's DuckDB join keeps `row ts + ttl >= entity ts` (tests/unit/feature_repo/test_store.py pins it).
    t = DAY1 + pd.Timedelta(hours=5)
    ttl = VIEW_TTL[REALTIME]
    entities = pd.DataFrame({"account_id": ["edge", "expired"], ENTITY_TIMESTAMP: [t, t]})
    view = pd.DataFrame(
        {"account_id": ["edge", "expired"], ENTITY_TIMESTAMP: [t - ttl, t - ttl - pd.Timedelta(microseconds=1)]}
    ).assign(v=[1.0, 2.0])
    joined = point_in_time_join(entities, view, "account_id", ["v"], ttl=ttl)
    assert joined["v"].iloc[0] == 1.0 and np.isnan(joined["v"].iloc[1])


def test_entity_timestamp_is_one_microsecond_before_the_event(history: pd.DataFrame) -> None:
    entities = entity_frame(history)
    assert (history["event_time"] - entities[ENTITY_TIMESTAMP] == pd.Timedelta(microseconds=1)).all()
    assert entities["event_id"].tolist() == history["event_id"].tolist()


def test_a_feature_lag_joins_the_state_up_to_that_long_before_the_event(history: pd.DataFrame) -> None:
    """TRAIN_FEATURE_LAG_S: features as a serving path whose snapshots arrive up to that late reads them."""
    lagged = entity_frame(history, lag_s=120.0, seed=3)
    behind = (history["event_time"] - lagged[ENTITY_TIMESTAMP]).dt.total_seconds()
    assert behind.min() >= 1e-6 and behind.max() <= 120.0 + 1e-6
    assert behind.std() > 20.0, "uniform over the lag, not one fixed offset"
    pd.testing.assert_frame_equal(lagged, entity_frame(history, lag_s=120.0, seed=3))
    # A lagged row sees no more of its account's recent past than the exact join: never a later snapshot.
    exact = local_joined_frame(history, "fraud_v1_lite")
    late = local_joined_frame(history, "fraud_v1_lite", lag_s=120.0, seed=3)
    last = "account_realtime__last_event_ts"
    both = exact[last].notna() & late[last].notna()
    assert (late.loc[both, last] <= exact.loc[both, last]).all()
    assert (late.loc[both, last] < exact.loc[both, last]).any()


def test_model_inputs_are_the_shared_feature_code(history: pd.DataFrame) -> None:
    joined = local_joined_frame(history, "fraud_v1")
    matrix = feature_matrix(history, joined)
    assert matrix.x.shape == (len(history), len(FEATURE_NAMES)) and matrix.x.dtype == np.float32
    tx = facts(history)
    snapshots = replay(tx)
    for i in np.random.default_rng(0).choice(len(history), 50, replace=False):
        # Without profile / merchant columns the realtime part alone must equal replay + transaction_features.
        alone = feature_matrix(
            history.iloc[[i]].reset_index(drop=True), joined.iloc[[i]][joined_columns("fraud_v1")[:10]]
        )
        expected = transaction_features(tx[i], snapshots[i], None, None).values
        np.testing.assert_array_equal(alone.x[0], np.asarray(expected, dtype=np.float32))
    assert 0 < matrix.missing < len(history)


def test_feast_shaped_values_give_the_same_inputs(history: pd.DataFrame) -> None:
    joined = local_joined_frame(history, "fraud_v1")
    feast_like = joined.copy()
    for name in ("known_devices", "known_countries"):
        col = column(REALTIME, name)
        arrays = [None if v is None else np.array(v, dtype=object) for v in joined[col]]
        feast_like[col] = pd.Series(arrays, index=joined.index, dtype=object)
    col = column(PROFILE, "usual_devices")
    feast_like[col] = [v if isinstance(v, float) else "[" + ",".join(f'"{d}"' for d in v) + "]" for v in joined[col]]
    col = column(REALTIME, "last_event_ts")
    feast_like[col] = [None if v is None else pd.Timestamp(v, unit="s", tz="UTC") for v in joined[col]]
    for name in ("tx_count_5m", "tx_count_1h"):
        feast_like[column(REALTIME, name)] = joined[column(REALTIME, name)].astype("Int64")
    np.testing.assert_array_equal(feature_matrix(history, feast_like).x, feature_matrix(history, joined).x)


def test_lite_service_leaves_merchant_features_at_their_defaults(history: pd.DataFrame) -> None:
    joined = local_joined_frame(history, "fraud_v1_lite")
    assert not any(name.startswith(MERCHANT) for name in joined.columns)
    x = feature_matrix(history, joined).x
    for name in ("merchant_fraud_rate_30d", "merchant_tx_count_30d_log"):
        assert (x[:, FEATURE_NAMES.index(name)] == 0.0).all()
    full = feature_matrix(history, local_joined_frame(history, "fraud_v1")).x
    assert (full[:, FEATURE_NAMES.index("merchant_tx_count_30d_log")] > 0).any()


def fake_feature_repo(monkeypatch: pytest.MonkeyPatch, history: pd.DataFrame, drop: str | None = None) -> list[Any]:
    """A stand-in `feature_repo.store` with the agreed API; the fake store answers from the in-process join and
    returns rows shuffled (the real one keeps the order; the code must not depend on it)."""
    calls: list[Any] = []
    by_event = pd.concat([history[["event_id"]], local_joined_frame(history, "fraud_v1")], axis=1).set_index("event_id")

    def historical_features(store: object, entity_df: pd.DataFrame, service: str = "fraud_v1") -> pd.DataFrame:
        calls.append((store, service, entity_df[ENTITY_TIMESTAMP].copy()))
        out = entity_df.join(by_event[joined_columns(service)], on="event_id")
        if drop is not None:
            out = out.drop(columns=[drop])
        return out.sample(frac=1.0, random_state=0)

    store_module = types.ModuleType("feature_repo.store")
    store_module.open_store = lambda settings: f"store({settings.project})"  # type: ignore[attr-defined]
    store_module.historical_features = historical_features  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "feature_repo.store", store_module)
    return calls


def test_feast_join_is_put_back_in_entity_order(history: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_feature_repo(monkeypatch, history)
    entities = entity_frame(history)
    joined = joined_frame(entities, "fraud_v1_lite", feast_settings=FeastSettings(project="p1"), chunk_rows=1000)
    assert len(calls) == -(-len(history) // 1000)
    assert {(store, service) for store, service, _ in calls} == {("store(p1)", "fraud_v1_lite")}
    assert pd.concat([stamps for _, _, stamps in calls]).tolist() == entities[ENTITY_TIMESTAMP].tolist()
    assert list(joined.columns) == joined_columns("fraud_v1_lite")
    expected = local_joined_frame(history, "fraud_v1_lite")
    np.testing.assert_array_equal(feature_matrix(history, joined).x, feature_matrix(history, expected).x)


def test_feast_join_goes_in_time_ordered_chunks(history: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_feature_repo(monkeypatch, history)
    entities = entity_frame(history).sample(frac=1.0, random_state=3)  # any order in
    joined = joined_frame(entities, "fraud_v1", feast_settings=FeastSettings(project="p1"), chunk_rows=700)
    stamps = [chunk for _, _, chunk in calls]
    assert len(stamps) == -(-len(history) // 700)
    assert all(chunk.is_monotonic_increasing for chunk in stamps)
    assert all(a.max() <= b.min() for a, b in pairwise(stamps))  # chunk after chunk in time
    order = entities.index.to_numpy()  # history's row of each entity row
    expected = feature_matrix(history, local_joined_frame(history, "fraud_v1")).x[order]
    np.testing.assert_array_equal(feature_matrix(history.iloc[order].reset_index(drop=True), joined).x, expected)
    with pytest.raises(ValueError, match="chunk_rows"):
        joined_frame(entities, "fraud_v1", chunk_rows=0)


def test_offline_sources_of_another_history_are_refused(history: pd.DataFrame, tmp_path: Path) -> None:
    log = feature_batch.realtime_log(history)
    log.to_parquet(tmp_path / "account_realtime.parquet")
    dataset.check_offline_sources(history, tmp_path, Path("h"))  # built from this history
    later = history.iloc[: len(history) // 2]  # e.g. the history was regenerated after `features batch`
    with pytest.raises(
        FeatureStoreUnavailableError, match=r"not built from the history in h.*features batch --history h"
    ):
        dataset.check_offline_sources(later, tmp_path, Path("h"))
    with pytest.raises(FeatureStoreUnavailableError, match="no offline sources"):
        dataset.check_offline_sources(history, tmp_path / "nowhere", Path("h"))


def test_feast_join_missing_a_feature_is_an_error(history: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_feature_repo(monkeypatch, history, drop=column(PROFILE, "amount_mean_30d"))
    with pytest.raises(FeatureStoreUnavailableError, match="amount_mean_30d"):
        joined_frame(entity_frame(history), "fraud_v1")


def test_feast_join_without_a_feature_repository_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "feature_repo.store", None)  # import fails as if the module did not exist
    with pytest.raises(FeatureStoreUnavailableError, match="TRAIN_FEATURE_JOIN=local"):
        joined_frame(pd.DataFrame({"event_id": ["e"]}), "fraud_v1")


def test_split_is_by_event_time() -> None:
    n = 1000
    ts = np.random.default_rng(2).permutation(n).astype(np.float64)
    x = ts[:, None].astype(np.float32).repeat(3, axis=1)
    train, validation, test = split_by_time(x, np.zeros(n, np.float32), ts, ts, 0.15, 0.15)
    assert (len(train), len(validation), len(test)) == (700, 150, 150)
    assert train.event_ts.max() < validation.event_ts.min() <= validation.event_ts.max() < test.event_ts.min()
    np.testing.assert_array_equal(test.x[:, 0], test.event_ts.astype(np.float32))
    with pytest.raises(ValueError, match="too few"):
        split_by_time(x[:2], np.zeros(2, np.float32), ts[:2], ts[:2], 0.15, 0.15)


def test_build_dataset_locally(history_dir: Path, history: pd.DataFrame) -> None:
    stages: list[str] = []
    data = build_dataset(history_dir, "fraud_v1", join="local", on_stage=stages.append)
    assert len(data.train) + len(data.validation) + len(data.test) == len(history)
    assert data.train.x.dtype == np.float32 and data.train.x.shape[1] == len(FEATURE_NAMES)
    assert data.train.event_ts.max() <= data.validation.event_ts.min()
    assert data.train.positives > 0 and data.test.positives > 0
    assert data.join == "local" and data.stats["rows"] == len(history)
    assert stages[0] == "loading history"
    with pytest.raises(dataset.HistoryError, match="produce --history"):
        build_dataset(history_dir / "nowhere", "fraud_v1", join="local")


def test_services_fields_and_ttls_mirror_the_feature_repository() -> None:
    definitions = pytest.importorskip("feature_repo.definitions")  # imports Feast (seconds)
    assert definitions.SERVICES == SERVICE_VIEWS
    assert {view: tuple(name for name, _ in fields) for view, fields in definitions.VIEW_FIELDS.items()} == VIEW_FIELDS
    assert {
        REALTIME: pd.Timedelta(definitions.REALTIME_TTL),
        PROFILE: pd.Timedelta(definitions.BATCH_TTL),
        MERCHANT: pd.Timedelta(definitions.BATCH_TTL),
    } == VIEW_TTL
