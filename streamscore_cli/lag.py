"""`streamscore lag`: consumer-group lag with the columns of `kafka-consumer-groups.sh --describe` plus LAG-SECONDS.

The measurement lives in `streamscore.lag` (the scorer's metrics use the same rule); this module renders it.
"""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from streamscore.kafka import wait_for_broker
from streamscore.lag import DEFAULT_SCORER_GROUP, GroupLag, LagReader
from streamscore.settings import KafkaSettings, TopicSettings
from streamscore_cli.console import console, friendly_errors

COLUMNS = (
    "GROUP",
    "TOPIC",
    "PARTITION",
    "CURRENT-OFFSET",
    "LOG-END-OFFSET",
    "LAG",
    "LAG-SECONDS",
    "CONSUMER-ID",
    "HOST",
    "CLIENT-ID",
)


def print_wide(view: RenderableType) -> None:
    """Like Kafka's tools, never squeeze columns into '…': a table is as wide as it needs (the terminal wraps)."""
    needed = Measurement.get(console, console.options.update_width(10_000), view).maximum
    Console(width=max(console.width, needed)).print(view)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render(report: GroupLag) -> Group:
    """The table, or the sentence Kafka's tool prints when there is nothing to show."""
    if not report.partitions:
        if report.state == "Dead":
            message = f"Consumer group '{report.group}' does not exist (no members, no committed offsets)."
        else:
            message = f"Consumer group '{report.group}' has no committed offsets and no assigned partitions."
        return Group(Text(message, style="yellow"))
    table = Table(*COLUMNS, box=None, pad_edge=False, header_style="bold")
    for column in table.columns[2:7]:
        column.justify = "right"
    for row in report.partitions:
        table.add_row(
            row.group,
            row.topic,
            str(row.partition),
            _cell(row.current_offset),
            _cell(row.log_end_offset),
            _cell(row.lag),
            _cell(row.lag_seconds),
            _cell(row.consumer_id),
            _cell(row.host),
            _cell(row.client_id),
        )
    members = "no active members" if report.members == 0 else f"{report.members} member(s)"
    footer = Text(
        f"state {report.state}, {members}; total lag {report.total_lag:,} offsets, "
        f"oldest unconsumed record {report.max_lag_seconds:.1f} s old",
        style="dim",
    )
    return Group(table, footer)


def lag(
    group: str | None = typer.Option(
        None, "--group", "-g", help=f"Consumer group. Default: TOPICS_PREFIX + {DEFAULT_SCORER_GROUP} (the scorers)."
    ),
    topic: list[str] | None = typer.Option(None, "--topic", "-t", help="Only this topic (repeatable)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Keep refreshing the table until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", "-n", min=0.2, help="Seconds between refreshes with --watch."),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON instead of a table ('-' becomes null); with --watch one line per refresh."
    ),
    connect_timeout: float = typer.Option(10.0, "--connect-timeout", help="Seconds to wait for the broker."),
) -> None:
    """Consumer-group lag per partition: offsets (read_committed) and age of the oldest unconsumed record."""
    with friendly_errors():
        kafka = KafkaSettings()
        name = group or TopicSettings().prefix + DEFAULT_SCORER_GROUP
        wait_for_broker(kafka, timeout_s=connect_timeout)
        with LagReader(kafka) as reader:
            try:
                if as_json:
                    # One JSON document; with --watch one compact document per line (NDJSON) per refresh.
                    while True:
                        report = reader.read(name, topic)
                        typer.echo(json.dumps(report.to_dict(), indent=None if watch else 2))
                        if not watch:
                            return
                        time.sleep(interval)
                if not watch:
                    print_wide(render(reader.read(name, topic)))
                    return
                with Live(render(reader.read(name, topic)), console=console, auto_refresh=False) as live:
                    while True:
                        time.sleep(interval)
                        live.update(render(reader.read(name, topic)), refresh=True)
            except KeyboardInterrupt:
                pass
