"""The CLI as a user meets it: commands listed, clear errors instead of tracebacks, generated docs current."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from streamscore.infra.process import TOOLS
from streamscore_cli.config import DOC, render
from streamscore_cli.main import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("infra", "produce", "demo", "schemas", "config", "features", "train", "monitor", "report"):
        assert command in result.output
    infra = runner.invoke(app, ["infra", "--help"])
    for command in ("up", "down", "status", "topics"):
        assert command in infra.output
    features = runner.invoke(app, ["features", "--help"])
    for command in ("batch", "apply", "materialize", "stream"):
        assert command in features.output


def test_generated_docs_are_current() -> None:
    assert DOC.read_text() == render(), "docs/configuration.md is stale: run `streamscore config docs`"
    assert runner.invoke(app, ["schemas", "check"]).exit_code == 0
    assert "INFRA_KAFKA_PORT" in render()
    assert "PRODUCER_LABEL_DELAY_S" in render()
    assert "MONITOR_CHECKPOINT_INTERVAL_S" in render(), "the monitor app's settings, not only its statistics'"


def test_missing_tool_is_named_with_its_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, tool in TOOLS.items():  # nothing on PATH and no wheel that ships it
        monkeypatch.setitem(TOOLS, name, replace(tool, in_wheel=lambda: None))
    result = runner.invoke(app, ["infra", "up"], env={"PATH": str(tmp_path), "INFRA_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert "'java' was not found" in result.output
    assert "apt-get install" in result.output
    assert "Traceback" not in result.output


def test_unreachable_broker_is_a_clear_error() -> None:
    result = runner.invoke(
        app,
        ["produce", "--events", "10", "--connect-timeout", "1"],
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert result.exit_code == 1
    assert "Kafka at 127.0.0.1:1 did not answer" in result.output
    # not the local stack's address: the variable to check, not `streamscore infra up` (tests/unit/streamscore)
    assert "fix KAFKA_BOOTSTRAP_SERVERS" in result.output and "infra up" not in result.output


def test_monitor_and_report_name_the_broker_to_check() -> None:
    for args in (["monitor", "--connect-timeout", "1"], ["report", "--timeout", "1"]):
        result = runner.invoke(app, args, env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
        assert result.exit_code == 1, args
        assert "Kafka at 127.0.0.1:1 did not answer" in result.output
        assert "KAFKA_BOOTSTRAP_SERVERS" in result.output
        assert "Traceback" not in result.output


def test_bad_drift_spec_is_a_clear_error() -> None:
    result = runner.invoke(app, ["produce", "--events", "10", "--drift", "amount_scale=-1"])
    assert result.exit_code == 1
    assert "--drift" in result.output
    assert "Traceback" not in result.output


def test_history_backfill_writes_parquet(tmp_path: Path) -> None:
    out = tmp_path / "history"
    result = runner.invoke(
        app,
        [
            "produce",
            "--history",
            "1",
            "--out",
            str(out),
            "--accounts",
            "500",
            "--merchants",
            "80",
            "--history-rate",
            "0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    transactions = pq.read_table(out / "transactions.parquet")
    labels = pq.read_table(out / "labels.parquet")
    assert 0.85 * 0.2 * 86400 < transactions.num_rows < 1.15 * 0.2 * 86400
    assert labels.num_rows == transactions.num_rows
    assert f"{transactions.num_rows:,}" in result.output
