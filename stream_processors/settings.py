"""Settings of the feature processor (`FEATURES_…`), composed with the shared Kafka, topic and Feast blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_repo.settings import FeastSettings
from streamscore.settings import ContractSettings, KafkaSettings, TopicSettings

STORES = ("memory://", "rocksdb://", "rocksdict://")


class StreamProcessorSettings(BaseSettings):
    """The feature processor: a Faust worker folding transactions into per-account state and pushing the
    snapshots to the Feast online store (`streamscore features stream`)."""

    model_config = SettingsConfigDict(env_prefix="FEATURES_", extra="forbid", use_attribute_docstrings=True)

    app_id: str = Field(default="streamscore-features", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    """Faust application id: the consumer group, and (after TOPICS_PREFIX) the name prefix of the table's
    changelog topic."""
    push_batch_size: int = Field(default=500, ge=1, le=100_000)
    """Accounts written to the online store in one push; a full batch is pushed at once."""
    push_max_delay_ms: int = Field(default=50, ge=1, le=60_000)
    """A queued snapshot is pushed after at most this many milliseconds, even when the batch is not full (50: a
    direct Redis write costs a few ms, and the delay is most of the features' freshness)."""
    push_writer: Literal["redis", "feast"] = "redis"
    """How snapshots reach a Redis online store: `redis`, one pipelined HSET per account in Feast's own format
    (feature_repo.store.RealtimeRedisWriter, proven byte-identical to Feast's push); `feast`, Feast's push path (a
    pandas frame and registry reads per push, several times slower: the reference). SQLite always uses Feast."""
    stream_batch_size: int = Field(default=2_000, ge=1, le=100_000)
    """Consumed events folded together at most: each account's state is written to the table and its snapshot queued
    once per batch (its changelog record once per push). 1 folds event by event (always so with a persistent table
    store)."""
    stream_batch_ms: int = Field(default=10, ge=1, le=1_000)
    """A batch of consumed events is folded once its first event has waited this long, full or not."""
    push_hold_ms: int = Field(default=0, ge=0, le=10_000)
    """A snapshot is pushed only once its account's newest event has waited this many milliseconds in the worker,
    so the scorer, reading the same topic, scores an event before that event's own snapshot is readable (else the
    event would be scored with features that already include it: seconds since the last transaction 0). Set it
    above the scorer's usual latency where the processor can be faster than the scorer; 0 pushes at once."""
    publish_after_group: str | None = None
    """The scorer's consumer group: hold each snapshot until that group has committed past the event that made it,
    so no event is scored with features that already include it (stream_processors/accounts/scored.py). Empty:
    publish at once."""
    publish_max_wait_ms: int = Field(default=2_000, ge=1)
    """With FEATURES_PUBLISH_AFTER_GROUP: a snapshot is published after at most this long whatever the scorer did
    (a scorer that is down must not freeze the features)."""
    push_retry_initial_ms: int = Field(default=100, ge=1)
    """Backoff after a failed push (Redis down); doubles per consecutive failure."""
    push_retry_max_ms: int = Field(default=5_000, ge=1)
    """Longest backoff between two push attempts."""
    max_pending_events: int = Field(default=20_000, ge=1)
    """Consumed events whose snapshot is not pushed yet beyond which consumption pauses (backpressure)."""
    unhealthy_after_s: float = Field(default=60.0, gt=0)
    """`/healthz` answers 503 when pushes have been failing for this many seconds."""
    give_up_after_s: float = Field(default=300.0, gt=0)
    """Infrastructure patience: when pushes to the online store (or dead letters to the broker) have failed for
    this long, the worker exits with status 3 so its supervisor restarts it (its unpushed events are replayed)."""
    restore_check_interval_s: float = Field(default=5.0, gt=0)
    """How often the worker looks for an emptied online store (a Redis restart without its data: the marks
    `streamscore:mark:<project>:…` are gone) and restores it: the views (see FEATURES_RESTORE_VIEWS), then every
    account snapshot of its partitions. Bounds how long scores stay `missing` after such a restart."""
    restore_views: bool = True
    """Also re-materialize the batch views (account_profile, merchant_risk) and the history's real-time log from the
    offline files in FEAST_DATA_DIR when their marks are gone (one worker at a time). Off where the worker cannot
    read those files: then run `streamscore features materialize --realtime` after a Redis restart."""
    evict_interval_s: float = Field(default=600.0, gt=0)
    """How often the worker drops the table rows of accounts idle past two days plus the event-time window's lateness
    (their next event starts afresh anyway: stream_processors/accounts/evict.py). Its memory then holds the accounts
    active in the last nine days (by default), not every account since the start."""
    shutdown_drain_s: float = Field(default=10.0, ge=0)
    """At shutdown, how long to keep trying to push the queued snapshots."""
    metrics_port: int = Field(default=6066, ge=1, le=65535)
    """Port of the worker's HTTP server: `/metrics` (Prometheus) and `/healthz`."""
    metrics_bind: str = "127.0.0.1"
    """Interface the HTTP server listens on (0.0.0.0 in containers)."""
    table_partitions: int | None = Field(default=None, ge=1)
    """Partitions of the account-state table's changelog; must equal the transactions topic's. Empty: read
    the transactions topic's partition count from the broker at start."""
    seed_path: Path | None = None
    """Parquet of each account's state after a history (`account_state.parquet`, written by `streamscore features
    batch`): an account the table does not hold yet starts from its seeded state instead of empty, so its live
    windows, seconds since the last transaction and known devices continue the history the models learned from.
    Empty: every new account starts empty. Seed only a processor whose table is new to the live traffic that follows
    that history (the table wins once it holds the account)."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a new consumer group starts on the transactions topic: earliest (every record the topic holds) or latest
    (only what is produced from now on: a processor seeded from a history continues from that history, not from the
    records earlier runs left on the topic)."""
    state_dir: Path | None = None
    """Folder of the Faust worker's local state (its table files); unset: Faust's `<app id>-data` in the working
    directory."""
    store: str = "memory://"
    """Faust table store. `memory://` (RocksDB is not installed): the table lives in memory and is rebuilt
    from its changelog topic at every start."""
    commit_interval_s: float = Field(default=1.0, gt=0)
    """How often the worker commits the offsets of processed (and pushed) events."""
    commit_every: int = Field(default=10_000, ge=1)
    """Also commit after this many processed events."""
    session_timeout_s: float = Field(default=10.0, ge=6.0, le=300.0)
    """Consumer group session timeout: how long a crashed worker keeps its partitions before the group moves them
    (Faust's default is 60 s: a restarted worker then waited a minute with every account's features stale)."""
    stream_processing_timeout_s: float = Field(default=60.0, gt=0)
    """Faust logs an error when one event takes longer than this (e.g. waiting for room while Redis is down)."""
    lag_interval_s: float = Field(default=5.0, gt=0, le=300)
    """How often the group's lag is read from the broker (the lag gauges; readiness's view of commits)."""
    ready_commit_age_s: float = Field(default=30.0, gt=0)
    """`/readyz` answers 503 when the partitions this worker holds have lag and their committed offsets have not
    advanced for this long."""
    stall_exit_s: float = Field(default=120.0, gt=0)
    """Watchdog: unready for a Kafka-side reason (no partitions, rebalancing, broker unreachable, commits not
    advancing with lag) for this long, or one offset commit or rebalance lasting this long, stops the worker; it
    exits with status 3 so its supervisor restarts it."""
    loop_stall_s: float = Field(default=30.0, gt=0)
    """`/livez` answers 503 when the event loop has not turned for this long, and the watchdog ends the process
    at once with status 4."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The worker's asyncio event loop: uvloop (the default: cheaper per consumed record) or the standard library's."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    contract: ContractSettings = Field(default_factory=ContractSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not value.startswith(STORES):
            raise ValueError(f"FEATURES_STORE must start with one of {', '.join(STORES)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> StreamProcessorSettings:
        if self.push_retry_max_ms < self.push_retry_initial_ms:
            raise ValueError(
                "FEATURES_PUSH_RETRY_MAX_MS must be at least FEATURES_PUSH_RETRY_INITIAL_MS, got "
                f"{self.push_retry_max_ms} < {self.push_retry_initial_ms}"
            )
        return self

    @property
    def faust_id(self) -> str:
        """The Faust app id: TOPICS_PREFIX + app_id, so tests and environments sharing a broker keep their
        consumer groups and changelog topics apart."""
        return self.topics.prefix + self.app_id
