"""`streamscore demo` (and `make demo`): the local stack with live traffic, shown as it arrives.

At this stage of the project: infra up, live transactions and delayed labels produced through the real
broker, a read_committed consumer counting what arrives per topic and partition, then a summary.
Later stages add the feature processor, training, the scorer and the monitor to this command.
"""

from __future__ import annotations

import json
import threading
import time

import typer
from rich.live import Live
from rich.table import Table

from producers.client import EventProducer
from producers.live import LiveProgress, LiveRun, LiveSummary, run_live
from producers.settings import ProducerSettings
from streamscore.infra import LocalStack
from streamscore.settings import TopicSettings
from streamscore.watch import TopicWatcher
from streamscore_cli.console import console, friendly_errors
from streamscore_cli.produce import make_generator, stop_on_signal, summary_table


def arrivals_table(watcher: TopicWatcher, tx_topic: str, labels_topic: str, produced: int, elapsed: float) -> Table:
    tx = watcher.counts[tx_topic]
    labels = watcher.counts[labels_topic]
    table = Table(title=f"arriving through Kafka — {elapsed:.0f} s")
    table.add_column("topic")
    table.add_column("messages", justify="right")
    table.add_column("per second", justify="right")
    table.add_column("distinct keys", justify="right")
    table.add_column("by partition")
    for name, counts in ((tx_topic, tx), (labels_topic, labels)):
        parts = " ".join(f"p{p}:{n}" for p, n in sorted(counts.by_partition.items()))
        table.add_row(
            name, f"{counts.messages:,}", f"{counts.messages / max(elapsed, 1e-9):,.0f}", f"{len(counts.keys):,}", parts
        )
    table.caption = f"produced so far: {produced:,} transactions"
    if tx.last_values:
        last = json.loads(tx.last_values[-1])
        table.caption += (
            f" · latest: {last['account_id']} paid {last['amount']:.2f} {last['currency']} "
            f"at {last['merchant_id']} (MCC {last['merchant_category']}, {last['channel']}, {last['country']})"
        )
    return table


def demo(
    duration: float = typer.Option(30.0, help="Seconds of live traffic."),
    rate: float = typer.Option(300.0, help="Transactions per second."),
    label_delay: float = typer.Option(5.0, help="Seconds until a transaction's label is produced."),
    keep: bool = typer.Option(False, "--keep", help="Leave the local stack running afterwards."),
) -> None:
    """Start the local stack, produce live traffic for a while and show it arriving."""
    with friendly_errors():
        stack = LocalStack()
        registry = TopicSettings().registry()
        with console.status("starting the local stack") as status:
            report = stack.up(registry, on_step=lambda m: status.update(m))
        console.print(
            f"[green]✓[/] Kafka at {stack.settings.bootstrap_servers} (answered after {report.kafka_ready_s:.1f} s), "
            f"Redis at 127.0.0.1:{stack.settings.redis_port}, {len(registry.all())} topics"
        )
        kafka = stack.settings.kafka_settings()
        settings = ProducerSettings(rate=rate, label_delay_s=label_delay)
        generator = make_generator(settings, None, rhythm=False)
        tx_topic, labels_topic = registry.transactions.name, registry.labels.name
        watcher = TopicWatcher(kafka, [tx_topic, labels_topic])
        deadline = time.monotonic() + 30
        while not watcher.assigned() and time.monotonic() < deadline:
            watcher.poll(0.2)

        producer = EventProducer(kafka, registry, client_id="demo-producer")
        stop = stop_on_signal()
        result: list[LiveSummary] = []
        latest: list[LiveProgress] = [LiveProgress(0, 0, 0, 0.0)]
        run = LiveRun(duration_s=duration, rate=rate, label_delay_s=label_delay)
        worker = threading.Thread(
            target=lambda: result.append(
                run_live(generator, producer, run, on_progress=latest.append, should_stop=stop.is_set)
            ),
            daemon=True,
        )
        started = time.monotonic()
        worker.start()
        try:
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    watcher.poll(0.25)
                    elapsed = time.monotonic() - started
                    live.update(arrivals_table(watcher, tx_topic, labels_topic, latest[-1].events, elapsed))
                    if not worker.is_alive():
                        summary = result[0] if result else None
                        caught_up = (
                            summary is not None
                            and watcher.counts[tx_topic].messages >= summary.events
                            and watcher.counts[labels_topic].messages >= summary.labels_sent
                        )
                        if caught_up or time.monotonic() - started > duration + label_delay + 30:
                            break
        finally:
            watcher.close()
            if not keep and report.started:
                stack.down()
        summary = result[0]
        console.print(summary_table(summary, tx_topic))
        arrived_tx = watcher.counts[tx_topic].messages
        arrived_labels = watcher.counts[labels_topic].messages
        ok = arrived_tx == summary.events and arrived_labels == summary.labels_sent
        console.print(
            f"{'[green]✓[/]' if ok else '[red]✗[/]'} consumed back (read_committed): {arrived_tx:,}/{summary.events:,} "
            f"transactions, {arrived_labels:,}/{summary.labels_sent:,} labels"
        )
        if keep or not report.started:
            console.print("the local stack is still running — stop it with [bold]streamscore infra down[/]")
        else:
            console.print("stopped the local stack")
        if not ok:
            raise typer.Exit(1)
