"""`streamscore produce`: live synthetic traffic with delayed labels, or a Parquet history backfill."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from producers.client import EventProducer
from producers.drift import DriftSpec
from producers.settings import ProducerSettings
from streamscore.errors import ConfigError
from streamscore.kafka import wait_for_broker
from streamscore_cli.console import console, friendly_errors

if TYPE_CHECKING:  # numpy and pyarrow load in the commands that use them, not for `--help`
    from producers.generator import TransactionGenerator
    from producers.live import LiveProgress, LiveRun, LiveSummary

HISTORY_RATE = 0.4
"""Default events per simulated second for a history backfill: about 35 000 transactions a day."""


def make_generator(settings: ProducerSettings, drift: str | None, *, rhythm: bool) -> TransactionGenerator:
    from producers.generator import GeneratorConfig, TransactionGenerator
    from producers.world import build_world

    world = build_world(settings.seed, accounts=settings.accounts, merchants=settings.merchants)
    try:
        spec = DriftSpec.parse(drift) if drift else None
    except ValueError as exc:
        raise ConfigError("--drift", str(exc)) from None
    return TransactionGenerator(
        world, GeneratorConfig(seed=settings.seed, fraud_rate=settings.fraud_rate, rhythm=rhythm, drift=spec)
    )


def summary_table(summary: LiveSummary, topic: str) -> Table:
    table = Table(title=f"produced to {topic}", show_header=False)
    table.add_row("transactions", f"{summary.events:,}")
    table.add_row("  of which fraud", f"{summary.frauds:,} ({summary.frauds / max(summary.events, 1):.2%})")
    for pattern, count in sorted(summary.by_pattern.items()):
        table.add_row(f"    {pattern}", f"{count:,}")
    table.add_row("labels sent", f"{summary.labels_sent:,}")
    if summary.labels_not_sent:
        table.add_row("[yellow]labels not sent (not matured)[/]", f"{summary.labels_not_sent:,}")
    table.add_row("delivered / failed", f"{summary.delivered:,} / {summary.failed:,}")
    table.add_row("send rate", f"{summary.events_per_s:,.0f} events/s")
    table.add_row("elapsed", f"{summary.elapsed_s:.1f} s")
    return table


def stop_on_signal() -> threading.Event:
    """Ctrl-C / SIGTERM end the run cleanly: pending deliveries are flushed, the summary is printed."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def produce(
    events: int | None = typer.Option(None, help="Stop after this many transactions."),
    duration: float | None = typer.Option(None, help="Stop after this many seconds (default 60 without --events)."),
    rate: float | None = typer.Option(None, help="Transactions per second; 0 = as fast as possible. [PRODUCER_RATE]"),
    seed: int | None = typer.Option(None, help="Seed of the world and the traffic. [PRODUCER_SEED]"),
    fraud_rate: float | None = typer.Option(None, help="Share of fraudulent transactions. [PRODUCER_FRAUD_RATE]"),
    accounts: int | None = typer.Option(None, help="Simulated accounts. [PRODUCER_ACCOUNTS]"),
    merchants: int | None = typer.Option(None, help="Simulated merchants. [PRODUCER_MERCHANTS]"),
    label_delay: float | None = typer.Option(None, help="Seconds until a label matures. [PRODUCER_LABEL_DELAY_S]"),
    labels: bool = typer.Option(True, "--labels/--no-labels", help="Produce delayed labels."),
    wait_labels: bool = typer.Option(
        True, "--wait-labels/--no-wait-labels", help="Wait for pending labels at the end."
    ),
    drift: str | None = typer.Option(
        None,
        help="Inject drift, e.g. after=5000,amount_scale=2,foreign_share=0.3,new_category=6051,new_category_share=0.1",
    ),
    history: float | None = typer.Option(None, help="Instead of live traffic: write this many past days to Parquet."),
    out: Path = typer.Option(Path("data/history"), help="Output folder of --history."),
    history_rate: float = typer.Option(HISTORY_RATE, help="Average events per simulated second in --history."),
    speed: float = typer.Option(
        1.0,
        min=1.0,
        help="Live: simulated seconds per wall second; event times follow the simulated clock (docs/producers.md). "
        "With the history's rate: --speed = --rate / --history-rate keeps each account as busy as in the history.",
    ),
    start: datetime | None = typer.Option(
        None,
        formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"],
        help="Live with --speed: simulated time of the first event (UTC when no offset; e.g. where a history ended). "
        "Default: now - speed x duration, so no event time passes the wall clock.",
    ),
    connect_timeout: float = typer.Option(10.0, help="Seconds to wait for the broker before giving up."),
) -> None:
    """Synthetic card traffic: habits, daily rhythm, card testing, account takeover, compromised merchants."""
    from producers.live import LiveRun

    with friendly_errors():
        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "rate": rate,
                "seed": seed,
                "fraud_rate": fraud_rate,
                "accounts": accounts,
                "merchants": merchants,
                "label_delay_s": label_delay,
            }.items()
            if v is not None
        }
        settings = ProducerSettings(**overrides)
        if history is not None:
            _history(settings, drift, history, out, history_rate)
            return
        if events is None and duration is None:
            duration = 60.0
        begin = _simulated_start(start, speed, duration, events, settings.rate)
        # On the simulated clock the live stream is the history's process continued, daily rhythm included.
        generator = make_generator(settings, drift, rhythm=speed > 1.0)
        registry = settings.topics.registry()
        wait_for_broker(settings.kafka, timeout_s=connect_timeout)
        producer = EventProducer(settings.kafka, registry, linger_ms=settings.linger_ms)
        try:
            run = LiveRun(
                events=events,
                duration_s=duration,
                rate=settings.rate,
                label_delay_s=settings.label_delay_s,
                send_labels=labels,
                wait_for_labels=wait_labels,
                start=begin,
                speed=speed,
            )
        except ValueError as exc:
            raise ConfigError("--start", str(exc)) from None
        stop = stop_on_signal()
        summary = live_with_progress(generator, producer, run, stop)
    console.print(summary_table(summary, registry.transactions.name))
    if summary.failed:
        raise typer.Exit(1)


def _simulated_start(
    start: datetime | None, speed: float, duration: float | None, events: int | None, rate: float
) -> datetime | None:
    """Where a run at `speed` starts on the simulated clock: `start`, or far enough back that it never passes the
    wall clock. None at speed 1 without a start: event times follow the wall clock."""
    if start is not None:
        return start if start.tzinfo is not None else start.replace(tzinfo=UTC)
    if speed == 1.0:
        return None
    if duration is None:
        if events is None or rate <= 0:
            raise ConfigError("--speed", "a run faster than real time needs --duration, or --events with a --rate")
        duration = events / rate
    return datetime.now(UTC) - timedelta(seconds=speed * duration + 1.0)


def live_with_progress(
    generator: TransactionGenerator, producer: EventProducer, run: LiveRun, stop: threading.Event
) -> LiveSummary:
    from producers.live import run_live

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console) as progress:
        if run.events is not None:
            task = progress.add_task("transactions", total=run.events, info="")
        else:
            task = progress.add_task("seconds", total=run.duration_s, info="")

        def on_progress(p: LiveProgress) -> None:
            done = p.events if run.events is not None else min(p.elapsed_s, run.duration_s or 0.0)
            info = f"{p.events:,} tx · {p.labels:,} labels · {p.pending_labels:,} labels pending"
            progress.update(task, completed=done, info=info)

        return run_live(generator, producer, run, on_progress, should_stop=stop.is_set)


def _history(settings: ProducerSettings, drift: str | None, days: float, out: Path, rate: float) -> None:
    from producers.history import write_history

    generator = make_generator(settings, drift, rhythm=True)
    expected = int(days * 86400 * rate)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    started = time.monotonic()
    with Progress(
        TextColumn("history"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("history", total=expected)
        summary = write_history(
            generator,
            days,
            out,
            end=end,
            rate_per_s=rate,
            label_delay=timedelta(seconds=settings.label_delay_s),
            progress=lambda n: progress.update(task, completed=n),
        )
        progress.update(task, completed=summary.events, total=summary.events)
    table = Table(title=f"history written to {out}", show_header=False)
    table.add_row("period", f"{summary.start:%Y-%m-%d %H:%M} → {summary.end:%Y-%m-%d %H:%M} UTC")
    table.add_row("transactions", f"{summary.events:,} → {summary.transactions_path}")
    table.add_row("labels", f"{summary.events:,} → {summary.labels_path}")
    table.add_row("fraud", f"{summary.frauds:,} ({summary.frauds / max(summary.events, 1):.2%})")
    for pattern, count in sorted(summary.by_pattern.items()):
        table.add_row(f"  {pattern}", f"{count:,}")
    table.add_row("elapsed", f"{time.monotonic() - started:.1f} s")
    console.print(table)
