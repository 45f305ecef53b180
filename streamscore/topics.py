"""The one topic registry. No topic name is written anywhere else in the code base.

Names can carry a prefix (`TOPICS_PREFIX`), so tests and several environments can share one broker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

CleanupPolicy = Literal["delete", "compact", "compact,delete"]
TimestampType = Literal["CreateTime", "LogAppendTime"]

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: what it holds and how the broker keeps it."""

    name: str
    key: str
    value: str
    partitions: int
    cleanup_policy: CleanupPolicy = "delete"
    retention_ms: int = 7 * DAY_MS
    timestamp_type: TimestampType = "CreateTime"
    """LogAppendTime: the broker stamps each record with the time it appended it (the producer's timestamp is
    replaced)."""

    def config(self) -> dict[str, str]:
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            "message.timestamp.type": self.timestamp_type,
        }


@dataclass(frozen=True, slots=True)
class TopicRegistry:
    """Every topic of the system, named with an optional prefix and a default partition count."""

    transactions: TopicSpec
    labels: TopicSpec
    scores: TopicSpec
    scores_shadow: TopicSpec
    dlq: TopicSpec
    monitor_drift: TopicSpec
    monitor_ab: TopicSpec
    monitor_alerts: TopicSpec
    features_dlq: TopicSpec
    monitor_dlq: TopicSpec

    @classmethod
    def build(cls, prefix: str = "", partitions: int = 6) -> TopicRegistry:
        def spec(name: str, key: str, value: str, **kw: object) -> TopicSpec:
            return TopicSpec(prefix + name, key, value, partitions, **kw)  # type: ignore[arg-type]

        return cls(
            # The broker's append time is the receiving clock of the event-time window (contracts.receiving_clock):
            # every consumer, and every replay, judges a transaction against the same instant.
            transactions=spec("transactions", "account_id", "Transaction", timestamp_type="LogAppendTime"),
            labels=spec("labels", "account_id", "Label", retention_ms=30 * DAY_MS),
            scores=spec("scores", "account_id", "Score"),
            scores_shadow=spec("scores.shadow", "account_id", "Score (variant=shadow)"),
            dlq=spec("transactions.dlq", "original key", "original bytes; reason in headers", retention_ms=30 * DAY_MS),
            monitor_drift=spec("monitor.drift", "feature", "DriftReport (JSON)"),
            monitor_ab=spec("monitor.ab", "experiment", "ABReport (JSON)"),
            monitor_alerts=spec("monitor.alerts", "feature or experiment", "Alert (JSON)", retention_ms=30 * DAY_MS),
            # The stream processors' own dead letters: records the contract accepts but the processor cannot
            # apply or write (a transaction the contract rejects is the scorer's, on transactions.dlq).
            features_dlq=spec(
                "features.dlq", "original key", "original bytes; reason in headers", retention_ms=30 * DAY_MS
            ),
            monitor_dlq=spec(
                "monitor.dlq", "original key", "original bytes; reason in headers", retention_ms=30 * DAY_MS
            ),
        )

    def all(self) -> list[TopicSpec]:
        return [getattr(self, name) for name in self.__dataclass_fields__]

    def with_partitions(self, partitions: int) -> TopicRegistry:
        return TopicRegistry(**{n: replace(getattr(self, n), partitions=partitions) for n in self.__dataclass_fields__})
