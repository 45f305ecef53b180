"""`streamscore lag` and `streamscore dlq` as a user meets them without a broker: clear errors, checked options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streamscore_cli.main import app

runner = CliRunner()
NO_BROKER = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


def test_both_are_listed() -> None:
    result = runner.invoke(app, ["--help"])
    assert "lag" in result.output and "dlq" in result.output
    assert "inspect" in runner.invoke(app, ["dlq", "--help"]).output


@pytest.mark.parametrize("args", [["lag"], ["dlq", "inspect"], ["dlq", "replay", "--all"]])
def test_unreachable_broker_is_a_clear_error(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--connect-timeout", "1"], env=NO_BROKER)
    assert result.exit_code == 1
    assert "did not answer" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["dlq", "replay"], "--all"),
        (["dlq", "replay", "--offset", "3"], "--offset"),
        (["dlq", "inspect", "--since", "last tuesday"], "--since"),
        (["dlq", "inspect", "--reason", "bad_vibes"], "--reason"),
    ],
)
def test_bad_choices_are_refused_before_touching_kafka(args: list[str], named: str) -> None:
    result = runner.invoke(app, args, env=NO_BROKER)
    assert result.exit_code == 2, result.output
    assert named in result.output
