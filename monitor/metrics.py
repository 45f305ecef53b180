"""Prometheus metrics of the monitor: base units, no per-entity labels (series, variants and experiments are a
handful each).

Two kinds. Every worker counts what its partitions consume and hold. The worker that owns the merge topic also
exports the results: the last closed window's statistics per series and the last look's per variant. Served with
`/healthz` by the worker's web server (Faust's): see app.py.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from monitor.ab import ABRecord
from monitor.drift import DriftRecord
from streamscore.contracts import DeadLetterReason
from streamscore.health import HealthGauges

CHECKPOINT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OUTCOMES = ("counted", "duplicate", "replayed", "ignored", "joined", "invalid")
VERDICT_VALUE = {"worse": -1.0, "inconclusive": 0.0, "better": 1.0}


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        prefix = "streamscore_monitor"
        self.registry = registry
        self.records = Counter(
            f"{prefix}_records",
            "Records consumed, by topic (scores, shadow, labels) and outcome: counted (a new unit variant), joined (a "
            "label joined), duplicate (same event id from another offset: skipped), replayed (a record re-read after a "
            "restart: only what the checkpoint lacked applied), ignored (an API score), invalid",
            ["topic", "outcome"],
            registry=registry,
        )
        self.drift_skipped = Counter(
            f"{prefix}_drift_skipped",
            "Scores left out of drift windows: late (their window had closed), no_reference (the model version has no "
            "readable reference.json), version_changed (a champion score of another version than the window's)",
            ["reason"],
            registry=registry,
        )
        for reason in ("late", "no_reference", "version_changed"):
            self.drift_skipped.labels(reason=reason)
        self.dead_letters = Counter(
            f"{prefix}_dead_letters",
            "Records written to the monitor's dead-letter topic (monitor.dlq), by reason: the contract's reasons for a "
            "score or label that does not parse, processing_failed for one that could not be applied",
            ["reason"],
            registry=registry,
        )
        # Every reason from the start at 0, as the scorer's and the feature processor's: the dashboard's dead letters
        # by reason show 0, not "No data", on a monitor that never wrote one.
        for reason in DeadLetterReason:
            self.dead_letters.labels(reason=reason.value)
        self.infra_retries = Counter(
            f"{prefix}_infra_retries",
            "Retries after an infrastructure failure, by dependency (registry: a reference.json could not be read; "
            "broker: dead letters not delivered)",
            ["dependency"],
            registry=registry,
        )
        for dependency in ("registry", "broker"):
            self.infra_retries.labels(dependency=dependency)
        self.units_counted = Counter(
            f"{prefix}_units_counted", "Unit variants counted in the A/B statistics at maturity", registry=registry
        )
        self.pending_units = Gauge(
            f"{prefix}_pending_units", "Units waiting for their label maturity window", registry=registry
        )
        self.open_windows = Gauge(
            f"{prefix}_open_windows", "Drift windows open in this worker's partitions", registry=registry
        )
        self.checkpoint_latency = Histogram(
            f"{prefix}_checkpoint_seconds",
            "Duration of one checkpoint of every partition (state records to the changelog, windows closed)",
            buckets=CHECKPOINT_BUCKETS_S,
            registry=registry,
        )
        self.checkpoint_records = Counter(
            f"{prefix}_checkpoint_records", "State records written to the changelog", registry=registry
        )
        self.last_checkpoint = Gauge(
            f"{prefix}_last_checkpoint_timestamp_seconds",
            "Wall time of the last completed checkpoint",
            registry=registry,
        )
        self.windows_evaluated = Counter(
            f"{prefix}_windows_evaluated", "Drift windows merged across partitions and evaluated", registry=registry
        )
        self.dropped_features = Counter(
            f"{prefix}_drift_dropped_feature_states",
            "Partition feature states left out of a merged window: measured against another champion version",
            registry=registry,
        )
        self.alerts = Counter(f"{prefix}_alerts", "Alerts published, by kind", ["kind"], registry=registry)
        for kind in ("drift", "ab_verdict", "sample_ratio_mismatch"):
            self.alerts.labels(kind=kind)
        self.window_end = Gauge(
            f"{prefix}_drift_window_end_timestamp_seconds", "End of the last evaluated window", registry=registry
        )
        self.psi = Gauge(f"{prefix}_drift_psi", "PSI of the last evaluated window", ["feature"], registry=registry)
        self.p_value = Gauge(
            f"{prefix}_drift_p_value", "Test p-value of the last evaluated window", ["feature"], registry=registry
        )
        self.statistic = Gauge(
            f"{prefix}_drift_statistic",
            "KS gap / χ² / binomial share of the last window",
            ["feature"],
            registry=registry,
        )
        self.drifted = Gauge(
            f"{prefix}_drift_drifted", "1 when the last evaluated window declared drift", ["feature"], registry=registry
        )
        self.ab_units = Gauge(
            f"{prefix}_ab_units", "Matured units at the last look", ["experiment", "variant"], registry=registry
        )
        self.ab_rate = Gauge(
            f"{prefix}_ab_metric_rate",
            "Primary metric's rate at the last look",
            ["experiment", "variant"],
            registry=registry,
        )
        self.ab_difference = Gauge(
            f"{prefix}_ab_difference",
            "Variant minus champion, primary metric",
            ["experiment", "variant"],
            registry=registry,
        )
        self.ab_ci_low = Gauge(
            f"{prefix}_ab_ci_low",
            "Always-valid interval of the difference, low end",
            ["experiment", "variant"],
            registry=registry,
        )
        self.ab_ci_high = Gauge(
            f"{prefix}_ab_ci_high",
            "Always-valid interval of the difference, high end",
            ["experiment", "variant"],
            registry=registry,
        )
        self.ab_p_value = Gauge(
            f"{prefix}_ab_p_value",
            "Always-valid p-value (never increases)",
            ["experiment", "variant"],
            registry=registry,
        )
        self.ab_verdict = Gauge(
            f"{prefix}_ab_verdict",
            "Verdict: 1 better, 0 inconclusive, -1 worse",
            ["experiment", "variant"],
            registry=registry,
        )
        self.srm_p_value = Gauge(
            f"{prefix}_ab_srm_p_value", "Sample-ratio check p-value at the last look", ["experiment"], registry=registry
        )
        self.srm_alarm = Gauge(
            f"{prefix}_ab_srm_alarm",
            "1 when the traffic split does not match the configuration",
            ["experiment"],
            registry=registry,
        )
        self.looks = Counter(f"{prefix}_ab_looks", "A/B looks published", ["experiment"], registry=registry)
        self.health = HealthGauges.define(
            prefix, registry, "input partition (scores, shadow scores, labels, the merge topic)"
        )

    def observe_drift(self, records: list[DriftRecord]) -> None:
        for r in records:
            self.psi.labels(feature=r.feature).set(r.psi)
            self.drifted.labels(feature=r.feature).set(1.0 if r.drifted else 0.0)
            if r.p_value is not None:
                self.p_value.labels(feature=r.feature).set(r.p_value)
            if r.statistic is not None:
                self.statistic.labels(feature=r.feature).set(r.statistic)
        if records:
            self.window_end.set(max(r.window_end for r in records).timestamp())
            self.windows_evaluated.inc(len({r.window for r in records}))

    def observe_ab(self, record: ABRecord) -> None:
        x = record.experiment_id
        for v in record.variants:
            self.ab_units.labels(experiment=x, variant=v.variant).set(v.units)
            if v.metric_rate is not None:
                self.ab_rate.labels(experiment=x, variant=v.variant).set(v.metric_rate)
        for c in record.comparisons:
            labels = {"experiment": x, "variant": c.variant}
            self.ab_difference.labels(**labels).set(c.difference)
            self.ab_ci_low.labels(**labels).set(c.ci_low)
            self.ab_ci_high.labels(**labels).set(c.ci_high)
            self.ab_p_value.labels(**labels).set(c.p_value)
            self.ab_verdict.labels(**labels).set(VERDICT_VALUE[c.verdict])
        self.srm_p_value.labels(experiment=x).set(record.srm.p_value)
        self.srm_alarm.labels(experiment=x).set(1.0 if record.srm.alarm else 0.0)
        self.looks.labels(experiment=x).inc()


@cache
def default_metrics() -> MonitorMetrics:
    """The process's metrics in the default registry (created once: a metric name registers only once)."""
    return MonitorMetrics(REGISTRY)
