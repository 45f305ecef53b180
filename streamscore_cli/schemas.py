"""`streamscore schemas export|check`: the JSON Schemas external producers validate against."""

from __future__ import annotations

from pathlib import Path

import typer

from streamscore.contracts import json_schemas
from streamscore.infra.settings import PROJECT_ROOT
from streamscore_cli.console import console, err_console

app = typer.Typer(help="JSON Schemas of the event contracts (docs/schemas/).", no_args_is_help=True)

DEFAULT_DIR = PROJECT_ROOT / "docs" / "schemas"


def stale_files(directory: Path) -> list[str]:
    """Names of schema files that are missing or differ from what the models generate."""
    stale = []
    for name, text in json_schemas().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
    return stale


@app.command()
def export(directory: Path = typer.Option(DEFAULT_DIR, "--dir", help="Where to write the files.")) -> None:
    """Write one <Event>.schema.json per contract."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in json_schemas().items():
        (directory / name).write_text(text)
        console.print(f"wrote {directory / name}")


@app.command()
def check(directory: Path = typer.Option(DEFAULT_DIR, "--dir", help="Where the files are.")) -> None:
    """Exit 1 if a schema file is missing or stale."""
    stale = stale_files(directory)
    if stale:
        err_console.print(f"[red]stale schemas:[/] {', '.join(stale)} — run `make schemas`")
        raise typer.Exit(1)
    console.print("schemas are up to date")
