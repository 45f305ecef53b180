"""Prometheus metrics of the feature processor: base units, millisecond-scale buckets, no per-entity labels.

Served with `/healthz` by the worker's web server (Faust's, on `FEATURES_METRICS_PORT`): see app.py.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from streamscore.health import HealthGauges

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Push latency: one pipelined Redis write of up to a few hundred rows takes milliseconds."""
FRESHNESS_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""Event time to readable in the online store: the push delay (200 ms by default) plus the push itself."""

RESTORE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Restoring an emptied online store: seconds to minutes (materializing the batch views, re-pushing every account)."""
RESTORE_STEPS = ("views", "snapshots")
SKIP_REASONS = ("duplicate", "late", "invalid")
DEAD_LETTER_REASONS = ("unwritable_features", "processing_failed")


class FeatureMetrics:
    """Every metric of the processor, registered in one registry (the default one in production, a private
    one in tests so they can read exact values)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        prefix = "streamscore_features"
        self.registry = registry
        self.events_processed = Counter(
            f"{prefix}_events_processed",
            "Transactions folded into an account's state (a new snapshot was queued)",
            registry=registry,
        )
        self.events_skipped = Counter(
            f"{prefix}_events_skipped",
            "Transactions that did not change any state, by reason: duplicate (redelivery, event_id already"
            " applied), late (older than the 24 h window of the account's latest event), invalid (defective event,"
            " the scorer dead-letters it)",
            ["reason"],
            registry=registry,
        )
        for reason in SKIP_REASONS:
            self.events_skipped.labels(reason=reason)
        self.invalid_events = Counter(
            f"{prefix}_invalid_events",
            "Transactions the contract rejects, by dead-letter reason: skipped here (the scorer dead-letters them"
            " to transactions.dlq)",
            ["reason"],
            registry=registry,
        )
        self.dead_letters = Counter(
            f"{prefix}_dead_letters",
            "Events the processor wrote to its dead-letter topic (features.dlq), by reason: unwritable_features"
            " (the account's snapshot could not be written to the online store), processing_failed",
            ["reason"],
            registry=registry,
        )
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason)
        self.acks_refused = Counter(
            f"{prefix}_acks_refused",
            "Acknowledgements of events Faust's stream skipped (taken during a rebalance or under an older consumer"
            " generation) that the processor kept from the offset bookkeeping: nobody processed them, and a commit"
            " past them would lose them (accounts/agents.py, guard_acks)",
            registry=registry,
        )
        self.events_refused = Counter(
            f"{prefix}_events_refused",
            "Events neither folded nor acknowledged because they cannot be this worker's now: of a partition it is not"
            " assigned, or of a batch fetched before a rebalance (then the worker restarts and reads them again from"
            " the committed offset; streamscore/starts.py)",
            registry=registry,
        )
        self.rows_evicted = Counter(
            f"{prefix}_rows_evicted",
            "Account rows dropped from the table because no event the window still accepts can fold into them (idle"
            " two days past the window's lateness; accounts/evict.py)",
            registry=registry,
        )
        self.table_rows = Gauge(
            f"{prefix}_table_rows",
            "Account rows in this worker's table (after the last sweep)",
            registry=registry,
        )
        self.state_resets = Counter(
            f"{prefix}_state_resets",
            "Accounts whose stored state could not be written to the online store and was started again",
            registry=registry,
        )
        self.restores = Counter(
            f"{prefix}_online_store_restores",
            "Times the online store was found emptied (a Redis restart) and every account's snapshot pushed again",
            registry=registry,
        )
        self.restored_rows = Counter(
            f"{prefix}_online_store_restored_rows",
            "Account snapshots queued again by online-store restores",
            registry=registry,
        )
        self.restore_seconds = Histogram(
            f"{prefix}_online_store_restore_seconds",
            "Duration of a restore step after the online store was found emptied: views (materializing them from"
            " the offline files) or snapshots (re-pushing every account of the worker's partitions)",
            ["step"],
            buckets=RESTORE_BUCKETS_S,
            registry=registry,
        )
        # At 0 from the start: a series born with the first restore in it hides that restore from increase() (the
        # dashboard's restore duration would read 0/0).
        for step in RESTORE_STEPS:
            self.restore_seconds.labels(step=step)
        self.push_batches = Counter(
            f"{prefix}_push_batches", "Batches written to the online store successfully", registry=registry
        )
        self.push_failures = Counter(
            f"{prefix}_push_failures", "Batch writes that failed and were kept queued for a retry", registry=registry
        )
        self.pushed_rows = Counter(
            f"{prefix}_pushed_rows", "Account snapshots written to the online store", registry=registry
        )
        self.push_latency = Histogram(
            f"{prefix}_push_latency_seconds",
            "Duration of one batched write to the online store (successful or not)",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.freshness = Histogram(
            f"{prefix}_freshness_seconds",
            "At each successful push: now minus the event time of the newest event in the batch",
            buckets=FRESHNESS_BUCKETS_S,
            registry=registry,
        )
        self.last_pushed_event = Gauge(
            f"{prefix}_last_pushed_event_timestamp_seconds",
            "Event time (Unix seconds) of the newest event whose snapshot reached the online store;"
            " freshness now is time() minus this",
            registry=registry,
        )
        self.pending_rows = Gauge(
            f"{prefix}_pending_rows", "Account snapshots queued for the next push", registry=registry
        )
        self.pending_events = Gauge(
            f"{prefix}_pending_events",
            "Consumed events whose offsets wait for the next successful push before they may be committed",
            registry=registry,
        )
        self.health = HealthGauges.define(prefix, registry, "transactions partition")


@cache
def default_metrics() -> FeatureMetrics:
    """The process's metrics in the default registry (created once: a metric name registers only once)."""
    return FeatureMetrics(REGISTRY)
