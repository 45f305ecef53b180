"""`streamscore dlq inspect|replay`: look at the dead-letter topic and send chosen letters back.

The logic is in `scorer.dlq`; this module maps options onto it and renders the result.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.markup import escape
from rich.table import Table

from scorer.dlq import (
    DEFAULT_MAX_REPLAYS,
    DeadLetterEntry,
    ReplayPlan,
    Selection,
    Summary,
    display_key,
    parse_position,
    parse_since,
    plan_replay,
    read_dead_letters,
    replay,
    summarize,
)
from streamscore.contracts import DeadLetterReason
from streamscore.errors import DeliveryError
from streamscore.kafka import wait_for_broker
from streamscore.settings import KafkaSettings, TopicSettings
from streamscore_cli.console import console, friendly_errors
from streamscore_cli.lag import print_wide

app = typer.Typer(help="The dead-letter topic: inspect it, replay chosen letters.", no_args_is_help=True)

MESSAGE_WIDTH = 60

REASON_HELP = "Only letters of this error class (repeatable): " + ", ".join(r.value for r in DeadLetterReason) + "."
SINCE_HELP = "Only letters whose event record is at most this old: 30m, 2h, 7d, or an ISO-8601 time."


def _selection(reasons: list[DeadLetterReason] | None, since: str | None, offsets: list[str] | None) -> Selection:
    try:
        since_ms = int(parse_since(since, datetime.now(UTC)).timestamp() * 1000) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    try:
        positions = frozenset(parse_position(text) for text in offsets or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--offset") from None
    return Selection(reasons=frozenset(r.value for r in reasons or []), positions=positions, since_ms=since_ms)


def _truncate(text: str, width: int = MESSAGE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_tables(summary: Summary) -> list[Table]:
    counts = Table("reason", "letters")
    for reason, count in summary.by_reason.items():
        counts.add_row(reason, f"{count:,}")
    stages = Table("stage", "letters")
    for stage, count in summary.by_stage.items():
        stages.add_row(stage, f"{count:,}")
    latest = Table(
        "dlq offset",
        "record time (UTC)",
        "original",
        "reason",
        "message",
        "key",
        "bytes",
        "replays",
        title=f"latest {len(summary.latest)}",
        title_justify="left",
    )
    for entry in summary.latest:
        letter = entry.letter
        original = (
            f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"
            if letter
            else entry.original_topic or "-"
        )
        size = f"{entry.payload_size:,}" + (" (truncated)" if entry.truncated else "")
        replays = entry.replay_count
        latest.add_row(
            f"{entry.partition}:{entry.offset}",
            datetime.fromtimestamp(entry.timestamp_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S"),
            escape(original),
            entry.reason,
            escape(_truncate(entry.message)),
            escape(display_key(entry.key) or "-"),
            size,
            "?" if replays is None else str(replays),
        )
    return [counts, stages, latest]


def _read(connect_timeout: float, read_timeout: float) -> tuple[KafkaSettings, str, str, list[DeadLetterEntry]]:
    kafka = KafkaSettings()
    registry = TopicSettings().registry()
    wait_for_broker(kafka, timeout_s=connect_timeout)
    entries = read_dead_letters(kafka, registry.dlq.name, timeout_s=read_timeout)
    return kafka, registry.dlq.name, registry.transactions.name, entries


@app.command()
def inspect(
    reason: list[DeadLetterReason] | None = typer.Option(None, "--reason", "-r", metavar="REASON", help=REASON_HELP),
    since: str | None = typer.Option(None, "--since", help=SINCE_HELP),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="How many of the latest letters to list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    connect_timeout: float = typer.Option(10.0, "--connect-timeout", help="Seconds to wait for the broker."),
    read_timeout: float = typer.Option(60.0, "--read-timeout", help="Seconds to read the topic to its end."),
) -> None:
    """Counts of dead letters by reason and stage, and the latest ones (reads everything, commits nothing)."""
    selection = _selection(reason, since, None)
    with friendly_errors():
        _, topic, _, entries = _read(connect_timeout, read_timeout)
    chosen = [e for e in entries if selection.matches(e)]
    summary = summarize(chosen, limit)
    if as_json:
        typer.echo(json.dumps({"topic": topic, "letters": len(entries), **summary.to_dict()}, indent=2))
        return
    if not entries:
        console.print(f"[green]✓[/] {topic} is empty")
        return
    console.print(f"[bold]{topic}[/]: {len(entries):,} dead letter(s), {summary.total:,} matching")
    counts, stages, latest = summary_tables(summary)
    console.print(counts)
    console.print(stages)
    print_wide(latest)


def plan_table(plan: ReplayPlan, dry_run: bool) -> Table:
    table = Table(
        "dlq offset",
        "to topic",
        "key",
        "bytes",
        "replay-count",
        title="would replay" if dry_run else "replaying",
        title_justify="left",
    )
    for record in plan.records:
        table.add_row(
            f"{record.source[0]}:{record.source[1]}",
            escape(record.topic),
            escape(display_key(record.key) or "-"),
            f"{len(record.value or b''):,}",
            str(record.replay_count),
        )
    return table


REPLAY_HELP = (
    "Re-produce chosen dead letters to their original topic: same key, value, headers and timestamp, "
    "the dlq-* headers dropped and replay-count incremented. Letters replayed --max-replays times or holding "
    "a truncated payload are refused. The letters stay on the dead-letter topic: replaying one twice sends "
    "its event twice."
)


@app.command(name="replay", help=REPLAY_HELP)
def replay_command(
    reason: list[DeadLetterReason] | None = typer.Option(None, "--reason", "-r", metavar="REASON", help=REASON_HELP),
    offset: list[str] | None = typer.Option(
        None, "--offset", help="A letter by its dead-letter position partition:offset (repeatable)."
    ),
    since: str | None = typer.Option(None, "--since", help=SINCE_HELP),
    replay_all: bool = typer.Option(False, "--all", help="Every letter (alone, or narrowed by the other filters)."),
    max_replays: int = typer.Option(
        DEFAULT_MAX_REPLAYS, "--max-replays", min=1, help="Refuse letters already replayed this many times."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed; produce nothing."),
    connect_timeout: float = typer.Option(10.0, "--connect-timeout", help="Seconds to wait for the broker."),
    read_timeout: float = typer.Option(60.0, "--read-timeout", help="Seconds to read the topic to its end."),
) -> None:
    """Replay chosen dead letters (see REPLAY_HELP)."""
    selection = _selection(reason, since, offset)
    if selection.empty and not replay_all:
        raise typer.BadParameter("choose letters with --reason, --offset or --since, or pass --all", param_hint="--all")
    with friendly_errors():
        kafka, _, default_topic, entries = _read(connect_timeout, read_timeout)
        plan = plan_replay(entries, selection, default_topic=default_topic, max_replays=max_replays)
        for partition, position in plan.missing:
            console.print(f"[yellow]•[/] no dead letter at {partition}:{position}")
        for refused in plan.refused:
            console.print(
                f"[yellow]refused[/] {refused.source[0]}:{refused.source[1]} ({refused.reason}): {escape(refused.why)}",
                soft_wrap=True,
            )
        if plan.records:
            print_wide(plan_table(plan, dry_run))
        elif not plan.refused:
            console.print("no dead letter matches")
        if dry_run:
            console.print(f"dry run: {len(plan.records)} would be replayed, {len(plan.refused)} refused")
            return
        report = replay(kafka, plan.records)
        destinations = ", ".join(f"{count} to {topic}" for topic, count in sorted(report.topics.items()))
        console.print(
            f"replayed {report.delivered}{f' ({destinations})' if destinations else ''}, refused {len(plan.refused)}"
        )
        if report.failed:
            raise DeliveryError(len(report.failed), report.failed[0])
