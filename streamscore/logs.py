"""Logging, configured once by an entry point.

`LOG_FORMAT=text` (the default): `time level logger message` lines. `LOG_FORMAT=json`: one JSON object per line
with `time` (UTC, ISO 8601), `level`, `logger` and `message`, the traceback as `exception` when the call carries one,
and whatever context the call passes with `extra=` as keys of their own — `topic`, `partition`, `offset` (built by
`kafka_context`) where a log call is about one record or partition. The message keeps its `topic=… partition=…
offset=…` text for people reading the text format; log collectors read the keys, typed, instead of parsing it.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from streamscore.errors import ConfigError

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12's
    "color_message",  # uvicorn's copy of the message with terminal colours
}
"""What every LogRecord carries: anything else on a record came from the call's `extra=`."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback's newlines are escaped inside `exception`)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an `extra` value JSON cannot hold (bytes, a path, an exception) is written as its text.
        return json.dumps(entry, default=str, ensure_ascii=False)


def kafka_context(topic: str | None = None, partition: int | None = None, offset: int | None = None) -> dict[str, Any]:
    """`extra=` for a log call about a record or a partition: the keys it knows (LOG_FORMAT=json writes them)."""
    context = {"topic": topic, "partition": partition, "offset": offset}
    return {key: value for key, value in context.items() if value is not None}


def log_format() -> str:
    """`LOG_FORMAT`: text (default) or json; anything else is refused, naming the variable."""
    chosen = os.environ.get("LOG_FORMAT", "text").strip().lower() or "text"
    if chosen not in FORMATS:
        raise ConfigError("LOG_FORMAT", f"unknown format {chosen!r}", "Use text or json")
    return chosen


def formatter() -> logging.Formatter:
    """The formatter `LOG_FORMAT` asks for."""
    return JsonFormatter() if log_format() == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str | int | None = None) -> None:
    """One handler on stderr in `LOG_FORMAT`; `LOG_LEVEL` overrides the default level."""
    chosen = level or os.environ.get("LOG_LEVEL", "INFO")
    if isinstance(chosen, str) and not isinstance(logging.getLevelName(chosen.upper()), int):
        raise ConfigError("LOG_LEVEL", f"unknown level {chosen!r}", "Use DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler()
    handler.setFormatter(formatter())
    logging.basicConfig(level=chosen.upper() if isinstance(chosen, str) else chosen, handlers=[handler], force=True)
    # librdkafka reports recoverable conditions (a coordinator still loading, an idle connection closed)
    # as warnings and retries by itself; show them only when debugging.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("librdkafka").setLevel(logging.ERROR)


def worker_logging_config(loglevel: str) -> dict[str, Any] | None:
    """What a Faust worker (mode) configures logging with when it starts (it replaces the root's handlers): with
    LOG_FORMAT=json, one stderr handler writing JSON; None with text, so Faust keeps its own console format."""
    if log_format() != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": loglevel.upper(), "handlers": ["default"]},
    }
