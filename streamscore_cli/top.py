"""`streamscore top`: a live terminal view of the pipeline for a machine without Grafana (plain terminal, SSH).

It scrapes the services' `/metrics` (scorer, feature processor, monitor) and reads the scorers' group lag from
the broker (`streamscore.lag`, the rule of `streamscore lag` and of the scorer's lag gauges); the numbers come from
`streamscore.top` (pure). Rates need two scrapes: the live view compares consecutive refreshes, `--once` scrapes
twice one second apart (a rate since the process started would hide what happens now).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamscore.lag import DEFAULT_SCORER_GROUP, GroupLag, LagReader
from streamscore.settings import KafkaSettings, TopicSettings
from streamscore.top import Rates, TopSnapshot, rates, snapshot
from streamscore_cli.console import console, err_console, friendly_errors


def default_urls() -> dict[str, str]:
    """Each service's /metrics on this machine, at its settings' default port (SCORER_METRICS_PORT, …)."""
    # Imported here: the services' settings modules are light, but `--help` needs none of them.
    from monitor.app_settings import MonitorAppSettings
    from scorer.settings import ScorerSettings
    from stream_processors.settings import StreamProcessorSettings

    ports = {
        "scorer": ScorerSettings.model_fields["metrics_port"].default,
        "features": StreamProcessorSettings.model_fields["metrics_port"].default,
        "monitor": MonitorAppSettings.model_fields["metrics_port"].default,
    }
    return {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}


def scrape(url: str, timeout_s: float) -> str | None:
    """The /metrics text, or None when the service does not answer (down, refused, timed out, not HTTP 200)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body.decode("utf-8", "replace")
    except (OSError, ValueError, urllib.error.URLError):
        return None


def scrape_all(urls: Mapping[str, str], timeout_s: float, pool: ThreadPoolExecutor) -> TopSnapshot:
    taken = time.time()
    futures = {name: pool.submit(scrape, url, timeout_s) for name, url in urls.items()}
    return snapshot({name: f.result() for name, f in futures.items()}, taken)


def _n(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def render(
    snap: TopSnapshot, speed: Rates | None, group: GroupLag | None, broker_error: str | None, urls: Mapping[str, str]
) -> RenderableType:
    """The whole screen: services, throughput, lag per partition, models, decisions, dead letters, drift and A/B."""
    parts: list[RenderableType] = []
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.taken_at))
    status = []
    for name, url in urls.items():
        if not snap.answered.get(name):
            status.append(f"{name} down ({url})")
        else:
            ready = snap.ready.get(name)
            status.append(f"{name} {'ready' if ready else 'not ready' if ready is False else 'up'}")
    parts.append(Text(f"streamscore top  {stamp}  " + " | ".join(status), style="bold"))

    throughput = Table("", "TOTAL", "PER SECOND", box=None, pad_edge=False, header_style="bold")
    for column in throughput.columns[1:]:
        column.justify = "right"
    throughput.add_row("in", _n(snap.events_in), _n(speed.events_in if speed else None, "/s", 1))
    throughput.add_row("scored", _n(snap.scored), _n(speed.scored if speed else None, "/s", 1))
    throughput.add_row("dead-lettered", _n(snap.dead_letters), _n(speed.dead_letters if speed else None, "/s", 1))
    throughput.add_row(
        "features", _n(snap.features_processed), _n(speed.features_processed if speed else None, "/s", 1)
    )
    recent = f"{_ms(speed.p99_s)} last {speed.seconds:.1f} s" if speed else "-"
    parts.append(throughput)
    parts.append(Text(f"p99 end-to-end latency: {recent}; since start {_ms(snap.p99_s())}"))

    lag = Table(
        "TOPIC", "PARTITION", "LAG", "LAG-SECONDS", "SCORER-GAUGE", box=None, pad_edge=False, header_style="bold"
    )
    for column in lag.columns[1:]:
        column.justify = "right"
    gauges = {(g.topic, g.partition): g for g in snap.lag}
    rows = group.partitions if group is not None else []
    for row in rows:
        gauge = gauges.get((row.topic, row.partition))
        lag.add_row(
            row.topic,
            str(row.partition),
            _n(row.lag),
            _n(row.lag_seconds, digits=1),
            _n(gauge.records if gauge else None),
        )
    if group is None:
        for g in snap.lag:
            lag.add_row(g.topic, str(g.partition), "-", _n(g.seconds, digits=1), _n(g.records))
    if group is not None:
        title = (
            f"lag of group {group.group} ({group.state}, {group.members} member(s)): total {group.total_lag:,} "
            f"records, oldest unconsumed {group.max_lag_seconds:.1f} s"
        )
    else:
        title = f"lag: broker unavailable ({broker_error or 'not asked'}); the scorer's gauges"
    parts.append(Text(title, style="bold"))
    parts.append(lag)

    models = Table("VARIANT", "MODEL", "VERSION", "KIND", "WEIGHT", box=None, pad_edge=False, header_style="bold")
    for m in snap.models:
        models.add_row(m.variant, m.name, m.version, m.kind, m.weight)
    parts.append(Text("models", style="bold"))
    parts.append(models if snap.models else Text("-"))

    decisions = ", ".join(f"{k} {v:,.0f}" for k, v in snap.decisions.items()) or "-"
    parts.append(Text(f"decisions (live): {decisions}"))
    reasons = ", ".join(f"{k} {v:,.0f}" for k, v in snap.dead_letters_by_reason.items() if v) or "none"
    parts.append(Text(f"dead letters by reason: {reasons}"))

    if not snap.answered.get("monitor"):
        drift, ab = "monitor down", "monitor down"
    else:
        drift = (
            f"{len(snap.drifted)} of {snap.drift_tested} drifted"
            + (f": {', '.join(snap.drifted)}" if snap.drifted else "")
            if snap.drift_tested
            else "no window evaluated yet"
        )
        ab = (
            "; ".join(
                f"{x.experiment}: "
                + ", ".join(f"{v} {verdict} ({x.units.get(v, 0):,.0f} units)" for v, verdict in x.verdicts.items())
                + (" SRM ALARM" if x.srm_alarm else "")
                for x in snap.ab
            )
            or "no look yet"
        )
    parts.append(Text(f"drift: {drift}"))
    parts.append(Text(f"A/B: {ab}"))
    return Group(*parts)


def top(
    scorer: str | None = typer.Option(
        None,
        "--scorer",
        help="The scorer's /metrics URL. Default: http://127.0.0.1:9108/metrics (SCORER_METRICS_PORT's default).",
    ),
    features: str | None = typer.Option(
        None,
        "--features",
        help="The feature processor's /metrics URL. Default: http://127.0.0.1:6066/metrics (FEATURES_METRICS_PORT).",
    ),
    monitor: str | None = typer.Option(
        None,
        "--monitor",
        help="The monitor's /metrics URL. Default: http://127.0.0.1:6067/metrics (MONITOR_METRICS_PORT).",
    ),
    group: str | None = typer.Option(
        None,
        "--group",
        "-g",
        help=f"Consumer group whose lag is shown. Default: TOPICS_PREFIX + {DEFAULT_SCORER_GROUP}.",
    ),
    interval: float = typer.Option(2.0, "--interval", "-n", min=0.5, help="Seconds between refreshes."),
    once: bool = typer.Option(
        False, "--once", help="Print one snapshot (two scrapes 1 s apart, for the rates) and exit."
    ),
    timeout: float = typer.Option(2.0, "--timeout", min=0.1, help="Seconds to wait for each endpoint and the broker."),
) -> None:
    """Live view of lag, rates, latency, dead letters, decisions, models, drift and A/B from /metrics and the broker."""
    with friendly_errors():
        urls = default_urls()
        for name, given in (("scorer", scorer), ("features", features), ("monitor", monitor)):
            if given:
                urls[name] = given
        kafka = KafkaSettings()
        name = group or TopicSettings().prefix + DEFAULT_SCORER_GROUP
        topic = TopicSettings().registry().transactions.name
        with (
            ThreadPoolExecutor(max_workers=4) as pool,
            LagReader(kafka, timeout_s=timeout, peek_timeout_s=timeout) as reader,
        ):

            def read_lag() -> tuple[GroupLag | None, str | None]:
                try:
                    return reader.read(name, [topic]), None
                except Exception as exc:  # noqa: BLE001 - shown on screen; the metrics still are
                    return None, (str(exc).strip() or type(exc).__name__).splitlines()[0][:160]

            def look(previous: TopSnapshot | None) -> tuple[TopSnapshot, RenderableType, bool]:
                lag_future = pool.submit(read_lag)
                snap = scrape_all(urls, timeout, pool)
                lag, error = lag_future.result()
                view = render(snap, rates(previous, snap) if previous else None, lag, error, urls)
                return snap, view, snap.anything_answered or lag is not None

            if once:
                first = scrape_all(urls, timeout, pool)
                time.sleep(max(0.0, 1.0 - (time.time() - first.taken_at)))
                _, view, anything = look(first)
                if not anything:
                    err_console.print(
                        f"error: nothing answered: {', '.join(urls.values())} and the broker "
                        f"{kafka.bootstrap_servers}. Start the services (streamscore demo) or pass their URLs.",
                        style="red",
                        highlight=False,
                        soft_wrap=True,
                    )
                    raise typer.Exit(1)
                console.print(view)
                return
            snap, view, _ = look(None)
            try:
                with Live(view, console=console, auto_refresh=False, screen=False) as live:
                    while True:
                        time.sleep(interval)
                        snap, view, _ = look(snap)
                        live.update(view, refresh=True)
            except KeyboardInterrupt:
                pass
