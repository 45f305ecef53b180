"""A Parquet history of generated transactions and their labels, for training and feature backfills.

Training needs weeks of past traffic with ground truth; the live stream only gives the present. The
history is the same generator run over `[end - days, end)`, written as two files:

- `transactions.parquet`: every `Transaction` field as a column (event_time as a UTC timestamp), plus
  the label columns for convenience: `is_fraud`, what the label says (fraud that is never reported is labelled
  legitimate, as the bank would know it), and `fraud_pattern`, the truth (set for every fraud, reported or not);
- `labels.parquet`: what the `labels` topic would carry, `labeled_at = event_time + label_delay x` the event's
  delay factor (1 for legitimate events, later for reported fraud: `producers.generator.REPORT_DELAY_FACTOR`).

Rows are flushed in row groups of `FLUSH_ROWS` so memory stays bounded whatever the number of days.
Files are written under a temporary name and renamed at the end, so a crash never leaves a truncated
file that looks complete.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from producers.generator import GeneratedEvent, TransactionGenerator

logger = logging.getLogger(__name__)

TRANSACTIONS_FILE = "transactions.parquet"
LABELS_FILE = "labels.parquet"
FLUSH_ROWS = 200_000
_TIMESTAMP = pa.timestamp("us", tz="UTC")

TRANSACTIONS_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("merchant_category", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("device_id", pa.string()),
        pa.field("event_time", _TIMESTAMP, nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("fraud_pattern", pa.string()),
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("fraud_pattern", pa.string()),
        pa.field("event_time", _TIMESTAMP, nullable=False),
        pa.field("labeled_at", _TIMESTAMP, nullable=False),
    ]
)
_TRANSACTION_FIELDS = tuple(name for name in TRANSACTIONS_SCHEMA.names if name not in ("is_fraud", "fraud_pattern"))


@dataclass(frozen=True)
class HistorySummary:
    """What `write_history` wrote."""

    transactions_path: Path
    labels_path: Path
    start: datetime
    end: datetime
    events: int
    frauds: int
    by_pattern: dict[str, int] = field(default_factory=dict)
    first_event_time: datetime | None = None
    last_event_time: datetime | None = None


def write_history(
    generator: TransactionGenerator,
    days: float,
    out_dir: Path,
    *,
    end: datetime,
    rate_per_s: float,
    label_delay: timedelta,
    progress: Callable[[int], None] | None = None,
) -> HistorySummary:
    """Generate the events of `[end - days, end)` into `out_dir`; `progress` gets the count after each flush."""
    if not math.isfinite(days) or days <= 0:
        raise ValueError(f"days must be a finite number > 0, got {days}")
    if end.tzinfo is None or end.utcoffset() is None:
        raise ValueError("end must be timezone-aware")
    if label_delay < timedelta(0):
        raise ValueError(f"label_delay must not be negative, got {label_delay}")
    start = end - timedelta(days=days)
    out_dir.mkdir(parents=True, exist_ok=True)
    transactions_path = out_dir / TRANSACTIONS_FILE
    labels_path = out_dir / LABELS_FILE
    tmp_transactions = transactions_path.with_name(transactions_path.name + ".tmp")
    tmp_labels = labels_path.with_name(labels_path.name + ".tmp")
    logger.info("writing history start=%s end=%s rate_per_s=%s out_dir=%s", start, end, rate_per_s, out_dir)

    patterns: Counter[str] = Counter()
    events = 0
    first: datetime | None = None
    last: datetime | None = None
    batch: list[GeneratedEvent] = []
    with (
        pq.ParquetWriter(tmp_transactions, TRANSACTIONS_SCHEMA) as transactions_writer,
        pq.ParquetWriter(tmp_labels, LABELS_SCHEMA) as labels_writer,
    ):

        def flush() -> None:
            transactions = transactions_table(batch)
            transactions_writer.write_table(transactions, row_group_size=len(batch))
            delays = [label_delay * e.label_delay_factor for e in batch]
            labels_writer.write_table(labels_table(transactions, delays), row_group_size=len(batch))
            batch.clear()
            if progress is not None:
                progress(events)

        for event in generator.stream(start, rate_per_s):
            when = event.transaction.event_time
            if when >= end:
                break
            if first is None:
                first = when
            last = when
            events += 1
            if event.pattern is not None:
                patterns[event.pattern] += 1
            batch.append(event)
            if len(batch) >= FLUSH_ROWS:
                flush()
        if batch:
            flush()
    tmp_transactions.replace(transactions_path)
    tmp_labels.replace(labels_path)
    logger.info("history written events=%d frauds=%d", events, sum(patterns.values()))
    return HistorySummary(
        transactions_path=transactions_path,
        labels_path=labels_path,
        start=start,
        end=end,
        events=events,
        frauds=sum(patterns.values()),
        by_pattern=dict(sorted(patterns.items())),
        first_event_time=first,
        last_event_time=last,
    )


def transactions_table(events: list[GeneratedEvent]) -> pa.Table:
    """One row per event: the transaction's fields and its label columns."""
    transactions = [e.transaction for e in events]
    columns: dict[str, list[Any]] = {name: [getattr(t, name) for t in transactions] for name in _TRANSACTION_FIELDS}
    columns["is_fraud"] = [e.labeled_fraud for e in events]
    columns["fraud_pattern"] = [e.pattern for e in events]
    return pa.Table.from_pydict(columns, schema=TRANSACTIONS_SCHEMA)


def labels_table(transactions: pa.Table, label_delay: timedelta | Sequence[timedelta]) -> pa.Table:
    """The labels of a transactions table, each known `label_delay` (one for all, or one per row) after its event."""
    event_time = transactions.column("event_time")
    delays = (
        pa.scalar(label_delay, type=pa.duration("us"))
        if isinstance(label_delay, timedelta)
        else pa.array(label_delay, type=pa.duration("us"))
    )
    return pa.Table.from_arrays(
        [
            transactions.column("event_id"),
            transactions.column("account_id"),
            transactions.column("is_fraud"),
            transactions.column("fraud_pattern"),
            event_time,
            pc.add(event_time, delays),
        ],
        schema=LABELS_SCHEMA,
    )
