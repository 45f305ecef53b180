"""The health rules of the Faust services (streamscore.health) on a fake clock: liveness, readiness, the watchdog's
decisions and exit statuses, and the broker's view of the group."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from streamscore.health import (
    EXIT_INFRA,
    EXIT_STUCK,
    Check,
    GroupView,
    HealthPolicy,
    LagPoller,
    Progress,
    Watchdog,
    group_view,
    liveness,
    readiness,
    stall_reason,
)
from streamscore.lag import GroupLag, PartitionLag

POLICY = HealthPolicy(
    loop_stall_s=10.0, ready_commit_age_s=20.0, stall_exit_s=60.0, lag_interval_s=5.0, exit_grace_s=15.0
)
T0 = 1000.0
MINE = frozenset({("tx", 0), ("tx", 1)})


def healthy(now: float = T0) -> Progress:
    """A worker that is recovered, holds two partitions, and whose last lag read just succeeded with no lag."""
    p = Progress(started=now - 100, tick=now, recovered=True, assigned=MINE)
    p.on_group(view({("tx", 0): (10, 0), ("tx", 1): (5, 0)}), now)
    return p


def view(rows: dict[tuple[str, int], tuple[int | None, int | None]], owned_by_others: bool = False) -> GroupView:
    """rows: partition → (committed, lag)."""
    return GroupView(
        total_lag=sum(lag or 0 for _, lag in rows.values()),
        lag_by_partition={k: lag for k, (_, lag) in rows.items()},
        committed={k: c for k, (c, _) in rows.items()},
        owned_by_others=owned_by_others,
        state="Stable",
    )


def names(checks: list[Check]) -> list[str]:
    return [c.name for c in checks]


# --- liveness and readiness -------------------------------------------------------------------------------------


def test_a_recovered_worker_with_partitions_and_no_lag_is_live_and_ready() -> None:
    p = healthy()
    assert liveness(p, POLICY, T0 + 1).ok
    verdict = readiness(p, POLICY, T0 + 1)
    assert verdict.ok and verdict.reasons() == []


def test_liveness_fails_once_the_loop_has_not_turned_for_the_bound() -> None:
    p = healthy()
    assert liveness(p, POLICY, T0 + 9.9).ok
    verdict = liveness(p, POLICY, T0 + 10.0)
    assert not verdict.ok and names(verdict.failed) == ["event loop"]
    assert not readiness(p, POLICY, T0 + 10.0).ok


def test_readiness_fails_while_recovering_rebalancing_or_holding_no_partition() -> None:
    p = healthy()
    p.recovered = False
    assert names(readiness(p, POLICY, T0).failed) == ["tables recovered"]
    assert not readiness(p, POLICY, T0).stalled  # recovery makes progress of its own

    p = healthy()
    p.rebalancing_since = T0 - 1
    assert names(readiness(p, POLICY, T0).failed) == ["rebalance"]

    p = healthy()
    p.assigned = frozenset()
    verdict = readiness(p, POLICY, T0)
    assert names(verdict.failed) == ["partitions"] and verdict.stalled


def test_an_idle_replica_whose_partitions_are_all_owned_by_others_is_ready() -> None:
    p = healthy()
    p.assigned = frozenset()
    p.on_group(view({("tx", 0): (10, 0), ("tx", 1): (5, 0)}, owned_by_others=True), T0)
    assert readiness(p, POLICY, T0).ok


def test_readiness_fails_when_the_broker_has_not_answered_a_lag_read_for_the_bound() -> None:
    p = healthy()
    silence = POLICY.broker_silence_s
    p.tick = T0 + silence - 0.1
    assert readiness(p, POLICY, T0 + silence - 0.1).ok
    p.tick = T0 + silence
    p.lag_error = "KafkaException: timed out"
    verdict = readiness(p, POLICY, T0 + silence)
    assert names(verdict.failed) == ["broker"] and "timed out" in verdict.reasons()[0]


def test_readiness_fails_when_there_is_lag_and_commits_stopped_advancing() -> None:
    p = healthy()
    # Lag, and the committed offsets advance: slow but making progress, ready (the lag shows in the gauges).
    for k in range(1, 6):
        now = T0 + 10 * k
        p.tick = now
        p.on_group(view({("tx", 0): (10 + k, 50), ("tx", 1): (5 + k, 50)}), now)
        assert readiness(p, POLICY, now).ok
    # The same offsets for longer than ready_commit_age_s while lag remains: unready.
    stuck_at = T0 + 50
    for now in (stuck_at + 10, stuck_at + 19.9, stuck_at + 20):
        p.tick = now
        p.on_group(view({("tx", 0): (15, 80), ("tx", 1): (10, 80)}), now)
    verdict = readiness(p, POLICY, stuck_at + 20)
    assert names(verdict.failed) == ["commits"] and verdict.stalled
    assert "2 partition(s)" in verdict.reasons()[0] and "lag 80" in verdict.reasons()[0]


def test_one_partition_that_advances_does_not_hide_a_stuck_one() -> None:
    """Measured: after a broker restart the monitor held scores:5 with lag 400 and never fetched it again, while its
    merge topic's commits moved every second."""
    p = healthy()
    for k in range(1, 5):
        now = T0 + 10 * k
        p.tick = now
        p.on_group(view({("tx", 0): (10 + k, 3), ("tx", 1): (5, 400)}), now)
    verdict = readiness(p, POLICY, T0 + 40)
    assert names(verdict.failed) == ["commits"]
    assert "tx:1, lag 400, 40.0 s" in verdict.reasons()[0]


def test_a_partition_just_assigned_starts_afresh() -> None:
    p = healthy()
    p.on_group(view({("tx", 0): (10, 0), ("tx", 1): (5, 0), ("tx", 2): (7, 90)}), T0)
    # Nobody moved tx:2 for a minute (its owner was stuck); it becomes ours now.
    p.on_group(view({("tx", 0): (10, 0), ("tx", 1): (5, 0), ("tx", 2): (7, 90)}), T0 + 60)
    p.assigned = MINE | {("tx", 2)}
    p.tick = T0 + 61
    p.on_group(view({("tx", 0): (10, 0), ("tx", 1): (5, 0), ("tx", 2): (7, 90)}), T0 + 61)
    assert readiness(p, POLICY, T0 + 61).ok
    p.tick = T0 + 81
    p.on_group(view({("tx", 0): (10, 0), ("tx", 1): (5, 0), ("tx", 2): (7, 90)}), T0 + 81)
    assert names(readiness(p, POLICY, T0 + 81).failed) == ["commits"]


def test_lag_on_partitions_of_other_members_does_not_make_this_worker_unready() -> None:
    p = healthy()
    for now in (T0 + 10, T0 + 40):
        p.tick = now
        p.on_group(view({("tx", 0): (10, 0), ("tx", 1): (5, 0), ("tx", 2): (7, 900)}), now)
    assert p.pending_lag == 0 and readiness(p, POLICY, T0 + 40).ok


def test_a_commit_that_does_not_return_makes_the_worker_unready() -> None:
    p = healthy()
    p.commit_since = T0
    p.tick = T0 + 19
    assert readiness(p, POLICY, T0 + 19).ok
    p.tick = T0 + 20
    assert names(readiness(p, POLICY, T0 + 20).failed) == ["commit"]


def test_the_services_own_checks_count_but_do_not_stall() -> None:
    p = healthy()
    verdict = readiness(p, POLICY, T0, [Check("online store pushes", False, "ConnectionError", stalls=False)])
    assert not verdict.ok and not verdict.stalled
    assert verdict.reasons() == ["online store pushes: ConnectionError"]


def test_commits_held_back_by_the_services_own_failing_check_are_not_a_stall() -> None:
    p = healthy()
    p.on_group(view({("tx", 0): (10, 50), ("tx", 1): (5, 0)}), T0 + 30)
    p.tick = T0 + 30
    alone = readiness(p, POLICY, T0 + 30)
    assert names(alone.failed) == ["commits"] and alone.stalled
    pushes = Check("online store pushes", False, "ConnectionError", stalls=False, holds_offsets=True)
    held = readiness(p, POLICY, T0 + 30, [pushes])
    assert names(held.failed) == ["commits", "online store pushes"] and not held.stalled
    checkpoints = Check("checkpoints", False, stalls=False)  # does not hold offsets back by itself: still a stall
    assert readiness(p, POLICY, T0 + 30, [checkpoints]).stalled


# --- the watchdog ---------------------------------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    exits: list[int] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)

    def exit(self, status: int) -> None:
        self.exits.append(status)

    def stall(self, reason: str) -> None:
        self.stalls.append(reason)


def watchdog(p: Progress, clock: Clock, rec: Recorder) -> Watchdog:
    return Watchdog(p, POLICY, lambda now: readiness(p, POLICY, now), rec.stall, clock=clock, exit=rec.exit)


def test_the_watchdog_ends_a_process_whose_loop_stopped_at_once_with_exit_stuck() -> None:
    p, clock, rec = healthy(), Clock(), Recorder()
    dog = watchdog(p, clock, rec)
    clock.now = T0 + 9
    assert dog.check() is None
    clock.now = T0 + 10
    assert dog.check() == EXIT_STUCK
    assert rec.exits == [EXIT_STUCK] and rec.stalls == []


def test_the_watchdog_stops_a_worker_unready_for_a_kafka_reason_then_exits_after_the_grace() -> None:
    p, clock, rec = healthy(), Clock(), Recorder()
    dog = watchdog(p, clock, rec)
    p.assigned = frozenset()  # out of the group: no partitions, nobody else owns them
    for second in range(0, 60, 5):
        clock.now = p.tick = T0 + second
        assert dog.check() is None
    clock.now = p.tick = T0 + 60
    p.lag_read_ok = T0 + 60
    assert dog.check() is None
    assert len(rec.stalls) == 1 and "not ready for 60 s" in rec.stalls[0] and "partitions" in rec.stalls[0]
    assert not liveness(p, POLICY, clock.now).ok  # the watchdog's decision shows in liveness
    # The graceful stop hangs (a final commit waiting for the broker): hard exit after the grace.
    clock.now = T0 + 74
    assert dog.check() is None and rec.exits == []
    clock.now = T0 + 75
    assert dog.check() == EXIT_INFRA and rec.exits == [EXIT_INFRA]


def test_the_watchdog_forgives_a_stall_that_ends_before_the_bound() -> None:
    p, clock, rec = healthy(), Clock(), Recorder()
    dog = watchdog(p, clock, rec)
    p.rebalancing_since = T0
    for second in range(0, 59, 5):
        clock.now = p.tick = p.lag_read_ok = T0 + second
        dog.check()
    p.rebalancing_since = None
    for second in range(60, 200, 5):
        clock.now = p.tick = p.lag_read_ok = T0 + second
        assert dog.check() is None
    assert rec.stalls == [] and rec.exits == []


def test_table_recovery_and_the_services_own_checks_never_trigger_the_watchdog() -> None:
    p, clock, rec = healthy(), Clock(), Recorder()
    p.recovered = False
    dog = Watchdog(
        p,
        POLICY,
        lambda now: readiness(p, POLICY, now, [Check("pushes", False, stalls=False)]),
        rec.stall,
        clock=clock,
        exit=rec.exit,
    )
    for second in range(0, 600, 10):
        clock.now = p.tick = p.lag_read_ok = T0 + second
        assert dog.check() is None
    assert rec.stalls == [] and rec.exits == []


def test_a_commit_or_a_rebalance_lasting_the_bound_is_a_stall() -> None:
    p = healthy()
    p.commit_since = T0
    assert stall_reason(p, POLICY, T0 + 59, None) is None
    assert "offset commit has not returned for 60 s" in str(stall_reason(p, POLICY, T0 + 60, None))
    p = healthy()
    p.rebalancing_since = T0
    assert "rebalance has not finished" in str(stall_reason(p, POLICY, T0 + 60, None))


def test_a_stop_begun_elsewhere_must_end_within_the_grace() -> None:
    p, clock, rec = healthy(), Clock(), Recorder()
    dog = watchdog(p, clock, rec)
    dog.stopping()  # SIGTERM: the loop winds down and stops beating; that is not a stuck loop
    clock.now = T0 + 14
    assert dog.check() is None
    clock.now = T0 + 15
    assert dog.check() == EXIT_INFRA and rec.stalls == []


def test_a_failing_graceful_stop_request_exits_at_once() -> None:
    p, clock, rec = healthy(), Clock(), Recorder()

    def broken(reason: str) -> None:
        raise RuntimeError("no signal")

    dog = Watchdog(p, POLICY, lambda now: readiness(p, POLICY, now), broken, clock=clock, exit=rec.exit)
    p.commit_since = T0
    clock.now = p.tick = p.lag_read_ok = T0 + 60
    assert dog.check() == EXIT_INFRA


# --- the broker's view ----------------------------------------------------------------------------------------------


def row(partition: int, committed: int | None, lag: int | None, owner: str | None, topic: str = "tx") -> PartitionLag:
    return PartitionLag("g", topic, partition, committed, None, lag, None, consumer_id=owner)


def test_group_view_sums_the_input_topics_and_knows_an_idle_replica() -> None:
    lag = GroupLag(
        "g",
        "Stable",
        2,
        [row(0, 10, 3, "a"), row(1, 5, None, "a"), row(0, 99, 1000, "a", topic="tx-changelog")],
    )
    v = group_view(lag, ["tx"], frozenset())
    assert v.total_lag == 3 and v.committed == {("tx", 0): 10, ("tx", 1): 5} and v.owned_by_others
    assert not group_view(lag, ["tx"], frozenset({("tx", 0)})).owned_by_others
    orphaned = GroupLag("g", "Stable", 1, [row(0, 10, 3, None)])
    assert not group_view(orphaned, ["tx"], frozenset()).owned_by_others


def test_the_lag_poller_hands_over_reads_and_errors() -> None:
    got: list[object] = []
    answers: list[GroupLag | Exception] = [GroupLag("g", "Stable", 1), OSError("down")]

    def read() -> GroupLag:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    poller = LagPoller(read, got.append, got.append, interval_s=1.0)
    poller.poll_once()
    poller.poll_once()
    assert isinstance(got[0], GroupLag) and isinstance(got[1], OSError)


@pytest.mark.parametrize("interval", [0.5, 5.0, 60.0])
def test_the_broker_silence_bound_covers_two_missed_reads(interval: float) -> None:
    policy = HealthPolicy(lag_interval_s=interval)
    assert policy.broker_silence_s > 2 * (policy.lag_interval_s + policy.lag_timeout_s)
