"""LOG_FORMAT=json: every line on stderr is one JSON object with time, level, logger and message, and the context a
call passes (topic, partition, offset) as keys of their own — for the services' own handler, for a Faust worker's
(mode replaces the root's handlers when it starts), and on the dead-letter writer's real log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import pytest

from streamscore.contracts import DeadLetterReason
from streamscore.deadletters import DeadLetterRecord, DeadLetterWriter, SourceRecord
from streamscore.errors import ConfigError
from streamscore.logs import configure, kafka_context, worker_logging_config


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # every line, or the test fails here


def test_every_line_is_one_json_object_with_the_context_as_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    configure("INFO")
    log = logging.getLogger("streamscore.test")
    context = kafka_context("transactions", 3, 42)
    log.warning("dead-lettered topic=%s partition=%d offset=%d", "transactions", 3, 42, extra=context)
    log.info("no context here")
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        log.exception("failed at offset=%d", 7, extra=kafka_context(offset=7))
    log.debug("below the level")
    first, plain, failed = json_lines(capsys.readouterr().err)
    assert first["message"] == "dead-lettered topic=transactions partition=3 offset=42"
    assert (first["level"], first["logger"]) == ("WARNING", "streamscore.test")
    assert (first["topic"], first["partition"], first["offset"]) == ("transactions", 3, 42)  # typed, not parsed
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None and first["time"].endswith("Z")
    assert set(plain) == {"time", "level", "logger", "message"}
    assert failed["offset"] == 7 and "topic" not in failed
    assert "ValueError: line one\nline two" in failed["exception"]


def test_text_stays_the_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    configure("INFO")
    logging.getLogger("streamscore.test").info("hello", extra=kafka_context("t", 1, 2))
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" INFO streamscore.test hello") and not line.startswith("{")
    assert worker_logging_config("info") is None  # a Faust worker keeps its own console format


def test_an_unknown_format_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="LOG_FORMAT") as raised:
        configure("INFO")
    assert "Use text or json" in str(raised.value)


def test_a_faust_worker_logs_json_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    config = worker_logging_config("warning")
    assert config is not None
    logging.root.handlers.clear()  # as mode does before applying it
    logging.config.dictConfig(config)
    logging.getLogger("faust.worker").warning("rebalancing", extra=kafka_context("scores", 0))
    logging.getLogger("faust.worker").info("below the worker's level")
    (line,) = json_lines(capsys.readouterr().err)
    assert (line["logger"], line["message"], line["topic"], line["partition"]) == (
        "faust.worker",
        "rebalancing",
        "scores",
        0,
    )


def test_dead_letters_and_their_retries_carry_the_records_coordinates(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    configure("INFO")
    attempts: list[int] = []

    async def send(letters: Sequence[DeadLetterRecord]) -> None:
        attempts.append(len(letters))
        if len(attempts) < 2:
            raise TimeoutError("the broker did not answer")

    writer = DeadLetterWriter(send, topic="features.dlq", consumer_group="g", retry_initial_s=0.001)
    record = SourceRecord("transactions", 4, 1234, 1_700_000_000_000, b"a1", b"{}", None)
    asyncio.run(writer.write([writer.letter(record, DeadLetterReason.PROCESSING_FAILED, "boom", "apply")]))
    retry, letter = json_lines(capsys.readouterr().err)
    assert retry["level"] == "WARNING" and retry["topic"] == "features.dlq" and "retrying" in retry["message"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("transactions", 4, 1234)
    assert letter["dead_letter_topic"] == "features.dlq" and letter["logger"] == "streamscore.deadletters"
