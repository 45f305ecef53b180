"""The Feast repository against the session's real redis-server: apply, materialize, push and read, and the
point-in-time join of training. Every test has its own registry, data folder and Feast project (the
project prefixes every Redis key, so tests sharing one Redis never see each other's rows)."""

from __future__ import annotations

import dataclasses
import math
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore, FileSource

from feature_repo import store as feature_store
from feature_repo.batch import batch_range, build_batch_sources
from feature_repo.definitions import SERVICES, VIEW_FIELDS
from feature_repo.layout import MERCHANT_FILE, PROFILE_FILE, REALTIME_FILE
from feature_repo.settings import FeastSettings
from feature_repo.store import (
    BATCH_VIEWS,
    apply,
    historical_features,
    materialize,
    open_store,
    push_realtime,
    read_online,
)
from producers.generator import GeneratorConfig, TransactionGenerator
from producers.history import write_history
from producers.world import build_world
from streamscore.features import (
    AccountProfile,
    MerchantRisk,
    RealtimeSnapshot,
    replay,
)
from streamscore.frames import transaction_facts
from streamscore.settings import RedisSettings

END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
"""The history ends at the last full hour, so its rows are recent enough for the views' 2-day TTLs."""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three days of generated traffic (300 accounts, 60 merchants) and the offline sources built from it."""
    root = tmp_path_factory.mktemp("feast-history")
    generator = TransactionGenerator(build_world(11, accounts=300, merchants=60), GeneratorConfig(seed=11))
    write_history(generator, 3, root / "history", end=END, rate_per_s=0.05, label_delay=timedelta(hours=2))
    build_batch_sources(root / "history", root / "features", workers=1)
    return root


def settings_for(tmp_path: Path, redis_settings: RedisSettings, **overrides: Any) -> FeastSettings:
    return FeastSettings(
        project=f"t_{uuid.uuid4().hex[:12]}",
        data_dir=tmp_path / "features",
        registry_path=tmp_path / "feast" / "registry.db",
        sqlite_path=tmp_path / "feast" / "online.db",
        redis=redis_settings,
        **overrides,
    )


def with_sources(built: Path, settings: FeastSettings) -> FeastSettings:
    """This test's own copy of the offline files."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for name in (REALTIME_FILE, PROFILE_FILE, MERCHANT_FILE):
        shutil.copy(built / "features" / name, settings.data_dir / name)
    return settings


def applied(settings: FeastSettings) -> FeatureStore:
    store = open_store(settings)
    apply(store, settings.data_dir)
    return store


def random_snapshot(rng: np.random.Generator, now: float) -> RealtimeSnapshot:
    devices = tuple(f"dev-{rng.integers(10_000)}" for _ in range(rng.integers(0, 4)))  # often empty
    countries = tuple(str(c) for c in rng.choice(["FR", "DE", "ES", "IT", "PL"], size=rng.integers(0, 3)))
    return RealtimeSnapshot(
        tx_count_5m=int(rng.integers(0, 5)),
        tx_count_1h=int(rng.integers(0, 50)),
        tx_count_24h=int(rng.integers(0, 500)),
        amount_sum_5m=round(float(rng.uniform(0, 1e3)), 6),
        amount_sum_1h=round(float(rng.uniform(0, 1e4)), 6),
        amount_sum_24h=round(float(rng.uniform(0, 1e5)), 6),
        distinct_merchants_1h=int(rng.integers(0, 10)),
        last_event_ts=round(now - float(rng.uniform(0, 3600)), 6),
        known_devices=devices,
        known_countries=countries,
    )


def cell(frame: pd.DataFrame, row: str, column: str) -> Any:
    return frame.loc[row, column]


def strings(value: Any) -> tuple[str, ...]:
    return () if value is None else tuple(str(v) for v in value)


# --- apply -------------------------------------------------------------------------------------------------


def test_apply_registers_the_contract(tmp_path: Path, redis_settings: RedisSettings) -> None:
    settings = settings_for(tmp_path, redis_settings)
    store = applied(settings)
    apply(store, settings.data_dir)  # idempotent
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == set(VIEW_FIELDS)
    for name, fields in VIEW_FIELDS.items():
        assert [(f.name, f.dtype) for f in views[name].features] == list(fields)
        assert views[name].ttl == timedelta(days=2)
    assert [f.name for f in views["account_realtime"].features] == [
        f.name for f in dataclasses.fields(RealtimeSnapshot)
    ]
    assert [f.name for f in views["account_profile"].features] == [f.name for f in dataclasses.fields(AccountProfile)]
    assert [f.name for f in views["merchant_risk"].features] == [f.name for f in dataclasses.fields(MerchantRisk)]
    assert {e.name: e.join_key for e in store.list_entities()} == {"account": "account_id", "merchant": "merchant_id"}
    services = {s.name: s for s in store.list_feature_services()}
    assert {name: tuple(p.name for p in s.feature_view_projections) for name, s in services.items()} == SERVICES
    assert store.get_data_source("account_realtime_push").name == "account_realtime_push"
    source = views["account_profile"].batch_source
    assert isinstance(source, FileSource)
    assert source.path == str(settings.data_dir.resolve() / PROFILE_FILE)


# --- materialize -------------------------------------------------------------------------------------------


def test_materialized_batch_views_are_read_online(built: Path, tmp_path: Path, redis_settings: RedisSettings) -> None:
    settings = with_sources(built, settings_for(tmp_path, redis_settings))
    store = applied(settings)
    start, end = batch_range(settings.data_dir)
    materialize(store, start, end)
    profiles = pd.read_parquet(settings.data_dir / PROFILE_FILE)
    risks = pd.read_parquet(settings.data_dir / MERCHANT_FILE)
    latest_profile = profiles.sort_values("event_timestamp").groupby("account_id").tail(1).set_index("account_id")
    latest_risk = risks.sort_values("event_timestamp").groupby("merchant_id").tail(1).set_index("merchant_id")
    assert latest_profile["event_timestamp"].max() == pd.Timestamp(end)  # the range's end is included
    merchants = list(latest_risk.index)
    keys = [(account, merchants[i % len(merchants)]) for i, account in enumerate(latest_profile.index)]
    rows = read_online(store, keys)
    assert len(rows) == len(keys) > 250
    for (account, merchant), (realtime, profile, risk) in zip(keys, rows, strict=True):
        assert realtime is None  # materialized batch views only: nothing was pushed
        p = latest_profile.loc[account]
        assert profile == AccountProfile(
            amount_mean_30d=float(p["amount_mean_30d"]),
            amount_std_30d=float(p["amount_std_30d"]),
            tx_count_30d=int(p["tx_count_30d"]),
            home_country=str(p["home_country"]),
            usual_countries=strings(p["usual_countries"]),
            usual_devices=strings(p["usual_devices"]),
        )
        r = latest_risk.loc[merchant]
        assert risk == MerchantRisk(fraud_rate_30d=float(r["fraud_rate_30d"]), tx_count_30d=int(r["tx_count_30d"]))

    # Bootstrapping the real-time view from the history's log gives each account's newest log row.
    materialize(store, start, end, views=[*BATCH_VIEWS, "account_realtime"])
    log = pd.read_parquet(settings.data_dir / REALTIME_FILE)
    newest = log.sort_values("event_timestamp").groupby("account_id").tail(1).set_index("account_id")
    for (account, _), (realtime, _, _) in zip(keys[:50], read_online(store, keys[:50]), strict=True):
        assert realtime is not None
        assert realtime.last_event_ts == float(newest.loc[account, "last_event_ts"])
        assert realtime.tx_count_24h == int(newest.loc[account, "tx_count_24h"])
        assert realtime.known_devices == strings(newest.loc[account, "known_devices"])


# --- push and read -----------------------------------------------------------------------------------------


def test_push_then_read_returns_exactly_the_pushed_snapshots(
    tmp_path: Path, redis_settings: RedisSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = applied(settings_for(tmp_path, redis_settings))
    rng = np.random.default_rng(2024)
    now = datetime.now(UTC).timestamp()
    rows = [(f"acc-{uuid.uuid4().hex[:10]}", random_snapshot(rng, now)) for _ in range(200)]
    assert any(not s.known_devices for _, s in rows) and any(not s.known_countries for _, s in rows)

    calls = {"push": 0, "read": 0}
    real_push, real_read = store.push, store.get_online_features

    def counting_push(*args: Any, **kwargs: Any) -> Any:
        calls["push"] += 1
        return real_push(*args, **kwargs)

    def counting_read(*args: Any, **kwargs: Any) -> Any:
        calls["read"] += 1
        return real_read(*args, **kwargs)

    monkeypatch.setattr(store, "push", counting_push)
    monkeypatch.setattr(store, "get_online_features", counting_read)
    push_realtime(store, rows)
    read = read_online(store, [(account, "no-such-merchant") for account, _ in rows])
    assert calls == {"push": 1, "read": 1}  # one write and one read for the whole batch, never one per row
    assert [r[0] for r in read] == [snapshot for _, snapshot in rows]
    assert all(profile is None and merchant is None for _, profile, merchant in read)

    # The last write wins, also when it keeps the timestamp: an out-of-order event changes the windows of an
    # account without advancing its last_event_ts, and that snapshot must reach the online store.
    account, first = rows[0]
    out_of_order = dataclasses.replace(first, tx_count_24h=first.tx_count_24h + 1, known_countries=("NL",))
    push_realtime(store, [(account, out_of_order)])
    assert read_online(store, [(account, "m")])[0][0] == out_of_order
    assert first.last_event_ts is not None
    newer = dataclasses.replace(first, tx_count_5m=first.tx_count_5m + 1, last_event_ts=first.last_event_ts + 1)
    push_realtime(store, [(account, newer)])
    assert read_online(store, [(account, "m")])[0][0] == newer
    push_realtime(store, [])  # nothing to write: no call
    assert calls["push"] == 3


def test_unknown_account_reads_as_none_and_stale_rows_expire_with_as_of(
    tmp_path: Path, redis_settings: RedisSettings
) -> None:
    store = applied(settings_for(tmp_path, redis_settings))
    now = datetime.now(UTC)
    fresh = random_snapshot(np.random.default_rng(1), now.timestamp())
    stale = dataclasses.replace(fresh, last_event_ts=(now - timedelta(days=3)).timestamp())
    push_realtime(store, [("fresh", fresh), ("stale", stale)])
    rows = read_online(store, [("unknown", "unknown"), ("fresh", "m"), ("stale", "m")])
    assert rows[0] == (None, None, None)  # not zeros: absent
    assert rows[1][0] == fresh
    assert rows[2][0] == stale  # Feast's online read ignores TTLs…
    aged = read_online(store, [("fresh", "m"), ("stale", "m")], as_of=now)
    assert aged[0][0] == fresh
    assert aged[1][0] is None  # …as_of applies the view's 2-day TTL like the offline join
    assert read_online(store, []) == []


# --- historical retrieval ----------------------------------------------------------------------------------


facts = transaction_facts


def test_historical_features_join_the_state_strictly_before_each_transaction(
    built: Path, tmp_path: Path, redis_settings: RedisSettings
) -> None:
    settings = with_sources(built, settings_for(tmp_path, redis_settings))
    store = applied(settings)
    history = pd.read_parquet(built / "history" / "transactions.parquet")
    before = replay(facts(history))
    first_of_account = ~history["account_id"].duplicated()
    rng = np.random.default_rng(7)
    picked = sorted(
        {
            *rng.choice(np.flatnonzero(first_of_account), size=5, replace=False).tolist(),
            *rng.choice(len(history), size=35, replace=False).tolist(),
        }
    )
    sample = history.iloc[picked]
    entity_df = pd.DataFrame(
        {
            "event_id": sample["event_id"].to_numpy(),
            "account_id": sample["account_id"].to_numpy(),
            "merchant_id": sample["merchant_id"].to_numpy(),
            "event_timestamp": sample["event_time"] - pd.Timedelta(microseconds=1),
        }
    )
    # The same transaction twice and a twin at another merchant: every row comes back (the Dask store collapsed them).
    twins = entity_df.iloc[[0, 0]].assign(
        event_id=["twin-a", "twin-b"], merchant_id=[entity_df["merchant_id"].iloc[0], "nowhere"]
    )
    raw = historical_features(store, pd.concat([entity_df, twins], ignore_index=True), "fraud_v1")
    assert list(raw["event_id"]) == [*entity_df["event_id"], "twin-a", "twin-b"]  # every row, in order
    joined = raw.set_index("event_id")
    assert math.isnan(cell(joined, "twin-b", "merchant_risk__tx_count_30d"))
    for name in ("account_realtime__tx_count_24h", "account_profile__tx_count_30d", "merchant_risk__tx_count_30d"):
        original, twin = cell(joined, str(entity_df["event_id"].iloc[0]), name), cell(joined, "twin-a", name)
        assert original == twin or (math.isnan(original) and math.isnan(twin))
    checked_some = checked_none = 0
    for i, event_id in zip(picked, sample["event_id"], strict=True):
        row = joined.loc[event_id]
        expected = before[i]
        event_ts = history["event_time"].iloc[i].timestamp()
        too_old = event_ts - timedelta(days=2).total_seconds()
        if expected is not None and expected.last_event_ts is not None and expected.last_event_ts < too_old:
            expected = None  # older than the view's TTL: Feast does not join it
        if expected is None:
            assert math.isnan(row["account_realtime__tx_count_24h"]), event_id
            checked_none += 1
            continue
        got = RealtimeSnapshot(
            tx_count_5m=int(row["account_realtime__tx_count_5m"]),
            tx_count_1h=int(row["account_realtime__tx_count_1h"]),
            tx_count_24h=int(row["account_realtime__tx_count_24h"]),
            amount_sum_5m=float(row["account_realtime__amount_sum_5m"]),
            amount_sum_1h=float(row["account_realtime__amount_sum_1h"]),
            amount_sum_24h=float(row["account_realtime__amount_sum_24h"]),
            distinct_merchants_1h=int(row["account_realtime__distinct_merchants_1h"]),
            last_event_ts=float(row["account_realtime__last_event_ts"]),
            known_devices=strings(row["account_realtime__known_devices"]),
            known_countries=strings(row["account_realtime__known_countries"]),
        )
        assert got == expected, event_id
        assert got.last_event_ts is not None and got.last_event_ts < event_ts  # strictly before
        checked_some += 1
    assert checked_none >= 5 and checked_some >= 20

    # The batch views join the newest daily row stamped at or before the transaction.
    profiles = pd.read_parquet(settings.data_dir / PROFILE_FILE)
    for event_id, account, when in zip(
        entity_df["event_id"], entity_df["account_id"], entity_df["event_timestamp"], strict=True
    ):
        candidates = profiles[
            (profiles["account_id"] == account)
            & (profiles["event_timestamp"] <= when)
            & (profiles["event_timestamp"] >= when - pd.Timedelta(days=2))
        ]
        value = joined.loc[event_id, "account_profile__tx_count_30d"]
        if candidates.empty:
            assert math.isnan(value)
        else:
            assert value == candidates.sort_values("event_timestamp")["tx_count_30d"].iloc[-1]

    lite = historical_features(store, entity_df, "fraud_v1_lite")
    assert not any(c.startswith("merchant_risk__") for c in lite.columns)
    assert "account_profile__amount_mean_30d" in lite.columns
    with pytest.raises(feature_store.FeatureStoreError, match="unknown feature service"):
        historical_features(store, entity_df, "fraud_v9")


# --- SQLite ------------------------------------------------------------------------------------------------


def test_sqlite_configuration_works_without_redis(tmp_path: Path) -> None:
    nowhere = RedisSettings(host="127.0.0.1", port=1)  # nothing listens there: Redis must not be touched
    settings = settings_for(tmp_path, nowhere, online_store="sqlite")
    store = applied(settings)
    assert settings.sqlite_path.exists()
    rng = np.random.default_rng(3)
    now = datetime.now(UTC).timestamp()
    rows = [(f"acc-{i}", random_snapshot(rng, now)) for i in range(50)]
    push_realtime(store, rows)
    read = read_online(store, [(account, "m") for account, _ in rows] + [("unknown", "m")])
    assert [r[0] for r in read[:-1]] == [snapshot for _, snapshot in rows]
    assert read[-1] == (None, None, None)
