"""Where a new demo history ends: at the same hour of the world every run, whatever the wall clock says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streamscore_cli.demo import HISTORY_LEAD, LIVE_START_HOUR, _history_end_at_hour


@pytest.mark.parametrize("wall_hour", [0, 1, 11, 12, 13, 23])
def test_a_new_history_ends_at_the_live_start_hour_at_least_the_lead_before_now(wall_hour: int) -> None:
    now = datetime(2026, 12, 7, wall_hour, 37, 12, tzinfo=UTC)
    end = _history_end_at_hour(now - HISTORY_LEAD, LIVE_START_HOUR)
    assert (end.hour, end.minute, end.second) == (LIVE_START_HOUR, 0, 0)
    assert HISTORY_LEAD <= now - end < HISTORY_LEAD + timedelta(days=1)
