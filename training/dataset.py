"""The training set: the Parquet history, point-in-time joined with the feature views, turned into model inputs
by the one shared feature computation, and split by event time.

Three steps, each replaceable on its own:

1. `joined_frame` asks Feast for the feature values each transaction would have seen (historical retrieval of a
   feature service, entity timestamp = event time - 1 µs, so only state written strictly before the event
   joins). This is the production path. `local_joined_frame` computes the same columns in-process: the same
   offline sources (`feature_repo.batch`: the real-time log replayed through the stream processor's state
   code, the daily account profiles and merchant risk) joined by `point_in_time_join` with Feast's rules
   (latest row at or before the entity time, within the view's TTL). It needs no feature store or registry
   and serves the unit tests, and training on a machine where the store is not set up.
2. `feature_matrix` rebuilds `TransactionFacts`, `RealtimeSnapshot`, `AccountProfile` and `MerchantRisk` from
   the joined columns (`<view>__<field>` names; a row whose view did not join becomes None) and calls
   `streamscore.features.transaction_features`, exactly as the scorer does online: no train/serve skew.
3. `split_by_time`: the oldest 70 % of events train, the next 15 % validate, the latest 15 % test.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from feature_repo import batch as feature_batch
from feature_repo import layout
from feature_repo.settings import FeastSettings
from streamscore import frames
from streamscore.errors import StreamscoreError
from streamscore.features import (
    FEATURE_NAMES,
    AccountProfile,
    MerchantRisk,
    RealtimeSnapshot,
    transaction_features,
)

logger = logging.getLogger(__name__)

TRANSACTIONS_FILE = layout.TRANSACTIONS_FILE
LABELS_FILE = layout.LABELS_FILE
ENTITY_TIMESTAMP = layout.TIMESTAMP_FIELD
JOIN_OFFSET = pd.Timedelta(microseconds=1)
"""Entity timestamp = event time - JOIN_OFFSET: a feature row written at the event's own time (the state
*including* the event) must not join; Feast joins rows with a timestamp <= the entity timestamp."""

REALTIME = layout.REALTIME_VIEW
PROFILE = layout.PROFILE_VIEW
MERCHANT = layout.MERCHANT_VIEW
VIEW_FIELDS: dict[str, tuple[str, ...]] = {
    view: tuple(name for name, _ in fields) for view, fields in layout.VIEW_FIELDS.items()
}
SERVICE_VIEWS: dict[str, tuple[str, ...]] = layout.SERVICES
"""The views of each Feast feature service (from `feature_repo.layout`, which needs no Feast import)."""
VIEW_TTL: dict[str, pd.Timedelta] = {view: pd.Timedelta(ttl) for view, ttl in layout.VIEW_TTLS.items()}
"""The feature views' Feast TTLs: an older row does not join (the in-process join applies them too)."""
CREATED_TIMESTAMP = layout.CREATED_FIELD


class FeatureStoreUnavailableError(StreamscoreError):
    """The Feast path was asked for but the feature repository cannot serve it."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"Feast historical retrieval is not available: {problem}. Build and apply the feature repository "
            "first, or train with the in-process join (TRAIN_FEATURE_JOIN=local / `--join local`)."
        )


class HistoryError(StreamscoreError):
    """The history folder is missing or unusable."""

    def __init__(self, history_dir: Path, problem: str) -> None:
        super().__init__(
            f"history {history_dir}: {problem}. Write one with `streamscore produce --history 30 --out {history_dir}`."
        )


def column(view: str, name: str) -> str:
    """Feast's full feature name: `<view>__<feature>`."""
    return f"{view}__{name}"


def joined_columns(service: str) -> list[str]:
    """The full feature names a service's historical retrieval returns."""
    return [column(view, name) for view in SERVICE_VIEWS[service] for name in VIEW_FIELDS[view]]


# --- the history ----------------------------------------------------------------------------------------


def load_history(history_dir: Path) -> pd.DataFrame:
    """Transactions with their ground truth from labels.parquet, sorted by (event time, event id)."""
    for name in (TRANSACTIONS_FILE, LABELS_FILE):
        if not (history_dir / name).is_file():
            raise HistoryError(history_dir, f"{name} not found")
    transactions = pd.read_parquet(history_dir / TRANSACTIONS_FILE)
    transactions = transactions.drop(columns=["is_fraud", "fraud_pattern"], errors="ignore")
    labels = pd.read_parquet(history_dir / LABELS_FILE, columns=["event_id", "is_fraud", "labeled_at"])
    history = transactions.merge(labels, on="event_id", how="inner", validate="one_to_one")
    if len(history) != len(transactions):
        raise HistoryError(history_dir, f"{len(transactions) - len(history)} transactions have no label")
    if history.empty:
        raise HistoryError(history_dir, "no transactions")
    return history.sort_values(["event_time", "event_id"], kind="mergesort").reset_index(drop=True)


def entity_frame(history: pd.DataFrame, lag_s: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """The entity rows of a historical retrieval: one per transaction, keyed by its event id. `lag_s` > 0: each
    row joins the state of up to that many seconds earlier (uniform, seeded) — the features as a serving path whose
    real-time snapshots arrive that late would read them (`feature_lag`)."""
    stamps = history["event_time"] - JOIN_OFFSET
    if lag_s > 0:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A6]))
        # Whole microseconds: Feast's offline store (and the history) keep timestamps at µs.
        micros = np.round(rng.uniform(0.0, lag_s * 1e6, len(history))).astype(np.int64)
        stamps = (stamps - pd.to_timedelta(micros, unit="us")).dt.as_unit(stamps.dt.unit)
    return pd.DataFrame(
        {
            "event_id": history["event_id"].to_numpy(),
            "account_id": history["account_id"].to_numpy(),
            "merchant_id": history["merchant_id"].to_numpy(),
            ENTITY_TIMESTAMP: stamps,
        }
    )


def check_offline_sources(history: pd.DataFrame, data_dir: Path, history_dir: Path) -> None:
    """Refuse offline sources built from another history. Feast joins whatever the files hold, and a
    regenerated history has the same accounts and overlapping times: stale sources would join without an error
    and train on features of transactions that never happened. The real-time log has one row per transaction
    (minus same-microsecond repeats of an account), stamped with its event time, so its first and last
    timestamps are the history's."""
    path = data_dir / layout.REALTIME_FILE
    rebuild = f"rebuild them: `streamscore features batch --history {history_dir}` (FEAST_DATA_DIR={data_dir})"
    if not path.is_file():
        raise FeatureStoreUnavailableError(f"no offline sources in {data_dir}; {rebuild}")
    stamps = pd.read_parquet(path, columns=[layout.TIMESTAMP_FIELD])[layout.TIMESTAMP_FIELD]
    times = history["event_time"]
    if stamps.empty or stamps.min() != times.min() or stamps.max() != times.max() or len(stamps) > len(history):
        found = f"{len(stamps):,} rows" + (f", {stamps.min()} → {stamps.max()}" if len(stamps) else "")
        raise FeatureStoreUnavailableError(
            f"the real-time log in {data_dir} ({found}) was not built from the history in {history_dir} "
            f"({len(history):,} transactions, {times.min()} → {times.max()}); {rebuild}"
        )


# --- 1a. the Feast join (production) --------------------------------------------------------------------


FEAST_CHUNK_ROWS = 100_000
"""Entity rows per Feast retrieval. Peak memory grows with it, speed hardly: on the 1.04 M-transaction history
the whole join takes about as long in chunks of 100 000 as in one call (DuckDB reads the sources only up to
each chunk's last timestamp), with a third of the memory (docs/features.md)."""


def joined_frame(
    entity_df: pd.DataFrame,
    service: str,
    *,
    feast_settings: FeastSettings | None = None,
    chunk_rows: int = FEAST_CHUNK_ROWS,
) -> pd.DataFrame:
    """Point-in-time feature values from Feast (`feature_repo.store.historical_features`) for every entity row,
    in the entity rows' order, with the columns `joined_columns(service)`. `feast_settings` default:
    `FeastSettings()` from the environment. The entity rows go in time order, `chunk_rows` at a time: memory is
    bounded by the chunk, and each retrieval reads only the source rows up to its chunk's latest timestamp."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    try:
        # Imported here, not at module level: Feast takes seconds to import and only this path needs it.
        store_module = importlib.import_module("feature_repo.store")
    except ImportError as exc:
        raise FeatureStoreUnavailableError(f"cannot import the feature repository ({exc})") from exc
    store = store_module.open_store(feast_settings or FeastSettings())
    wanted = joined_columns(service)
    # datetime64, not the default object array of Timestamps (seconds for a million rows)
    stamps = entity_df[ENTITY_TIMESTAMP].to_numpy(dtype="datetime64[ns]")
    by_time = entity_df.iloc[np.argsort(stamps, kind="stable")]
    parts = []
    for start in range(0, len(by_time), chunk_rows):
        chunk = by_time.iloc[start : start + chunk_rows]
        result: pd.DataFrame = store_module.historical_features(store, chunk, service=service)
        missing = [name for name in wanted if name not in result.columns]
        if missing:
            raise FeatureStoreUnavailableError(f"service {service} did not return {', '.join(missing)}")
        # The event id puts every row in its place, whatever order the store answered in.
        parts.append(result.set_index("event_id")[wanted])
    joined = pd.concat(parts).reindex(entity_df["event_id"]).reset_index(drop=True)
    if joined[column(REALTIME, "tx_count_5m")].notna().sum() == 0 and len(joined) > 1:
        raise FeatureStoreUnavailableError(
            "no transaction joined a real-time feature row: the offline sources were not built from this history"
        )
    return joined


# --- 1b. the in-process join (tests, machines without a feature store) ------------------------------------


def offline_sources(history: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The three offline sources, computed by `feature_repo.batch` exactly as `build_batch_sources` writes them
    (one implementation of the batch features, whichever join reads them)."""
    labels = history[["event_id", "is_fraud", "labeled_at"]]
    days = feature_batch.snapshot_days(history)
    return {
        REALTIME: feature_batch.realtime_log(history),
        PROFILE: feature_batch.account_profiles(history, days),
        MERCHANT: feature_batch.merchant_risk(history, labels, days),
    }


def point_in_time_join(
    entity_df: pd.DataFrame, view: pd.DataFrame, key: str, columns: Sequence[str], ttl: pd.Timedelta
) -> pd.DataFrame:
    """For each entity row, the latest `view` row of the same `key` with a timestamp <= the entity timestamp
    and no older than `ttl` (Feast's semantics; among equal timestamps the last created wins), as `columns`,
    in the entity rows' order."""
    left = entity_df[[key, ENTITY_TIMESTAMP]].reset_index(names="_row")
    order = [ENTITY_TIMESTAMP, *([CREATED_TIMESTAMP] if CREATED_TIMESTAMP in view.columns else [])]
    right = view[[key, *order, *columns]].copy()
    for frame in (left, right):
        frame[ENTITY_TIMESTAMP] = frame[ENTITY_TIMESTAMP].dt.as_unit("us")
    left = left.sort_values(ENTITY_TIMESTAMP, kind="mergesort")
    right = right.sort_values(order, kind="mergesort").drop(columns=order[1:])
    joined = pd.merge_asof(
        left, right, on=ENTITY_TIMESTAMP, by=key, direction="backward", allow_exact_matches=True, tolerance=ttl
    )
    return joined.set_index("_row").sort_index()[list(columns)].reset_index(drop=True)


def local_joined_frame(
    history: pd.DataFrame,
    service: str,
    sources: dict[str, pd.DataFrame] | None = None,
    *,
    lag_s: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """The columns `joined_columns(service)` computed in-process: the offline sources of `feature_repo.batch`
    joined point in time as Feast's offline store does (entity time = event time - 1 µs, each view's TTL)."""
    sources = offline_sources(history) if sources is None else sources
    entity_df = entity_frame(history, lag_s, seed)
    parts = []
    for view in SERVICE_VIEWS[service]:
        names = {name: column(view, name) for name in VIEW_FIELDS[view]}
        source = sources[view].rename(columns=names)
        key = "merchant_id" if view == MERCHANT else "account_id"
        parts.append(point_in_time_join(entity_df, source, key, list(names.values()), VIEW_TTL[view]))
    return pd.concat(parts, axis=1)[joined_columns(service)]


epoch_seconds = frames.epoch_seconds
facts = frames.transaction_facts


def _absent(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _strings(value: object) -> tuple[str, ...]:
    """A list-valued feature as Feast or pandas may return it: list, tuple, numpy array, JSON text or nothing."""
    if _absent(value):
        return ()
    if isinstance(value, str):
        decoded = json.loads(value) if value.startswith("[") else [value]
        return tuple(str(v) for v in decoded)
    if isinstance(value, list | tuple | np.ndarray):
        return tuple(str(v) for v in value)
    raise TypeError(f"cannot read a list of strings from {type(value).__name__}")


def _epoch(value: object) -> float | None:
    if _absent(value):
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)  # type: ignore[arg-type]


def _rows(joined: pd.DataFrame, view: str) -> Iterable[tuple[Any, ...] | None]:
    """The view's columns row by row, or None for every row when the service does not include the view."""
    names = [column(view, n) for n in VIEW_FIELDS[view]]
    if not all(name in joined.columns for name in names):
        return repeat(None)
    return zip(*(joined[name].astype(object).tolist() for name in names), strict=True)


def _realtime(row: tuple[Any, ...] | None) -> RealtimeSnapshot | None:
    if row is None or _absent(row[0]):
        return None
    return RealtimeSnapshot(
        tx_count_5m=int(row[0]),
        tx_count_1h=int(row[1]),
        tx_count_24h=int(row[2]),
        amount_sum_5m=float(row[3]),
        amount_sum_1h=float(row[4]),
        amount_sum_24h=float(row[5]),
        distinct_merchants_1h=int(row[6]),
        last_event_ts=_epoch(row[7]),
        known_devices=_strings(row[8]),
        known_countries=_strings(row[9]),
    )


def _profile(row: tuple[Any, ...] | None) -> AccountProfile | None:
    if row is None or _absent(row[0]):
        return None
    return AccountProfile(
        amount_mean_30d=float(row[0]),
        amount_std_30d=0.0 if _absent(row[1]) else float(row[1]),
        tx_count_30d=int(row[2]),
        home_country="" if _absent(row[3]) else str(row[3]),
        usual_countries=_strings(row[4]),
        usual_devices=_strings(row[5]),
    )


def _merchant(row: tuple[Any, ...] | None) -> MerchantRisk | None:
    if row is None or _absent(row[0]):
        return None
    return MerchantRisk(fraud_rate_30d=float(row[0]), tx_count_30d=int(row[1]))


@dataclass(frozen=True, slots=True)
class FeatureMatrix:
    x: NDArray[np.float32]
    """(rows, len(FEATURE_NAMES)), columns in FEATURE_NAMES order."""
    missing: int
    """Rows with neither a real-time snapshot nor a profile."""
    partial: int
    """Rows where some of the service's sources were absent."""


def feature_matrix(history: pd.DataFrame, joined: pd.DataFrame) -> FeatureMatrix:
    """Model inputs of every transaction from its joined feature columns, by `transaction_features`. A view
    absent from `joined` (not in the feature service) is None for every row."""
    if len(joined) != len(history):
        raise ValueError(f"joined frame has {len(joined)} rows for {len(history)} transactions")
    transactions = facts(history)
    x = np.empty((len(history), len(FEATURE_NAMES)), dtype=np.float32)
    missing = partial = 0
    views = zip(_rows(joined, REALTIME), _rows(joined, PROFILE), _rows(joined, MERCHANT), strict=False)
    for i, (tx, (realtime, profile, merchant)) in enumerate(zip(transactions, views, strict=False)):
        row = transaction_features(tx, _realtime(realtime), _profile(profile), _merchant(merchant))
        x[i] = row.values
        missing += row.missing
        partial += row.partial
    return FeatureMatrix(x=x, missing=missing, partial=partial)


# --- 3. the split ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """One time slice of the training set."""

    x: NDArray[np.float32]
    y: NDArray[np.float32]
    amount: NDArray[np.float64]
    event_ts: NDArray[np.float64]
    """Event time as epoch seconds."""

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def positives(self) -> int:
        return int(self.y.sum())


@dataclass(frozen=True)
class TrainingData:
    train: Split
    validation: Split
    test: Split
    feature_service: str
    join: str
    """feast or local: how the features were joined."""
    stats: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of the steps: load history, join, model inputs."""


def split_by_time(
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    amount: NDArray[np.float64],
    event_ts: NDArray[np.float64],
    validation_fraction: float,
    test_fraction: float,
) -> tuple[Split, Split, Split]:
    """Train on the oldest events, validate on the next, test on the latest (ties in time keep their order)."""
    order = np.argsort(event_ts, kind="mergesort")
    n = len(order)
    train_end = round(n * (1.0 - validation_fraction - test_fraction))
    validation_end = round(n * (1.0 - test_fraction))
    if not 0 < train_end < validation_end < n:
        raise ValueError(f"{n} rows are too few to split")
    parts = (order[:train_end], order[train_end:validation_end], order[validation_end:])
    train, validation, test = (Split(x[i], y[i], amount[i], event_ts[i]) for i in parts)
    return train, validation, test


def build_dataset(
    history_dir: Path,
    service: str,
    *,
    join: str = "feast",
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    feast_settings: FeastSettings | None = None,
    feast_chunk_rows: int = FEAST_CHUNK_ROWS,
    on_stage: Callable[[str], None] | None = None,
    warmup_days: float = 0.0,
    feature_lag_s: float = 0.0,
    seed: int = 0,
) -> TrainingData:
    """The whole training set of a history folder for a feature service. The first `warmup_days` of the history
    only feed the features of later rows: a 30-day profile or merchant window computed in a history's first days
    covers only those days, unlike anything the model meets when serving, so rows from then would teach it
    distributions it never sees live (and the drift reference would hold them)."""
    if service not in SERVICE_VIEWS:
        raise ValueError(f"unknown feature service {service!r}")
    stage = on_stage or (lambda _: None)
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[name] = now - clock
        clock = now

    stage("loading history")
    full = load_history(history_dir)
    history = full
    if warmup_days > 0:
        begin = full["event_time"].iloc[0] + pd.Timedelta(days=warmup_days)
        history = full[full["event_time"] >= begin].reset_index(drop=True)
        if history.empty:
            raise HistoryError(
                history_dir, f"no transactions after the {warmup_days:g}-day warm-up: generate a longer history"
            )
    lap("load history")
    stage(f"joining features ({join}, {service})")
    if join == "feast":
        feast_settings = feast_settings or FeastSettings()
        check_offline_sources(full, feast_settings.data_dir, history_dir)
        joined = joined_frame(
            entity_frame(history, feature_lag_s, seed),
            service,
            feast_settings=feast_settings,
            chunk_rows=feast_chunk_rows,
        )
    elif join == "local":
        joined = local_joined_frame(history, service, offline_sources(full), lag_s=feature_lag_s, seed=seed)
    else:
        raise ValueError(f"unknown join {join!r}")
    lap("join")
    stage("computing model inputs")
    matrix = feature_matrix(history, joined)
    event_ts = epoch_seconds(history["event_time"])
    train, validation, test = split_by_time(
        matrix.x,
        history["is_fraud"].to_numpy(dtype=np.float32),
        history["amount"].to_numpy(dtype=np.float64),
        event_ts,
        validation_fraction,
        test_fraction,
    )
    stats = {
        "rows": len(history),
        "missing": matrix.missing,
        "partial": matrix.partial,
        "warmup_rows": len(full) - len(history),
    }
    lap("model inputs")
    logger.info(
        "training set rows=%d missing=%d partial=%d join=%s", len(history), matrix.missing, matrix.partial, join
    )
    return TrainingData(train, validation, test, feature_service=service, join=join, stats=stats, seconds=seconds)
