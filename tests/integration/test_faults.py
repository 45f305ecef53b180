"""The bounded part of the fault campaign (`make faults` runs all of it): a supervised pipeline on a private stack with
traffic flowing through scorer SIGKILLs, a broker SIGKILL + restart, a Redis SIGKILL + restart, a feature processor
SIGKILL and the poison corpus; an aiokafka read_committed reader (not the scorer's client or code) counts every
outcome. See tests/faults/campaign.py and docs/operations.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.campaign import QUICK, run_campaign, save
from tests.support.scoring import DEFECT_KINDS

pytestmark = pytest.mark.integration


def test_the_pipeline_survives_the_bounded_fault_campaign_with_nothing_lost_duplicated_or_wrongly_dead_lettered(
    tmp_path: Path,
) -> None:
    campaign = run_campaign(tmp_path, QUICK, rate=100.0)
    print(campaign.table())
    print(f"results: {save(campaign, 'quick')}")
    v = campaign.verdict
    assert v.sent_valid > 1000 and v.sent_poison == 2 * len(DEFECT_KINDS), "the traffic did not flow"
    assert (v.lost, v.duplicated, v.wrongly_dead_lettered) == (0, 0, 0), v.examples
    assert (v.poison_missed, v.poison_duplicated) == (0, 0), v.examples
    stuck = [r.fault for r in campaign.rows if r.caught_up_s is None or r.ready_s is None]
    assert not stuck, f"did not recover within the campaign's bound: {stuck}\n{campaign.table()}"
