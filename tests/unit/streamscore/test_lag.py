"""The lag rule: Kafka's offsets, except that transaction markers alone are not lag; seconds from the head record."""

from __future__ import annotations

from rich.console import Console

from streamscore.lag import (
    NOTHING_TO_READ,
    ConsumerPartition,
    GroupLag,
    Head,
    Member,
    Peek,
    consumer_partition_lag,
    consumer_partitions,
    group_lag,
    partition_lag,
)
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


# --- the scorer's side: the same rule from its consumer's librdkafka statistics --------------------------------------

# The partition part of a real statistics document (librdkafka 2.x, read_committed), trimmed: five transactional
# records at offsets 0-4, their commit marker at 5, all consumed and committed through a producer's transaction.
STATISTICS = {
    "topics": {
        "transactions": {
            "partitions": {
                "0": {"desired": True, "committed_offset": -1001, "ls_offset": 6, "hi_offset": 6, "app_offset": 6},
                "1": {"desired": True, "committed_offset": 40, "ls_offset": 50, "hi_offset": 53, "app_offset": 44},
                "2": {"desired": False, "committed_offset": 7, "ls_offset": 9, "hi_offset": 9, "app_offset": 9},
                "-1": {"desired": False, "committed_offset": -1001, "ls_offset": -1001, "app_offset": -1001},
            }
        }
    }
}


def consumer_row(
    stats: ConsumerPartition, committed: int | None, pending: Head | None = None, last_ms: int | None = None
) -> tuple[int | None, float | None]:
    lag = consumer_partition_lag(
        group="g",
        topic="t",
        partition=0,
        stats=stats,
        committed=committed,
        pending=pending,
        last_consumed_ms=last_ms,
        now_ms=NOW_MS,
    )
    return lag.lag, lag.lag_seconds


def test_statistics_give_the_assigned_partitions_read_committed_ends() -> None:
    parts = consumer_partitions(STATISTICS, "transactions")
    assert parts == {
        0: ConsumerPartition(log_end=6, position=6, committed=None),
        1: ConsumerPartition(log_end=50, position=44, committed=40),
    }, "-1001 is unknown; librdkafka's internal partition -1 and partitions no longer assigned are left out"
    assert consumer_partitions(STATISTICS, "transactions", read_committed=False)[1].log_end == 53
    assert consumer_partitions(STATISTICS, "another") == {}


def test_a_consumer_past_the_commit_marker_with_nothing_uncommitted_has_no_lag() -> None:
    # The statistics never see a transaction's offset commit (committed_offset -1001): the loop's own counts, and the
    # position past the marker says nothing readable is left — what `streamscore lag`'s fetch finds.
    stats = consumer_partitions(STATISTICS, "transactions")[0]
    assert consumer_row(stats, committed=5) == (0, 0.0) == row(5, 6, NOTHING_TO_READ)
    assert consumer_row(stats, committed=None) == (None, None), "nothing committed known: not measurable here"


def test_an_uncommitted_record_is_the_head_as_the_fetch_would_find_it() -> None:
    stats = ConsumerPartition(log_end=50, position=44, committed=40)
    head = Head(41, NOW_MS - 2_500)
    assert consumer_row(stats, committed=41, pending=head) == (9, 2.5) == row(41, 50, head)
    assert consumer_row(stats, committed=None, pending=Head(40, NOW_MS - 1_000)) == (10, 1.0), "statistics' commit"
    # A record consumed after the statistics were taken lies past their log end: nothing was left as they saw it.
    assert consumer_row(ConsumerPartition(50, 50, None), committed=50, pending=Head(50, NOW_MS)) == (0, 0.0)


def test_records_not_handed_over_yet_are_aged_from_the_last_one_consumed() -> None:
    stats = ConsumerPartition(log_end=50, position=44, committed=None)
    # The oldest waiting record came after the last one consumed: its age is at most this (an upper bound).
    assert consumer_row(stats, committed=44, last_ms=NOW_MS - 4_000) == (6, 4.0)
    assert consumer_row(stats, committed=44) == (6, None), "nothing consumed yet: offsets only"
