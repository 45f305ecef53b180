"""The demo's summary logic: what counts as this run's output, exactly-once accounting, latency percentiles, dead
letters matched with the defects the demo injected, lag read from a Prometheus exposition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from rich.console import Console

from streamscore.contracts import DeadLetter, DeadLetterReason, Score, decode_transaction
from streamscore.errors import EventError
from streamscore.lag import GroupLag, PartitionLag
from streamscore_cli.demo_defects import DEFECT_HEADER, DEFECT_KINDS, defective_record, defects_due
from streamscore_cli.demo_summary import (
    Expectation,
    OutputTally,
    Seen,
    band,
    caught_up,
    dead_letters_table,
    expectation_checks,
    latency_percentiles,
    metric_sum,
    scores_table,
    seen_by_variant,
)

RUN_START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SINCE_MS = int(RUN_START.timestamp() * 1000)


def score(event_id: str, variant: str, version: str, latency_ms: float, *, at: datetime = RUN_START) -> bytes:
    return Score(
        event_id=event_id,
        account_id="acc-1",
        score=0.9 if variant == "champion" else 0.1,
        decision="decline" if variant == "champion" else "approve",
        model_name="fraud-detector",
        model_version=version,
        variant=variant,
        experiment_id="exp-1",
        feature_status="ok",
        amount=10.0,
        currency="EUR",
        event_time=at,
        scored_time=at + timedelta(milliseconds=latency_ms),
        latency_ms=latency_ms,
    ).to_json()


def dead_letter_headers(reason: DeadLetterReason, original_ms: int, injected: str | None) -> list[tuple[str, bytes]]:
    letter = DeadLetter.build(
        b"payload",
        original_topic="transactions",
        original_partition=0,
        original_offset=1,
        original_timestamp_ms=original_ms,
        consumer_group="streamscore-scorer",
        stage="decode",
        error_class=reason,
        error_message="broken",
        scorer_version="0.1.0",
    )
    headers = [(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in letter.to_headers()]
    if injected is not None:
        headers.append((DEFECT_HEADER, injected.encode()))
    return headers


def test_scores_are_tallied_per_variant_and_version_and_earlier_traffic_is_kept_apart() -> None:
    tally = OutputTally(since_ms=SINCE_MS)
    tally.add_score(score("e1", "champion", "1", 10.0), shadow=False)
    tally.add_score(score("e2", "champion", "1", 20.0), shadow=False)
    tally.add_score(score("e3", "challenger", "2", 30.0), shadow=False)
    tally.add_score(score("e3", "shadow", "2", 40.0), shadow=True)
    tally.add_score(score("old", "champion", "1", 5.0, at=RUN_START - timedelta(seconds=1)), shadow=False)
    tally.add_score(b"{not a score", shadow=False)

    assert {k: v.scores for k, v in tally.live.items()} == {("champion", "1"): 2, ("challenger", "2"): 1}
    assert {k: v.scores for k, v in tally.shadow.items()} == {("shadow", "2"): 1}
    assert tally.live[("champion", "1")].decisions == {"decline": 2}
    assert (tally.earlier, tally.unreadable) == (1, 1)
    # A shadow score is not an outcome of its transaction: only live scores and dead letters are.
    assert (tally.live_scores, tally.shadow_scores, tally.accounted, tally.duplicates) == (3, 1, 3, 0)
    assert sorted(tally.all_latencies()) == [10.0, 20.0, 30.0]


def test_a_repeated_live_score_is_a_duplicate_not_an_extra_outcome() -> None:
    tally = OutputTally(since_ms=SINCE_MS)
    for _ in range(2):
        tally.add_score(score("e1", "champion", "1", 10.0), shadow=False)
    assert (tally.live_scores, tally.accounted, tally.duplicates) == (2, 1, 1)


def test_dead_letters_are_counted_by_reason_and_matched_with_the_injected_defect() -> None:
    tally = OutputTally(since_ms=SINCE_MS)
    tally.add_dead_letter(dead_letter_headers(DeadLetterReason.NOT_JSON, SINCE_MS + 5, "not_json"))
    tally.add_dead_letter(dead_letter_headers(DeadLetterReason.SCHEMA_INVALID, SINCE_MS + 6, "not_json"))
    tally.add_dead_letter(dead_letter_headers(DeadLetterReason.OVERSIZE, SINCE_MS + 7, None))
    tally.add_dead_letter(dead_letter_headers(DeadLetterReason.NOT_JSON, SINCE_MS - 1, "not_json"))
    tally.add_dead_letter([("dlq-error-class", b"no_such_reason")])

    assert tally.dead_letters == {"not_json": 1, "schema_invalid": 1, "oversize": 1}
    assert tally.injected[("not_json", "not_json")] == 1
    assert tally.injected[("not_json", "schema_invalid")] == 1
    assert (tally.earlier, tally.unreadable, tally.accounted) == (1, 1, 3)

    console = Console(width=100, record=True)
    console.print(dead_letters_table(tally, {"not_json": 2, "out_of_range": 1}))
    rows = {line.split()[0]: line.split()[1:] for line in console.export_text().splitlines() if line.strip()}
    assert rows["not_json"] == ["2", "1", "1"]  # injected 2, one dead-lettered as not_json, one as something else
    assert rows["schema_invalid"] == ["0", "1", "—"]
    assert rows["out_of_range"] == ["1", "0", "—"]


def test_latency_percentiles_interpolate_between_ranks() -> None:
    assert latency_percentiles([]) is None
    assert latency_percentiles([7.0]) == (7.0, 7.0)
    values = [float(v) for v in range(1, 101)]  # 1 … 100
    p50, p99 = latency_percentiles(values) or (0.0, 0.0)
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(99.01)
    assert (p50, p99) == tuple(np.percentile(values, [50, 99]))


def test_scores_table_shows_shares_of_the_given_whole() -> None:
    tally = OutputTally(since_ms=SINCE_MS)
    for i in range(3):
        tally.add_score(score(f"e{i}", "shadow", "2", 10.0), shadow=True)
    console = Console(width=100, record=True)
    console.print(scores_table(tally.shadow, "shadow", whole=12))
    line = next(line for line in console.export_text().splitlines() if line.startswith("shadow "))
    assert line.split()[:4] == ["shadow", "v2", "3", "25.0%"]


def test_lag_is_the_sum_over_partitions_and_absent_when_not_measured() -> None:
    text = (
        "# HELP streamscore_scorer_consumer_lag_offsets Records not yet consumed, per assigned partition\n"
        "# TYPE streamscore_scorer_consumer_lag_offsets gauge\n"
        'streamscore_scorer_consumer_lag_offsets{partition="0",topic="transactions"} 3.0\n'
        'streamscore_scorer_consumer_lag_offsets{partition="1",topic="transactions"} 4.0\n'
        "# TYPE streamscore_scorer_events_in counter\n"
        "streamscore_scorer_events_in_total 9.0\n"
    )
    assert metric_sum(text, "streamscore_scorer_consumer_lag_offsets") == 7.0
    assert metric_sum(text, "streamscore_scorer_events_in_total") == 9.0
    assert (
        metric_sum("# TYPE streamscore_scorer_consumer_lag_offsets gauge\n", "streamscore_scorer_consumer_lag_offsets")
        is None
    )


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_injected_defect_is_refused_with_the_reason_it_is_named_after(kind: DeadLetterReason) -> None:
    record = defective_record(3, kind, RUN_START)
    with pytest.raises(EventError) as refused:
        decode_transaction(record.key, record.value, record.headers, now_s=RUN_START.timestamp())
    assert refused.value.reason == kind


def test_defects_make_the_requested_share_of_all_records() -> None:
    assert defects_due(0, 0.01) == 0
    assert defects_due(1000, 0.0) == 0
    assert defects_due(99, 0.01) == 1  # 1 of 100 records
    assert defects_due(18_000, 0.005) == 90
    due = defects_due(18_000, 0.2)
    assert due / (18_000 + due) == pytest.approx(0.2, abs=1e-4)


def _row(partition: int, committed: int | None, log_end: int | None, lag: int | None) -> PartitionLag:
    return PartitionLag("g", "transactions", partition, committed, log_end, lag, 0.0 if lag == 0 else None)


def test_the_scorer_has_caught_up_only_when_every_partition_is_consumed_or_empty() -> None:
    def report(*rows: PartitionLag) -> GroupLag:
        return GroupLag("g", "Stable", 1, list(rows))

    consumed = [_row(p, 10, 10, 0) for p in range(3)]
    assert caught_up(report(*consumed), "transactions", 3)
    # An empty partition the group never committed on is nothing to catch up on.
    assert caught_up(report(*consumed[:2], _row(2, None, 0, None)), "transactions", 3)
    # Records left, or records the group has never committed past, or a partition it has no row for yet: not yet.
    assert not caught_up(report(*consumed[:2], _row(2, 4, 10, 6)), "transactions", 3)
    assert not caught_up(report(*consumed[:2], _row(2, None, 10, None)), "transactions", 3)
    assert not caught_up(report(*consumed[:2]), "transactions", 3)
    assert not caught_up(report(), "transactions", 3)


# --- expected (test split) next to seen (live labels) ------------------------------------------------------------


TAGS = {
    "test_decline_rate": "0.010000",
    "test_decline_precision": "0.600000",
    "test_decline_recall": "0.550000",
    "test_rows": "20000",
    "test_fraud": "220",
    "test_declined": "200",
}


def test_expectation_reads_the_versions_test_split_figures_and_counts() -> None:
    e = Expectation.from_tags(TAGS)
    assert e == Expectation(0.01, 0.6, 0.55, 20_000, 220, 200)
    assert e.caught_share == pytest.approx(0.006)
    assert Expectation.from_tags({k: v for k, v in TAGS.items() if k != "test_rows"}) is None


def test_decisions_are_judged_by_the_labels_of_the_traffic() -> None:
    decisions = {
        "e1": ("champion", "1", "decline"),
        "e2": ("champion", "1", "decline"),
        "e3": ("champion", "1", "approve"),
        "e4": ("champion", "1", "review"),
        "e5": ("challenger", "2", "approve"),
        "e6": ("challenger", "2", "decline"),
    }
    labels = {"e1": True, "e2": False, "e3": True, "e4": False, "e5": True}
    seen = seen_by_variant(decisions, labels)
    assert seen[("champion", "1")] == Seen(transactions=4, declined=2, fraud=2, fraud_declined=1)
    assert seen[("challenger", "2")] == Seen(transactions=1, declined=0, fraud=1, fraud_declined=0), "e6 unlabelled"


def test_the_band_is_where_a_live_share_of_the_same_process_falls_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(5)
    p, n_live, n_test = 0.3, 400, 2_000
    low, high = band(p, n_live, n_test)
    tested = rng.binomial(n_test, p, 4_000) / n_test
    live = rng.binomial(n_live, p, 4_000) / n_live
    # The test split's own estimate moves too: the band is around the truth's estimate, both samples drawn.
    bands = [band(t, n_live, n_test) for t in tested]
    inside = np.mean([lo <= s <= hi for (lo, hi), s in zip(bands, live, strict=True)])
    assert 0.93 < inside < 0.97
    assert 0.0 <= low < p < high <= 1.0
    assert band(p, 0, n_test) == (0.0, 1.0)


def test_checks_put_each_live_figure_next_to_its_expectation() -> None:
    seen = {("champion", "1"): Seen(transactions=10_000, declined=100, fraud=110, fraud_declined=60)}
    checks = expectation_checks(seen, {"1": Expectation.from_tags(TAGS)})
    by_figure = {c.figure: c for c in checks}
    assert set(by_figure) == {"decline rate", "precision", "recall"}
    assert by_figure["decline rate"].seen == pytest.approx(0.01) and by_figure["decline rate"].within
    assert by_figure["precision"].n == 100 and by_figure["precision"].n_test == 200
    far = expectation_checks(
        {("champion", "1"): Seen(transactions=10_000, declined=620, fraud=110, fraud_declined=60)},
        {"1": Expectation.from_tags(TAGS)},
    )
    assert next(c for c in far if c.figure == "decline rate").within is False
    none = expectation_checks({("champion", "1"): Seen(transactions=10, declined=0, fraud=0)}, {"1": None})
    assert none == []
