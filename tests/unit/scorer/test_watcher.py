"""The group's view: whether the group has partitions for this member, and what the watcher publishes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from scorer.metrics import ScorerMetrics
from scorer.watcher import GroupView, GroupWatcher, should_hold, view_of
from streamscore.lag import GroupLag, PartitionLag
from streamscore.settings import KafkaSettings


def test_a_partition_nobody_owns_is_for_us() -> None:
    assert should_hold(3, {0: "a", 1: "a"}, "me")  # partition 2 unowned
    assert should_hold(3, {0: "a", 1: None, 2: "a"}, "me")
    assert should_hold(6, {}, None)  # an Empty group (every member gone or fenced)


def test_a_member_with_two_or_more_while_we_have_none_means_the_group_owes_us() -> None:
    assert should_hold(3, {0: "a", 1: "a", 2: "b"}, "me")


def test_more_members_than_partitions_each_holding_one_is_a_legitimate_standby() -> None:
    assert not should_hold(2, {0: "a", 1: "b"}, "me")
    assert not should_hold(0, {}, "me")


def test_the_coordinator_saying_a_partition_is_ours_means_we_should_hold_it() -> None:
    assert should_hold(2, {0: "a", 1: "me"}, "me")


def row(partition: int, *, committed: int | None, end: int | None, lag: int | None, owner: str | None) -> PartitionLag:
    seconds = None if lag is None else 0.0 if lag == 0 else 12.5
    return PartitionLag("g", "t", partition, committed, end, lag, seconds, consumer_id=owner)


def test_view_of_a_lag_report_counts_never_committed_partitions_from_the_log_end() -> None:
    report = GroupLag(
        "g",
        "Stable",
        2,
        [
            row(0, committed=10, end=10, lag=0, owner="a"),
            row(1, committed=5, end=25, lag=20, owner="b"),
            row(2, committed=None, end=7, lag=None, owner="b"),
            PartitionLag("g", "other", 0, 1, 9, 8, 1.0, consumer_id="a"),
        ],
    )
    view = view_of(report, "t", 4)
    assert view == GroupView("Stable", 2, 4, {0: "a", 1: "b", 2: "b"}, {0: 0, 1: 20, 2: 7}, {0: 0.0, 1: 12.5})


def watcher(metrics: ScorerMetrics, held: frozenset[int], me: str | None = "me") -> GroupWatcher:
    return GroupWatcher(
        KafkaSettings(),
        "g",
        "t",
        metrics,
        interval_s=1,
        timeout_s=1,
        member_id=lambda: me,
        held=lambda: held,
    )


def test_pending_counts_only_held_partitions_and_remembers_since_when() -> None:
    metrics = ScorerMetrics(CollectorRegistry())
    w = watcher(metrics, frozenset({1, 2}))
    view = GroupView("Stable", 1, 3, {0: "me", 1: "me", 2: "me"}, {0: 100, 1: 3, 2: 4}, {})
    w.update(view, now=10.0)
    assert (w.pending, w.pending_since, w.should_hold) == (7, 10.0, True)
    w.update(view, now=15.0)
    assert w.pending_since == 10.0  # still waiting since the first measurement that saw it
    w.update(GroupView("Stable", 1, 3, {0: "me", 1: "me", 2: "me"}, {0: 100, 1: 0, 2: 0}, {}), now=20.0)
    assert w.pending == 0 and w.pending_since is None
    # Gauges for every partition of the topic, held or not.
    assert (
        metrics.registry.get_sample_value("streamscore_scorer_consumer_lag_offsets", {"topic": "t", "partition": "0"})
        == 100
    )


def test_a_failing_view_keeps_the_gauges_makes_the_view_unknown_and_counts_the_outage() -> None:
    metrics = ScorerMetrics(CollectorRegistry())
    w = watcher(metrics, frozenset({0}))
    w.update(GroupView("Stable", 1, 1, {0: "me"}, {0: 42}, {0: 3.0}), now=1.0)
    w.failed(RuntimeError("coordinator unreachable"), now=2.0)
    w.failed(RuntimeError("still"), now=9.0)
    assert (w.pending, w.pending_since, w.should_hold) == (None, None, None)
    assert w.failing_since == 2.0 and w.last_error == "still"
    assert (
        metrics.registry.get_sample_value("streamscore_scorer_consumer_lag_offsets", {"topic": "t", "partition": "0"})
        == 42
    )
    w.update(GroupView("Stable", 1, 1, {0: "me"}, {0: 50}, {}), now=10.0)
    assert w.failing_since is None and w.failing_for() == 0.0


def test_partitions_the_loop_publishes_from_its_statistics_are_left_to_it() -> None:
    metrics = ScorerMetrics(CollectorRegistry())
    w = watcher(metrics, frozenset({0, 1}))
    w.published = lambda: frozenset({0})
    metrics.lag_offsets.labels(topic="t", partition="0").set(0)  # the loop's: past the commit marker
    metrics.lag_seconds.labels(topic="t", partition="0").set(0)
    w.update(GroupView("Stable", 1, 2, {0: "me", 1: "me"}, {0: 1, 1: 5}, {0: 9.0, 1: 2.0}), now=1.0)
    sample = metrics.registry.get_sample_value
    assert sample("streamscore_scorer_consumer_lag_offsets", {"topic": "t", "partition": "0"}) == 0
    assert sample("streamscore_scorer_consumer_lag_seconds", {"topic": "t", "partition": "0"}) == 0
    assert sample("streamscore_scorer_consumer_lag_offsets", {"topic": "t", "partition": "1"}) == 5
    assert w.pending == 6, "the health checks still read the group's view of every held partition"
