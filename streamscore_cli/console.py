"""The one rich console, and how errors are shown: one line, `error: <what>. <what to do>`, on stderr."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError
from rich.console import Console
from rich.markup import escape

from streamscore.failures import describe, format_traceback, settings_error

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

console = Console(stderr=False)
err_console = Console(stderr=True)

TYPER_SIGNALS: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, typer.TyperException)
"""Exceptions typer turns into an exit code or a usage message itself."""


class _Options:
    debug = False
    """`streamscore --debug`: a failure also prints its traceback (and the log lines it carries)."""


options = _Options()


def show_failure(exc: BaseException) -> None:
    """Print `exc` as one line on stderr; with `--debug`, its traceback and details first."""
    failure = describe(exc)
    if options.debug:
        err_console.print(escape(format_traceback(exc)), highlight=False, soft_wrap=True)
        if failure.details:
            err_console.print(escape(failure.details), highlight=False, soft_wrap=True)
    line = failure.line
    if not options.debug and not failure.expected:
        line += " (an unexpected error: `streamscore --debug …` prints its traceback)"
    elif not options.debug and failure.details:
        line += " (`streamscore --debug …` prints more)"
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Show an error as one red line and exit 1, instead of a traceback. The root command does the same for every
    command (streamscore_cli.main); this keeps a command that runs on its own (a test's app) as clear."""
    try:
        yield
    except TYPER_SIGNALS:
        raise
    except Exception as exc:  # noqa: BLE001 - reported in one line; `--debug` prints the traceback
        show_failure(exc)
        raise typer.Exit(1) from None


def load_settings(cls: type[SettingsT], overrides: Mapping[str, Any]) -> SettingsT:
    """`cls` from the environment and the CLI options (None = not given). A bad value raises ConfigError naming
    the environment variable to fix (a nested block's own: `KAFKA_…`, `FEAST_…`), and whether it came from an
    option."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(**given)
    except (ValidationError, SettingsError) as exc:
        error = settings_error(exc, given=given.keys())
        if error is None:
            raise
        raise error from exc
