"""The scorer's health verdicts (pure functions over a loop snapshot) and the HTTP side door that serves them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scorer.health import (
    HealthBounds,
    LoopState,
    MetricsServer,
    liveness,
    readiness,
    stalled,
    unassigned_for,
    uncommitted_for,
)
from scorer.settings import ScorerSettings

BOUNDS = HealthBounds(live_after_s=60, unassigned_after_s=30, commit_stale_after_s=20, stall_exit_after_s=120)
T0 = 1000.0


def running(**changes: Any) -> LoopState:
    """A scorer started at T0 that holds 3 partitions since T0 + 5, committed at T0 + 90, caught up; now T0 + 100."""
    state = LoopState(
        now=T0 + 100,
        started=T0,
        last_iteration=T0 + 99.9,
        assigned=3,
        assigned_since=T0 + 5,
        last_commit=T0 + 90,
        pending=0,
        pending_since=None,
        should_hold=True,
    )
    return replace(state, **changes)


def test_a_turning_caught_up_loop_is_live_and_ready() -> None:
    assert liveness(running(), BOUNDS).ok
    assert readiness(running(), BOUNDS).ok
    assert stalled(running(), BOUNDS) is None


def test_liveness_fails_when_the_loop_stopped_turning_and_readiness_with_it() -> None:
    wedged = running(last_iteration=T0 + 30)  # 70 s ago > 60
    assert not liveness(wedged, BOUNDS).ok
    assert "not turned for 70 s" in liveness(wedged, BOUNDS).reasons[0]
    assert not readiness(wedged, BOUNDS).ok
    assert liveness(running(last_iteration=T0 + 41), BOUNDS).ok  # 59 s: not yet


def test_a_loop_that_decided_to_exit_is_neither_live_nor_ready() -> None:
    exiting = running(fatal="fatal consumer error (_FENCED)")
    assert not liveness(exiting, BOUNDS).ok and not readiness(exiting, BOUNDS).ok


def test_recovering_is_not_ready_but_live() -> None:
    state = running(recovering="feature store unavailable, retrying the batch")
    assert liveness(state, BOUNDS).ok
    verdict = readiness(state, BOUNDS)
    assert not verdict.ok and verdict.reasons == ("recovering: feature store unavailable, retrying the batch",)


def test_no_partitions_is_ready_within_the_grace_then_not_and_exits_after_the_stall_bound() -> None:
    lost = running(assigned=0, assigned_since=T0 + 80)  # revoked 20 s ago
    assert unassigned_for(lost) == 20
    assert readiness(lost, BOUNDS).ok
    later = replace(lost, now=T0 + 80 + 31)
    verdict = readiness(later, BOUNDS)
    assert not verdict.ok and "no partitions for 31 s while the group has partitions for it" in verdict.reasons
    assert stalled(later, BOUNDS) is None
    assert stalled(replace(lost, now=T0 + 80 + 120), BOUNDS) is not None


def test_no_partitions_when_the_group_has_none_for_us_is_ready_forever() -> None:
    standby = running(assigned=0, assigned_since=T0, should_hold=False, now=T0 + 10_000, last_iteration=T0 + 9_999)
    assert unassigned_for(standby) == 0
    assert readiness(standby, BOUNDS).ok and stalled(standby, BOUNDS) is None


def test_an_unknown_group_view_counts_for_readiness_but_never_for_the_stall_exit() -> None:
    unknown = running(assigned=0, assigned_since=T0, should_hold=None, now=T0 + 500, last_iteration=T0 + 499)
    assert not readiness(unknown, BOUNDS).ok
    assert "the group's view is unknown" in readiness(unknown, BOUNDS).reasons[0]
    assert stalled(unknown, BOUNDS) is None  # the broker being unreachable has its own bound


def test_waiting_records_without_a_commit_make_it_not_ready_then_stalled() -> None:
    # Records have waited since T0 + 60; the last commit was at T0 + 50.
    stuck = running(pending=1234, pending_since=T0 + 60, last_commit=T0 + 50)
    assert uncommitted_for(stuck) == 40
    verdict = readiness(stuck, BOUNDS)
    assert not verdict.ok and verdict.reasons == ("1234 records wait and nothing was committed for 40 s",)
    assert stalled(stuck, BOUNDS) is None
    assert "1234 records wait" in (stalled(replace(stuck, now=T0 + 60 + 120), BOUNDS) or "")


def test_waiting_records_with_recent_commits_are_ready() -> None:
    busy = running(pending=5000, pending_since=T0 + 10, last_commit=T0 + 99.99)
    assert uncommitted_for(busy) == pytest.approx(0.01)
    assert readiness(busy, BOUNDS).ok


def test_an_old_commit_does_not_count_against_work_that_just_arrived_or_partitions_just_taken() -> None:
    # Idle for long (last commit at T0 + 1), then records arrive at T0 + 95: 5 s of waiting, not 99.
    assert uncommitted_for(running(pending=10, pending_since=T0 + 95, last_commit=T0 + 1)) == 5
    # A backlog that waited since T0 + 10 on partitions this instance took at T0 + 98: 2 s are ours.
    assert uncommitted_for(running(pending=10, pending_since=T0 + 10, last_commit=None, assigned_since=T0 + 98)) == 2


def test_bounds_come_from_the_settings_and_refuse_an_exit_before_not_ready() -> None:
    settings = ScorerSettings(unassigned_after_s=7, commit_stale_after_s=8, stall_exit_after_s=9, unhealthy_after_s=6)
    assert HealthBounds.of(settings) == HealthBounds(6, 7, 8, 9)
    with pytest.raises(ValueError, match="SCORER_STALL_EXIT_AFTER_S"):
        ScorerSettings(commit_stale_after_s=100, stall_exit_after_s=50)


def get(port: int, path: str) -> tuple[int, dict[str, Any] | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def test_the_server_answers_each_check_on_its_path() -> None:
    verdicts = {"live": True, "ready": False}
    server = MetricsServer(
        CollectorRegistry(),
        {
            "/livez": lambda: (verdicts["live"], {"what": "live"}),
            "/readyz": lambda: (verdicts["ready"], {"reasons": ["recovering: rewinding"]}),
        },
        "127.0.0.1",
        0,
    ).start()
    try:
        assert get(server.port, "/livez") == (200, {"status": "ok", "what": "live"})
        assert get(server.port, "/readyz") == (503, {"status": "not_ready", "reasons": ["recovering: rewinding"]})
        verdicts.update(live=False, ready=True)
        assert get(server.port, "/livez")[0] == 503
        assert get(server.port, "/livez")[1]["status"] == "unhealthy"  # type: ignore[index]
        assert get(server.port, "/readyz")[0] == 200
        assert get(server.port, "/metrics")[0] == 200
        status, body = get(server.port, "/nope")
        assert status == 404 and "/livez" in str(body)
    finally:
        server.stop()
