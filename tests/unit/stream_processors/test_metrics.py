"""The feature processor's metrics: series a dashboard reads with increase() exist at 0 before the first event."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from stream_processors.metrics import DEAD_LETTER_REASONS, RESTORE_STEPS, SKIP_REASONS, FeatureMetrics


def test_restore_steps_skips_and_dead_letters_are_exported_at_zero_from_the_start() -> None:
    metrics = FeatureMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    for step in RESTORE_STEPS:
        assert value("streamscore_features_online_store_restore_seconds_count", {"step": step}) == 0
        assert value("streamscore_features_online_store_restore_seconds_sum", {"step": step}) == 0
    for reason in SKIP_REASONS:
        assert value("streamscore_features_events_skipped_total", {"reason": reason}) == 0
    for reason in DEAD_LETTER_REASONS:
        assert value("streamscore_features_dead_letters_total", {"reason": reason}) == 0
    assert value("streamscore_features_online_store_restores_total") == 0
