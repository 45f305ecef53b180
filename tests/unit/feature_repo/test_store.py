"""Feast's historical retrieval through the DuckDB offline store, on hand-made sources whose answer is known:
the point-in-time rule, the TTL bounds (inclusive), ties broken by the created timestamp, and every entity row
back once, in order — also the rows Feast's file (Dask) store used to drop or collapse. SQLite online store and
a local registry: no network."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from feature_repo.batch import MERCHANT_SCHEMA, PROFILE_SCHEMA, REALTIME_SCHEMA
from feature_repo.layout import BATCH_TTL, MERCHANT_FILE, PROFILE_FILE, REALTIME_FILE, REALTIME_TTL, VIEW_FIELDS
from feature_repo.settings import FeastSettings
from streamscore.features import RealtimeSnapshot

store_module = pytest.importorskip("feature_repo.store")  # imports Feast (seconds)

E = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
"""The entity timestamp of most rows."""
DAY = datetime(2026, 3, 10, tzinfo=UTC)
"""The batch snapshot before E."""
US = timedelta(microseconds=1)
CREATED = datetime(2026, 3, 10, 1, tzinfo=UTC)


def realtime_row(account: str, at: datetime, count: int, devices: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "account_id": account,
        "tx_count_5m": 0,
        "tx_count_1h": count,
        "tx_count_24h": count,
        "amount_sum_5m": 0.0,
        "amount_sum_1h": 10.0 * count,
        "amount_sum_24h": 10.0 * count,
        "distinct_merchants_1h": 1,
        "last_event_ts": at.timestamp(),
        "known_devices": list(devices),
        "known_countries": ["DE"],
        "event_timestamp": at,
    }


def profile_row(account: str, at: datetime, mean: float, created: datetime = CREATED) -> dict[str, Any]:
    return {
        "account_id": account,
        "amount_mean_30d": mean,
        "amount_std_30d": 1.0,
        "tx_count_30d": 3,
        "home_country": "DE",
        "usual_countries": ["DE"],
        "usual_devices": [],
        "event_timestamp": at,
        "created_timestamp": created,
    }


def merchant_row(merchant: str, at: datetime, rate: float) -> dict[str, Any]:
    return {
        "merchant_id": merchant,
        "fraud_rate_30d": rate,
        "tx_count_30d": 100,
        "event_timestamp": at,
        "created_timestamp": CREATED,
    }


def write(rows: list[dict[str, Any]], schema: pa.Schema, path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("feast-store")
    settings = FeastSettings(
        project=f"t_{uuid.uuid4().hex[:12]}",
        data_dir=root / "features",
        registry_path=root / "feast" / "registry.db",
        online_store="sqlite",
        sqlite_path=root / "feast" / "online.db",
    )
    settings.data_dir.mkdir(parents=True)
    realtime = [
        realtime_row("busy", E - timedelta(hours=1), 1),
        realtime_row("busy", E - timedelta(minutes=10), 2, ("d1", "d2")),
        realtime_row("busy", E + US, 3),  # the transaction's own row: never seen by itself
        realtime_row("edge", E - REALTIME_TTL, 4),  # exactly the TTL old: joins
        realtime_row("expired", E - REALTIME_TTL - US, 5),  # one microsecond older: does not
        realtime_row("future", E + US, 6),
        realtime_row("exact", E, 7),  # at the entity timestamp: joins (<=)
    ]
    profiles = [
        profile_row("expired", DAY, 1.0),
        profile_row("expired", DAY, 2.0, created=CREATED + timedelta(minutes=5)),  # recomputed: the later wins
        profile_row("busy", DAY - BATCH_TTL - timedelta(days=1), 9.0),  # older than the TTL
        profile_row("edge", DAY, 3.0),
    ]
    merchants = [merchant_row("m1", DAY, 0.02), merchant_row("m-old", DAY - timedelta(days=3), 0.5)]
    write(realtime, REALTIME_SCHEMA, settings.data_dir / REALTIME_FILE)
    write(profiles, PROFILE_SCHEMA, settings.data_dir / PROFILE_FILE)
    write(merchants, MERCHANT_SCHEMA, settings.data_dir / MERCHANT_FILE)
    feast_store = store_module.open_store(settings)
    store_module.apply(feast_store, settings.data_dir)
    return feast_store


ENTITIES = [  # (event_id, account, merchant, entity timestamp): not in time order, with duplicates
    ("busy", "busy", "m1", E),
    ("expired", "expired", "m1", E),
    ("edge", "edge", "m-old", E),
    ("future", "future", "m1", E),
    ("exact", "exact", "nowhere", E),
    ("busy-again", "busy", "m1", E),  # the same keys and timestamp
    ("busy-elsewhere", "busy", "nowhere", E),  # the same account and timestamp at another merchant
    ("busy-earlier", "busy", "m1", E - timedelta(minutes=30)),
    ("ghost", "ghost", "ghost", E - timedelta(days=1)),
]


def entity_frame() -> pd.DataFrame:
    frame = pd.DataFrame(ENTITIES, columns=["event_id", "account_id", "merchant_id", "event_timestamp"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).dt.as_unit("us")
    return frame


def values(joined: pd.DataFrame, name: str) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in joined[name]]


def test_every_entity_row_comes_back_once_in_order_with_the_point_in_time_values(store: Any) -> None:
    entities = entity_frame()
    joined = store_module.historical_features(store, entities, "fraud_v1")
    assert list(joined["event_id"]) == [row[0] for row in ENTITIES]
    pd.testing.assert_frame_equal(joined[entities.columns], entities)  # the entity columns are kept unchanged
    # The latest real-time row at or before the entity timestamp and at most the TTL old; none → NaN, the row stays.
    assert values(joined, "account_realtime__tx_count_24h") == [2, None, 4, None, 7, 2, 2, 1, None]
    # A profile recomputed for the same instant: the later created row. Older than the TTL: absent.
    assert values(joined, "account_profile__amount_mean_30d") == [None, 2.0, 3.0, None, None, None, None, None, None]
    assert values(joined, "merchant_risk__fraud_rate_30d") == [0.02, 0.02, None, 0.02, None, 0.02, None, 0.02, None]
    devices = joined["account_realtime__known_devices"]
    assert list(devices[0]) == ["d1", "d2"] and list(devices[7]) == []
    assert devices[1] is None or (isinstance(devices[1], float) and math.isnan(devices[1]))


def test_a_row_expired_in_one_view_keeps_the_other_views(store: Any) -> None:
    # Feast's file store dropped such an entity row (and so its profile) instead of giving it nulls.
    joined = store_module.historical_features(store, entity_frame().iloc[[1]], "fraud_v1")
    assert len(joined) == 1
    assert math.isnan(joined["account_realtime__tx_count_24h"].iloc[0])
    assert joined["account_profile__amount_mean_30d"].iloc[0] == 2.0
    assert joined["merchant_risk__tx_count_30d"].iloc[0] == 100


def test_a_service_returns_exactly_its_views(store: Any) -> None:
    entities = entity_frame()
    lite = store_module.historical_features(store, entities, "fraud_v1_lite")
    names = [f"{view}__{name}" for view in ("account_realtime", "account_profile") for name, _ in VIEW_FIELDS[view]]
    assert list(lite.columns) == [*entities.columns, *names]
    full = store_module.historical_features(store, entities, "fraud_v1")
    for name in names:
        assert lite[name].isna().tolist() == full[name].isna().tolist(), name


def test_empty_and_invalid_requests(store: Any) -> None:
    empty = store_module.historical_features(store, entity_frame().iloc[:0], "fraud_v1_lite")
    assert empty.empty and "account_profile__usual_devices" in empty.columns
    with pytest.raises(store_module.FeatureStoreError, match="unknown feature service"):
        store_module.historical_features(store, entity_frame(), "fraud_v9")
    with pytest.raises(ValueError, match="merchant_id"):
        store_module.historical_features(store, entity_frame().drop(columns=["merchant_id"]), "fraud_v1")


def test_a_lost_entity_row_is_an_error(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store.get_historical_features

    class Lossy:
        def __init__(self, job: Any) -> None:
            self.job = job

        def to_df(self) -> pd.DataFrame:
            frame: pd.DataFrame = self.job.to_df()
            return frame.iloc[1:]

    monkeypatch.setattr(store, "get_historical_features", lambda **kwargs: Lossy(real(**kwargs)))
    with pytest.raises(store_module.FeatureStoreError, match="9 entity rows went in, 8 came back"):
        store_module.historical_features(store, entity_frame(), "fraud_v1")


def test_the_offline_store_is_duckdb() -> None:
    config = store_module.repo_config(FeastSettings(online_store="sqlite"))
    assert config.offline_store.type == "duckdb"


# --- what a push can never write, and what is worth retrying -----------------------------------------------------

STAMPS = [
    1_790_000_000.0,
    store_module._PUSHABLE_SECONDS[0],
    store_module._PUSHABLE_SECONDS[1],
    store_module._PUSHABLE_SECONDS[0] - 2.0,
    store_module._PUSHABLE_SECONDS[1] + 2.0,
    pd.Timestamp.max.timestamp(),
    datetime(2199, 12, 31, tzinfo=UTC).timestamp(),
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp(),
    float("nan"),
    float("inf"),
    None,
]


@pytest.mark.parametrize("stamp", STAMPS)
def test_snapshot_problem_says_exactly_which_snapshots_the_push_frame_cannot_hold(stamp: float | None) -> None:
    snapshot = RealtimeSnapshot(1, 2, 3, 1.0, 2.0, 3.0, 1, stamp, ("dev-1",), ("DE",))
    problem = store_module.snapshot_problem(snapshot)
    try:
        store_module.realtime_frame([("acc-1", snapshot)])
    except (ValueError, OverflowError) as exc:  # pandas' OutOfBoundsDatetime is a ValueError
        assert problem is not None, f"{stamp!r}: the frame failed ({exc}) but no problem was found"
    else:
        assert problem is None, f"{stamp!r}: the frame converts, yet {problem}"


def test_snapshot_problem_names_non_finite_sums_and_unencodable_strings() -> None:
    assert "amount_sum_1h" in str(
        store_module.snapshot_problem(RealtimeSnapshot(1, 1, 1, 1.0, math.inf, 1.0, 1, 1.0, (), ()))
    )
    assert "known_devices" in str(
        store_module.snapshot_problem(RealtimeSnapshot(1, 1, 1, 1.0, 1.0, 1.0, 1, 1.0, ("\ud800",), ()))
    )


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (redis.exceptions.ConnectionError("Error 111 connecting"), True),
        (redis.exceptions.TimeoutError("Timeout reading"), True),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), True),
        (redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'."), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError(), True),
        (store_module.FeatureStoreError("push", "PushSourceNotFoundException"), True),
        (redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (redis.exceptions.DataError("Invalid input of type: 'NoneType'"), False),
        (ValueError("Out of bounds nanosecond timestamp: 9999-12-31 23:59:59"), False),
        (TypeError("bad operand"), False),
    ],
)
def test_transient_errors_are_the_infrastructures(error: BaseException, transient: bool) -> None:
    assert store_module.is_transient(error) is transient
