"""The scorer's two feature clients against the session's real redis-server: on randomized data written through
Feast (push of real-time snapshots, materialization of the batch views from offline files) both return
identical rows; the direct reader does one round trip per batch; an unreachable or stalled Redis makes both
raise FeatureStoreUnavailableError within their timeouts."""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast import FeatureStore

from feature_repo.batch import MERCHANT_SCHEMA, PROFILE_SCHEMA, REALTIME_SCHEMA
from feature_repo.layout import MERCHANT_FILE, PROFILE_FILE, REALTIME_FILE
from feature_repo.settings import FeastSettings
from feature_repo.store import apply, materialize, push_realtime
from scorer.features import make_feature_client
from scorer.features.base import FeatureClient, FeatureStoreUnavailableError, OnlineRow
from scorer.features.feast_client import FeastFeatureClient
from scorer.features.redis_client import RedisFeatureClient
from streamscore.features import RealtimeSnapshot
from streamscore.settings import RedisSettings

SEED = 20261124
DAY_S = 86_400.0
TTL_S = 2 * DAY_S


def settings_for(tmp_path: Path, redis_settings: RedisSettings) -> FeastSettings:
    return FeastSettings(
        project=f"t_{uuid.uuid4().hex[:12]}",
        data_dir=tmp_path / "features",
        registry_path=tmp_path / "feast" / "registry.db",
        sqlite_path=tmp_path / "feast" / "online.db",
        redis=redis_settings,
    )


# --- randomized data -----------------------------------------------------------------------------------------


def strings(rng: np.random.Generator, prefix: str, most: int) -> list[str]:
    pool = [f"{prefix}-{i}" for i in range(50)] + ["", "ü-账户", "with space"]
    return [str(s) for s in rng.choice(pool, size=int(rng.integers(0, most + 1)))]


def account_id(rng: np.random.Generator) -> str:
    return f"acc-{int(rng.integers(1 << 62)):016x}" + ("-ü" if rng.random() < 0.05 else "")


@dataclasses.dataclass
class World:
    now: datetime
    accounts: list[str]
    merchants: list[str]
    snapshots: dict[str, RealtimeSnapshot]


def build_world(rng: np.random.Generator, data_dir: Path) -> World:
    """~400 accounts and ~120 merchants: snapshots to push; daily profile and merchant rows written as the
    offline files (several days each, some entities only with rows older than the TTL, some values null)."""
    now = datetime.now(UTC).replace(microsecond=0)
    midnight = now.replace(hour=0, minute=0, second=0)
    accounts = [account_id(rng) for _ in range(400)]
    merchants = [f"m-{i}" + ("-ü" if i % 17 == 0 else "") for i in range(120)]

    snapshots: dict[str, RealtimeSnapshot] = {}
    for account in accounts:
        if rng.random() < 0.3:
            continue  # no real-time row at all
        age = float(rng.uniform(0, 4 * DAY_S))  # about half beyond the 2-day TTL at `now`
        last = None if rng.random() < 0.05 else round(now.timestamp() - age, 6)
        snapshots[account] = RealtimeSnapshot(
            tx_count_5m=int(rng.integers(0, 6)),
            tx_count_1h=int(rng.integers(0, 300)),
            tx_count_24h=int(rng.integers(0, 100_000)),
            amount_sum_5m=round(float(rng.uniform(0, 1e3)), 6),
            amount_sum_1h=float(rng.uniform(0, 1e4)),
            amount_sum_24h=float(rng.choice([0.0, rng.uniform(0, 1e7)])),
            distinct_merchants_1h=int(rng.integers(0, 200)),
            last_event_ts=last,
            known_devices=tuple(strings(rng, "dev", 4)),
            known_countries=tuple(strings(rng, "c", 3)),
        )

    def daily(entities: list[str], share: float) -> list[tuple[str, datetime]]:
        rows = []
        for entity in entities:
            if rng.random() >= share:
                continue
            newest = int(rng.integers(0, 5))  # days before today's midnight; >= 2 is beyond the TTL soon
            for back in range(newest, newest + int(rng.integers(1, 3))):
                rows.append((entity, midnight - timedelta(days=back)))
        return rows

    created = pd.Timestamp(now)
    profile_rows = daily(accounts, 0.7)
    profiles = pd.DataFrame(
        {
            "account_id": [a for a, _ in profile_rows],
            "amount_mean_30d": [float(rng.choice([np.nan, rng.uniform(0, 500)], p=[0.05, 0.95])) for _ in profile_rows],
            "amount_std_30d": [float(rng.choice([0.0, rng.uniform(0, 300)])) for _ in profile_rows],
            "tx_count_30d": rng.integers(1, 5_000, size=len(profile_rows)),
            "home_country": [str(rng.choice(["FR", "DE", "", "ÅL"])) for _ in profile_rows],
            "usual_countries": [strings(rng, "c", 5) for _ in profile_rows],
            "usual_devices": [strings(rng, "dev", 16) for _ in profile_rows],
            "event_timestamp": [pd.Timestamp(t) for _, t in profile_rows],
            "created_timestamp": created,
        }
    )
    merchant_rows = daily(merchants, 0.8)
    risks = pd.DataFrame(
        {
            "merchant_id": [m for m, _ in merchant_rows],
            "fraud_rate_30d": [float(rng.choice([np.nan, rng.uniform(0, 0.2)], p=[0.05, 0.95])) for _ in merchant_rows],
            "tx_count_30d": rng.integers(0, 100_000, size=len(merchant_rows)),
            "event_timestamp": [pd.Timestamp(t) for _, t in merchant_rows],
            "created_timestamp": created,
        }
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(profiles, schema=PROFILE_SCHEMA, preserve_index=False), data_dir / PROFILE_FILE)
    pq.write_table(pa.Table.from_pandas(risks, schema=MERCHANT_SCHEMA, preserve_index=False), data_dir / MERCHANT_FILE)
    pq.write_table(REALTIME_SCHEMA.empty_table(), data_dir / REALTIME_FILE)  # the push source's offline side
    return World(now=now, accounts=accounts, merchants=merchants, snapshots=snapshots)


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, redis_settings: RedisSettings
) -> Iterator[tuple[World, FeastSettings, FeatureStore]]:
    """The random world written through Feast into its own project of the session's Redis."""
    tmp_path = tmp_path_factory.mktemp("scorer-features")
    settings = settings_for(tmp_path, redis_settings)
    world = build_world(np.random.default_rng(SEED), settings.data_dir)
    feast_client = FeastFeatureClient.from_settings(settings)
    store = feast_client.store
    apply(store, settings.data_dir)
    materialize(store, world.now - timedelta(days=10), world.now)
    push_realtime(store, list(world.snapshots.items()))
    yield world, settings, store
    feast_client.close()


def random_keys(rng: np.random.Generator, world: World, n: int) -> tuple[list[tuple[str, str]], list[float], list[int]]:
    """Known and unknown accounts and merchants, many duplicates, and per key an as_of (µs precision, like an
    event time) from now to 3 days ahead, so that rows of every age are on both sides of their TTL; and the
    positions of key triples at a snapshot's TTL boundary (1 µs inside, exactly on it, 1 µs past it)."""
    keys: list[tuple[str, str]] = []
    for _ in range(n):
        account = world.accounts[int(rng.integers(len(world.accounts)))] if rng.random() < 0.9 else f"new-{_}"
        merchant = world.merchants[int(rng.integers(len(world.merchants)))] if rng.random() < 0.9 else "m-unknown"
        keys.append((account, merchant))
    keys += keys[:: max(1, n // 50)]  # exact duplicates of (account, merchant)
    now_us = round(world.now.timestamp() * 1e6)
    as_of = [(now_us + int(rng.integers(0, int(3 * DAY_S * 1e6)))) / 1e6 for _ in keys]
    edges: list[int] = []
    for account, snapshot in list(world.snapshots.items())[:20]:
        if snapshot.last_event_ts is not None:
            edges.append(len(keys))
            edge_us = round(snapshot.last_event_ts * 1e6) + int(TTL_S * 1e6)
            keys += [(account, "m-1")] * 3
            as_of += [(edge_us - 1) / 1e6, edge_us / 1e6, (edge_us + 1) / 1e6]
    return keys, as_of, edges


def present(rows: list[OnlineRow]) -> tuple[int, int, int]:
    return tuple(sum(row[view] is not None for row in rows) for view in range(3))  # type: ignore[return-value]


def test_both_clients_return_identical_rows_on_random_data(
    loaded: tuple[World, FeastSettings, FeatureStore],
) -> None:
    world, settings, _ = loaded
    reference = FeastFeatureClient.from_settings(settings)
    direct = RedisFeatureClient.from_settings(settings)
    rng = np.random.default_rng(SEED + 1)
    keys, as_of, edges = random_keys(rng, world, 700)
    assert len(set(keys)) < len(keys)

    expected = reference.read(keys)
    assert direct.read(keys) == expected
    # Not vacuous: every view has rows and gaps, and nothing pushed was changed on the way.
    assert all(0 < n < len(keys) for n in present(expected))
    for (account, _), (realtime, _, _) in zip(keys, expected, strict=True):
        assert realtime == world.snapshots.get(account)

    aged = reference.read(keys, as_of)
    assert direct.read(keys, as_of) == aged
    assert len(edges) >= 10
    for i in edges:  # 1 µs inside the TTL: present; 1 µs past it: absent (exactly on it: whatever Feast says)
        assert aged[i][0] == world.snapshots[keys[i][0]] and aged[i + 2][0] is None
    assert all(a < b for a, b in zip(present(aged), present(expected), strict=True))  # the TTL removed some
    assert all(n > 0 for n in present(aged))

    # Any batch size gives the same rows (key caches and decoders are warm or cold alike).
    for size in (1, 7, 64, 512):
        for start in range(0, min(len(keys), 3 * size), size):
            chunk, instants = keys[start : start + size], as_of[start : start + size]
            assert direct.read(chunk, instants) == aged[start : start + size]
    assert reference.read([]) == direct.read([]) == []
    missing = ("no-such-account", "no-such-merchant")
    assert reference.read([missing]) == direct.read([missing]) == [(None, None, None)]
    reference.close()
    direct.close()


def hmget_calls(client: redis.Redis[bytes]) -> int:
    stats: Mapping[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


def test_the_direct_reader_does_one_round_trip_per_batch(
    loaded: tuple[World, FeastSettings, FeatureStore], redis_settings: RedisSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    world, settings, _ = loaded
    direct = RedisFeatureClient.from_settings(settings)
    reference = FeastFeatureClient.from_settings(settings)
    admin = redis.Redis(host=redis_settings.host, port=redis_settings.port)
    keys, as_of, _ = random_keys(np.random.default_rng(SEED + 2), world, 300)
    accounts, merchants = len({a for a, _ in keys}), len({m for _, m in keys})
    direct.ping()
    reference.read(keys[:1])  # load the registry before counting

    sends: list[int] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(self: redis.connection.Connection, command: Any, check_health: bool = True) -> None:
        sends.append(len(command))
        real_send(self, command, check_health)

    before = hmget_calls(admin)
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    direct.read(keys, as_of)
    monkeypatch.undo()
    assert len(sends) == 1 and direct.round_trips == 1  # one write of the whole pipeline, replies read after it
    assert hmget_calls(admin) - before == accounts + merchants  # one HMGET per distinct account / merchant

    # Feast's SDK (the reference) also fetches each distinct entity once, but per view: two HMGETs per account.
    before = hmget_calls(admin)
    reference.read(keys, as_of)
    assert hmget_calls(admin) - before == 2 * accounts + merchants
    admin.close()
    direct.close()
    reference.close()


def test_a_dropped_connection_is_reopened_on_the_next_read(
    loaded: tuple[World, FeastSettings, FeatureStore], redis_settings: RedisSettings
) -> None:
    world, settings, _ = loaded
    direct = RedisFeatureClient.from_settings(settings)
    keys = [(account, world.merchants[0]) for account in world.accounts[:20]]
    first = direct.read(keys)
    admin = redis.Redis(host=redis_settings.host, port=redis_settings.port)
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert direct.read(keys) == first
    admin.close()
    direct.close()


# --- Redis unreachable or stalled ------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers: a hung Redis."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def clients_for(tmp_path: Path, port: int) -> list[FeatureClient]:
    settings = settings_for(tmp_path, RedisSettings(host="127.0.0.1", port=port))
    store = FeastFeatureClient.from_settings(settings).store
    apply(store, settings.data_dir)  # a registry, so the Feast client gets as far as Redis
    return [
        make_feature_client("feast", settings, connect_timeout_s=0.5, read_timeout_s=0.5),
        make_feature_client("redis", settings, connect_timeout_s=0.5, read_timeout_s=0.5),
    ]


@pytest.mark.parametrize("where", ["closed", "stalled"])
def test_unreachable_redis_raises_unavailable_within_the_timeout(tmp_path: Path, stalled_port: int, where: str) -> None:
    port = closed_port() if where == "closed" else stalled_port
    for client in clients_for(tmp_path, port):
        with pytest.raises(FeatureStoreUnavailableError):
            client.read([("warm-up", "m")])  # untimed: Feast's first read also loads its registry and imports
        for attempt in (client.ping, lambda c=client: c.read([("acc", "m"), ("acc", "m2")], [0.0, 0.0])):
            started = time.monotonic()
            # A port other than the local stack's: the error says which settings to check, not to start the stack.
            with pytest.raises(FeatureStoreUnavailableError, match="REDIS_HOST / REDIS_PORT") as caught:
                attempt()
            elapsed = time.monotonic() - started
            # 0.5 s connect or read timeout; generous for a loaded 2-core machine, far below redis-py's
            # default retries (up to 1 + 2 + 4 s) and a stalled socket's "forever".
            assert elapsed < 2.0, (type(client).__name__, where, elapsed)
            assert caught.value.retryable
            if where == "stalled":
                assert elapsed >= 0.4  # it did wait for the timeout: the port accepted the connection
        client.close()
