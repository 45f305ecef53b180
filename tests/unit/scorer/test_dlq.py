"""Dead-letter operations without a broker: parsing, counting, choosing, refusing, rebuilding the original."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scorer.deadletters import SourceRecord, dead_letter
from scorer.dlq import (
    DeadLetterEntry,
    Selection,
    parse_position,
    parse_since,
    plan_replay,
    refusal,
    replay_record,
    summarize,
)
from streamscore.contracts import DeadLetterReason, DeadLetterStage, Header, Headers, header_value

TS = 1_790_000_000_000
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def letter(
    position: tuple[int, int],
    reason: DeadLetterReason = DeadLetterReason.NOT_JSON,
    *,
    value: bytes | None = b'{"amount": ',
    extra_headers: Headers | None = None,
    timestamp_ms: int = TS,
    stage: DeadLetterStage = "decode",
) -> DeadLetterEntry:
    """A DLQ record exactly as the scorer writes it, read back at `position` on the dead-letter topic."""
    source = SourceRecord(
        topic="t.transactions",
        partition=2,
        offset=1000 + position[1],
        timestamp_ms=timestamp_ms,
        key=b"acc-\xc3\xa9",
        value=value,
        headers=[(Header.TRACEPARENT, TRACEPARENT), ("x-bin", b"\x00\xff"), *(extra_headers or [])],
    )
    out = dead_letter(source, reason, "why " * 10, stage=stage, consumer_group="scorers")
    return DeadLetterEntry.from_record(*position, out.timestamp_ms, out.key, out.value, out.headers)


def test_a_scorer_dead_letter_reads_back_with_its_reason() -> None:
    entry = letter((1, 7), DeadLetterReason.OUT_OF_RANGE, stage="validate")
    assert entry.letter is not None and entry.problem is None
    assert (entry.reason, entry.stage, entry.original_topic) == ("out_of_range", "validate", "t.transactions")
    assert (entry.replay_count, entry.truncated, entry.payload_size) == (0, False, len(b'{"amount": '))
    as_json = entry.to_dict()
    assert as_json["key"] == "acc-é" and as_json["original_offset"] == 1007 and as_json["partition"] == 1


def test_replay_rebuilds_the_original_record_with_an_incremented_count() -> None:
    entry = letter((0, 3))
    record = replay_record(entry, default_topic="fallback")
    assert (record.topic, record.key, record.value) == ("t.transactions", b"acc-\xc3\xa9", b'{"amount": ')
    assert record.timestamp_ms == TS
    assert not [name for name, _ in record.headers if name.startswith("dlq-")]
    assert header_value(record.headers, Header.TRACEPARENT) == TRACEPARENT
    assert header_value(record.headers, "x-bin") == b"\x00\xff"
    assert header_value(record.headers, Header.REPLAY_COUNT) == b"1"
    assert record.replay_count == 1 and record.source == (0, 3)


def test_an_existing_replay_count_is_replaced_not_duplicated() -> None:
    entry = letter((0, 3), extra_headers=[(Header.REPLAY_COUNT, b"2")])
    assert entry.replay_count == 2
    record = replay_record(entry, default_topic="fallback")
    assert [v for n, v in record.headers if n == Header.REPLAY_COUNT] == [b"3"]


def test_without_valid_reason_headers_the_registry_topic_is_the_destination() -> None:
    entry = DeadLetterEntry.from_record(0, 1, TS, b"k", b"v", [("dlq-error-class", b"not_json"), ("a", b"b")])
    assert entry.letter is None and entry.problem is not None and "original_topic" in entry.problem
    assert entry.reason == "not_json" and entry.original_topic is None
    record = replay_record(entry, default_topic="t.transactions")
    assert record.topic == "t.transactions" and record.headers == [("a", b"b"), (Header.REPLAY_COUNT, b"1")]
    bare = DeadLetterEntry.from_record(0, 2, TS, None, None, [])
    assert bare.reason == "unknown" and bare.stage == "-"


def test_refusals_say_why() -> None:
    assert refusal(letter((0, 0)), max_replays=3) is None
    assert refusal(letter((0, 0), extra_headers=[(Header.REPLAY_COUNT, b"2")]), max_replays=3) is None
    at_limit = refusal(letter((0, 0), extra_headers=[(Header.REPLAY_COUNT, b"3")]), max_replays=3)
    assert at_limit is not None and "already replayed 3" in at_limit and "--max-replays" in at_limit
    garbage = refusal(letter((0, 0), extra_headers=[(Header.REPLAY_COUNT, b"-1")]), max_replays=3)
    assert garbage is not None and "not a non-negative integer" in garbage

    big = b"{" + b"x" * (70 * 1024) + b"}"
    truncated = letter((0, 0), DeadLetterReason.OVERSIZE, value=big)
    assert truncated.truncated and truncated.payload_size == len(big)
    why = refusal(truncated, max_replays=3)
    assert why is not None and "truncated" in why and str(len(big)) in why

    entry = letter((0, 0))
    tampered = DeadLetterEntry.from_record(0, 0, TS, entry.key, b"something else", entry.headers)
    why = refusal(tampered, max_replays=3)
    assert why is not None and "sha256" in why


def test_plan_selects_refuses_and_reports_missing_positions() -> None:
    entries = [
        letter((0, 0), DeadLetterReason.NOT_JSON),
        letter((0, 1), DeadLetterReason.OUT_OF_RANGE),
        letter((1, 0), DeadLetterReason.OUT_OF_RANGE, value=b"{}", extra_headers=[(Header.REPLAY_COUNT, b"3")]),
        letter((2, 0), DeadLetterReason.NOT_UTF8),
    ]
    plan = plan_replay(entries, Selection(reasons=frozenset({"out_of_range"})), default_topic="x", max_replays=3)
    assert [r.source for r in plan.records] == [(0, 1)]
    assert [(r.source, r.reason) for r in plan.refused] == [((1, 0), "out_of_range")]
    assert plan.missing == []

    by_position = plan_replay(
        entries, Selection(positions=frozenset({(2, 0), (0, 0), (9, 9)})), default_topic="x", max_replays=3
    )
    assert [r.source for r in by_position.records] == [(0, 0), (2, 0)]
    assert by_position.missing == [(9, 9)]

    everything = plan_replay(entries, Selection(), default_topic="x", max_replays=4)
    assert len(everything.records) == 4 and not everything.refused


def test_a_letter_whose_event_failed_again_after_replay_is_superseded() -> None:
    first = letter((0, 0), DeadLetterReason.OUT_OF_RANGE)
    replayed = replay_record(first, default_topic="x")
    source = SourceRecord(
        "t.transactions", 2, 2000, replayed.timestamp_ms, replayed.key, replayed.value, replayed.headers
    )
    out = dead_letter(source, DeadLetterReason.OUT_OF_RANGE, "again", stage="validate", consumer_group="scorers")
    again = DeadLetterEntry.from_record(3, 9, out.timestamp_ms, out.key, out.value, out.headers)
    assert again.replay_count == 1
    unrelated = letter((0, 1), DeadLetterReason.OUT_OF_RANGE, value=b'{"amount": -2}')

    plan = plan_replay([first, again, unrelated], Selection(), default_topic="x", max_replays=3)
    assert [(r.source, r.replay_count) for r in plan.records] == [((0, 1), 1), ((3, 9), 2)]
    (refused,) = plan.refused
    assert refused.source == (0, 0) and "already replayed: the letter at 3:9" in refused.why


def test_since_and_reason_filters_combine() -> None:
    old = letter((0, 0), DeadLetterReason.NOT_JSON, timestamp_ms=TS - 7_200_000)
    new = letter((0, 1), DeadLetterReason.NOT_JSON)
    other = letter((0, 2), DeadLetterReason.NOT_UTF8)
    selection = Selection(reasons=frozenset({"not_json"}), since_ms=TS - 3_600_000)
    assert [selection.matches(e) for e in (old, new, other)] == [False, True, False]
    assert not selection.empty and Selection().empty


def test_summary_counts_by_reason_and_stage_and_lists_the_newest_first() -> None:
    entries = [
        letter((0, 0), DeadLetterReason.OUT_OF_RANGE, timestamp_ms=TS + 1, stage="validate"),
        letter((1, 0), DeadLetterReason.NOT_JSON, timestamp_ms=TS + 3),
        letter((0, 1), DeadLetterReason.OUT_OF_RANGE, timestamp_ms=TS + 2, stage="validate"),
    ]
    summary = summarize(entries, limit=2)
    assert summary.total == 3
    assert summary.by_reason == {"out_of_range": 2, "not_json": 1}
    assert list(summary.by_reason) == ["out_of_range", "not_json"]
    assert summary.by_stage == {"validate": 2, "decode": 1}
    assert [(e.partition, e.offset) for e in summary.latest] == [(1, 0), (0, 1)]
    assert summary.to_dict()["matching"] == 3


def test_since_accepts_durations_and_iso_times() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("1.5d", now) == now - timedelta(hours=36)
    assert parse_since("2026-04-30T08:00:00+02:00", now) == datetime(2026, 4, 30, 6, 0, tzinfo=UTC)
    assert parse_since("2026-04-30T08:00:00", now) == datetime(2026, 4, 30, 8, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", now)


def test_positions_are_partition_colon_offset() -> None:
    assert parse_position("3:1042") == (3, 1042)
    for bad in ("3", "a:1", "3:-1", ":4"):
        with pytest.raises(ValueError, match="partition:offset"):
            parse_position(bad)
