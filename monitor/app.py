"""The monitor's Faust application, built from settings (`create_app`).

Faust choices, and why (the feature processor's, docs/stream-processors.md, where they are the same):

- `processing_guarantee="at_least_once"`, agents with concurrency 1. A record's offset is acknowledged only
  after the checkpoint that holds its effect was handed to the producer; Faust flushes the producer before it
  commits. Replays are recognised (see partition.py), so effects are applied once.
- Faust's consumer reads `read_uncommitted` outside exactly-once mode: it may see a score of a scorer
  transaction that is later aborted. The scorer then scores the event again in a new transaction: that second
  score has the same event id and variant, so it is a duplicate to the monitor. The monitor's counts are those
  of the committed stream.
- Tables are in memory (`memory://`, RocksDB is not installed) and rebuilt from their changelogs at every start.
  The per-partition state table's changelog is compacted, rolls every minute and keeps tombstones 5 minutes
  (`CHANGELOG_CONFIG`), so what a restart replays does not grow with history; the merge table has one partition,
  like the merge topic.
- App id = `TOPICS_PREFIX + MONITOR_APP_ID`: consumer group, changelog prefix, merge topic prefix. The app gets
  an empty `env` so only `MonitorAppSettings` configures it (Faust reads `WEB_PORT`, `BROKER_URL`, … otherwise).
- Faust's web server serves `/metrics` and `/healthz` on `MONITOR_METRICS_PORT`.
- Dead letters (`monitor.dlq`) go through the app's producer, their delivery awaited before the record's
  acknowledgement is held. Giving up on infrastructure (`MONITOR_GIVE_UP_AFTER_S`) stops the worker the way SIGTERM
  does and the process exits with status 3 (`EXIT_INFRA`) for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import faust
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.agents import MERGE_TABLE, STATE_TABLE, RecordingStore, Runtime, Topics, install
from monitor.app_settings import MonitorAppSettings
from monitor.merge import Merger
from monitor.metrics import MonitorMetrics, default_metrics
from monitor.references import Loader, ReferenceBook, registry_loader
from streamscore.deadletters import DeadLetterWriter, faust_sender
from streamscore.errors import BrokerUnavailableError, ConfigError, StreamscoreError
from streamscore.exposition import prepare_exposition
from streamscore.failures import describe, env_name
from streamscore.faust_apps import faust_app as shared_faust_app
from streamscore.faust_apps import install_faust_sensors, install_health, running_loop_name, use_event_loop
from streamscore.health import Check, HealthPolicy
from streamscore.kafka import admin_client, missing_topic, wait_for_broker
from streamscore.logs import worker_logging_config
from streamscore.ports import ensure_free
from streamscore.registry import CHAMPION, AliasNotFoundError, Registry

log = logging.getLogger(__name__)

CHANGELOG_CONFIG = {
    "segment.ms": str(60 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(5 * 60 * 1000),
}
"""What a restart replays must not grow with history (issue 16). Compaction only touches closed segments: rolling
every minute and cleaning once 10 % of the log is dirty keeps the log near one record per live key (units within
maturity + retention, open windows, sampled accounts), as the feature processor's changelog does. Every expired unit
leaves a tombstone, kept `delete.retention.ms` after compaction (Kafka's default, a day, would make a restart after a
day at the demo's 300 events/s replay ~26 million of them); 5 minutes is far longer than a recovery takes — a
recovery slower than that could miss a delete and keep an expired unit, which the next expiry deletes again (its
counts come from the stored A/B counts, never from units). Applies to topics Faust creates: an existing changelog
keeps its configuration (`kafka-configs --alter` changes it)."""
MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_INFRA = 3
MERGE_RETENTION_MS = 24 * 3600 * 1000
"""The merge topic is transient: once a message is consumed its effect is in the merge table."""
DEAD_LETTER_TIMEOUT_S = 30.0
"""One attempt to deliver dead letters; failed attempts are retried until MONITOR_GIVE_UP_AFTER_S."""


@dataclass
class Monitor:
    """The Faust app and the parts the worker, the web pages and tests reach into."""

    app: Any
    runtime: Runtime
    merger: Merger
    settings: MonitorAppSettings
    exit_code: int | None = None
    """Set when the worker gave up on infrastructure; `run_worker` exits with it."""

    def give_up(self, reason: str) -> None:
        """Stop like SIGTERM does, then exit with EXIT_INFRA (see `run_worker`). Safe to call more than once."""
        if self.exit_code is not None:
            return
        self.exit_code = EXIT_INFRA
        log.critical("giving up (%s); stopping, exit status %d for a restart", reason, EXIT_INFRA)
        os.kill(os.getpid(), signal.SIGTERM)


def source_partitions(settings: MonitorAppSettings, timeout_s: float = 30.0) -> int:
    """The partition count shared by `scores`, `scores.shadow` and `labels` (read from the broker); the result
    topics must exist too (the broker creates no topic on its own)."""
    registry = settings.topics.registry()
    names = [registry.scores.name, registry.scores_shadow.name, registry.labels.name]
    metadata = admin_client(settings.kafka).list_topics(timeout=timeout_s)
    for spec in (registry.monitor_drift, registry.monitor_ab, registry.monitor_alerts, registry.monitor_dlq):
        if spec.name not in metadata.topics:
            raise missing_topic(settings.kafka, spec.name)
    counts = {}
    for name in names:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            raise missing_topic(settings.kafka, name)
        counts[name] = len(topic.partitions)
    if len(set(counts.values())) != 1:
        raise ConfigError(
            "TOPICS_PARTITIONS",
            f"the monitor joins these topics by account id, so they need the same partition count: {counts}",
        )
    return next(iter(counts.values()))


def check_registry(settings: MonitorAppSettings) -> dict[str, str]:
    """The registry's aliases. Drift is measured against the reference.json of the versions that score, so an
    unreachable registry, or one without a champion, stops the start with what to do."""
    # MLflow retries an unreachable tracking server 7 times with doubling pauses (over 4 minutes) before it
    # answers; the monitor retries reference loads itself (agents.Runtime.ensure_references), so a few seconds do.
    for variable, value in MLFLOW_RETRIES.items():
        os.environ.setdefault(variable, value)
    aliases = Registry(settings.registry).aliases()
    if CHAMPION not in aliases:
        raise AliasNotFoundError(settings.registry.model_name, CHAMPION)
    return aliases


def preflight(settings: MonitorAppSettings, timeout_s: float = 30.0) -> int:
    """What the monitor needs before it starts, each missing piece an error naming what to start: the broker
    (`streamscore infra up`), the source and result topics, the model registry with a champion (`streamscore
    train`). Returns the partition count of the source topics."""
    waited = wait_for_broker(settings.kafka, timeout_s)
    log.info("broker %s answered after %.1f s", settings.kafka.bootstrap_servers, waited)
    partitions = source_partitions(settings, timeout_s)
    merge_topic_ready(settings, timeout_s)
    aliases = check_registry(settings)
    log.info("registry %s: aliases %s", settings.registry.tracking_uri, aliases)
    return partitions


def merge_topic_ready(settings: MonitorAppSettings, timeout_s: float = 30.0) -> None:
    """Create the merge topic before the worker starts, and wait until the broker's metadata lists it. Faust
    creates its topics itself, but a new app (every demo run's monitor is one) joined its group a few milliseconds
    after creating the merge topic, while the metadata did not list it yet: the assignor ignored the topic and the
    merge agent got no partition until the next metadata refresh (5 minutes), so no window was ever published."""
    admin = admin_client(settings.kafka, quiet=True)
    topic = settings.merge_topic
    if topic not in admin.list_topics(timeout=timeout_s).topics:
        futures = admin.create_topics(
            [NewTopic(topic, 1, 1, config={"retention.ms": str(MERGE_RETENTION_MS)})], request_timeout=timeout_s
        )
        for future in futures.values():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    deadline = time.monotonic() + timeout_s
    while not admin.list_topics(topic=topic, timeout=timeout_s).topics[topic].partitions:
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                settings.kafka.bootstrap_servers, timeout_s, f"topic {topic} has no partition yet"
            )
        time.sleep(0.1)


def faust_app(settings: MonitorAppSettings, partitions: int) -> Any:
    return shared_faust_app(
        settings.faust_id,
        settings.kafka,
        client="monitor",
        partitions=partitions,
        web_port=settings.metrics_port,
        web_bind=settings.metrics_bind,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 5.0,
        offset_reset=settings.auto_offset_reset,
        store="memory://",
        state_dir=settings.state_dir,
        loop=use_event_loop(settings.event_loop, env_name(MonitorAppSettings, "event_loop")),
    )


def create_app(
    settings: MonitorAppSettings | None = None,
    *,
    loader: Loader | None = None,
    metrics: MonitorMetrics | None = None,
) -> Monitor:
    """The monitor's Faust app: the records and merge agents, their tables, the checkpoint timer, the web pages."""
    settings = settings or MonitorAppSettings()
    partitions = settings.table_partitions or source_partitions(settings)
    metrics = metrics or default_metrics()
    registry = settings.topics.registry()
    app = faust_app(settings, partitions)

    def raw_topic(*names: str, **kwargs: Any) -> Any:
        return app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **kwargs
        )

    topics = Topics(
        sources=raw_topic(registry.scores.name, registry.scores_shadow.name, registry.labels.name),
        merge=raw_topic(
            settings.merge_topic, partitions=1, internal=True, config={"retention.ms": str(MERGE_RETENTION_MS)}
        ),
        drift=raw_topic(registry.monitor_drift.name),
        ab=raw_topic(registry.monitor_ab.name),
        alerts=raw_topic(registry.monitor_alerts.name),
        kinds={registry.scores.name: "scores", registry.scores_shadow.name: "shadow", registry.labels.name: "labels"},
    )
    # JSON keys and values: what Faust's table recovery decodes a changelog with (it applies the table's own
    # serializer, json for str keys, whatever the schema says).
    schema: Any = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")
    state_table = app.Table(
        STATE_TABLE,
        partitions=partitions,
        schema=schema,
        extra_topic_configs=CHANGELOG_CONFIG,
        help="Per-partition monitor state: units, open windows, A/B counts, first-seen accounts (monitor.partition).",
    )
    merge_table = app.Table(
        MERGE_TABLE,
        partitions=1,
        schema=schema,
        extra_topic_configs=CHANGELOG_CONFIG,
        help="Windows being merged, partitions' progress, experiments' counts and sequential state (monitor.merge).",
    )
    book = ReferenceBook(
        loader or registry_loader(Registry(settings.registry)),
        categorical=settings.stats.categorical_features,
        retry_s=settings.reference_retry_s,
    )
    runtime = Runtime(
        app=app,
        settings=settings,
        partitions=partitions,
        state_table=state_table,
        merge_table=merge_table,
        topics=topics,
        book=book,
        metrics=metrics,
    )
    runtime.letters = DeadLetterWriter(
        faust_sender(app, registry.monitor_dlq.name, DEAD_LETTER_TIMEOUT_S),
        topic=registry.monitor_dlq.name,
        consumer_group=settings.faust_id,
        give_up_after_s=settings.give_up_after_s,
        on_written=lambda reason, n: metrics.dead_letters.labels(reason=reason.value).inc(n),
    )
    merger = Merger(RecordingStore(merge_table.data), book, settings.stats, look_interval_s=settings.look_interval_s)
    install(runtime, merger)
    monitor = Monitor(app=app, runtime=runtime, merger=merger, settings=settings)
    runtime.on_give_up = monitor.give_up
    _add_pages(monitor)
    if loader is None:
        _warm_references(monitor)
    stats = settings.stats
    window = f"{stats.window_seconds:g} s" if stats.window == "time" else f"{stats.window_events:,} events"
    log.info(
        "monitor app=%s partitions=%d windows=%s maturity=%gs checkpoint=%gs look=%gs web=%s:%d",
        settings.faust_id,
        partitions,
        window,
        stats.label_maturity_s,
        settings.checkpoint_interval_s,
        settings.look_interval_s,
        settings.metrics_bind,
        settings.metrics_port,
    )
    return monitor


def _add_pages(monitor: Monitor) -> None:
    app, runtime = monitor.app, monitor.runtime
    prepare_exposition()
    install_faust_sensors(app, runtime.metrics.registry, "streamscore_monitor_faust")

    @app.page("/metrics")  # type: ignore[untyped-decorator]
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(runtime.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def own_checks() -> list[Check]:
        state = runtime.health()
        age = state["last_checkpoint_age_s"]
        # Not stalls for the watchdog: rebuilding follows recovery, and a checkpoint that cannot be written shows as
        # commits not advancing (the offsets wait for it).
        diverged = state["diverged"]
        return [
            Check(
                "partition states", bool(state["ready"]), diverged or "rebuilding from the state table", stalls=False
            ),
            Check("checkpoints", bool(state["healthy"]), diverged or f"last checkpoint {age} s ago", stalls=False),
        ]

    settings, registry = monitor.settings, monitor.settings.topics.registry()
    install_health(
        app,
        kafka=settings.kafka,
        group=settings.faust_id,
        topics=[registry.scores.name, registry.scores_shadow.name, registry.labels.name, settings.merge_topic],
        policy=HealthPolicy(
            loop_stall_s=settings.loop_stall_s,
            ready_commit_age_s=settings.ready_commit_age_s,
            stall_exit_s=settings.stall_exit_s,
            lag_interval_s=settings.lag_interval_s,
        ),
        gauges=runtime.metrics.health,
        extra=own_checks,
        details=runtime.health,
        on_stall=monitor.give_up,
    )


def _warm_references(monitor: Monitor) -> None:
    """Read the references of the versions the registry's aliases point at while the worker starts (importing
    MLflow alone takes seconds), so the first scores do not wait for it. Failures only delay that to first use."""
    runtime = monitor.runtime

    @monitor.app.task  # type: ignore[untyped-decorator]
    async def warm_references() -> None:
        registry = Registry(monitor.settings.registry)
        try:
            aliases = await asyncio.get_running_loop().run_in_executor(None, registry.aliases)
            await runtime.ensure_references(set(aliases.values()))
            log.info("references of model versions %s loaded (aliases %s)", sorted(set(aliases.values())), aliases)
        except Exception as exc:  # noqa: BLE001 - a warm-up only
            log.warning("could not read the registry's aliases at start (%s); references load on first use", exc)


def run(settings: MonitorAppSettings | None = None, *, loglevel: str = "info", startup_timeout_s: float = 30.0) -> int:
    """Check what the monitor needs (`preflight`), then run the worker until SIGTERM / SIGINT. Returns the exit code
    of a failed start: 2 for a setting to fix, 3 for something to start (a supervisor may retry)."""
    try:
        settings = settings or MonitorAppSettings()
    except ValueError as exc:
        log.error("invalid monitor settings: %s", describe(exc).line)
        return EXIT_CONFIG
    try:
        partitions = preflight(settings, startup_timeout_s)
        monitor = create_app(settings.model_copy(update={"table_partitions": partitions}))
    except StreamscoreError as exc:
        log.error("cannot start: %s", exc.message)
        return EXIT_INFRA if exc.retryable else EXIT_CONFIG
    run_worker(monitor, loglevel)
    return EXIT_OK


def run_worker(monitor: Monitor, loglevel: str = "info") -> None:
    """Run the Faust worker until SIGTERM / SIGINT (graceful stop), then exit the process: with EXIT_INFRA when the
    monitor gave up on infrastructure, else with Faust's status."""
    # Faust's web server (metrics, health) binds in the worker's loop, where a taken port is a traceback: check first.
    settings = monitor.settings
    ensure_free(settings.metrics_port, env_name(MonitorAppSettings, "metrics_port"), settings.metrics_bind)
    loop = monitor.app.loop  # chosen when the app was made (faust_app)
    worker = faust.Worker(
        monitor.app, loop=loop, loglevel=loglevel, quiet=True, logging_config=worker_logging_config(loglevel)
    )
    log.info("monitor event loop: %s", running_loop_name(worker.loop))
    try:
        worker.execute_from_commandline()
    except SystemExit:
        # mode's worker exits through sys.exit (0 after a graceful stop): a give-up must still say "restart me".
        if monitor.exit_code is not None:
            sys.exit(monitor.exit_code)
        raise
    if monitor.exit_code is not None:
        sys.exit(monitor.exit_code)
