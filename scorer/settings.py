"""Settings of the scorer (`SCORER_…`), composed with the shared Kafka, topic, Feast/Redis and registry blocks.

The traffic split is configuration: `SCORER_VARIANTS` and `SCORER_SHADOWS` (JSON lists) name the variants,
the MLflow alias each serves and its weight or share; `SCORER_EXPERIMENT_ID` / `SCORER_EXPERIMENT_SALT`
identify the experiment (a new salt reshuffles accounts between variants).
"""

from __future__ import annotations

import re
import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_repo.settings import FeastSettings
from streamscore.lag import DEFAULT_SCORER_GROUP
from streamscore.registry import RegistrySettings
from streamscore.settings import ContractSettings, KafkaSettings, TopicSettings
from streamscore.thresholds import Thresholds

DEFAULT_GROUP = DEFAULT_SCORER_GROUP
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class LiveVariant(BaseModel):
    """A variant whose scores go to `scores`: `weight` is its relative share of accounts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    alias: str = Field(min_length=1)
    weight: float = Field(ge=0.0)


class ShadowVariant(BaseModel):
    """A variant that also scores `share` of the events, on its own, to `scores.shadow`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    alias: str = Field(min_length=1)
    share: float = Field(ge=0.0, le=1.0)


def _default_instance() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "scorer"


class ScorerSettings(BaseSettings):
    """The stream scorer (`streamscore score`): transactions in, scores / shadow scores / dead letters out."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", extra="forbid", use_attribute_docstrings=True)

    group_id: str = Field(default=DEFAULT_GROUP, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    """Consumer group of the scorers (after TOPICS_PREFIX). Scale out by starting more instances."""
    instance_id: str = Field(default_factory=_default_instance, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    """Stable name of this instance (default: the host name). The transactional id is `<group>.<instance>`: a
    restarted instance with the same id fences its own zombie. Two live instances must not share it."""
    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    """exactly_once: scores, dead letters and offsets commit in one Kafka transaction per batch. at_least_once:
    outputs are flushed, then offsets committed; a crash in between re-scores (duplicates) the batch."""
    max_batch_size: int = Field(default=1024, ge=1, le=100_000)
    """A batch closes when it holds this many records..."""
    max_queue_delay_ms: float = Field(default=10.0, ge=0.0, le=60_000)
    """...or this long after its first record arrived, whichever comes first."""
    variants: list[LiveVariant] = Field(
        default_factory=lambda: [
            LiveVariant(name="champion", alias="champion", weight=0.9),
            LiveVariant(name="challenger", alias="challenger", weight=0.1),
        ]
    )
    """Live variants in bucket order (JSON list of {name, alias, weight}); default: champion (alias champion,
    weight 0.9) and challenger (alias challenger, 0.1). List a canary first: growing it
    only moves accounts into it. A variant whose alias has no version yet is dropped with a warning, its
    weight going to the others, as long as one live variant remains."""
    shadows: list[ShadowVariant] = Field(default_factory=list)
    """Shadow variants (JSON list of {name, alias, share}), e.g.
    `[{"name":"shadow","alias":"challenger","share":0.5}]`."""
    experiment_id: str = Field(default="exp-1", pattern=_NAME)
    """Carried by every score; the monitor groups A/B statistics by it."""
    experiment_salt: str = Field(default="streamscore-exp-1", min_length=1, max_length=64)
    """Salt of the routing hash: keep it to keep accounts on their variant, change it for a new experiment."""
    review_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Override: scores at or above this are `review` (below the decline threshold) for every version. Unset (the
    default): each version decides with its own operating point, chosen by training and recorded in the registry
    (a version registered without one: 0.3 / 0.7). Set together with SCORER_DECLINE_THRESHOLD."""
    decline_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Override: scores at or above this are `decline` for every version; unset: each version's own. Set together
    with SCORER_REVIEW_THRESHOLD."""
    attach_features: bool = True
    """Put the exact feature values the model scored with into each score (the monitor's drift input)."""
    feature_client: Literal["redis", "feast"] = "redis"
    """redis: the direct pipelined reader over Feast's key layout (fast path); feast: Feast's SDK (reference)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """ONNX Runtime device: auto = CUDA for large batches when a GPU is present, CPU otherwise."""
    cuda_min_batch: int = Field(default=1024, ge=1)
    """Smallest batch sent to the CUDA session; smaller batches run on CPU (transfer cost dominates)."""
    intra_op_threads: int = Field(default=1, ge=1, le=256)
    """ONNX Runtime intra-op threads per session (never derived from the host's core count)."""
    inter_op_threads: int = Field(default=1, ge=1, le=256)
    """ONNX Runtime inter-op threads per session."""
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    """Larger transaction records are dead-lettered as `oversize`."""
    reload_interval_s: float = Field(default=10.0, gt=0.0)
    """How often the registry is asked whether an alias moved (hot reload)."""
    retry_initial_ms: int = Field(default=100, ge=1)
    """Backoff after an infrastructure failure (Redis, broker); doubles per consecutive failure."""
    retry_max_ms: int = Field(default=5_000, ge=1)
    """Longest backoff between two attempts."""
    give_up_after_s: float = Field(default=600.0, gt=0.0)
    """Exit with code 3 (for the supervisor to restart us) when infrastructure — the feature store, the broker,
    the group coordinator — has failed this long without a success. The consumer stays in its group meanwhile."""
    kafka_timeout_s: float = Field(default=30.0, gt=0.0, le=300.0)
    """Longest single wait on the broker (transaction calls, committed offsets, the group's view); one that times
    out counts as an infrastructure failure and is retried within `give_up_after_s`."""
    stall_exit_after_s: float = Field(default=300.0, gt=0.0)
    """Exit with code 5 when the loop turns without progress this long: records wait on its partitions and
    nothing commits, or it holds no partitions while the group has some for it (e.g. a member the group forgot)."""
    exit_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    """On the way out (SIGTERM, or an exit it decided): the most time for finishing the transaction in flight,
    leaving the group and flushing, each; after a decided exit the process ends with its code this long after
    the decision whatever still hangs."""
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    """Consumer group session timeout: how long a crashed instance keeps its partitions before a rebalance."""
    static_membership: bool = False
    """Join the group with `group.instance.id = <group>.<instance_id>` (KIP-345): a restarted instance takes its
    partitions back without a rebalance, and scaling down waits `session_timeout_ms` before partitions move. Off by
    default: after a broker restart librdkafka's static member was fenced by its own earlier registration (a
    fatal error: the scorer exits with code 4 and its supervisor restarts it), and cooperative-sticky rebalancing
    already moves only the restarted instance's partitions."""
    transaction_timeout_ms: int = Field(default=60_000, ge=1000)
    """Broker-side transaction timeout: an instance that dies mid-transaction has it aborted after this."""
    lag_interval_s: float = Field(default=5.0, gt=0.0)
    """How often the group's view (members, owners, lag from the committed offsets) is measured for the metrics
    and the health checks."""
    progress_interval_s: float = Field(default=10.0, gt=0.0)
    """How often a progress line (events/s, dead letters, lag) is logged."""
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    """Port of `/metrics` (Prometheus), `/livez`, `/readyz` and `/healthz`; 0 = pick a free port (logged)."""
    metrics_bind: str = "127.0.0.1"
    """Interface the HTTP server listens on (0.0.0.0 in containers)."""
    unhealthy_after_s: float = Field(default=60.0, gt=0.0)
    """`/livez` answers 503 when the loop has not turned (no iteration, no bounded wait inside one) for this long."""
    unassigned_after_s: float = Field(default=60.0, gt=0.0)
    """`/readyz` (and `/healthz`) answer 503 when this instance has held no partitions this long while the group
    has some for it (or the group's view is unknown)."""
    commit_stale_after_s: float = Field(default=60.0, gt=0.0)
    """`/readyz` (and `/healthz`) answer 503 when records have waited on this instance's partitions this long
    without a commit."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    contract: ContractSettings = Field(default_factory=ContractSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)

    @model_validator(mode="after")
    def _consistent(self) -> ScorerSettings:
        if not self.variants:
            raise ValueError("SCORER_VARIANTS must list at least one live variant")
        names = [v.name for v in self.variants] + [s.name for s in self.shadows]
        if len(set(names)) != len(names):
            raise ValueError(f"SCORER_VARIANTS and SCORER_SHADOWS must have unique names, got {names}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("SCORER_VARIANTS weights must sum to more than 0")
        if (self.review_threshold is None) != (self.decline_threshold is None):
            raise ValueError(
                "SCORER_REVIEW_THRESHOLD and SCORER_DECLINE_THRESHOLD override every version's operating point "
                "together: set both or neither"
            )
        if (
            self.review_threshold is not None
            and self.decline_threshold is not None
            and self.review_threshold > self.decline_threshold
        ):
            raise ValueError(
                "SCORER_REVIEW_THRESHOLD must not exceed SCORER_DECLINE_THRESHOLD, got "
                f"{self.review_threshold} > {self.decline_threshold}"
            )
        if self.retry_max_ms < self.retry_initial_ms:
            raise ValueError("SCORER_RETRY_MAX_MS must be at least SCORER_RETRY_INITIAL_MS")
        if self.stall_exit_after_s < max(self.unassigned_after_s, self.commit_stale_after_s):
            raise ValueError(
                "SCORER_STALL_EXIT_AFTER_S must be at least SCORER_UNASSIGNED_AFTER_S and SCORER_COMMIT_STALE_AFTER_S "
                "(not ready first, then exit)"
            )
        return self

    def override_thresholds(self) -> Thresholds | None:
        """The thresholds every version decides with when the override is set (source `override`); None: each
        version's own."""
        if self.review_threshold is None or self.decline_threshold is None:
            return None
        return Thresholds(self.review_threshold, self.decline_threshold, "override")

    @property
    def group(self) -> str:
        """The consumer group: TOPICS_PREFIX + group_id (tests sharing a broker stay apart)."""
        return self.topics.prefix + self.group_id

    @property
    def transactional_id(self) -> str:
        return f"{self.group}.{self.instance_id}"
