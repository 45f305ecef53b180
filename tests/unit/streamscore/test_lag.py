"""The lag rule: Kafka's offsets, except that transaction markers alone are not lag; seconds from the head record."""

from __future__ import annotations

from rich.console import Console

from streamscore.lag import NOTHING_TO_READ, GroupLag, Head, Member, Peek, group_lag, partition_lag
from streamscore_cli.lag import COLUMNS, render

NOW_MS = 1_800_000_000_000


def row(committed: int | None, log_end: int | None, peek: Peek = None) -> tuple[int | None, float | None]:
    lag = partition_lag(
        group="g", topic="t", partition=0, committed=committed, log_end=log_end, peek=peek, now_ms=NOW_MS
    )
    return lag.lag, lag.lag_seconds


def test_caught_up_is_zero_whatever_the_peek() -> None:
    assert row(42, 42) == (0, 0.0)
    assert row(42, 42, Head(42, NOW_MS - 5_000)) == (0, 0.0)


def test_a_committed_offset_on_a_commit_marker_is_no_lag() -> None:
    # A transactional producer wrote offsets 0-4 and its commit marker at 5; the consumer committed 5.
    assert row(5, 6, NOTHING_TO_READ) == (0, 0.0)
    # Aborted records and their marker are not lag either: the peek found nothing before the end.
    assert row(5, 30, NOTHING_TO_READ) == (0, 0.0)


def test_without_a_peek_answer_the_offset_distance_stands_and_seconds_are_unknown() -> None:
    assert row(5, 6, None) == (1, None)


def test_lag_is_the_offset_distance_and_seconds_the_age_of_the_head_record() -> None:
    assert row(3, 11, Head(3, NOW_MS - 90_500)) == (8, 90.5)
    # Leading markers are skipped by the fetch: the head can sit after the committed offset.
    assert row(10, 22, Head(11, NOW_MS - 2_000)) == (12, 2.0)


def test_a_head_written_after_the_end_was_read_is_not_lag() -> None:
    assert row(5, 6, Head(6, NOW_MS - 1_000)) == (0, 0.0)


def test_clock_skew_never_gives_negative_seconds() -> None:
    assert row(0, 1, Head(0, NOW_MS + 3_000)) == (1, 0.0)


def test_a_head_without_timestamp_has_unknown_seconds() -> None:
    assert row(0, 4, Head(0, None)) == (4, None)


def test_no_committed_offset_or_no_log_end_is_unknown() -> None:
    assert row(None, 10, None) == (None, None)
    assert row(3, None, None) == (None, None)


def test_group_rows_cover_committed_and_assigned_partitions_sorted_and_filtered() -> None:
    member = Member("c-1", "/10.0.0.7", "streamscore-scorer-a")
    report = group_lag(
        "g",
        "Stable",
        committed={("b", 1): 10, ("a", 0): 4, ("b", 0): 7},
        assigned={("a", 0): member, ("a", 1): member},
        log_ends={("a", 0): 9, ("a", 1): 3, ("b", 0): 7, ("b", 1): 12},
        peeks={("a", 0): Head(4, NOW_MS - 1_000), ("b", 1): Head(10, NOW_MS - 4_000)},
        now_ms=NOW_MS,
        members=1,
    )
    assert [(p.topic, p.partition) for p in report.partitions] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    a0, a1, b0, b1 = report.partitions
    assert (a0.lag, a0.lag_seconds, a0.consumer_id, a0.client_id) == (5, 1.0, "c-1", "streamscore-scorer-a")
    assert (a1.current_offset, a1.lag, a1.log_end_offset, a1.host) == (None, None, 3, "/10.0.0.7")
    assert (b0.lag, b0.consumer_id) == (0, None)
    assert b1.lag == 2
    assert report.total_lag == 7 and report.max_lag_seconds == 4.0

    only_b = group_lag(
        "g",
        "Empty",
        committed={("b", 0): 1, ("a", 0): 1},
        assigned={},
        log_ends={},
        peeks={},
        now_ms=NOW_MS,
        topics=["b"],
    )
    assert [(p.topic, p.partition) for p in only_b.partitions] == [("b", 0)]


def rendered(report: GroupLag) -> str:
    console = Console(record=True, width=250)
    console.print(render(report))
    return console.export_text()


def test_table_has_kafkas_columns_and_dashes_for_the_unknown() -> None:
    report = group_lag(
        "g",
        "Stable",
        committed={},
        assigned={("t", 0): Member("c-1", "/127.0.0.1", "cli")},
        log_ends={("t", 0): 12},
        peeks={},
        now_ms=NOW_MS,
        members=1,
    )
    text = rendered(report)
    header, line = text.splitlines()[:2]
    assert header.split() == list(COLUMNS)
    assert line.split() == ["g", "t", "0", "-", "12", "-", "-", "c-1", "/127.0.0.1", "cli"]
    assert report.to_dict()["partitions"][0]["current_offset"] is None


def test_unknown_group_is_said_so() -> None:
    assert "does not exist" in rendered(GroupLag(group="nope", state="Dead", members=0))
