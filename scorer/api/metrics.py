"""Prometheus metrics of the API, in the app's own registry (served at `/metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from scorer.metrics import BATCH_BUCKETS, LATENCY_BUCKETS_S

READ_PHASES = ("header", "body")
"""What a read deadline is for (scorer.api.server): a request's head, or its body."""


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        p = "streamscore_api"
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{p}_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram(
            f"{p}_request_latency_seconds",
            "Request handling time by route",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.scored = Counter(f"{p}_scored", "Transactions scored, by variant", ["variant"], registry=r)
        self.batch_size = Histogram(
            f"{p}_batch_size",
            "Requests per engine call (the batcher's micro-batches)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_latency = Histogram(
            f"{p}_queue_latency_seconds",
            "From a micro-batch's first request to the batch closing",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.feature_latency = Histogram(
            f"{p}_feature_latency_seconds", "One engine call's feature read", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.inference_latency = Histogram(
            f"{p}_inference_latency_seconds",
            "One engine call's inference (all variants)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.audit_failures = Counter(
            f"{p}_audit_failures", "Predictions that could not be written to Kafka for audit", registry=r
        )
        self.rejected = Counter(f"{p}_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.read_timeouts = Counter(
            f"{p}_read_timeouts",
            "Connections closed because a request's header or body did not arrive within its deadline",
            ["phase"],
            registry=r,
        )
        # At 0 from the start: the dashboard's read timeouts read 0, not "No data", on an API that never had one.
        for phase in READ_PHASES:
            self.read_timeouts.labels(phase=phase)
