"""How our Faust services (the feature processor, the monitor) are built: the same guarantees and local-stack
choices for both, aiokafka's URLs and credentials from the `KafkaSettings` the librdkafka clients use, and their
health (`install_health`: liveness, readiness, lag gauges, the watchdog; the rules are in `streamscore.health`).
Imported by the Faust apps only (it imports faust)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry

from streamscore.errors import ConfigError
from streamscore.health import (
    EXIT_INFRA,
    Check,
    CommittedLagReader,
    GroupView,
    HealthGauges,
    HealthPolicy,
    LagPoller,
    Progress,
    Verdict,
    Watchdog,
    group_view,
    liveness,
    readiness,
    verdict_body,
)
from streamscore.lag import GroupLag
from streamscore.settings import KafkaSettings

log = logging.getLogger(__name__)

EVENT_LOOPS = ("uvloop", "asyncio")
"""The event loops a worker can run on (`FEATURES_EVENT_LOOP`, `MONITOR_EVENT_LOOP`)."""

HEARTBEAT_INTERVAL_S = 1.0
"""How often the event loop stamps its heartbeat (liveness and the watchdog read it)."""


def use_event_loop(name: str, variable: str = "event loop") -> asyncio.AbstractEventLoop:
    """A new event loop of `name` (one of EVENT_LOOPS), set as the thread's loop: give it to the app when it is made
    (`faust_app(…, loop=…)`) and run the worker on the app's loop (`faust.Worker(app, loop=app.loop)`).

    uvloop by default: every record a Faust worker consumes passes through several asyncio hand-offs (fetcher →
    conductor → stream queue → agent, acks, the changelog producer's futures); uvloop makes them cheaper (~8 % less
    CPU per event in the feature processor's drain, docs/benchmarks.md). `asyncio` is the standard library's loop,
    for a platform without uvloop's wheels."""
    if name not in EVENT_LOOPS:
        raise ConfigError(variable, f"unknown event loop {name!r}", f"use one of {', '.join(EVENT_LOOPS)}")
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def running_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The event loop a worker runs on, for its start-up log line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def broker_urls(kafka: KafkaSettings) -> list[str]:
    return [f"kafka://{host.strip()}" for host in kafka.bootstrap_servers.split(",") if host.strip()]


def broker_credentials(kafka: KafkaSettings) -> Any:
    """aiokafka credentials matching the librdkafka settings of KafkaSettings (None for PLAINTEXT)."""
    protocol = kafka.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context() if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ConfigError("KAFKA_SASL_USERNAME", f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    raise ConfigError("KAFKA_SECURITY_PROTOCOL", f"unknown protocol {kafka.security_protocol!r}")


PRODUCER_BATCH_BYTES = 512 * 1024
"""Below Faust's 1 MB request limit and the broker's default 1 MB record-batch limit (`message.max.bytes`)."""


def faust_app(
    app_id: str,
    kafka: KafkaSettings,
    *,
    client: str,
    partitions: int,
    web_port: int,
    web_bind: str,
    offset_reset: str = "earliest",
    state_dir: Path | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    **options: Any,
) -> Any:
    """A Faust app as our services run one; `options` adds Faust settings (commit cadence, store, …).

    - `loop` (`use_event_loop`): the loop the worker will run, given before anything of the app is made. Faust's
      channels, tables and their flow-controlled queues keep the app's loop as it is when they are made; a loop
      chosen only when the worker starts left them on the default loop, and a record handed to a stream while its
      queue was suspended (any rebalance with a full queue) failed with "Future attached to a different loop" — the
      record was lost to the stream and the monitor's fetcher crashed;

    - at-least-once, a new group starting from the earliest record (`offset_reset`), `stream_wait_empty=False`: on a
      rebalance or at shutdown Faust commits what is acknowledged and does not wait for queued events (the
      partition's next owner replays them, which the services' idempotence makes harmless);
    - an empty `env`: Faust reads its own variables (`WEB_PORT`, `BROKER_URL`, …) and lets them override the
      arguments, so only our settings configure it;
    - replication factor 1, no leader-election topic, no standby replicas: the single-node local stack;
    - raw keys and values: the services decode the contracts themselves (dead letters, strict validation);
    - Faust's web server (in the worker's event loop) serves the service's `/metrics` and `/healthz`;
    - its local state in `state_dir` when given (Faust's default is `<app id>-data` in the working directory);
    - producer batches of up to `PRODUCER_BATCH_BYTES`, lz4-compressed: aiokafka keeps one request in flight per
      partition, so with Faust's default 16 KiB batches a monitor checkpoint of ~2 000 records (~1 MB) to one
      changelog partition took ~60 round trips — 2 to 4.5 s a checkpoint under load, the records agent waiting on
      it (measured with `make bench`, docs/monitor.md).
    """
    if state_dir is not None:
        state_dir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates the folder, not its parents
        options["datadir"] = str(state_dir)
    return faust.App(
        app_id,
        loop=loop,
        env={},
        autodiscover=False,
        broker=broker_urls(kafka),
        broker_credentials=broker_credentials(kafka),
        broker_client_id=f"{kafka.client_id_prefix}-{client}",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset=offset_reset,
        stream_wait_empty=False,
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        table_standby_replicas=0,
        web_enabled=True,
        web_port=web_port,
        web_bind=web_bind,
        key_serializer="raw",
        value_serializer="raw",
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_compression_type="lz4",
        **options,
    )


# --- Faust's own metrics --------------------------------------------------------------------------------------------

_FAUST_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, FaustMetrics]] = weakref.WeakKeyDictionary()


def install_faust_sensors(app: Any, registry: CollectorRegistry, prefix: str) -> None:
    """Faust's own Prometheus sensors (`faust.sensors.prometheus`) in the service's registry, so its `/metrics`
    serves them beside the service's metrics: records in and out per topic, rebalances in progress and their
    latency (`…_rebalance_done_latency`, `…_total_rebalances_recovering` while tables recover), assignment latency,
    commit latency, committed and end offsets per partition, table operations, web requests. Names are Faust's under
    `prefix` (e.g. `streamscore_features_faust_consumer_commit_latency`), its latencies in milliseconds (Faust's
    buckets, not our base unit).

    Faust's `setup_prometheus_sensors` would register them again for every app and add a second `/metrics` page; the
    metrics are made once per registry and prefix here (tests build several apps on one registry) and the
    service keeps its own page."""
    made = _FAUST_METRICS.setdefault(registry, {})
    metrics = made.get(prefix)
    if metrics is None:
        metrics = made[prefix] = FaustMetrics.create(registry, prefix)
    app.monitor = PrometheusMonitor(metrics=metrics)


# --- health ---------------------------------------------------------------------------------------------------------


class _CommitSensor(faust.Sensor):
    """Records when an offset commit starts and returns: a commit that does not return (aiokafka retries a
    commit without a deadline while the coordinator is away) is what the watchdog bounds."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def on_commit_initiated(self, consumer: Any) -> Any:
        self.progress.commit_since = time.monotonic()
        return None

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        self.progress.commit_since = None


@dataclass
class ServiceHealth:
    """A Faust service's health: what `/livez`, `/readyz` and `/healthz` answer, and the watchdog's exit status."""

    app: Any
    group: str
    topics: tuple[str, ...]
    policy: HealthPolicy
    gauges: HealthGauges
    kafka: KafkaSettings
    extra: Callable[[], Iterable[Check]] = lambda: ()
    """The service's own readiness checks (online-store pushes, checkpoints)."""
    details: Callable[[], dict[str, object]] = dict
    """Fields the service adds to its health pages (what its callers read)."""
    progress: Progress = field(default_factory=Progress)
    exit_code: int | None = None
    """EXIT_INFRA once the watchdog stopped the worker; the service's `run_worker` exits with it."""
    on_stall: Callable[[str], None] | None = None
    """How to stop gracefully; default: SIGTERM to this process (Faust's graceful stop) after noting `exit_code`."""
    watchdog: Watchdog | None = None
    poller: LagPoller | None = None

    def readiness(self, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        verdict = readiness(self.progress, self.policy, now, self.extra())
        self.gauges.ready.set(1.0 if verdict.ok else 0.0)
        return verdict

    def liveness(self, now: float | None = None) -> Verdict:
        return liveness(self.progress, self.policy, time.monotonic() if now is None else now)

    def body(self, verdict: Verdict) -> dict[str, object]:
        p = self.progress
        group = p.group
        return verdict_body(
            verdict,
            {
                **self.details(),
                "ready": verdict.ok,
                "live": self.liveness().ok,
                "recovered": p.recovered,
                "rebalancing": p.rebalancing_since is not None,
                "assigned_partitions": sorted(f"{t}:{n}" for t, n in p.assigned),
                "lag": p.pending_lag if group is not None else None,
                "group_lag": group.total_lag if group is not None else None,
                "group_state": group.state if group is not None else None,
            },
        )

    def stop_for_restart(self, reason: str) -> None:
        self.exit_code = EXIT_INFRA
        if self.on_stall is not None:
            self.on_stall(reason)
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    # --- the broker's view -----------------------------------------------------------------------------------

    def on_lag(self, lag: GroupLag) -> None:
        view = group_view(lag, self.topics, self.progress.assigned)
        self.progress.on_group(view, time.monotonic())
        self._publish(lag, view)

    def on_lag_error(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"[:300]
        if self.progress.lag_error is None:
            log.warning("could not read the lag of group %s: %s", self.group, message)
        self.progress.lag_error = message

    def _publish(self, lag: GroupLag, view: GroupView) -> None:
        g = self.gauges
        totals = dict.fromkeys(self.topics, 0)
        for p in lag.partitions:
            if p.topic not in totals:
                continue
            labels = {"topic": p.topic, "partition": str(p.partition)}
            if p.lag is not None:
                g.lag_offsets.labels(**labels).set(p.lag)
                totals[p.topic] += p.lag
            if p.lag_seconds is not None:
                g.lag_seconds.labels(**labels).set(p.lag_seconds)
        for topic, total in totals.items():
            g.group_lag_offsets.labels(topic=topic).set(total)
        g.lag_read_timestamp.set(time.time())

    # --- the event loop's side ---------------------------------------------------------------------------------

    def beat(self) -> None:
        """One heartbeat from the event loop: its turn, recovery, rebalance and assignment."""
        p, app = self.progress, self.app
        now = time.monotonic()
        p.tick = now
        p.recovered = bool(app.tables.recovery.completed.is_set())
        if app.rebalancing:
            p.rebalancing_since = p.rebalancing_since or now
        else:
            p.rebalancing_since = None
        try:
            assignment = app.consumer.assignment()
        except Exception:  # noqa: BLE001 - the consumer is not started yet
            assignment = set()
        p.assigned = frozenset((tp.topic, tp.partition) for tp in assignment if tp.topic in self.topics)
        self.gauges.assigned_partitions.set(len(p.assigned))

    def start_threads(self) -> None:
        if self.watchdog is not None:
            return
        reader: list[CommittedLagReader] = []

        def read() -> GroupLag:
            if not reader:
                reader.append(CommittedLagReader(self.kafka, self.group, self.topics, self.policy.lag_timeout_s))
            try:
                # Owners (an admin request to the coordinator) only while this worker holds no input partition.
                return reader[0].read(owners=not self.progress.assigned)
            except Exception:
                # A fresh client after a failure: measured, a reader whose broker was SIGKILLed and restarted kept
                # timing out after the broker was back (50 s, until the watchdog stopped the healthy worker).
                reader.pop().close()
                raise

        self.poller = LagPoller(read, self.on_lag, self.on_lag_error, self.policy.lag_interval_s)
        self.watchdog = Watchdog(self.progress, self.policy, self.readiness, self.stop_for_restart)
        self.poller.start()
        self.watchdog.start()

    def stop_threads(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        if self.watchdog is not None:
            self.watchdog.stop()


def install_health(
    app: Any,
    *,
    kafka: KafkaSettings,
    group: str,
    topics: Iterable[str],
    policy: HealthPolicy,
    gauges: HealthGauges,
    extra: Callable[[], Iterable[Check]] = lambda: (),
    details: Callable[[], dict[str, object]] = dict,
    on_stall: Callable[[str], None] | None = None,
) -> ServiceHealth:
    """Give a Faust app its health: the heartbeat task, the commit sensor, the lag poller and the watchdog threads
    (started with the worker), and the pages `/livez` (200 or 503), `/readyz` and `/healthz` (the same readiness;
    `/healthz` for the callers that probe that name). `group` is the app id (the consumer group), `topics` the
    input topics whose lag is published."""
    health = ServiceHealth(
        app=app,
        group=group,
        topics=tuple(topics),
        policy=policy,
        gauges=gauges,
        kafka=kafka,
        extra=extra,
        details=details,
        on_stall=on_stall,
    )
    app.sensors.add(_CommitSensor(health.progress))

    @app.task  # type: ignore[untyped-decorator]
    async def heartbeat() -> None:
        health.start_threads()
        try:
            while True:
                health.beat()
                await asyncio.sleep(HEARTBEAT_INTERVAL_S)
        finally:
            # Cancelled when the worker stops: no more lag reads; the watchdog stays, so a stop that waits on the
            # broker (a final commit) still ends within the grace period.
            if health.poller is not None:
                health.poller.stop()
            if health.watchdog is not None:
                health.watchdog.stopping()

    async def ready_page(web: Any, request: Any) -> Any:
        verdict = health.readiness()
        return web.json(health.body(verdict), status=200 if verdict.ok else 503)

    @app.page("/livez")  # type: ignore[untyped-decorator]
    async def livez(web: Any, request: Any) -> Any:
        verdict = health.liveness()
        return web.json(verdict_body(verdict, {"live": verdict.ok}), status=200 if verdict.ok else 503)

    app.page("/readyz")(ready_page)
    app.page("/healthz")(ready_page)
    return health
