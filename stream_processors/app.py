"""The Faust application of the feature processor, built from settings (`create_app`).

Faust choices, and why:

- `processing_guarantee="at_least_once"`, one agent instance (concurrency 1): offsets are acknowledged
  only after the pushed snapshot is in the online store; `apply_transaction` is idempotent by event_id,
  so replays are harmless (see accounts/agents.py).
- `stream_wait_empty=False`: on a rebalance or at shutdown Faust commits what is acknowledged and does
  not wait for events still queued for a push (they would wait for Redis). Those events are replayed by
  the partition's next owner, which is harmless for the same reason.
- The app id is `TOPICS_PREFIX + FEATURES_APP_ID`: it is the consumer group and the prefix of the
  table's changelog topic, so tests and environments sharing a broker stay apart. The broker does not
  create topics on its own (`auto.create.topics.enable=false`); Faust declares its changelog topic itself
  through the admin API (replication factor 1 here: `topic_replication_factor`). The leader-election
  topic is disabled (no `on_leader` timers).
- Faust reads its own environment variables (`WEB_PORT`, `BROKER_URL`, …) and lets them override the
  arguments: the app gets an empty `env` so settings come from `StreamProcessorSettings` only.
- Faust's web server (aiohttp, in the worker's event loop) serves `/metrics` (Prometheus text) and
  `/healthz` on `FEATURES_METRICS_PORT`; there is no second HTTP server.
- `memory://` table store: RocksDB is not installed. The table is rebuilt from the compacted changelog at
  every start (measured in docs/stream-processors.md).
- Dead letters (`features.dlq`) go through the app's producer and their delivery is awaited before the event
  is acknowledged. Giving up on infrastructure (`FEATURES_GIVE_UP_AFTER_S`) stops the worker the way SIGTERM
  does (acknowledged offsets committed, queued snapshots drained for a while) and the process exits with
  status 3 (`EXIT_INFRA`), so its supervisor restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_processors.accounts.agents import TABLE_NAME, Edge, SeedStates, install
from stream_processors.accounts.evict import Sweeper
from stream_processors.accounts.pushing import FeastSink, FeatureSink, PushPolicy, SnapshotBatcher
from stream_processors.accounts.restore import REALTIME_VIEW, Restorer
from stream_processors.accounts.scored import ScoredWatermark
from stream_processors.metrics import FeatureMetrics, default_metrics
from stream_processors.settings import StreamProcessorSettings
from streamscore.deadletters import DeadLetterWriter, faust_sender
from streamscore.exposition import prepare_exposition
from streamscore.failures import env_name
from streamscore.faust_apps import faust_app as shared_faust_app
from streamscore.faust_apps import install_faust_sensors, install_health, running_loop_name, use_event_loop
from streamscore.health import Check, HealthPolicy
from streamscore.kafka import admin_client, consumer_config, missing_topic
from streamscore.logs import worker_logging_config
from streamscore.ports import ensure_free
from streamscore.starts import KafkaPositions, StartGuard

log = logging.getLogger(__name__)

EXIT_INFRA = 3
"""Exit status after giving up on infrastructure (as the scorer's and the monitor's): a supervisor restarts it."""
DEAD_LETTER_TIMEOUT_S = 30.0
"""One attempt to deliver dead letters; failed attempts are retried until FEATURES_GIVE_UP_AFTER_S."""

CHANGELOG_CONFIG = {"segment.ms": str(60 * 1000), "min.cleanable.dirty.ratio": "0.1"}
"""The changelog is compacted (one record per account survives), but the broker only compacts closed
segments, and the default segment lives 7 days. Rolling every minute and cleaning once 10 % of the log is
dirty keeps what a restart replays close to one record per account instead of one per event (with hourly
segments, back-to-back restarts replayed ~190 000 records and took minutes)."""


@dataclass
class FeatureProcessor:
    """The Faust app and the parts the worker, the web pages and tests reach into."""

    app: Any
    table: Any
    batcher: SnapshotBatcher
    metrics: FeatureMetrics
    settings: StreamProcessorSettings
    exit_code: int | None = None
    """Set when the worker gave up on infrastructure; `run_worker` exits with it."""
    letters: DeadLetterWriter | None = field(default=None, repr=False)
    restorer: Restorer | None = field(default=None, repr=False)
    sweeper: Sweeper | None = field(default=None, repr=False)
    """Drops the rows of accounts that can only start afresh (accounts/evict.py)."""
    """Restores an emptied online store (Redis only); `restorer.restoring` says whether it is at it."""

    def give_up(self, reason: str) -> None:
        """Infrastructure stayed down past FEATURES_GIVE_UP_AFTER_S: stop like SIGTERM does, then exit with
        EXIT_INFRA (see `run_worker`). Safe to call more than once."""
        if self.exit_code is not None:
            return
        self.exit_code = EXIT_INFRA
        log.critical("giving up (%s); stopping, exit status %d for a restart", reason, EXIT_INFRA)
        os.kill(os.getpid(), signal.SIGTERM)


def transactions_partitions(settings: StreamProcessorSettings, timeout_s: float = 30.0) -> int:
    """The partition count of the transactions topic, from the broker (the table must match it)."""
    registry = settings.topics.registry()
    name = registry.transactions.name
    metadata = admin_client(settings.kafka).list_topics(timeout=timeout_s)
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None or not topic.partitions:
        raise missing_topic(settings.kafka, name)
    # The broker creates no topic on its own: without it every dead letter would fail until the worker gives up.
    if registry.features_dlq.name not in metadata.topics:
        raise missing_topic(settings.kafka, registry.features_dlq.name)
    return len(topic.partitions)


def changelog_topic_name(settings: StreamProcessorSettings) -> str:
    """Faust's name for the account-state table's changelog topic."""
    return f"{settings.faust_id}-{TABLE_NAME}-changelog"


def faust_app(settings: StreamProcessorSettings, partitions: int) -> Any:
    return shared_faust_app(
        settings.faust_id,
        settings.kafka,
        client="features",
        partitions=partitions,
        web_port=settings.metrics_port,
        web_bind=settings.metrics_bind,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 5.0,
        broker_commit_every=settings.commit_every,
        stream_processing_timeout=settings.stream_processing_timeout_s,
        store=settings.store,
        offset_reset=settings.auto_offset_reset,
        state_dir=settings.state_dir,
        loop=use_event_loop(settings.event_loop, env_name(StreamProcessorSettings, "event_loop")),
    )


def create_app(
    settings: StreamProcessorSettings | None = None,
    *,
    sink: FeatureSink | None = None,
    metrics: FeatureMetrics | None = None,
) -> FeatureProcessor:
    """The feature processor's Faust app: the accounts agent, its table, the push timer, the web pages."""
    settings = settings or StreamProcessorSettings()
    partitions = settings.table_partitions or transactions_partitions(settings)
    metrics = metrics or default_metrics()
    if sink is None:
        sink = FeastSink.open(settings.feast, settings.push_writer)
    policy = PushPolicy(
        batch_size=settings.push_batch_size,
        max_delay_s=settings.push_max_delay_ms / 1000.0,
        hold_s=settings.push_hold_ms / 1000.0,
        max_pending_events=settings.max_pending_events,
        retry_initial_s=settings.push_retry_initial_ms / 1000.0,
        retry_max_s=settings.push_retry_max_ms / 1000.0,
        unhealthy_after_s=settings.unhealthy_after_s,
        give_up_after_s=settings.give_up_after_s,
    )
    app = faust_app(settings, partitions)
    dlq = settings.topics.registry().features_dlq.name
    letters = DeadLetterWriter(
        faust_sender(app, dlq, DEAD_LETTER_TIMEOUT_S),
        topic=dlq,
        consumer_group=settings.faust_id,
        give_up_after_s=settings.give_up_after_s,
        retry_initial_s=policy.retry_initial_s,
        retry_max_s=policy.retry_max_s,
        on_written=lambda reason, n: metrics.dead_letters.labels(reason=reason.value).inc(n),
    )
    watermark = None
    if settings.publish_after_group:
        watermark = ScoredWatermark(
            admin_client(settings.kafka, quiet=True),
            settings.publish_after_group,
            settings.topics.registry().transactions.name,
        )
        watermark.start()
    batcher = SnapshotBatcher(
        sink,
        policy,
        metrics,
        letters=letters,
        gate=watermark.scored if watermark is not None else None,
        gate_max_wait_s=settings.publish_max_wait_ms / 1000.0,
    )

    topic = app.topic(
        settings.topics.registry().transactions.name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    table = app.Table(
        TABLE_NAME,
        partitions=partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        extra_topic_configs=CHANGELOG_CONFIG,
        help="Per-account real-time state (streamscore.features.AccountState.as_dict()).",
    )
    processor = FeatureProcessor(
        app=app, table=table, batcher=batcher, metrics=metrics, settings=settings, letters=letters
    )
    batcher.on_give_up = processor.give_up
    window = settings.contract.window()
    seed = SeedStates.read(settings.seed_path) if settings.seed_path is not None else SeedStates()
    # Batches write table rows with an explicit changelog partition into the memory store; a persistent store files
    # a row under the partition of the event being processed, so it folds event by event.
    batch_size = settings.stream_batch_size if settings.store == "memory://" else 1
    transactions = settings.topics.registry().transactions.name
    # Faust's at-least-once consumer reads uncommitted data (aiokafka's default): so does the check of a gap.
    positions = KafkaPositions(
        admin_client(settings.kafka, quiet=True),
        consumer_config(settings.kafka, "unused", "features-starts", read_committed=False),
        settings.faust_id,
    )
    edge = Edge(
        app,
        table,
        batcher,
        metrics,
        letters,
        processor.give_up,
        window=window,
        seed=seed,
        batch_size=batch_size,
        starts=StartGuard(positions, lambda tp, offset: app.consumer.seek(TP(*tp), offset), processor.give_up),
    )
    batcher.before_push = edge.send_changelog

    def forget(account: str) -> None:
        edge.live.drop(account)
        edge.dirty.pop(account, None)

    processor.sweeper = Sweeper(
        table,
        partitions,
        lambda: _assigned(app, transactions),
        edge.received,
        window.max_behind_s,
        forget=forget,
        on_evicted=metrics.rows_evicted.inc,
    )
    install(app, topic, edge, max_wait_s=settings.stream_batch_ms / 1000.0)
    _add_timers(processor)
    _add_restorer(processor, sink, topic.get_topic_name(), partitions)
    _add_pages(processor)
    log.info(
        "feature processor app=%s topic=%s partitions=%d batch=%d delay_ms=%d web=%s:%d",
        settings.faust_id,
        topic.get_topic_name(),
        partitions,
        settings.push_batch_size,
        settings.push_max_delay_ms,
        settings.metrics_bind,
        settings.metrics_port,
    )
    return processor


def _assigned(app: Any, topic: str) -> set[int]:
    """The partitions of `topic` assigned to this worker now."""
    return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}


def _add_restorer(processor: FeatureProcessor, sink: FeatureSink, topic: str, partitions: int) -> None:
    """The timer that finds an emptied online store (a Redis restart) and loads it again (accounts/restore.py)."""
    if not isinstance(sink, FeastSink):
        return
    from feature_repo.batch import batch_range
    from feature_repo.layout import MERCHANT_VIEW, PROFILE_VIEW
    from feature_repo.store import OnlineMarks, materialize

    marks = OnlineMarks.of(sink.store)
    if marks is None:
        return  # SQLite: it does not come back empty
    settings, app = processor.settings, processor.app
    store = sink.store

    def load(views: Sequence[str]) -> None:
        first, last = batch_range(settings.feast.data_dir)
        materialize(store, first, last, views=views)

    restorer = Restorer(
        marks,
        processor.batcher,
        processor.metrics,
        partitions,
        lambda: _assigned(app, topic),
        lambda: processor.table.data,
        materialize=load if settings.restore_views else None,
        views=(PROFILE_VIEW, MERCHANT_VIEW, REALTIME_VIEW),
    )
    processor.restorer = restorer

    @app.timer(interval=settings.restore_check_interval_s, name="restore-online-store")  # type: ignore[untyped-decorator]
    async def restore_online_store() -> None:
        # Only a recovered table knows every account of its partitions.
        if app.tables.recovery.completed.is_set() and not app.rebalancing and not app.should_stop:
            await restorer.check()


def _add_timers(processor: FeatureProcessor) -> None:
    app, batcher = processor.app, processor.batcher
    # A few checks per delay: a row waits at most max_delay plus a quarter of it.
    interval = max(batcher.policy.max_delay_s / 4.0, 0.005)

    @app.timer(interval=interval, name="push-due-snapshots")  # type: ignore[untyped-decorator]
    async def push_due_snapshots() -> None:
        batcher.kick()

    sweeper = processor.sweeper
    if sweeper is not None:

        @app.timer(interval=processor.settings.evict_interval_s, name="evict-idle-accounts")  # type: ignore[untyped-decorator]
        async def evict_idle_accounts() -> None:
            # Only a recovered table, whose partitions are settled.
            if app.tables.recovery.completed.is_set() and not app.rebalancing and not app.should_stop:
                await sweeper.sweep()
                processor.metrics.table_rows.set(len(sweeper.table.data))

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def drain_on_shutdown(sender: Any, **kwargs: Any) -> None:
        # The consumer is stopped: what is still queued is pushed now (its offsets are not committed, a
        # restart replays those events, harmlessly).
        if batcher.pending_rows:
            log.info("pushing %d queued snapshots before shutdown", batcher.pending_rows)
            if not await batcher.drain(processor.settings.shutdown_drain_s):
                log.warning("%d snapshots were not pushed at shutdown; a restart replays them", batcher.pending_rows)
        batcher.close()


def _add_pages(processor: FeatureProcessor) -> None:
    app, batcher, metrics = processor.app, processor.batcher, processor.metrics
    prepare_exposition()
    install_faust_sensors(app, metrics.registry, "streamscore_features_faust")

    @app.page("/metrics")  # type: ignore[untyped-decorator]
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def pushes() -> list[Check]:
        push = batcher.health()
        # Not a stall for the watchdog, nor are the commits it holds back: the processor gives up on the online store
        # itself (FEATURES_GIVE_UP_AFTER_S).
        return [Check("online store pushes", push.healthy, push.last_error or "", stalls=False, holds_offsets=True)]

    settings = processor.settings
    install_health(
        app,
        kafka=settings.kafka,
        group=settings.faust_id,
        topics=[settings.topics.registry().transactions.name],
        policy=HealthPolicy(
            loop_stall_s=settings.loop_stall_s,
            ready_commit_age_s=settings.ready_commit_age_s,
            stall_exit_s=settings.stall_exit_s,
            lag_interval_s=settings.lag_interval_s,
            exit_grace_s=settings.shutdown_drain_s + 20.0,
        ),
        gauges=metrics.health,
        extra=pushes,
        details=lambda: batcher.health().as_dict(),
        on_stall=processor.give_up,
    )


def run_worker(processor: FeatureProcessor, loglevel: str = "info") -> None:
    """Run the Faust worker until SIGTERM / SIGINT (graceful stop), then exit the process: with EXIT_INFRA when
    the processor gave up on infrastructure, else with Faust's status."""
    # Faust's web server (metrics, health) binds in the worker's loop, where a taken port is a traceback: check first.
    settings = processor.settings
    ensure_free(settings.metrics_port, env_name(StreamProcessorSettings, "metrics_port"), settings.metrics_bind)
    loop = processor.app.loop  # chosen when the app was made (faust_app)
    worker = faust.Worker(
        processor.app, loop=loop, loglevel=loglevel, quiet=True, logging_config=worker_logging_config(loglevel)
    )
    log.info("feature processor event loop: %s", running_loop_name(worker.loop))
    try:
        worker.execute_from_commandline()
    except SystemExit:
        # mode's worker exits through sys.exit (status 0 after a graceful stop, 1 after a crash): a give-up's
        # graceful stop must still say "restart me".
        if processor.exit_code is not None:
            sys.exit(processor.exit_code)
        raise
    if processor.exit_code is not None:
        sys.exit(processor.exit_code)
