"""The one rich console, and how errors are shown."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from streamscore.errors import StreamscoreError

console = Console(stderr=False)
err_console = Console(stderr=True)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Show a StreamscoreError as one red message and exit 1, instead of a traceback."""
    try:
        yield
    except StreamscoreError as exc:
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
