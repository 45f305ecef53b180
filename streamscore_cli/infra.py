"""`streamscore infra up|down|status|topics`."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from streamscore.infra.settings import InfraSettings
from streamscore.kafka import ensure_topics, wait_for_broker
from streamscore.settings import KafkaSettings, TopicSettings
from streamscore_cli.console import console, friendly_errors

app = typer.Typer(help="The local stack: a real Apache Kafka (KRaft) broker and redis-server.", no_args_is_help=True)


@app.command()
def up() -> None:
    """Fetch the Kafka jars (once), start Kafka and Redis on loopback, create every topic."""
    from streamscore.infra import LocalStack  # the Redis client takes a third of a second to import

    with friendly_errors():
        settings = InfraSettings()
        stack = LocalStack(settings)
        started = time.monotonic()
        with console.status("starting the local stack") as status:
            report = stack.up(TopicSettings().registry(), on_step=lambda m: status.update(m))
        elapsed = time.monotonic() - started
    for name in report.already_running:
        console.print(f"[yellow]•[/] {name} was already running")
    for name in report.started:
        console.print(f"[green]✓[/] {name} started")
    if report.kafka_ready_s is not None:
        console.print(f"[green]✓[/] Kafka answered after {report.kafka_ready_s:.1f} s at {settings.bootstrap_servers}")
    console.print(f"[green]✓[/] Redis at 127.0.0.1:{settings.redis_port}")
    console.print(
        f"[green]✓[/] topics: {len(report.topics.created)} created, {len(report.topics.existing)} already present"
    )
    console.print(f"stack up in {elapsed:.1f} s — stop it with [bold]streamscore infra down[/]")


@app.command()
def down() -> None:
    """Stop exactly what `up` started, by process id."""
    from streamscore.infra import LocalStack  # the Redis client takes a third of a second to import

    with friendly_errors():
        stopped = LocalStack().down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """What runs, on which ports, and which topics exist."""
    from streamscore.infra import LocalStack  # the Redis client takes a third of a second to import

    with friendly_errors():
        stack_status = LocalStack().status()
    table = Table("service", "state", "pid", "port", "uptime", "log")
    for s in stack_status.services:
        table.add_row(
            s.name,
            "[green]running[/]" if s.running else "[red]stopped[/]",
            str(s.pid or "-") if s.running else "-",
            str(s.port or "-"),
            f"{s.uptime_s:.0f} s" if s.uptime_s is not None else "-",
            s.log or "-",
        )
    console.print(table)
    if stack_status.topics is not None:
        topics = Table("topic", "partitions")
        for name, partitions in stack_status.topics.items():
            topics.add_row(name, str(partitions))
        console.print(topics)


@app.command()
def topics(
    wait: float = typer.Option(30.0, help="Seconds to wait for the broker to answer."),
) -> None:
    """Create every registry topic on KAFKA_BOOTSTRAP_SERVERS (idempotent; used by docker compose)."""
    with friendly_errors():
        kafka = KafkaSettings()
        waited = wait_for_broker(kafka, timeout_s=wait)
        report = ensure_topics(kafka, TopicSettings().registry().all())
    console.print(
        f"broker answered after {waited:.1f} s; topics created: {report.created or 'none'}; "
        f"already present: {len(report.existing)}"
    )
