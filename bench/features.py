"""Micro-benchmark of the scorer's feature reads: Feast's SDK (`FeastFeatureClient`) against the direct pipelined
reader (`RedisFeatureClient`), in microseconds per entity, for batches of 1, 64 and 512 (account, merchant) pairs.

    python -m bench.features                      # from the repository root
    python -m bench.features --sizes 1 64 512 1024 --seconds 3 --json /tmp/features.json

It starts its own redis-server on a free loopback port with the project's infra code (and stops it, by pid, at
the end), writes a world of accounts and merchants through Feast exactly as production does (profiles and
merchant risk materialized from offline files, real-time snapshots pushed), then reads random batches with
`as_of` (the scorer's call) through both clients. Every measured batch is distinct random keys, so key caches
and value memos see a realistic mix of hits and misses. Both clients must return identical rows; the script
checks it on every size before timing.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo.batch import MERCHANT_SCHEMA, PROFILE_SCHEMA, REALTIME_SCHEMA
from feature_repo.layout import MERCHANT_FILE, PROFILE_FILE, REALTIME_FILE
from feature_repo.settings import FeastSettings
from feature_repo.store import apply, materialize, push_realtime
from scorer.features.base import FeatureClient
from scorer.features.feast_client import FeastFeatureClient
from scorer.features.redis_client import RedisFeatureClient
from streamscore.features import RealtimeSnapshot
from streamscore.infra import redis as local_redis
from streamscore.infra.process import stop
from streamscore.infra.settings import InfraSettings


@dataclass
class Figure:
    client: str
    batch: int
    batches: int
    us_per_entity_median: float
    us_per_entity_p90: float
    cpu_us_per_entity: float
    """CPU time of this process (the client's share, not Redis's) per entity: what limits a scorer core."""
    batch_ms_median: float


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [int(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def write_world(settings: FeastSettings, accounts: int, merchants: int, seed: int) -> tuple[list[str], list[str]]:
    """Offline files for the batch views and the snapshots to push; returns the account and merchant ids."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    midnight = pd.Timestamp(now.replace(hour=0, minute=0, second=0, microsecond=0))
    account_ids = [f"acc-{i:06d}" for i in range(accounts)]
    merchant_ids = [f"mer-{i:05d}" for i in range(merchants)]
    countries = ["FR", "DE", "ES", "IT", "PL", "NL", "BE", "PT"]

    def picks(prefix: str, most: int) -> list[list[str]]:
        return [[f"{prefix}-{rng.integers(5000)}" for _ in range(rng.integers(0, most + 1))] for _ in account_ids]

    profiles = pd.DataFrame(
        {
            "account_id": account_ids,
            "amount_mean_30d": rng.uniform(5, 500, accounts),
            "amount_std_30d": rng.uniform(0, 300, accounts),
            "tx_count_30d": rng.integers(1, 3000, accounts),
            "home_country": rng.choice(countries, accounts),
            "usual_countries": [list(rng.choice(countries, rng.integers(1, 4))) for _ in account_ids],
            "usual_devices": picks("dev", 4),
            "event_timestamp": midnight,
            "created_timestamp": midnight,
        }
    )
    risks = pd.DataFrame(
        {
            "merchant_id": merchant_ids,
            "fraud_rate_30d": rng.uniform(0, 0.1, merchants),
            "tx_count_30d": rng.integers(0, 50_000, merchants),
            "event_timestamp": midnight,
            "created_timestamp": midnight,
        }
    )
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(profiles, schema=PROFILE_SCHEMA, preserve_index=False), data_dir / PROFILE_FILE)
    pq.write_table(pa.Table.from_pandas(risks, schema=MERCHANT_SCHEMA, preserve_index=False), data_dir / MERCHANT_FILE)
    pq.write_table(REALTIME_SCHEMA.empty_table(), data_dir / REALTIME_FILE)

    reference = FeastFeatureClient.from_settings(settings)
    apply(reference.store, data_dir)
    materialize(reference.store, midnight.to_pydatetime() - timedelta(days=1), now)
    devices = picks("dev", 4)
    snapshots = [
        (
            account,
            RealtimeSnapshot(
                tx_count_5m=int(rng.integers(0, 4)),
                tx_count_1h=int(rng.integers(0, 30)),
                tx_count_24h=int(rng.integers(0, 300)),
                amount_sum_5m=round(float(rng.uniform(0, 500)), 2),
                amount_sum_1h=round(float(rng.uniform(0, 5000)), 2),
                amount_sum_24h=round(float(rng.uniform(0, 50_000)), 2),
                distinct_merchants_1h=int(rng.integers(0, 10)),
                last_event_ts=now.timestamp() - float(rng.uniform(0, 86_400)),
                known_devices=tuple(devices[i]),
                known_countries=tuple(str(c) for c in rng.choice(countries, rng.integers(1, 3))),
            ),
        )
        for i, account in enumerate(account_ids)
    ]
    for start in range(0, len(snapshots), 5000):
        push_realtime(reference.store, snapshots[start : start + 5000])
    reference.close()
    return account_ids, merchant_ids


def measure(
    client: FeatureClient, batches: Sequence[tuple[list[tuple[str, str]], list[float]]], seconds: float
) -> tuple[list[float], float]:
    """Wall time of each read, cycling through `batches` for at least `seconds` (and every batch once), and the
    process CPU time of all of them."""
    times: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    i = 0
    while i < len(batches) or time.perf_counter() - started < seconds:
        keys, as_of = batches[i % len(batches)]
        t0 = time.perf_counter()
        client.read(keys, as_of)
        times.append(time.perf_counter() - t0)
        i += 1
    return times, time.process_time() - cpu


def run(accounts: int, merchants: int, sizes: Sequence[int], seconds: float, seed: int) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        root = Path(tmp)
        kafka_port, controller_port, redis_port = free_ports(3)
        infra = InfraSettings(
            data_dir=root / "stack", kafka_port=kafka_port, controller_port=controller_port, redis_port=redis_port
        )
        record = local_redis.start(infra)
        try:
            local_redis.wait_ready(record, timeout_s=30.0)
            settings = FeastSettings(
                project="bench_features",
                data_dir=root / "features",
                registry_path=root / "feast" / "registry.db",
                redis=infra.redis_settings(),
            )
            print(f"redis-server pid {record.pid} port {redis_port}: {accounts} accounts, {merchants} merchants")
            account_ids, merchant_ids = write_world(settings, accounts, merchants, seed)
            clients: dict[str, FeatureClient] = {
                "feast": FeastFeatureClient.from_settings(settings),
                "redis": RedisFeatureClient.from_settings(settings),
            }
            rng = np.random.default_rng(seed + 1)
            now = datetime.now(UTC).timestamp()
            figures: list[Figure] = []
            for size in sizes:
                batches = []
                for _ in range(max(8, 4096 // size)):
                    keys = [
                        (account_ids[int(rng.integers(accounts))], merchant_ids[int(rng.integers(merchants))])
                        for _ in range(size)
                    ]
                    batches.append((keys, [now] * size))
                expected = clients["feast"].read(*batches[0])
                if clients["redis"].read(*batches[0]) != expected:
                    raise SystemExit(f"the two clients disagree on a batch of {size}")
                for name, client in clients.items():
                    measure(client, batches[:4], 0.0)  # warm-up: registry, connections, imports
                    times, cpu_s = measure(client, batches, seconds)
                    per_entity = sorted(t / size * 1e6 for t in times)
                    figures.append(
                        Figure(
                            client=name,
                            batch=size,
                            batches=len(times),
                            us_per_entity_median=statistics.median(per_entity),
                            us_per_entity_p90=per_entity[int(0.9 * (len(per_entity) - 1))],
                            cpu_us_per_entity=cpu_s / (len(times) * size) * 1e6,
                            batch_ms_median=statistics.median(times) * 1e3,
                        )
                    )
            for client in clients.values():
                client.close()
            return figures
        finally:
            stop(record)


def report(figures: Sequence[Figure]) -> None:
    columns = ("batch", "client", "µs/entity", "p90", "cpu µs", "ms/batch", "batches")
    widths = (6, 6, 10, 8, 8, 9, 8)
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)), " feast/redis")
    by_key = {(f.client, f.batch): f for f in figures}
    for f in figures:
        ratio = ""
        if f.client == "redis" and ("feast", f.batch) in by_key:
            ratio = f"{by_key['feast', f.batch].us_per_entity_median / f.us_per_entity_median:.1f}x"
        print(
            f"{f.batch:>6} {f.client:>6} {f.us_per_entity_median:>10.2f} {f.us_per_entity_p90:>8.2f} "
            f"{f.cpu_us_per_entity:>8.2f} "
            f"{f.batch_ms_median:>9.3f} {f.batches:>8}  {ratio}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--merchants", type=int, default=2_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per client and batch size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = run(args.accounts, args.merchants, args.sizes, args.seconds, args.seed)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2))


if __name__ == "__main__":
    main()
