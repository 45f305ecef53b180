"""`streamscore features batch|apply|materialize`: build the offline sources, register the Feast repository,
load the batch views into the online store. The work happens in `feature_repo`; this module only wires it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from feature_repo.settings import FeastSettings
from streamscore.errors import ConfigError
from streamscore_cli.console import console, friendly_errors

if TYPE_CHECKING:  # pandas and pyarrow load in the commands that use them, not for `--help`
    from feature_repo.batch import BatchSummary

app = typer.Typer(help="Feast features: apply, materialize, batch", no_args_is_help=True)

_STEPS: dict[str, str] = {
    "read": "read the history",
    "realtime": "replay the real-time state",
    "profiles": "account profiles",
    "merchants": "merchant risk",
    "write": "write parquet",
}


def _store_line(settings: FeastSettings) -> str:
    online = (
        f"redis {settings.redis.host}:{settings.redis.port} db {settings.redis.db}"
        if settings.online_store == "redis"
        else f"sqlite {settings.sqlite_path}"
    )
    return f"project [bold]{settings.project}[/] · registry {settings.registry_path} · online store {online}"


def _instant(value: str | None, option: str) -> datetime | None:
    """An ISO-8601 option value; a value without a time zone is taken as UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(option, f"not an ISO-8601 date or time: {value!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def batch_table(summary: BatchSummary) -> Table:
    table = Table(title=f"offline sources written to {summary.data_dir}", show_header=False)
    table.add_row("transactions read", f"{summary.transactions:,} (labels {summary.labels:,})")
    if summary.first_snapshot is not None and summary.last_snapshot is not None:
        table.add_row(
            "daily snapshots",
            f"{summary.snapshots} · {summary.first_snapshot:%Y-%m-%d} → {summary.last_snapshot:%Y-%m-%d} 00:00 UTC",
        )
    table.add_row("account_realtime rows", f"{summary.realtime_rows:,} → {summary.paths.get('account_realtime')}")
    table.add_row("account_profile rows", f"{summary.profile_rows:,} → {summary.paths.get('account_profile')}")
    table.add_row("merchant_risk rows", f"{summary.merchant_rows:,} → {summary.paths.get('merchant_risk')}")
    for step, label in _STEPS.items():
        table.add_row(f"  {label}", f"{summary.seconds.get(step, 0.0):.1f} s")
    table.add_row("elapsed", f"{summary.seconds.get('total', 0.0):.1f} s ({summary.transactions_per_s:,.0f} tx/s)")
    return table


@app.command()
def batch(
    history: Path = typer.Option(Path("data/history"), help="History folder (transactions.parquet, labels.parquet)."),
    out: Path | None = typer.Option(None, help="Output folder of the offline sources. [FEAST_DATA_DIR]"),
    workers: int | None = typer.Option(None, min=1, help="Processes replaying the real-time state (default: cores)."),
) -> None:
    """Build the offline sources from a Parquet history: real-time log, daily account profiles, merchant risk."""
    from feature_repo.batch import build_batch_sources

    with friendly_errors():
        data_dir = out or FeastSettings().data_dir
        columns = [
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=console) as progress:
            tasks: dict[str, TaskID] = {}

            def on_progress(step: str, done: int, total: int) -> None:
                if step not in tasks:
                    tasks[step] = progress.add_task(_STEPS.get(step, step), total=total)
                progress.update(tasks[step], completed=done, total=total)

            summary = build_batch_sources(history, data_dir, on_progress, workers=workers)
    console.print(batch_table(summary))
    console.print("next: [bold]streamscore features apply[/] then [bold]streamscore features materialize[/]")


@app.command()
def apply() -> None:
    """Register the entities, sources, feature views and services in the Feast registry (idempotent)."""
    from feature_repo.store import apply as apply_definitions
    from feature_repo.store import open_store

    with friendly_errors():
        settings = FeastSettings()
        started = time.monotonic()
        with console.status("opening the feature store (importing Feast)"):
            store = open_store(settings)
        with console.status("applying the definitions"):
            apply_definitions(store, settings.data_dir)
        views = sorted(v.name for v in store.list_feature_views())
        services = sorted(s.name for s in store.list_feature_services())
    console.print(f"[green]✓[/] applied in {time.monotonic() - started:.1f} s — {_store_line(settings)}")
    console.print(f"[green]✓[/] feature views: {', '.join(views)}")
    console.print(f"[green]✓[/] feature services: {', '.join(services)}")
    console.print(f"[green]✓[/] offline files in {settings.data_dir}")


@app.command()
def materialize(
    start: str | None = typer.Option(None, help="ISO-8601 start (UTC if no zone); default: the files' first row."),
    end: str | None = typer.Option(None, help="ISO-8601 end (UTC if no zone); default: the files' last row."),
    realtime: bool = typer.Option(
        False, "--realtime/--no-realtime", help="Also load account_realtime from the history's log (bootstrap)."
    ),
) -> None:
    """Load the newest row per entity of the batch views (account_profile, merchant_risk) into the online store."""
    from feature_repo.batch import batch_range
    from feature_repo.store import BATCH_VIEWS, open_store
    from feature_repo.store import materialize as materialize_views

    with friendly_errors():
        settings = FeastSettings()
        first, last = batch_range(settings.data_dir)
        begin = _instant(start, "--start") or first
        finish = _instant(end, "--end") or last
        if begin > finish:
            raise ConfigError("--start", f"{begin.isoformat()} is after --end {finish.isoformat()}")
        views = [*BATCH_VIEWS, "account_realtime"] if realtime else list(BATCH_VIEWS)
        console.print(
            f"materializing {begin:%Y-%m-%d %H:%M:%S} → {finish:%Y-%m-%d %H:%M:%S} UTC · {_store_line(settings)}"
        )
        started = time.monotonic()
        with Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("opening the store", total=len(views))
            store = open_store(settings)
            for view in views:
                progress.update(task, description=view)
                materialize_views(store, begin, finish, views=[view])
                progress.advance(task)
    console.print(f"[green]✓[/] {len(views)} views materialized in {time.monotonic() - started:.1f} s")
