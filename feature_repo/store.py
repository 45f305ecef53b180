"""The feature store API the services use; the only module that calls Feast at run time.

Keeping every Feast call here means one place knows Feast's quirks, and the services (stream processor,
scorer, API, training) see plain `streamscore.features` dataclasses instead of Feast responses:

- `open_store` builds the `RepoConfig` in code from `FeastSettings` (no feature_store.yaml lookup, no
  working-directory dependence), so a test points the store at its own Redis, registry, data folder and
  project. `apply` registers `definitions(data_dir)`.
- `push_realtime` writes a batch of account snapshots with ONE `store.push(...)` (push source
  `account_realtime_push`, `PushMode.ONLINE`: the offline side of the view is the real-time log built from
  the history, not the pushes). The row's event timestamp is the snapshot's `last_event_ts`. The Redis
  store is configured with `skip_dedup`: the last write wins, as on SQLite. Feast's default would skip a
  write whose timestamp is not newer than the stored one, and an out-of-order transaction changes an
  account's windows without advancing `last_event_ts` — its snapshot would never reach Redis. The stream
  processor is the only writer of an account's row and pushes its snapshots in order, so the last write is
  the newest state (one pipeline instead of two round trips, too).
- `read_online` reads the three views for many (account, merchant) pairs with ONE `get_online_features`
  call, `full_feature_names=True` because `tx_count_30d` exists in two views (without the prefix the two
  would collide). A view without a row for the entity gives None, never zeros: Redis answers a missing
  entity with empty values and a zero timestamp, SQLite with NOT_FOUND; both count as absent.
- TTLs (2 days, see `definitions`) bound the offline join: a feature row older than the TTL at the entity
  timestamp does not join. Feast's online read ignores TTLs; pass `as_of` to `read_online` to apply the
  same rule online (rows older than the TTL at `as_of` count as absent) — without it, an account idle for
  a week would be served its week-old snapshot while training saw no snapshot at all.
- The point-in-time rule of training: entity timestamps are the transaction's event time minus 1 µs. Feast
  joins the newest row with a timestamp <= the entity timestamp, and the real-time log row produced BY a
  transaction carries that transaction's own timestamp, so the join sees exactly the state strictly before
  the transaction (what the online store held when the scorer read it). Batch rows are stamped at the
  snapshot instant and aggregate only what happened strictly before it.
- The offline store is Feast's DuckDB store (`feast[duckdb]`: one SQL point-in-time join per retrieval,
  through ibis). It keeps every entity row (a view without a row in the TTL window gives nulls) and every
  duplicate, but not their order: `historical_features` numbers the rows and puts them back. Feast's
  default file store (Dask) dropped rows, collapsed duplicates and pickled list columns at every step; the
  workarounds it needed are gone with it. docs/features.md lists the quirks with their places in the Feast
  source.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore, RepoConfig
from feast.data_source import PushMode
from feast.errors import FeastError

from feature_repo.definitions import VIEW_FIELDS, definitions
from feature_repo.layout import (
    BATCH_TTL,
    MERCHANT_VIEW,
    PROFILE_VIEW,
    REALTIME_PUSH_SOURCE,
    REALTIME_TTL,
    REALTIME_VIEW,
    SERVICES,
    TIMESTAMP_FIELD,
)
from feature_repo.settings import REPO_DIR, FeastSettings
from streamscore.errors import StreamscoreError
from streamscore.features import AccountProfile, MerchantRisk, RealtimeSnapshot
from streamscore.settings import RedisSettings

logger = logging.getLogger(__name__)

BATCH_VIEWS: tuple[str, ...] = (PROFILE_VIEW, MERCHANT_VIEW)
"""What `materialize` loads by default: the daily batch views (the real-time view is pushed)."""
TTLS: dict[str, timedelta] = {REALTIME_VIEW: REALTIME_TTL, PROFILE_VIEW: BATCH_TTL, MERCHANT_VIEW: BATCH_TTL}
_US = 1_000_000

OnlineRow = tuple[RealtimeSnapshot | None, AccountProfile | None, MerchantRisk | None]
"""What the online store holds for one (account, merchant) pair; None where a view has no row."""


class FeatureStoreError(StreamscoreError):
    """Feast refused a call: typically the repository was not applied (`streamscore features apply`)."""

    def __init__(self, action: str, problem: str) -> None:
        super().__init__(f"feature store: {action} failed: {problem}")
        self.action = action


@contextmanager
def _feast(action: str) -> Iterator[None]:
    # Feast's own errors (unknown view, service or push source: an unapplied registry) become one of ours;
    # infrastructure errors (Redis down) pass through unchanged, so callers can retry them.
    try:
        yield
    except FeastError as exc:
        raise FeatureStoreError(action, f"{type(exc).__name__}: {exc}") from exc


def repo_config(settings: FeastSettings) -> RepoConfig:
    """The Feast configuration of `settings`, the same as feature_store.yaml but built in code."""
    online: dict[str, Any]
    if settings.online_store == "redis":
        # skip_dedup: last write wins (see the module docstring: out-of-order events keep last_event_ts).
        online = {"type": "redis", "connection_string": settings.redis.connection_string(), "skip_dedup": True}
        if settings.redis_key_ttl_s:
            online["key_ttl_seconds"] = settings.redis_key_ttl_s
    else:
        online = {"type": "sqlite", "path": str(settings.sqlite_path.resolve())}
    return RepoConfig(
        project=settings.project,
        provider="local",
        registry={
            "registry_type": "file",
            "path": str(settings.registry_path.resolve()),
            "cache_ttl_seconds": settings.registry_cache_ttl_s,
        },
        online_store=online,
        offline_store={"type": "duckdb"},
        entity_key_serialization_version=3,
        repo_path=REPO_DIR,
    )


def open_store(settings: FeastSettings | None = None) -> FeatureStore:
    """A Feast `FeatureStore` for `settings` (default: from the environment); creates its folders."""
    settings = settings or FeastSettings()
    settings.registry_path.parent.mkdir(parents=True, exist_ok=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.online_store == "sqlite":
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(REPO_DIR), config=repo_config(settings))


def apply(store: FeatureStore, data_dir: Path) -> None:
    """Register every entity, source, view and service, their files under `data_dir` (idempotent)."""
    with _feast("apply"):
        store.apply(definitions(data_dir))  # type: ignore[arg-type]


def materialize(store: FeatureStore, start: datetime, end: datetime, *, views: Sequence[str] = BATCH_VIEWS) -> None:
    """Load the newest row per entity with a timestamp in `[start, end]` of each view in `views` from its
    offline file into the online store, and mark each view loaded (`OnlineMarks`). Add `account_realtime` to
    bootstrap the online real-time state from the history's log — before the stream processor runs: the last
    write wins, so materializing the log later would replace newer pushed snapshots with the history's (the
    processor's restore re-pushes its snapshots after doing so)."""
    for moment in (start, end):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"materialize needs timezone-aware instants, got {moment!r}")
    with _feast("materialize"):
        store.materialize(start_date=start, end_date=end, feature_views=list(views))
    marks = OnlineMarks.of(store)
    if marks is not None:
        marks.put([view_mark(view) for view in views])


MARK_PREFIX = "streamscore:mark:"


def view_mark(view: str) -> str:
    """The mark saying a view's rows were materialized into the online store."""
    return f"view:{view}"


def partition_mark(partition: int) -> str:
    """The mark saying the real-time snapshots of a transactions partition were pushed since the store was empty."""
    return f"realtime:{partition}"


class OnlineMarks:
    """Marks kept in the online store itself, beside Feast's rows, saying what was loaded into it.

    An emptied store (Redis restarted without its data, FLUSHALL, a failover to an empty replica) loses its marks
    with its rows: a missing mark is how the feature processor tells that the batch views or the real-time
    snapshots must be loaded again. Keys `streamscore:mark:<project>:<name>` (Feast's keys are binary entity keys
    ending in the project, so they never collide). Redis only: SQLite does not restart empty."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.prefix = f"{MARK_PREFIX}{project}:"

    @classmethod
    def of(cls, store: FeatureStore, timeout_s: float = 5.0) -> OnlineMarks | None:
        """The marks of `store`'s project in its Redis (None for another online store)."""
        config = store.config.online_store
        if getattr(config, "type", "") != "redis":
            return None
        import redis

        host_port, *options = str(config.connection_string).split(",")
        host, _, port = host_port.rpartition(":")
        kwargs = dict(option.split("=", 1) for option in options if "=" in option)
        client = redis.Redis(
            host=host or "127.0.0.1",
            port=int(port or 6379),
            db=int(kwargs.get("db", 0)),
            password=kwargs.get("password"),
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        return cls(client, store.config.project)

    def missing(self, names: Sequence[str]) -> list[str]:
        """The marks among `names` that the store does not hold (one round trip)."""
        if not names:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(self.prefix + name)
        return [name for name, found in zip(names, pipe.execute(), strict=True) if not found]

    def put(self, names: Sequence[str]) -> None:
        if names:
            self.client.mset({self.prefix + name: datetime.now(UTC).isoformat() for name in names})

    def drop(self, names: Sequence[str]) -> None:
        if names:
            self.client.delete(*[self.prefix + name for name in names])

    def lock(self, name: str, ttl_s: float) -> bool:
        """Take a lock for `ttl_s` (one restorer among several workers); False when another one holds it."""
        return bool(self.client.set(self.prefix + "lock:" + name, "1", nx=True, px=max(int(ttl_s * 1000), 1)))

    def unlock(self, name: str) -> None:
        self.client.delete(self.prefix + "lock:" + name)


def _stamp(last_event_ts: float | None, now_us: int) -> int:
    return now_us if last_event_ts is None else round(last_event_ts * _US)


def realtime_frame(rows: Sequence[tuple[str, RealtimeSnapshot]]) -> pd.DataFrame:
    """The push DataFrame of (account_id, snapshot) rows; event timestamp = the snapshot's last event (µs,
    UTC), the push time for a snapshot without any event."""
    now_us = round(datetime.now(UTC).timestamp() * _US)
    data: dict[str, Any] = {"account_id": [account for account, _ in rows]}
    for name, _ in VIEW_FIELDS[REALTIME_VIEW]:
        values = [getattr(snapshot, name) for _, snapshot in rows]
        if name in ("known_devices", "known_countries"):
            data[name] = [list(v) for v in values]
        elif name == "last_event_ts":
            data[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif name.startswith("amount_"):
            data[name] = np.array(values, dtype=np.float64)
        else:
            data[name] = np.array(values, dtype=np.int64)
    stamps = np.array([_stamp(s.last_event_ts, now_us) for _, s in rows], dtype=np.int64)
    data[TIMESTAMP_FIELD] = pd.to_datetime(stamps, unit="us", utc=True)
    return pd.DataFrame(data)


_PUSHABLE_SECONDS = (pd.Timestamp.min.timestamp() + 1.0, pd.Timestamp.max.timestamp() - 1.0)
"""Event timestamps a push can carry: pandas keeps them in int64 nanoseconds (1677-09-21 .. 2262-04-11). A
snapshot stamped outside (one transaction dated 9999) fails the conversion with OutOfBoundsDatetime, every time."""


def snapshot_problem(snapshot: RealtimeSnapshot) -> str | None:
    """Why `push_realtime` could never write this snapshot (a defect of the data, not of Redis), or None.

    The same conversions as `realtime_frame`, checked on one row without building a frame (the stream processor
    asks for every event): a timestamp pandas cannot hold, a number that is not finite or does not fit int64, a
    string that is not UTF-8 encodable (protobuf's string fields). A test holds it equal to `realtime_frame`."""
    ts = snapshot.last_event_ts
    if ts is not None and not (math.isfinite(ts) and _PUSHABLE_SECONDS[0] <= ts <= _PUSHABLE_SECONDS[1]):
        return f"last_event_ts {ts!r} is outside the timestamps the online store can hold (years 1678..2262)"
    for name in ("amount_sum_5m", "amount_sum_1h", "amount_sum_24h"):
        value = getattr(snapshot, name)
        if not math.isfinite(value):
            return f"{name} {value!r} is not finite"
    for name in ("tx_count_5m", "tx_count_1h", "tx_count_24h", "distinct_merchants_1h"):
        if not -(2**63) <= getattr(snapshot, name) < 2**63:
            return f"{name} does not fit a 64-bit integer"
    for name in ("known_devices", "known_countries"):
        for text in getattr(snapshot, name):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"{name} holds a string that is not UTF-8 encodable ({exc.reason})"
    return None


_REDIS_BUSY = ("OOM", "MISCONF", "LOADING", "READONLY", "BUSY", "MASTERDOWN", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")
"""Redis error replies that describe the server's state, not the command's data."""
_REDIS_STATE_ERRORS = (
    "ReadOnlyError",
    "OutOfMemoryError",
    "NoPermissionError",
    "ClusterDownError",
    "TryAgainError",
    "MasterDownError",
)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed push is the infrastructure's (retry it: Redis down, slow, loading, out of memory; the Feast
    registry unreadable) rather than the data's (a row that no retry can write)."""
    import redis.exceptions as redis_errors

    if isinstance(exc, OSError | TimeoutError | FeatureStoreError):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        # redis-py maps some replies to classes and drops their code from the message.
        mapped = tuple(getattr(redis_errors, n, OSError) for n in _REDIS_STATE_ERRORS)
        return isinstance(exc, mapped) or str(exc).startswith(_REDIS_BUSY)
    if isinstance(exc, redis_errors.DataError):
        return False
    return isinstance(exc, redis_errors.RedisError)


def push_realtime(store: FeatureStore, rows: Sequence[tuple[str, RealtimeSnapshot]]) -> None:
    """Write the snapshots of many accounts to the online store in one push (a no-op for no rows)."""
    if not rows:
        return
    frame = realtime_frame(rows)
    with _feast("push"):
        store.push(REALTIME_PUSH_SOURCE, frame, to=PushMode.ONLINE)


def _refs(view: str) -> list[str]:
    return [f"{view}:{name}" for name, _ in VIEW_FIELDS[view]]


def _strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in value)  # type: ignore[attr-defined]


def _number(value: object, default: float = 0.0) -> float:
    if value is None:
        return default
    number = float(value)  # type: ignore[arg-type]
    return default if math.isnan(number) else number


def read_online(
    store: FeatureStore,
    keys: Sequence[tuple[str, str]],
    *,
    as_of: datetime | Sequence[datetime] | None = None,
) -> list[OnlineRow]:
    """For each (account_id, merchant_id): the real-time snapshot, profile and merchant risk the online
    store holds, None for a view without a row. With `as_of` (one instant, or one per key), a row older than
    its view's TTL at that instant also counts as absent, exactly as in the offline join."""
    if not keys:
        return []
    cutoffs = _cutoffs(as_of, len(keys))
    refs = [ref for view in (REALTIME_VIEW, PROFILE_VIEW, MERCHANT_VIEW) for ref in _refs(view)]
    entity_rows = [{"account_id": account, "merchant_id": merchant} for account, merchant in keys]
    with _feast("read"):
        response = store.get_online_features(features=refs, entity_rows=entity_rows, full_feature_names=True)
    values = response.to_dict()
    names = list(response.proto.metadata.feature_names.val)
    stamps: dict[str, list[float]] = {}
    for view in (REALTIME_VIEW, PROFILE_VIEW, MERCHANT_VIEW):
        # All fields of a view share its row's timestamp; 0 means "no row" (Redis) or NOT_FOUND (SQLite).
        result = response.proto.results[names.index(f"{view}__{VIEW_FIELDS[view][0][0]}")]
        stamps[view] = [ts.seconds + ts.nanos / 1e9 for ts in result.event_timestamps]

    def present(view: str, i: int) -> bool:
        stamp = stamps[view][i]
        if stamp <= 0:
            return False
        cutoff = cutoffs[i]
        return cutoff is None or stamp >= cutoff - TTLS[view].total_seconds()

    def field(view: str, name: str, i: int) -> Any:
        return values[f"{view}__{name}"][i]

    out: list[OnlineRow] = []
    for i in range(len(keys)):
        realtime = None
        if present(REALTIME_VIEW, i):
            last = field(REALTIME_VIEW, "last_event_ts", i)
            realtime = RealtimeSnapshot(
                tx_count_5m=int(_number(field(REALTIME_VIEW, "tx_count_5m", i))),
                tx_count_1h=int(_number(field(REALTIME_VIEW, "tx_count_1h", i))),
                tx_count_24h=int(_number(field(REALTIME_VIEW, "tx_count_24h", i))),
                amount_sum_5m=_number(field(REALTIME_VIEW, "amount_sum_5m", i)),
                amount_sum_1h=_number(field(REALTIME_VIEW, "amount_sum_1h", i)),
                amount_sum_24h=_number(field(REALTIME_VIEW, "amount_sum_24h", i)),
                distinct_merchants_1h=int(_number(field(REALTIME_VIEW, "distinct_merchants_1h", i))),
                last_event_ts=None if last is None or math.isnan(float(last)) else float(last),
                known_devices=_strings(field(REALTIME_VIEW, "known_devices", i)),
                known_countries=_strings(field(REALTIME_VIEW, "known_countries", i)),
            )
        profile = None
        if present(PROFILE_VIEW, i):
            profile = AccountProfile(
                amount_mean_30d=_number(field(PROFILE_VIEW, "amount_mean_30d", i)),
                amount_std_30d=_number(field(PROFILE_VIEW, "amount_std_30d", i)),
                tx_count_30d=int(_number(field(PROFILE_VIEW, "tx_count_30d", i))),
                home_country=str(field(PROFILE_VIEW, "home_country", i) or ""),
                usual_countries=_strings(field(PROFILE_VIEW, "usual_countries", i)),
                usual_devices=_strings(field(PROFILE_VIEW, "usual_devices", i)),
            )
        merchant = None
        if present(MERCHANT_VIEW, i):
            merchant = MerchantRisk(
                fraud_rate_30d=_number(field(MERCHANT_VIEW, "fraud_rate_30d", i)),
                tx_count_30d=int(_number(field(MERCHANT_VIEW, "tx_count_30d", i))),
            )
        out.append((realtime, profile, merchant))
    return out


def _cutoffs(as_of: datetime | Sequence[datetime] | None, n: int) -> list[float | None]:
    if as_of is None:
        return [None] * n
    instants = [as_of] * n if isinstance(as_of, datetime) else list(as_of)
    if len(instants) != n:
        raise ValueError(f"as_of has {len(instants)} instants for {n} keys")
    for moment in instants:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"as_of must be timezone-aware, got {moment!r}")
    return [moment.timestamp() for moment in instants]


_ROW = "__entity_row"


def historical_features(store: FeatureStore, entity_df: pd.DataFrame, service: str = "fraud_v1") -> pd.DataFrame:
    """Point-in-time join of the feature service `service` onto `entity_df` (columns account_id,
    merchant_id, event_timestamp = event time - 1 µs, and any others, which are kept): one output row per
    entity row, in the entity rows' order, plus the service's `<view>__<field>` columns (NaN / None where a
    view has no row within its TTL at or before the entity timestamp).

    One Feast retrieval for the whole service. Only the join keys and the timestamp go to Feast (less to copy
    into DuckDB), with a row number: the DuckDB store returns every row, duplicates included, but in no
    particular order. A result that does not hold each row exactly once is an error, never silently NaN.
    For a long history, call it on time-ordered chunks (`training.dataset.joined_frame` does): DuckDB's
    memory grows with the entity rows × the real-time rows of their accounts inside the 2-day TTL."""
    if service not in SERVICES:
        known = ", ".join(SERVICES)
        raise FeatureStoreError("historical retrieval", f"unknown feature service {service!r} (known: {known})")
    missing = [c for c in ("account_id", "merchant_id", TIMESTAMP_FIELD) if c not in entity_df.columns]
    if missing:
        raise ValueError(f"entity_df lacks the column(s) {', '.join(missing)}")
    names = [f"{view}__{name}" for view in SERVICES[service] for name, _ in VIEW_FIELDS[view]]
    out = entity_df.copy()
    if entity_df.empty:
        for name in names:
            out[name] = pd.Series(dtype=object)
        return out
    query = entity_df[["account_id", "merchant_id", TIMESTAMP_FIELD]].reset_index(drop=True)
    query[_ROW] = np.arange(len(query), dtype=np.int64)
    with _feast("historical retrieval"):
        job = store.get_historical_features(
            entity_df=query, features=store.get_feature_service(service), full_feature_names=True
        )
        result: pd.DataFrame = job.to_df()
    rows = np.sort(result[_ROW].to_numpy())
    if not np.array_equal(rows, query[_ROW].to_numpy()):
        raise FeatureStoreError(
            "historical retrieval",
            f"{len(query)} entity rows went in, {len(rows)} came back ({len(np.unique(rows))} distinct)",
        )
    absent = [name for name in names if name not in result.columns]
    if absent:  # a registry applied from other definitions
        raise FeatureStoreError("historical retrieval", f"service {service} did not return {', '.join(absent)}")
    ordered = result.set_index(_ROW).sort_index()
    for name in names:
        out[name] = ordered[name].to_numpy()
    return out


# --- the stream processor's direct writer -----------------------------------------------------------------------

_DOUBLE_TAG = b")"
"""`feast.types.Value` field 5 (`double_val`), wire type 1: the tag byte before the 8 little-endian bytes."""
_INT64_TAG = 0x20
"""`feast.types.Value` field 4 (`int64_val`), wire type 0 (varint)."""
_DOUBLE = struct.Struct("<d")


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # protobuf writes a negative int64 as its 64-bit two's complement: ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class RealtimeRedisWriter:
    """Writes `account_realtime` rows straight to Feast's Redis online store, in Feast's own format, in ONE pipelined
    round trip per batch: what `push_realtime` stores, without the push path's pandas frame, Arrow conversion and
    registry reads (most of the stream processor's push time, measured in docs/stream-processors.md).

    The format is the one the scorer's `RedisFeatureClient` reads (`scorer.features.redis_client`: the entity key
    layout, the murmur3 hash fields, the `_ts:<view>` timestamp) and that Feast's Redis store writes with
    `skip_dedup` (see `repo_config`): per account one `HSET` of every feature's serialized `feast.types.Value` and the
    row's `google.protobuf.Timestamp`, plus an `EXPIRE` where the store sets `key_ttl_seconds`. Values are encoded as
    Feast encodes the push frame of `realtime_frame`: counts `int64_val`, sums and `last_event_ts` `double_val` (a
    snapshot without events: an empty Value, as Feast writes NaN), device and country lists `string_list_val`; the
    row's timestamp is `_stamp` of the snapshot. An integration test writes random snapshots both ways and holds the
    stored bytes, and what Feast's `get_online_features` reads back, identical.

    A reply Redis refuses (a key of the wrong type) raises `redis.ResponseError` after every reply was read: the other
    rows are written, and the stream processor's bisection isolates the refused one. Not thread-safe: one writer per
    pushing thread."""

    def __init__(
        self, redis_settings: RedisSettings, project: str, *, key_ttl_seconds: int | None = None, timeout_s: float = 5.0
    ) -> None:
        # The key layout is the scorer reader's (one definition of Feast's format in the project); imported here
        # because feature_repo is below the services and only this writer needs it.
        from feature_repo.layout import REALTIME_FIELDS
        from scorer.features.redis_client import ACCOUNT_JOIN_KEY, Value, feature_field, redis_key, timestamp_field

        self.project = project
        self.key_ttl_seconds = key_ttl_seconds
        self._redis_key: Callable[[str], bytes] = lambda account: redis_key(project, ACCOUNT_JOIN_KEY, account)
        self._value = Value
        self._fields = [feature_field(REALTIME_VIEW, name) for name, _ in REALTIME_FIELDS]
        self._ts_field = timestamp_field(REALTIME_VIEW)
        self._names = [name for name, _ in REALTIME_FIELDS]
        self._kinds = dict(REALTIME_FIELDS)
        self._strings: dict[tuple[str, ...], bytes] = {}
        self._client = _redis_client(redis_settings, timeout_s)

    @classmethod
    def for_store(cls, store: FeatureStore, redis_settings: RedisSettings) -> RealtimeRedisWriter | None:
        """The writer of `store`'s project (None unless its online store is Redis)."""
        config = store.config.online_store
        if getattr(config, "type", "") != "redis":
            return None
        ttl = getattr(config, "key_ttl_seconds", None)
        return cls(redis_settings, store.config.project, key_ttl_seconds=int(ttl) if ttl else None)

    def encode(self, account_id: str, snapshot: RealtimeSnapshot, now_us: int) -> list[bytes]:
        """The arguments of the account's `HSET` (key, then field, value pairs: the timestamp first, as Feast)."""
        stamp_us = _stamp(snapshot.last_event_ts, now_us)
        seconds, micros = divmod(stamp_us, _US)
        # google.protobuf.Timestamp: field 1 `seconds`, field 2 `nanos`, varints, zeros omitted (proto3).
        nanos = micros * 1000
        stamp = (b"\x08" + _varint(seconds) if seconds else b"") + (b"\x10" + _varint(nanos) if nanos else b"")
        args = [self._redis_key(account_id), self._ts_field, stamp]
        for name, field_key in zip(self._names, self._fields, strict=True):
            args.append(field_key)
            args.append(self._encode_value(name, getattr(snapshot, name)))
        return args

    def _encode_value(self, name: str, value: Any) -> bytes:
        kind = self._kinds[name]
        if kind == "int":
            return bytes((_INT64_TAG,)) + _varint(int(value))
        if kind == "float":
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return b""  # Feast writes a null (NaN in the frame) as an empty Value
            return _DOUBLE_TAG + _DOUBLE.pack(float(value))
        key = tuple(value)
        encoded = self._strings.get(key)
        if encoded is None:
            message = self._value()
            message.string_list_val.SetInParent()
            message.string_list_val.val.extend(key)
            encoded = message.SerializeToString()
            if len(self._strings) >= 65_536:
                self._strings.clear()
            self._strings[key] = encoded
        return encoded

    def write(self, rows: Sequence[tuple[str, RealtimeSnapshot]]) -> None:
        """Write the rows (a no-op for none) in one pipeline; raises the first refused reply after reading all."""
        if not rows:
            return
        now_us = round(datetime.now(UTC).timestamp() * _US)
        pipe = self._client.pipeline(transaction=False)
        for account_id, snapshot in rows:
            key, *mapping = self.encode(account_id, snapshot, now_us)
            pipe.execute_command("HSET", key, *mapping)
            if self.key_ttl_seconds:
                pipe.expire(key, self.key_ttl_seconds)
        results = pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception):
                raise result

    def close(self) -> None:
        self._client.close()


def _redis_client(settings: RedisSettings, timeout_s: float) -> Any:
    import redis

    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        password=settings.password.get_secret_value() if settings.password else None,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
