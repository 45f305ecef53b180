"""The one rich console, and how errors are shown."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.markup import escape

from streamscore.errors import ConfigError, StreamscoreError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

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


def load_settings(
    cls: type[SettingsT], overrides: Mapping[str, Any], blocks: Sequence[type[BaseSettings]] = ()
) -> SettingsT:
    """`cls` from the environment and the CLI options (None = not given). A bad value raises ConfigError naming
    the environment variable to fix; a nested block (`KAFKA_…`, `FEAST_…`) validates on its own, and its class
    (the error's title) gives the prefix."""
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        candidates: list[type[BaseSettings]] = [cls, *blocks]
        block = next((b for b in candidates if b.__name__ == exc.title), cls)
        first = exc.errors(include_url=False)[0]
        name = "_".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"{block.model_config.get('env_prefix', '')}{name}".upper(), first["msg"]) from None
