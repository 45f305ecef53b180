"""The API's metrics: series with a fixed label set exist at 0 before the first event."""

from __future__ import annotations

from scorer.api.metrics import READ_PHASES, ApiMetrics


def test_read_timeouts_of_both_phases_are_exported_at_zero_from_the_start() -> None:
    metrics = ApiMetrics()
    for phase in READ_PHASES:
        assert metrics.registry.get_sample_value("streamscore_api_read_timeouts_total", {"phase": phase}) == 0
    assert metrics.registry.get_sample_value("streamscore_api_audit_failures_total") == 0
