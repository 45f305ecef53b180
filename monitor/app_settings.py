"""Settings of the monitor's Faust application (`MONITOR_…`), composed with the statistics block
(`MonitorSettings`, the same prefix) and the shared Kafka, topic and registry blocks.

The statistics read only `MonitorSettings`; what is here says how the application runs: its consumer group,
web port, checkpoint cadence, clocks and which scores it counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.settings import MonitorSettings
from streamscore.registry import RegistrySettings
from streamscore.settings import KafkaSettings, TopicSettings


class MonitorAppSettings(BaseSettings):
    """How the monitor's Faust worker (`streamscore monitor`) runs: consumer group, web port, checkpoints, clocks.

    Scores, shadow scores and labels in; drift windows, A/B looks and alerts out (statistics: MonitorSettings)."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_", extra="forbid", use_attribute_docstrings=True)

    app_id: str = Field(default="streamscore-monitor", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    """Faust application id: the consumer group, and (after TOPICS_PREFIX) the name prefix of the state tables'
    changelogs and of the internal merge topic."""
    metrics_port: int = Field(default=6067, ge=1, le=65535)
    """Port of the worker's HTTP server: `/metrics` (Prometheus) and `/healthz`."""
    metrics_bind: str = "127.0.0.1"
    """Interface the HTTP server listens on (0.0.0.0 in containers)."""
    include_api_scores: bool = False
    """Count scores of the ad-hoc API (`source="api"`) too. Off by default: API calls are not the randomized live
    traffic (a caller may pick a variant or a version, replay an old transaction, probe odd inputs), so they
    would bias the drift windows and break the A/B randomization."""
    state_dir: Path | None = None
    """Folder of the Faust worker's local state (its table files); unset: Faust's `<app id>-data` in the working
    directory."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a consumer group without committed offsets starts: `earliest` (every score and label the topics
    still hold) or `latest` (only what is produced from now on: the demo's monitor judges its own traffic)."""
    checkpoint_interval_s: float = Field(default=2.0, gt=0, le=300)
    """How often each partition's state (pending units, window states) is written to the changelog; a consumed
    record's offset is committed only after the checkpoint that holds its effect, so this bounds what a
    restart replays."""
    allowed_lateness_s: float = Field(default=30.0, ge=0)
    """A time window closes when the partition's clock has passed its end by this much; a score arriving for a
    closed window is counted as late and left out."""
    max_event_ahead_s: float = Field(default=3600.0, gt=0)
    """A score or label with a time (event, scored or labeled time) more than this far ahead of the worker's clock is
    dead-lettered to `monitor.dlq` as `event_time_out_of_window`: the partitions' clocks follow event time, and one
    record from the future would close every window and make all later records late."""
    wall_clock: bool = True
    """A partition that has read every score (or label) moves its clock on with the wall clock, so windows close and
    labels mature on quiet traffic: right for live traffic, whose event times follow the wall clock. Off to replay
    past traffic (a backfill of last week's scores, tests with a simulated timeline): windows then close on event
    time alone — with the wall clock, every score of a past window would be late."""
    clock_speed: float = Field(default=1.0, ge=1.0, le=1e6)
    """Event-time seconds per wall-clock second of the traffic: 1 for real traffic. A simulated world played faster
    than real time (the demo plays the world's next hours in a minute, `streamscore produce --speed`) sets its speed
    here: a caught-up partition's clocks then run on from the newest record at this speed (with the wall clock they
    would jump hours ahead and make every score late). Allowed lateness and label maturity stay in event time."""
    idle_close_s: float = Field(default=30.0, gt=0)
    """Count windows (MONITOR_WINDOW=events): a caught-up partition closes its open window after this long
    without a new live score, so the merged window does not wait forever for a quiet partition."""
    unit_retention_s: float = Field(default=600.0, ge=0)
    """A counted unit's record is kept this long after its maturity (on the partition's label clock), so a
    duplicate score or label arriving late is still recognised by its event id."""
    srm_accounts: int = Field(default=20_000, ge=100, le=10_000_000)
    """The sample-ratio check counts each account once; a partition keeps at most this many accounts of one
    experiment for it, a uniform sample of the distinct accounts by their hash (`monitor.sampling`), so the monitor's
    memory and its changelog stay flat however many accounts an experiment sees."""
    look_interval_s: float = Field(default=30.0, gt=0)
    """How often the A/B statistics are looked at (each look is a step of the always-valid test)."""
    publish_interval_s: float = Field(default=5.0, gt=0)
    """How often a partition sends its cumulative A/B counts to the merging agent (when they changed)."""
    progress_interval_s: float = Field(default=10.0, gt=0)
    """How often a progress line is logged."""
    unhealthy_after_s: float = Field(default=60.0, gt=0)
    """`/healthz` answers 503 when no checkpoint completed for this long."""
    give_up_after_s: float = Field(default=300.0, gt=0)
    """Infrastructure patience: when the model registry (a reference.json to load) or the broker (a dead letter to
    deliver) has been failing for this long, the worker exits with status 3 so its supervisor restarts it."""
    reference_retry_s: float = Field(default=60.0, gt=0)
    """A model version whose reference.json could not be read is asked for again after this long."""
    session_timeout_s: float = Field(default=10.0, ge=6.0, le=300.0)
    """Consumer group session timeout: how long a crashed worker keeps its partitions before the group moves them
    (Faust's default is 60 s)."""
    commit_interval_s: float = Field(default=1.0, gt=0)
    """How often the worker commits the offsets of checkpointed records."""
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
    table_partitions: int | None = Field(default=None, ge=1)
    """Partitions of the per-partition state table; must equal those of `scores`, `scores.shadow` and `labels`.
    Empty: read from the broker at start (the three must agree)."""
    stats: MonitorSettings = Field(default_factory=MonitorSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)

    @property
    def faust_id(self) -> str:
        """The Faust app id: TOPICS_PREFIX + app_id (consumer group, changelog and merge topic prefix)."""
        return self.topics.prefix + self.app_id

    @property
    def merge_topic(self) -> str:
        """The internal single-partition topic where partitions send closed windows, progress and A/B counts."""
        return f"{self.faust_id}-merge"
