"""Logging, configured once by an entry point."""

from __future__ import annotations

import logging
import os

from streamscore.errors import ConfigError


def configure(level: str | int | None = None) -> None:
    """Plain `time level logger message` lines on stderr; `LOG_LEVEL` overrides the default."""
    chosen = level or os.environ.get("LOG_LEVEL", "INFO")
    if isinstance(chosen, str) and not isinstance(logging.getLevelName(chosen.upper()), int):
        raise ConfigError("LOG_LEVEL", f"unknown level {chosen!r}", "Use DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(
        level=chosen.upper() if isinstance(chosen, str) else chosen,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    # librdkafka reports recoverable conditions (a coordinator still loading, an idle connection closed)
    # as warnings and retries by itself; show them only when debugging.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("librdkafka").setLevel(logging.ERROR)
