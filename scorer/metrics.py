"""Prometheus metrics of the scorer: base units, millisecond-scale buckets, no per-entity labels.

Served with `/livez`, `/readyz` and `/healthz` by `scorer.health.MetricsServer` on `SCORER_METRICS_PORT`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from streamscore.contracts import DeadLetterReason

LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
ABORT_CAUSES = ("abortable", "error", "fatal", "delivery")
RETRIED_DEPENDENCIES = ("feature_store", "broker")

Outcome = tuple[str, str, str, str, str]
"""What a committed score counts under: (variant, kind (live or shadow), model version, decision, feature status)."""


class ScorerMetrics:
    """Every metric of the scorer in one registry (the default one in production, a private one in tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        p = "streamscore_scorer"
        self.registry = registry
        self.events_in = Counter(f"{p}_events_in", "Records consumed from the transactions topic", registry=registry)
        self.scored = Counter(
            f"{p}_scored",
            "Scores committed, by variant and kind (live or shadow)",
            ["variant", "kind"],
            registry=registry,
        )
        self.dead_letters = Counter(
            f"{p}_dead_letters", "Records committed to the dead-letter topic, by reason", ["reason"], registry=registry
        )
        for reason in DeadLetterReason:
            self.dead_letters.labels(reason=reason.value)
        self.shadow_failures = Counter(
            f"{p}_shadow_failures",
            "Shadow inferences that failed (the live score was still produced)",
            registry=registry,
        )
        self.batches = Counter(f"{p}_batches", "Batches committed", registry=registry)
        self.decisions = Counter(
            f"{p}_decisions",
            "Scores committed, by variant, kind, model version and decision (approve, review, decline)",
            ["variant", "kind", "model_version", "decision"],
            registry=registry,
        )
        self.feature_status = Counter(
            f"{p}_feature_status",
            "Scores committed, by variant, kind and feature status (ok; missing: no account snapshot nor profile; "
            "default: another view had no row)",
            ["variant", "kind", "status"],
            registry=registry,
        )
        # Causes and dependencies exist from the start at 0: a rule's increase() then sees the first one too.
        self.aborts = Counter(
            f"{p}_transaction_aborts", "Transactions aborted and rewound, by cause", ["cause"], registry=registry
        )
        for cause in ABORT_CAUSES:
            self.aborts.labels(cause=cause)
        self.producer_rebuilds = Counter(
            f"{p}_producer_rebuilds", "Transactional producers rebuilt after a fatal error", registry=registry
        )
        self.infra_retries = Counter(
            f"{p}_infra_retries",
            "Batches retried after an infrastructure failure, by dependency",
            ["dependency"],
            registry=registry,
        )
        for dependency in RETRIED_DEPENDENCIES:
            self.infra_retries.labels(dependency=dependency)
        self.batch_size = Histogram(f"{p}_batch_size", "Records per batch", buckets=BATCH_BUCKETS, registry=registry)
        self.queue_latency = Histogram(
            f"{p}_queue_latency_seconds",
            "From a batch's first record arriving to the batch closing (max_queue_delay_ms bounds it)",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.feature_latency = Histogram(
            f"{p}_feature_latency_seconds",
            "One batch's online feature read",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.inference_latency = Histogram(
            f"{p}_inference_latency_seconds",
            "One batch's feature computation and inference (all variants)",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.commit_latency = Histogram(
            f"{p}_commit_latency_seconds",
            "Producing a batch's outputs and committing its transaction",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.end_to_end_latency = Histogram(
            f"{p}_end_to_end_latency_seconds",
            "Record timestamp on the transactions topic to its score committed (one sample per record)",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Published by every instance for every partition of the input topic, whoever holds it (through revocations,
        # and while no member holds it, the lag stays visible and grows): the group's view (scorer.watcher), except
        # for the partitions this instance holds, which the loop measures from its consumer's statistics
        # (scorer.stream). One rule for both and for `streamscore lag`: streamscore.lag.
        self.lag_offsets = Gauge(
            f"{p}_consumer_lag_offsets",
            "Records the group has not committed yet, per partition of the input topic (the group's committed "
            "offset to the read_committed log end; same value from every instance)",
            ["topic", "partition"],
            registry=registry,
        )
        self.lag_seconds = Gauge(
            f"{p}_consumer_lag_seconds",
            "Per partition of the input topic: age of the oldest record the group has not committed (0 when none)",
            ["topic", "partition"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            f"{p}_assigned_partitions", "Partitions of the input topic this instance holds", registry=registry
        )
        self.last_commit = Gauge(
            f"{p}_last_commit_timestamp_seconds",
            "Wall-clock time of this instance's last successful commit (0 before the first)",
            registry=registry,
        )
        self.ready = Gauge(
            f"{p}_ready", "1 while /readyz passes (evaluated at each group measurement)", registry=registry
        )
        self.model_info = Info(f"{p}_model", "The model version each variant serves", ["variant"], registry=registry)
        self.model_load_seconds = Gauge(
            f"{p}_model_load_seconds",
            "Load and warm-up time of the version a variant serves",
            ["variant"],
            registry=registry,
        )
        self.model_reload_failures = Counter(
            f"{p}_model_reload_failures",
            "New versions that failed to load (the previous one keeps serving), by variant",
            ["variant"],
            registry=registry,
        )
        self.model_swaps = Counter(
            f"{p}_model_swaps", "Alias moves applied between batches", ["variant"], registry=registry
        )
        self.up = Gauge(f"{p}_up", "1 while the scoring loop runs", registry=registry)

    def declare_variants(self, names: Iterable[str]) -> None:
        """Every configured variant's swaps and reload failures at 0 from the start: a counter's series born at 1
        hides its first increment from increase() (the dashboard's hot reloads), and an idle variant shows 0, not
        "No data"."""
        for name in names:
            self.model_swaps.labels(variant=name)
            self.model_reload_failures.labels(variant=name)

    def count_scores(self, outcomes: Mapping[Outcome, int]) -> None:
        """Count a committed batch's scores (`scored`, `decisions`, `feature_status`): one update per label set and
        batch, not per record — labels() costs a lock and a dict lookup."""
        scored: Tally[tuple[str, str]] = Tally()
        decisions: Tally[tuple[str, str, str, str]] = Tally()
        statuses: Tally[tuple[str, str, str]] = Tally()
        for (variant, kind, version, decision, status), count in outcomes.items():
            scored[variant, kind] += count
            decisions[variant, kind, version, decision] += count
            statuses[variant, kind, status] += count
        for (variant, kind), count in scored.items():
            self.scored.labels(variant=variant, kind=kind).inc(count)
        for (variant, kind, version, decision), count in decisions.items():
            self.decisions.labels(variant=variant, kind=kind, model_version=version, decision=decision).inc(count)
        for (variant, kind, status), count in statuses.items():
            self.feature_status.labels(variant=variant, kind=kind, status=status).inc(count)
