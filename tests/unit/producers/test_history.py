"""The Parquet history holds exactly the generator's events of `[end - days, end)` and their delayed labels."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from producers import history
from producers.generator import REPORT_DELAY_FACTOR, GeneratorConfig, TransactionGenerator
from producers.history import HistorySummary, write_history
from producers.world import World, build_world
from streamscore.contracts import Transaction

END = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 0.25
RATE = 2.0
LABEL_DELAY = timedelta(days=3, seconds=1, microseconds=7)
FLUSH_ROWS = 10_000


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(11, accounts=2_000, merchants=400)


@pytest.fixture(scope="module")
def written(world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[HistorySummary, list[int]]:
    generator = TransactionGenerator(world, GeneratorConfig(seed=21, fraud_rate=0.05))
    seen: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(history, "FLUSH_ROWS", FLUSH_ROWS)
        summary = write_history(
            generator,
            DAYS,
            tmp_path_factory.mktemp("history"),
            end=END,
            rate_per_s=RATE,
            label_delay=LABEL_DELAY,
            progress=seen.append,
        )
    return summary, seen


def test_transactions_have_every_contract_field_and_the_label_columns(
    written: tuple[HistorySummary, list[int]],
) -> None:
    summary, _ = written
    table = pq.read_table(summary.transactions_path)
    assert table.column_names == [*Transaction.model_fields, "is_fraud", "fraud_pattern"]
    assert str(table.schema.field("event_time").type) == "timestamp[us, tz=UTC]"
    assert table.num_rows == summary.events > 40_000
    assert pq.ParquetFile(summary.transactions_path).metadata.num_row_groups == -(-summary.events // FLUSH_ROWS)
    assert not list(summary.transactions_path.parent.glob("*.tmp"))


def test_rows_are_the_generator_events_of_the_period(world: World, written: tuple[HistorySummary, list[int]]) -> None:
    summary, _ = written
    rows = pq.read_table(summary.transactions_path).to_pylist()
    generator = TransactionGenerator(world, GeneratorConfig(seed=21, fraud_rate=0.05))
    expected = list(islice(generator.stream(END - timedelta(days=DAYS), RATE), len(rows) + 1))
    assert expected[-1].transaction.event_time >= END
    for row, event in zip(rows, expected, strict=False):
        is_fraud, pattern = row.pop("is_fraud"), row.pop("fraud_pattern")
        assert Transaction.model_validate(row) == event.transaction
        assert (is_fraud, pattern) == (event.labeled_fraud, event.pattern)


def test_summary_matches_the_files(written: tuple[HistorySummary, list[int]]) -> None:
    summary, seen = written
    table = pq.read_table(summary.transactions_path, columns=["event_time", "is_fraud", "fraud_pattern"])
    times = table.column("event_time").to_pylist()
    assert summary.start == END - timedelta(days=DAYS) <= times[0]
    assert times[-1] < END
    assert (summary.first_event_time, summary.last_event_time) == (times[0], times[-1])
    assert times == sorted(times)
    patterns = Counter(p for p in table.column("fraud_pattern").to_pylist() if p is not None)
    assert summary.by_pattern == dict(patterns) and len(patterns) == 3
    # fraud_pattern is the truth; is_fraud what the labels say (unreported fraud is labelled legitimate).
    assert summary.frauds == sum(patterns.values()) > sum(table.column("is_fraud").to_pylist()) > 0.7 * summary.frauds
    assert seen == sorted(seen) and seen[-1] == summary.events and len(seen) > 1


def test_labels_follow_their_events_by_exactly_the_delay(written: tuple[HistorySummary, list[int]]) -> None:
    summary, _ = written
    transactions = pq.read_table(summary.transactions_path)
    labels = pq.read_table(summary.labels_path)
    assert labels.column_names == ["event_id", "account_id", "is_fraud", "fraud_pattern", "event_time", "labeled_at"]
    assert labels.num_rows == transactions.num_rows
    for name in ("event_id", "account_id", "is_fraud", "fraud_pattern", "event_time"):
        assert labels.column(name).equals(transactions.column(name)), name
    for event_time, labeled_at, is_fraud in zip(
        labels.column("event_time").to_pylist(),
        labels.column("labeled_at").to_pylist(),
        labels.column("is_fraud").to_pylist(),
        strict=True,
    ):
        if is_fraud:  # a reported fraud: later than the delay, by the generator's factor
            low, high = REPORT_DELAY_FACTOR
            assert low * LABEL_DELAY <= labeled_at - event_time <= high * LABEL_DELAY
        else:
            assert labeled_at - event_time == LABEL_DELAY


@pytest.mark.parametrize(
    ("days", "end", "delay", "message"),
    [
        (0.0, END, LABEL_DELAY, "days"),
        (1.0, datetime(2024, 3, 1), LABEL_DELAY, "timezone"),
        (1.0, END, timedelta(seconds=-1), "label_delay"),
    ],
)
def test_invalid_arguments_are_rejected(
    world: World, tmp_path: Path, days: float, end: datetime, delay: timedelta, message: str
) -> None:
    generator = TransactionGenerator(world)
    with pytest.raises(ValueError, match=message):
        write_history(generator, days, tmp_path, end=end, rate_per_s=1.0, label_delay=delay)
    assert not list(tmp_path.iterdir())
