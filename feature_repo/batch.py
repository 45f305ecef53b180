"""The offline sources of the feature views, built from the Parquet history with pandas and numpy alone.

- `account_profiles`: one row per account and snapshot instant T (normally each day's 00:00 UTC) over the
  account's transactions in `[T - 30 days, T)` — strictly before T, so a row stamped T never contains a
  transaction at T or later. Accounts without a transaction in the window get no row.
- `merchant_risk`: the same daily snapshots per merchant. The fraud rate counts only labels already known at
  T (`labeled_at <= T`) of the merchant's transactions in `[T - 30 days, T)`, Laplace-smoothed towards
  `PRIOR_FRAUD_RATE` with the weight of `PRIOR_WEIGHT` labelled transactions:
  `(known frauds + PRIOR_FRAUD_RATE * PRIOR_WEIGHT) / (known labels + PRIOR_WEIGHT)`. A merchant with a
  handful of transactions thus sits near the prior instead of at 0 or 1, and one whose labels are not in
  yet sits exactly at the prior. `tx_count_30d` counts every transaction of the window, labelled or not.
- `realtime_log`: for every transaction of the history, in event order, the account's `RealtimeSnapshot`
  right after it — computed by `streamscore.features.apply_transaction` itself, the code the stream
  processor runs — stamped with that transaction's event time. It is the offline side of the push source:
  the training join (entity time = event time - 1 µs) sees exactly the snapshot the online store held
  before each transaction.

Windows are computed without a loop over snapshot instants: each transaction counts towards the snapshot
indices `[lo, hi)` found by binary search (`T > t` and `T <= t + 30 days`), and a running sum over the
index axis of `+w at lo, -w at hi` gives every (entity, snapshot) aggregate at once. Memory is bounded by
processing entities in blocks of at most `_CELLS` (entity, snapshot) cells.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from feature_repo.layout import (
    ACCOUNT_STATE_FILE,
    CREATED_FIELD,
    LABELS_FILE,
    MERCHANT_FILE,
    PROFILE_FILE,
    REALTIME_FILE,
    TIMESTAMP_FIELD,
    TRANSACTIONS_FILE,
)
from streamscore.errors import StreamscoreError
from streamscore.features import KNOWN_LIMIT, AccountState, TransactionFacts, apply_transaction

logger = logging.getLogger(__name__)

WINDOW = timedelta(days=30)
"""Account profiles and merchant risk aggregate the 30 days before their snapshot instant."""
PRIOR_FRAUD_RATE = 0.01
"""Fraud rate a merchant is smoothed towards: the platform's overall fraud share (the generator's default)."""
PRIOR_WEIGHT = 20.0
"""Weight of the prior in labelled transactions: a merchant needs well over 20 known labels before its own
rate dominates."""
DECIMALS = 6
"""Profile means and standard deviations are rounded to this many decimals (like the real-time sums), so an
account with constant amounts has a std of exactly 0, not 1e-17 from floating-point noise."""
_US = 1_000_000
_WINDOW_US = int(WINDOW.total_seconds()) * _US
_CELLS = 8_000_000
"""(entity, snapshot) cells aggregated at once: about 64 MB per float array."""
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_STRINGS = pa.list_(pa.string())

REALTIME_SCHEMA = pa.schema(
    [
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("tx_count_5m", pa.int64()),
        pa.field("tx_count_1h", pa.int64()),
        pa.field("tx_count_24h", pa.int64()),
        pa.field("amount_sum_5m", pa.float64()),
        pa.field("amount_sum_1h", pa.float64()),
        pa.field("amount_sum_24h", pa.float64()),
        pa.field("distinct_merchants_1h", pa.int64()),
        pa.field("last_event_ts", pa.float64()),
        pa.field("known_devices", _STRINGS),
        pa.field("known_countries", _STRINGS),
        pa.field(TIMESTAMP_FIELD, _TIMESTAMP, nullable=False),
    ]
)
PROFILE_SCHEMA = pa.schema(
    [
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("amount_mean_30d", pa.float64()),
        pa.field("amount_std_30d", pa.float64()),
        pa.field("tx_count_30d", pa.int64()),
        pa.field("home_country", pa.string()),
        pa.field("usual_countries", _STRINGS),
        pa.field("usual_devices", _STRINGS),
        pa.field(TIMESTAMP_FIELD, _TIMESTAMP, nullable=False),
        pa.field(CREATED_FIELD, _TIMESTAMP, nullable=False),
    ]
)
MERCHANT_SCHEMA = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("fraud_rate_30d", pa.float64()),
        pa.field("tx_count_30d", pa.int64()),
        pa.field(TIMESTAMP_FIELD, _TIMESTAMP, nullable=False),
        pa.field(CREATED_FIELD, _TIMESTAMP, nullable=False),
    ]
)
ACCOUNT_STATE_SCHEMA = pa.schema(
    [pa.field("account_id", pa.string(), nullable=False), pa.field("state", pa.string(), nullable=False)]
)
REALTIME_COLUMNS: tuple[str, ...] = tuple(REALTIME_SCHEMA.names)
PROFILE_COLUMNS: tuple[str, ...] = tuple(PROFILE_SCHEMA.names)
MERCHANT_COLUMNS: tuple[str, ...] = tuple(MERCHANT_SCHEMA.names)

Progress = Callable[[str, int, int], None]
"""(step, done, total): called as a build advances."""


class HistoryNotFoundError(StreamscoreError):
    """The history folder lacks a file the batch build reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} not found. Write a history first: `streamscore produce --history 30 --out {path.parent}`."
        )
        self.path = path


# --- snapshot instants --------------------------------------------------------------------------------------


def snapshot_days(transactions: pd.DataFrame) -> list[datetime]:
    """Every day boundary (00:00 UTC) from the day after the history's first event to the day after its last."""
    if transactions.empty:
        return []
    times = _utc_micros(transactions["event_time"])
    first = pd.Timestamp(int(times.min()), unit="us", tz="UTC").floor("D")
    last = pd.Timestamp(int(times.max()), unit="us", tz="UTC").floor("D")
    return [d.to_pydatetime() for d in pd.date_range(first + pd.Timedelta(days=1), last + pd.Timedelta(days=1))]


def _instants(days: Sequence[datetime]) -> NDArray[np.int64]:
    """Snapshot instants as sorted, distinct epoch microseconds."""
    for day in days:
        if day.tzinfo is None or day.utcoffset() is None:
            raise ValueError(f"snapshot instants must be timezone-aware, got {day!r}")
    micros = np.array([round(d.timestamp() * _US) for d in days], dtype=np.int64)
    out: NDArray[np.int64] = np.unique(micros)
    return out


def _utc_micros(times: pd.Series) -> NDArray[np.int64]:
    """A timestamp column as epoch microseconds; naive timestamps are refused (the history is UTC)."""
    if not isinstance(times.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"column {times.name!r} must hold timezone-aware timestamps, got {times.dtype}")
    micros: NDArray[np.int64] = times.dt.tz_convert("UTC").dt.as_unit("us").astype("int64").to_numpy()
    return micros


def _stamps(micros: NDArray[np.int64]) -> pd.Series:
    return pd.Series(pd.to_datetime(micros, unit="us", utc=True)).dt.as_unit("us")


# --- windowed aggregates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Windowed:
    """Sparse (entity, snapshot) aggregates: one entry per pair with a non-zero count, sorted by (code, day)."""

    code: NDArray[np.int64]
    day: NDArray[np.int64]
    count: NDArray[np.int64]
    sums: list[NDArray[np.float64]] = field(default_factory=list)

    def key(self, n_days: int) -> NDArray[np.int64]:
        out: NDArray[np.int64] = self.code * n_days + self.day
        return out


def _snapshot_range(
    instants: NDArray[np.int64], event_us: NDArray[np.int64], known_us: NDArray[np.int64] | None = None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The snapshot indices `[lo, hi)` an event at `event_us` counts towards: `event < T <= event + WINDOW`
    and, with `known_us`, `T >= known_us` (the label is known at T)."""
    lo = np.searchsorted(instants, event_us, side="right").astype(np.int64)
    if known_us is not None:
        lo = np.maximum(lo, np.searchsorted(instants, known_us, side="left"))
    hi = np.searchsorted(instants, event_us + _WINDOW_US, side="right").astype(np.int64)
    return lo, np.maximum(hi, lo)


def _running(
    start: NDArray[np.int64], end: NDArray[np.int64], rows: int, width: int, weights: NDArray[np.float64] | None
) -> NDArray[Any]:
    """A (rows, width - 1) table of running sums: each event adds its weight (or 1) from `start` up to `end`."""
    size = rows * width
    steps = np.bincount(start, weights=weights, minlength=size) - np.bincount(end, weights=weights, minlength=size)
    table: NDArray[Any] = steps.reshape(rows, width).cumsum(axis=1)[:, : width - 1]
    return table


def _windowed(
    codes: NDArray[np.int64],
    n_codes: int,
    lo: NDArray[np.int64],
    hi: NDArray[np.int64],
    n_days: int,
    weights: Sequence[NDArray[np.float64]] = (),
) -> _Windowed:
    """Count (and sum `weights`) of the events of each code that count towards each snapshot index."""
    width = n_days + 1
    order = np.argsort(codes, kind="stable")
    codes, lo, hi = codes[order], lo[order], hi[order]
    weights = [w[order] for w in weights]
    block = max(1, _CELLS // width)
    parts: list[_Windowed] = []
    for first in range(0, n_codes, block):
        rows = min(block, n_codes - first)
        a, b = np.searchsorted(codes, [first, first + rows], side="left")
        if a == b:
            continue
        base = (codes[a:b] - first) * width
        start, end = base + lo[a:b], base + hi[a:b]
        count = _running(start, end, rows, width, None)
        row, day = np.nonzero(count > 0)
        parts.append(
            _Windowed(
                code=(row + first).astype(np.int64),
                day=day.astype(np.int64),
                count=count[row, day].astype(np.int64),
                sums=[_running(start, end, rows, width, w[a:b])[row, day] for w in weights],
            )
        )
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Windowed(empty, empty, empty, [np.zeros(0) for _ in weights])
    return _Windowed(
        code=np.concatenate([p.code for p in parts]),
        day=np.concatenate([p.day for p in parts]),
        count=np.concatenate([p.count for p in parts]),
        sums=[np.concatenate([p.sums[i] for p in parts]) for i in range(len(weights))],
    )


def _ranked(
    account_codes: NDArray[np.int64],
    values: pd.Series,
    event_us: NDArray[np.int64],
    instants: NDArray[np.int64],
    row_keys: NDArray[np.int64],
) -> list[list[str]]:
    """For each profile row (key = account code * days + day), the account's distinct `values` in the window,
    most frequent first (ties by value), at most KNOWN_LIMIT."""
    present = values.notna().to_numpy()
    item_codes, items = pd.factorize(values[present], sort=True)
    n_days = len(instants)
    out: list[list[str]] = [[] for _ in range(len(row_keys))]
    if len(items) == 0:
        return out
    pair_codes, pairs = pd.factorize(account_codes[present] * len(items) + item_codes.astype(np.int64))
    lo, hi = _snapshot_range(instants, event_us[present])
    windowed = _windowed(pair_codes.astype(np.int64), len(pairs), lo, hi, n_days)
    pair_values = np.asarray(pairs, dtype=np.int64)[windowed.code]
    keys = (pair_values // len(items)) * n_days + windowed.day
    item = pair_values % len(items)
    order = np.lexsort((item, -windowed.count, keys))
    keys, item = keys[order], item[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    rank = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    keep = rank < KNOWN_LIMIT
    keys, item = keys[keep], item[keep]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    names: list[str] = [str(v) for v in items.take(item)]
    rows = np.searchsorted(row_keys, keys[starts])
    for row, s, e in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True):
        out[row] = names[s:e]
    return out


# --- the batch views ----------------------------------------------------------------------------------------


def account_profiles(transactions: pd.DataFrame, days: Sequence[datetime]) -> pd.DataFrame:
    """One row per account and snapshot instant T in `days` with a transaction in `[T - 30 days, T)`: mean
    and sample std of the amounts (0 for one transaction), count, the usual countries and devices (most
    frequent first, ties by name, at most KNOWN_LIMIT) and the home country (the most frequent one)."""
    instants = _instants(days)
    n_days = len(instants)
    event_us = _utc_micros(transactions["event_time"])
    account_codes_raw, accounts = pd.factorize(transactions["account_id"], sort=True)
    account_codes = account_codes_raw.astype(np.int64)
    amount = transactions["amount"].to_numpy(dtype=np.float64)
    # Centre the amounts per account before summing squares: the variance is shift-invariant and the sums
    # stay small, so no catastrophic cancellation in sum(x²) - sum(x)²/n.
    n_accounts = len(accounts)
    centre = np.bincount(account_codes, weights=amount, minlength=n_accounts) / np.maximum(
        np.bincount(account_codes, minlength=n_accounts), 1
    )
    shifted = amount - centre[account_codes]
    lo, hi = _snapshot_range(instants, event_us)
    windowed = _windowed(account_codes, n_accounts, lo, hi, n_days, (shifted, shifted**2))
    n = windowed.count.astype(np.float64)
    total, squares = windowed.sums
    mean = total / n
    variance = np.where(n > 1, (squares - total * mean) / np.maximum(n - 1.0, 1.0), 0.0)
    row_keys = windowed.key(n_days)
    countries = _ranked(account_codes, transactions["country"], event_us, instants, row_keys)
    devices = _ranked(account_codes, transactions["device_id"], event_us, instants, row_keys)
    created = _stamps(np.full(len(row_keys), _now_us(), dtype=np.int64))
    return pd.DataFrame(
        {
            "account_id": np.asarray(accounts, dtype=object)[windowed.code],
            "amount_mean_30d": np.round(mean + centre[windowed.code], DECIMALS),
            "amount_std_30d": np.round(np.sqrt(np.maximum(variance, 0.0)), DECIMALS),
            "tx_count_30d": windowed.count,
            "home_country": [c[0] if c else None for c in countries],
            "usual_countries": countries,
            "usual_devices": devices,
            TIMESTAMP_FIELD: _stamps(instants[windowed.day]),
            CREATED_FIELD: created,
        },
        columns=list(PROFILE_COLUMNS),
    )


def merchant_risk(transactions: pd.DataFrame, labels: pd.DataFrame, days: Sequence[datetime]) -> pd.DataFrame:
    """One row per merchant and snapshot instant T in `days` with a transaction in `[T - 30 days, T)`: the
    transaction count and the smoothed fraud rate of the labels known at T (see the module docstring).
    `labels` needs `event_id`, `is_fraud` and `labeled_at`; labels of unknown transactions are ignored."""
    instants = _instants(days)
    n_days = len(instants)
    event_us = _utc_micros(transactions["event_time"])
    merchant_codes_raw, merchants = pd.factorize(transactions["merchant_id"], sort=True)
    merchant_codes = merchant_codes_raw.astype(np.int64)
    lo, hi = _snapshot_range(instants, event_us)
    volume = _windowed(merchant_codes, len(merchants), lo, hi, n_days)

    # A repeated label (redelivery) counts once: the earliest one, when it first became known.
    labels = labels.sort_values("labeled_at", kind="stable").drop_duplicates("event_id", keep="first")
    ids = pd.Index(transactions["event_id"])
    first = ~ids.duplicated()
    lookup = np.flatnonzero(first)
    found = pd.Index(ids[first]).get_indexer(labels["event_id"])
    matched = found >= 0
    position = lookup[found[matched]]
    labeled_us = _utc_micros(labels["labeled_at"])[matched]
    fraud = labels["is_fraud"].to_numpy(dtype=bool)[matched].astype(np.float64)
    lo, hi = _snapshot_range(instants, event_us[position], known_us=labeled_us)
    known = _windowed(merchant_codes[position], len(merchants), lo, hi, n_days, (fraud,))

    keys = volume.key(n_days)
    known_count = np.zeros(len(keys), dtype=np.float64)
    known_frauds = np.zeros(len(keys), dtype=np.float64)
    # A label counts only while its transaction is inside the window, so every known key is a volume key.
    where = np.searchsorted(keys, known.key(n_days))
    known_count[where] = known.count
    known_frauds[where] = known.sums[0]
    rate = (known_frauds + PRIOR_FRAUD_RATE * PRIOR_WEIGHT) / (known_count + PRIOR_WEIGHT)
    return pd.DataFrame(
        {
            "merchant_id": np.asarray(merchants, dtype=object)[volume.code],
            "fraud_rate_30d": rate,
            "tx_count_30d": volume.count,
            TIMESTAMP_FIELD: _stamps(instants[volume.day]),
            CREATED_FIELD: _stamps(np.full(len(keys), _now_us(), dtype=np.int64)),
        },
        columns=list(MERCHANT_COLUMNS),
    )


def _now_us() -> int:
    return round(datetime.now(UTC).timestamp() * _US)


# --- the real-time log --------------------------------------------------------------------------------------


_NUMERIC_FIELDS: tuple[tuple[str, type[np.generic]], ...] = (
    ("tx_count_5m", np.int64),
    ("tx_count_1h", np.int64),
    ("tx_count_24h", np.int64),
    ("amount_sum_5m", np.float64),
    ("amount_sum_1h", np.float64),
    ("amount_sum_24h", np.float64),
    ("distinct_merchants_1h", np.int64),
    ("last_event_ts", np.float64),
)
_PARALLEL_MIN_ROWS = 50_000
"""Below this many transactions the log is built in-process (starting workers costs about a second)."""


@dataclass(frozen=True)
class _LogPart:
    """The log rows of some accounts: their positions in the global event order and the snapshot columns."""

    positions: NDArray[np.int64]
    numeric: dict[str, NDArray[Any]]
    known_devices: list[list[str]]
    known_countries: list[list[str]]
    states: dict[str, str]
    """Each account's final state (AccountState.as_dict() as JSON)."""


def _replay_part(rows: list[tuple[Any, ...]], positions: list[int]) -> _LogPart:
    """Fold `rows` (TransactionFacts fields, in event order) into per-account states with the stream
    processor's own code; one output row per applied transaction. Runs in a worker process."""
    states: dict[str, AccountState] = {}
    applied: list[int] = []
    snapshots = []
    for position, row in zip(positions, rows, strict=True):
        tx = TransactionFacts(*row)
        state = states.get(tx.account_id)
        if state is None:
            state = states[tx.account_id] = AccountState()
        if apply_transaction(state, tx):
            applied.append(position)
            snapshots.append(state.snapshot())
    return _LogPart(
        positions=np.array(applied, dtype=np.int64),
        numeric={name: np.array([getattr(s, name) for s in snapshots], dtype=dtype) for name, dtype in _NUMERIC_FIELDS},
        known_devices=[list(s.known_devices) for s in snapshots],
        known_countries=[list(s.known_countries) for s in snapshots],
        states={account: json.dumps(state.as_dict(), separators=(",", ":")) for account, state in states.items()},
    )


def realtime_log(
    transactions: pd.DataFrame,
    progress: Callable[[int], None] | None = None,
    *,
    workers: int = 1,
    final_states: dict[str, str] | None = None,
) -> pd.DataFrame:
    """For every transaction, in (event time, event id) order like `streamscore.features.replay`, the
    account's snapshot after applying it, stamped with the transaction's event time. Transactions the state
    refuses (a repeated event id) add no row; of several transactions of one account at the same instant
    only the last snapshot is kept (one row per account and timestamp, as the online store would hold).

    Accounts are independent, so with `workers > 1` they are split between worker processes by account;
    the result is the same row for row. `progress` gets the number of transactions replayed so far.
    `final_states`, when given, receives each account's state after its last transaction (as JSON)."""
    event_us = _utc_micros(transactions["event_time"])
    event_ids = transactions["event_id"].astype(str).to_numpy()
    order = np.lexsort((event_ids, event_us))
    account_ids = transactions["account_id"].astype(str).to_numpy()[order]
    devices = transactions["device_id"].astype(object).where(transactions["device_id"].notna(), None)
    rows = list(
        zip(
            event_ids[order].tolist(),
            account_ids.tolist(),
            transactions["merchant_id"].to_numpy()[order].tolist(),
            transactions["merchant_category"].to_numpy()[order].tolist(),
            transactions["amount"].to_numpy(dtype=np.float64)[order].tolist(),
            transactions["currency"].to_numpy()[order].tolist(),
            transactions["country"].to_numpy()[order].tolist(),
            transactions["channel"].to_numpy()[order].tolist(),
            devices.to_numpy()[order].tolist(),
            # Epoch seconds exactly as datetime.timestamp() gives them online (µs / 1e6).
            (event_us[order] / 1e6).tolist(),
            strict=True,
        )
    )
    n = len(rows)
    if workers <= 1 or n < _PARALLEL_MIN_ROWS:
        parts = [_replay_part(rows, list(range(n)))]
        if progress is not None:
            progress(n)
    else:
        parts = _replay_parallel(rows, account_ids, workers, progress)
    if final_states is not None:
        for part in parts:
            final_states.update(part.states)
    positions = np.concatenate([p.positions for p in parts])
    back = np.argsort(positions, kind="stable")
    positions = positions[back]
    devices_out = [d for p in parts for d in p.known_devices]
    countries_out = [c for p in parts for c in p.known_countries]
    frame = pd.DataFrame(
        {
            "account_id": account_ids[positions],
            **{name: np.concatenate([p.numeric[name] for p in parts])[back] for name, _ in _NUMERIC_FIELDS},
            "known_devices": [devices_out[i] for i in back.tolist()],
            "known_countries": [countries_out[i] for i in back.tolist()],
            TIMESTAMP_FIELD: _stamps(event_us[order][positions]),
        },
        columns=list(REALTIME_COLUMNS),
    )
    return frame.drop_duplicates(["account_id", TIMESTAMP_FIELD], keep="last").reset_index(drop=True)


def _replay_parallel(
    rows: list[tuple[Any, ...]], account_ids: NDArray[Any], workers: int, progress: Callable[[int], None] | None
) -> list[_LogPart]:
    """`_replay_part` over account partitions in `workers` spawned processes (spawned, not forked: the parent
    may hold Arrow or Feast threads). More partitions than workers, so progress advances as they finish."""
    codes, _ = pd.factorize(account_ids)
    chunks = workers * 4
    part_of = codes % chunks
    members = [np.flatnonzero(part_of == k).tolist() for k in range(chunks)]
    done = 0
    parts: list[_LogPart] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_replay_part, [rows[i] for i in m], m): len(m) for m in members if m}
        for future in as_completed(futures):
            parts.append(future.result())
            done += futures[future]
            if progress is not None:
                progress(done)
    return parts


# --- building the files -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSummary:
    """What `build_batch_sources` wrote, and how long each step took."""

    data_dir: Path
    transactions: int
    labels: int
    first_snapshot: datetime | None
    last_snapshot: datetime | None
    snapshots: int
    realtime_rows: int
    profile_rows: int
    merchant_rows: int
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    """Elapsed seconds per step (read, realtime, profiles, merchants, write) and `total`."""

    @property
    def transactions_per_s(self) -> float:
        return self.transactions / max(self.seconds.get("total", 0.0), 1e-9)


class BatchSourcesMissingError(StreamscoreError):
    """The offline sources were not built yet."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"no offline feature files in {data_dir}. Build them first: `streamscore features batch --history DIR`."
        )
        self.data_dir = data_dir


def batch_range(data_dir: Path) -> tuple[datetime, datetime]:
    """The first and last event timestamp over the three offline files in `data_dir` (reads one column)."""
    low: int | None = None
    high: int | None = None
    for name in (REALTIME_FILE, PROFILE_FILE, MERCHANT_FILE):
        path = data_dir / name
        if not path.is_file():
            continue
        column = pq.read_table(path, columns=[TIMESTAMP_FIELD]).column(TIMESTAMP_FIELD)
        if len(column) == 0:
            continue
        micros = column.cast(_TIMESTAMP).cast(pa.int64()).to_numpy()
        low = int(micros.min()) if low is None else min(low, int(micros.min()))
        high = int(micros.max()) if high is None else max(high, int(micros.max()))
    if low is None or high is None:
        raise BatchSourcesMissingError(data_dir)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + timedelta(microseconds=low), epoch + timedelta(microseconds=high)


def _write(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    """Write under a temporary name and rename, so a crash never leaves a truncated file that looks complete."""
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def build_batch_sources(
    history_dir: Path, data_dir: Path, progress: Progress | None = None, *, workers: int | None = None
) -> BatchSummary:
    """Read `history_dir/transactions.parquet` and `labels.parquet`, write the three offline sources
    (account_realtime, account_profile, merchant_risk parquet files) into `data_dir`. The real-time log is
    replayed in `workers` processes (default: the machine's cores, at most 8)."""
    for name in (TRANSACTIONS_FILE, LABELS_FILE):
        if not (history_dir / name).is_file():
            raise HistoryNotFoundError(history_dir / name)
    seconds: dict[str, float] = {}
    started = clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now
        logger.info("batch step done step=%s seconds=%.2f", step, seconds[step])

    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(step, done, total)

    report("read", 0, 1)
    transactions = pd.read_parquet(history_dir / TRANSACTIONS_FILE)
    labels = pd.read_parquet(history_dir / LABELS_FILE, columns=["event_id", "is_fraud", "labeled_at"])
    days = snapshot_days(transactions)
    report("read", 1, 1)
    lap("read")

    n = len(transactions)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    states: dict[str, str] = {}
    realtime = realtime_log(
        transactions, progress=lambda done: report("realtime", done, n), workers=workers, final_states=states
    )
    lap("realtime")
    report("profiles", 0, 1)
    profiles = account_profiles(transactions, days)
    report("profiles", 1, 1)
    lap("profiles")
    report("merchants", 0, 1)
    merchants = merchant_risk(transactions, labels, days)
    report("merchants", 1, 1)
    lap("merchants")

    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "account_realtime": data_dir / REALTIME_FILE,
        "account_profile": data_dir / PROFILE_FILE,
        "merchant_risk": data_dir / MERCHANT_FILE,
        "account_state": data_dir / ACCOUNT_STATE_FILE,
    }
    report("write", 0, 3)
    _write(realtime, REALTIME_SCHEMA, paths["account_realtime"])
    report("write", 1, 3)
    _write(profiles, PROFILE_SCHEMA, paths["account_profile"])
    report("write", 2, 3)
    _write(merchants, MERCHANT_SCHEMA, paths["merchant_risk"])
    accounts = sorted(states)
    _write(
        pd.DataFrame({"account_id": accounts, "state": [states[a] for a in accounts]}),
        ACCOUNT_STATE_SCHEMA,
        paths["account_state"],
    )
    report("write", 3, 3)
    lap("write")
    seconds["total"] = time.perf_counter() - started
    return BatchSummary(
        data_dir=data_dir,
        transactions=n,
        labels=len(labels),
        first_snapshot=days[0] if days else None,
        last_snapshot=days[-1] if days else None,
        snapshots=len(days),
        realtime_rows=len(realtime),
        profile_rows=len(profiles),
        merchant_rows=len(merchants),
        paths=paths,
        seconds=seconds,
    )
