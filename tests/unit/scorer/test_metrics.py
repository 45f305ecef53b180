"""The scorer's metrics: what a committed batch counts, and the series that exist before anything happened."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from scorer.metrics import ABORT_CAUSES, RETRIED_DEPENDENCIES, Outcome, ScorerMetrics


def value(metrics: ScorerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_batch_counts_scores_decisions_and_feature_status_per_label_set() -> None:
    metrics = ScorerMetrics(CollectorRegistry())
    outcomes: dict[Outcome, int] = {
        ("champion", "live", "7", "approve", "ok"): 90,
        ("champion", "live", "7", "decline", "ok"): 3,
        ("champion", "live", "7", "approve", "missing"): 5,
        ("challenger", "live", "8", "review", "default"): 2,
        ("shadow", "shadow", "9", "approve", "ok"): 40,
    }
    metrics.count_scores(outcomes)
    metrics.count_scores({("champion", "live", "7", "decline", "ok"): 1})

    scored = "streamscore_scorer_scored_total"
    assert value(metrics, scored, variant="champion", kind="live") == 99
    assert value(metrics, scored, variant="challenger", kind="live") == 2
    assert value(metrics, scored, variant="shadow", kind="shadow") == 40

    decisions = "streamscore_scorer_decisions_total"
    champion = {"variant": "champion", "kind": "live", "model_version": "7"}
    assert value(metrics, decisions, **champion, decision="approve") == 95
    assert value(metrics, decisions, **champion, decision="decline") == 4
    assert value(metrics, decisions, **champion, decision="review") is None
    assert value(metrics, decisions, variant="challenger", kind="live", model_version="8", decision="review") == 2

    status = "streamscore_scorer_feature_status_total"
    assert value(metrics, status, variant="champion", kind="live", status="ok") == 94
    assert value(metrics, status, variant="champion", kind="live", status="missing") == 5
    assert value(metrics, status, variant="challenger", kind="live", status="default") == 2
    assert value(metrics, status, variant="shadow", kind="shadow", status="ok") == 40


def test_abort_causes_and_retried_dependencies_are_exported_at_zero_from_the_start() -> None:
    """An alert on increase() misses a series' first increment: the series must exist before it."""
    metrics = ScorerMetrics(CollectorRegistry())
    for cause in ABORT_CAUSES:
        assert value(metrics, "streamscore_scorer_transaction_aborts_total", cause=cause) == 0
    for dependency in RETRIED_DEPENDENCIES:
        assert value(metrics, "streamscore_scorer_infra_retries_total", dependency=dependency) == 0
    assert value(metrics, "streamscore_scorer_producer_rebuilds_total") == 0


def test_every_configured_variants_swaps_and_reload_failures_are_exported_at_zero() -> None:
    """A series born at 1 hides its first increment from increase(): the dashboard's hot reloads would read 0."""
    metrics = ScorerMetrics(CollectorRegistry())
    assert value(metrics, "streamscore_scorer_model_swaps_total", variant="champion") is None
    metrics.declare_variants(["champion", "shadow"])
    for variant in ("champion", "shadow"):
        assert value(metrics, "streamscore_scorer_model_swaps_total", variant=variant) == 0
        assert value(metrics, "streamscore_scorer_model_reload_failures_total", variant=variant) == 0
