"""`streamscore monitor` (run the monitor's Faust worker) and `streamscore report` (the latest drift windows and
A/B looks, read back from Kafka, in plain words). The work happens in `monitor`; this module only wires settings
and options to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console

from monitor.app_settings import MonitorAppSettings
from monitor.operating import OperatingPointView, operating_points
from monitor.settings import MonitorSettings
from streamscore.failures import env_name
from streamscore.kafka import wait_for_broker
from streamscore.ports import ensure_free
from streamscore.registry import Registry, RegistrySettings
from streamscore.settings import KafkaSettings, TopicSettings
from streamscore.topics import TopicRegistry
from streamscore_cli.console import console, friendly_errors, load_settings

if TYPE_CHECKING:  # Faust, scipy and numpy load in the commands that use them, not for `--help`
    from monitor.reader import Results


def monitor(
    window_seconds: float | None = typer.Option(
        None, "--window-seconds", help="Size of the drift windows in seconds of event time. [MONITOR_WINDOW_SECONDS]"
    ),
    maturity_s: float | None = typer.Option(
        None,
        "--maturity-s",
        help="Seconds before a transaction counts in the A/B statistics. [MONITOR_LABEL_MATURITY_S]",
    ),
    port: int | None = typer.Option(None, "--port", help="HTTP port of /metrics and /healthz. [MONITOR_METRICS_PORT]"),
    app_id: str | None = typer.Option(None, "--app-id", help="Faust app id = consumer group. [MONITOR_APP_ID]"),
    connect_timeout: float = typer.Option(
        30.0, "--connect-timeout", min=1.0, help="Seconds to wait for the broker before giving up."
    ),
    loglevel: str = typer.Option("info", "--loglevel", help="Log level of the worker: debug, info, warning, error."),
) -> None:
    """Run the monitor: scores, shadow scores and labels → drift windows, A/B looks and alerts (monitor.* topics)."""
    from monitor.app import create_app, preflight, run_worker

    with friendly_errors():
        stats = load_settings(MonitorSettings, {"window_seconds": window_seconds, "label_maturity_s": maturity_s})
        settings = load_settings(MonitorAppSettings, {"metrics_port": port, "app_id": app_id, "stats": stats})
        ensure_free(settings.metrics_port, env_name(MonitorAppSettings, "metrics_port"), settings.metrics_bind)
        partitions = preflight(settings, connect_timeout)
        instance = create_app(settings.model_copy(update={"table_partitions": partitions}))
    registry = settings.topics.registry()
    windows = f"{stats.window_seconds:g} s" if stats.window == "time" else f"{stats.window_events:,} events"
    console.print(
        f"[green]✓[/] monitor [bold]{settings.faust_id}[/] reading {registry.scores.name}, "
        f"{registry.scores_shadow.name} and {registry.labels.name} from {settings.kafka.bootstrap_servers}; "
        f"windows of {windows}, labels mature after {stats.label_maturity_s:g} s, A/B looks every "
        f"{settings.look_interval_s:g} s; results to {registry.monitor_drift.name}, {registry.monitor_ab.name}, "
        f"{registry.monitor_alerts.name}; metrics and health on :{settings.metrics_port} (/metrics, /healthz)",
        highlight=False,
    )
    run_worker(instance, loglevel=loglevel.lower())


def report(
    windows: int = typer.Option(
        1, "--windows", min=0, help="How many of the latest drift windows to show (a line each, the latest in detail)."
    ),
    tail: int = typer.Option(5000, "--tail", min=1, help="Records read from the end of each partition."),
    timeout: float = typer.Option(15.0, "--timeout", min=1.0, help="Seconds to wait for the broker."),
    scores_tail: int = typer.Option(
        200, "--scores-tail", min=1, help="Records read from the end of each partition of scores and scores.shadow."
    ),
) -> None:
    """The latest drift windows and A/B looks, read from monitor.drift and monitor.ab, and each variant's operating
    point (from its latest scores and its version's registry tags), in plain words."""
    from monitor.reader import read_latest

    with friendly_errors():
        kafka = load_settings(KafkaSettings, {})
        topics = load_settings(TopicSettings, {}).registry()
        registry = Registry(load_settings(RegistrySettings, {}))
        wait_for_broker(kafka, timeout)
        results = read_latest(kafka, topics, windows=windows, tail=tail, timeout_s=timeout)
        points = read_operating_points(kafka, topics, registry, tail=scores_tail, timeout_s=timeout)
    show(console, results, topics, tail, points)


def read_operating_points(
    kafka: KafkaSettings, topics: TopicRegistry, registry: Registry | None, *, tail: int = 200, timeout_s: float = 15.0
) -> list[OperatingPointView]:
    """Each variant's operating point: the thresholds its latest score carries, with its version's own point and test
    figures from `registry` (None: without them). The demo's summary can pass the same to `show`."""
    from monitor.reader import read_latest_scores

    latest = read_latest_scores(kafka, topics, tail=tail, timeout_s=timeout_s)
    return operating_points(latest, registry.tags if registry is not None else None)


def show(
    out: Console,
    results: Results,
    topics: TopicRegistry,
    tail: int,
    points: list[OperatingPointView] | None = None,
) -> None:
    """What `streamscore report` prints (the demo's summary prints the same): where the records came from, then the
    drift windows (a line each, the latest in detail), the A/B tables and, when given, each variant's operating point,
    in plain words."""
    from monitor.report import render

    shown = len({r.window for r in results.drift})
    unreadable = f"; {results.unreadable} unreadable record(s)" if results.unreadable else ""
    out.print(
        f"[dim]{topics.monitor_drift.name}: {results.windows_seen} window(s) in the last {tail:,} records per "
        f"partition, showing {shown}; {topics.monitor_ab.name}: {results.looks_seen} look(s), the latest per "
        f"experiment{unreadable}[/]",
        highlight=False,
    )
    out.print(render(results.drift, results.ab, detailed=1, operating_points=points))
