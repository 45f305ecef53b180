"""The monitor's metrics: series a dashboard or an alert reads exist at 0 before the first event."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from monitor.metrics import MonitorMetrics
from streamscore.contracts import DeadLetterReason


def test_dead_letters_retries_skips_and_alerts_are_exported_at_zero_from_the_start() -> None:
    metrics = MonitorMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    for reason in DeadLetterReason:
        assert value("streamscore_monitor_dead_letters_total", {"reason": reason.value}) == 0, reason
    for dependency in ("registry", "broker"):
        assert value("streamscore_monitor_infra_retries_total", {"dependency": dependency}) == 0
    for skipped in ("late", "no_reference", "version_changed"):
        assert value("streamscore_monitor_drift_skipped_total", {"reason": skipped}) == 0
    for kind in ("drift", "ab_verdict", "sample_ratio_mismatch"):
        assert value("streamscore_monitor_alerts_total", {"kind": kind}) == 0
