"""The stream processor's direct Redis writer (`feature_repo.store.RealtimeRedisWriter`) against real Redis and real
Feast: the bytes it stores are the bytes Feast's own push stores, and Feast's public read API
(`FeatureStore.get_online_features`) returns the same response for both."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from feast import FeatureStore

from feature_repo.layout import REALTIME_FIELDS, REALTIME_VIEW
from feature_repo.settings import FeastSettings
from feature_repo.store import RealtimeRedisWriter, apply, is_transient, open_store, push_realtime, read_online
from scorer.features.redis_client import redis_key, timestamp_field
from streamscore.features import RealtimeSnapshot
from streamscore.settings import RedisSettings


def store_for(tmp_path: Path, redis_settings: RedisSettings) -> FeatureStore:
    name = f"w_{uuid.uuid4().hex[:10]}"
    settings = FeastSettings(
        project=name,
        data_dir=tmp_path / name / "data",
        registry_path=tmp_path / name / "registry.db",
        online_store="redis",
        redis=redis_settings,
    )
    store = open_store(settings)
    apply(store, settings.data_dir)
    return store


def snapshots(seed: int, count: int) -> list[tuple[str, RealtimeSnapshot]]:
    """Random snapshots plus the edges of every encoding: zeros, negative zero, large and negative integers, empty,
    repeated and non-ASCII string lists, a timestamp with and without microseconds, before 1970."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, RealtimeSnapshot]] = []
    for i in range(count):
        n5, n1, n24 = sorted(int(x) for x in rng.integers(0, 400, 3))
        rows.append(
            (
                f"acc-{i}",
                RealtimeSnapshot(
                    n5,
                    n1,
                    n24,
                    round(float(rng.uniform(0, 5_000)), 6),
                    round(float(rng.uniform(0, 50_000)), 6),
                    round(float(rng.uniform(0, 500_000)), 6),
                    int(rng.integers(0, 60)),
                    round(1_790_000_000 + float(rng.uniform(0, 86_400)), 6),
                    tuple(f"dev-{int(d)}" for d in rng.integers(0, 50, int(rng.integers(0, 5)))),
                    tuple(str(c) for c in rng.choice(["DE", "FR", "NL", "RO"], int(rng.integers(0, 4)))),
                ),
            )
        )
    edges = [
        RealtimeSnapshot(0, 0, 0, 0.0, -0.0, 0.0, 0, 1_790_000_000.0, (), ()),
        RealtimeSnapshot(2**40, 2**62, 2**63 - 1, 1e-300, 1e300, 0.1, 127, 1_790_000_000.000001, ("é", "日本"), ("",)),
        RealtimeSnapshot(128, 16_384, 300, 0.3, 0.2, 0.1, 128, -1.5, ("d", "d"), ("DE", "DE")),
        RealtimeSnapshot(-1, -(2**63), 1, -2.5, 2.5, 3.5, 1, 0.000001, ("x" * 300,), ("FR",)),
    ]
    rows += [(f"edge-{i}", snapshot) for i, snapshot in enumerate(edges)]
    return rows


def stored(client: redis.Redis[bytes], project: str, account: str) -> dict[bytes, bytes]:
    return dict(client.hgetall(redis_key(project, "account_id", account)))


def test_the_writer_stores_the_bytes_feast_stores_and_feast_reads_them_back_identically(
    tmp_path: Path, redis_settings: RedisSettings
) -> None:
    by_feast, by_writer = store_for(tmp_path, redis_settings), store_for(tmp_path, redis_settings)
    rows = snapshots(16, 300)
    push_realtime(by_feast, rows)
    writer = RealtimeRedisWriter.for_store(by_writer, redis_settings)
    assert writer is not None
    writer.write(rows)
    writer.write([])  # nothing to write
    client = redis.Redis(host=redis_settings.host, port=redis_settings.port)
    for account, _ in rows:
        want = stored(client, by_feast.config.project, account)
        assert len(want) == len(REALTIME_FIELDS) + 1
        assert stored(client, by_writer.config.project, account) == want, account
    # Both set the key's expiry (FEAST_REDIS_KEY_TTL_S, nine days by default): an idle account's row leaves Redis.
    ttl = FeastSettings().redis_key_ttl_s
    for store in (by_feast, by_writer):
        left = client.ttl(redis_key(store.config.project, "account_id", rows[0][0]))
        assert ttl - 60 <= left <= ttl

    # Feast's public read, the reference the scorer's reader is proven against: the same response for both.
    refs = [f"{REALTIME_VIEW}:{name}" for name, _ in REALTIME_FIELDS]
    entity_rows = [{"account_id": account} for account, _ in rows]
    responses = [
        store.get_online_features(features=refs, entity_rows=entity_rows, full_feature_names=True)
        for store in (by_feast, by_writer)
    ]
    assert responses[0].to_dict() == responses[1].to_dict()
    stamps = [
        [
            (ts.seconds, ts.nanos)
            for result in response.proto.results
            for ts in result.event_timestamps  # every feature's timestamps, in order
        ]
        for response in responses
    ]
    assert stamps[0] == stamps[1]
    keys = [(account, "m") for account, _ in rows]
    read = read_online(by_writer, keys)
    assert read == read_online(by_feast, keys)
    # read_online converts through float: the random rows (counts far below 2**53) come back exactly.
    assert [row[0] for row in read[:300]] == [snapshot for _, snapshot in rows[:300]]


def test_a_snapshot_without_events_is_stamped_with_the_write_time_like_feast(
    tmp_path: Path, redis_settings: RedisSettings
) -> None:
    by_feast, by_writer = store_for(tmp_path, redis_settings), store_for(tmp_path, redis_settings)
    rows = [("empty", RealtimeSnapshot.empty())]
    push_realtime(by_feast, rows)
    writer = RealtimeRedisWriter.for_store(by_writer, redis_settings)
    assert writer is not None
    writer.write(rows)
    client = redis.Redis(host=redis_settings.host, port=redis_settings.port)
    stamp = timestamp_field(REALTIME_VIEW)
    want, got = stored(client, by_feast.config.project, "empty"), stored(client, by_writer.config.project, "empty")
    assert {k: v for k, v in got.items() if k != stamp} == {k: v for k, v in want.items() if k != stamp}
    assert read_online(by_writer, [("empty", "m")])[0][0] == RealtimeSnapshot.empty()


def test_a_row_redis_refuses_fails_alone_and_is_not_an_outage(tmp_path: Path, redis_settings: RedisSettings) -> None:
    store = store_for(tmp_path, redis_settings)
    client = redis.Redis(host=redis_settings.host, port=redis_settings.port)
    client.set(redis_key(store.config.project, "account_id", "blocked"), b"not a hash")
    writer = RealtimeRedisWriter.for_store(store, redis_settings)
    assert writer is not None
    rows = snapshots(3, 4)[:4]
    blocked = dataclasses.replace(rows[0][1], tx_count_5m=1)
    with pytest.raises(redis.ResponseError) as refused:
        writer.write([rows[0], ("blocked", blocked), *rows[1:]])
    assert not is_transient(refused.value)
    # The other rows were written.
    assert [row[0] for row in read_online(store, [(a, "m") for a, _ in rows])] == [s for _, s in rows]
