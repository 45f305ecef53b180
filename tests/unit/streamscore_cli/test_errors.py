"""A first run's errors: one line each, `error: <VARIABLE>: <problem>. <fix>`, naming what to change; the traceback
only with `--debug`. Every case fails before any network or process is touched."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from streamscore.errors import BrokerUnavailableError, MissingToolError
from streamscore.failures import describe
from streamscore.infra import kafka as local_kafka
from streamscore.infra import stack as stack_module
from streamscore.infra.settings import PROJECT_ROOT
from streamscore_cli.console import options
from streamscore_cli.demo_processes import DemoStepError
from streamscore_cli.main import app

runner = CliRunner()

DIGEST = "ab" * 32
"""A well-formed API key digest (of no real key)."""


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _no_debug() -> Iterator[None]:
    yield
    options.debug = False  # the root callback sets it per invocation; keep one test's --debug from the next


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something listens on (this test process)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("env", "args", "variable", "says"),
    [
        ({"API_KEYS": "not json"}, ["api"], "API_KEYS", "not valid JSON"),
        ({"SCORER_SHADOWS": "x"}, ["score"], "SCORER_SHADOWS", "Set it to a JSON list, e.g. [{"),
        ({"SCORER_SHADOWS": "x"}, ["api"], "SCORER_SHADOWS", "not valid JSON"),  # a block nested in the API's
        ({"SCORER_SHADOWS": '[{"name": "s"}]'}, ["score"], "SCORER_SHADOWS", "in entry 0, alias: field required"),
        ({"SCORER_DELIVERY": "maybe"}, ["score"], "SCORER_DELIVERY", "(got 'maybe'). Fix or unset SCORER_DELIVERY."),
        ({"SCORER_REVIEW_THRESHOLD": "0.5"}, ["score"], "SCORER_REVIEW_THRESHOLD", "set both or neither"),
        ({"KAFKA_BOOTSTRAP_SERVERS": " "}, ["score"], "KAFKA_BOOTSTRAP_SERVERS", "at least one host:port"),
        ({"REDIS_PORT": "abc"}, ["api"], "REDIS_PORT", "valid integer"),
        ({"MONITOR_EXPECTED_SPLIT": "{"}, ["monitor"], "MONITOR_EXPECTED_SPLIT", "a JSON object"),
        ({"FEATURES_PUSH_BATCH_SIZE": "0"}, ["features", "stream"], "FEATURES_PUSH_BATCH_SIZE", "greater than"),
        ({"INFRA_KAFKA_PORT": "x"}, ["infra", "up"], "INFRA_KAFKA_PORT", "valid integer"),
        ({"INFRA_REDIS_PORT": "9092"}, ["infra", "status"], "INFRA_KAFKA_PORT", "must differ"),
        ({"TRAIN_EPOCHS": "x"}, ["train"], "TRAIN_EPOCHS", "Fix or unset TRAIN_EPOCHS."),
        ({"PRODUCER_RATE": "-1"}, ["produce", "--events", "1"], "PRODUCER_RATE", "greater than or equal to 0"),
        ({"KAFKA_BOOTSTRAP_SERVERS": ""}, ["lag"], "KAFKA_BOOTSTRAP_SERVERS", "at least one host:port"),
        ({"LOG_LEVEL": "LOUD"}, ["infra", "status"], "LOG_LEVEL", "Use DEBUG, INFO, WARNING or ERROR."),
        ({"LOG_FORMAT": "xml"}, ["infra", "status"], "LOG_FORMAT", "Use text or json."),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_variable(
    env: dict[str, str], args: list[str], variable: str, says: str
) -> None:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 1, result.output
    assert lines(result.output) == [lines(result.output)[0]], result.output
    assert result.output.startswith(f"error: {variable}: "), result.output
    assert says in result.output
    assert "Traceback" not in result.output


def test_an_option_out_of_range_says_to_fix_the_option() -> None:
    result = runner.invoke(app, ["score", "--batch-size", "0"])
    assert result.exit_code == 1
    assert result.output.startswith("error: SCORER_MAX_BATCH_SIZE: input should be greater than or equal to 1")
    assert "Fix the option that sets it." in result.output


def test_debug_adds_the_traceback() -> None:
    quiet = runner.invoke(app, ["score"], env={"SCORER_SHADOWS": "x"})
    loud = runner.invoke(app, ["--debug", "score"], env={"SCORER_SHADOWS": "x"})
    by_variable = runner.invoke(app, ["score"], env={"SCORER_SHADOWS": "x", "STREAMSCORE_DEBUG": "1"})
    assert "Traceback" not in quiet.output
    for result in (loud, by_variable):
        assert result.exit_code == 1
        assert "Traceback (most recent call last)" in result.output
        assert "JSONDecodeError" in result.output  # the cause, down to where the environment was read
        assert lines(result.output)[-1] == lines(quiet.output)[0]  # and the same line last


def test_an_unexpected_error_is_one_line_that_points_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(stack_module.LocalStack, "status", broken)
    result = runner.invoke(app, ["infra", "status"])
    assert result.exit_code == 1
    hint = "(an unexpected error: `streamscore --debug …` prints its traceback)"
    assert lines(result.output) == [f"error: KeyError: 'boom' {hint}"]


@pytest.mark.parametrize(
    ("args", "variable"),
    [(["api"], "API_PORT"), (["monitor"], "MONITOR_METRICS_PORT"), (["features", "stream"], "FEATURES_METRICS_PORT")],
)
def test_a_port_in_use_names_the_setting_and_who_holds_it(taken_port: int, args: list[str], variable: str) -> None:
    env = {variable: str(taken_port), "API_KEYS": f'[{{"name": "t", "sha256": "{DIGEST}"}}]'}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 1
    holder = f"pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()})"
    assert len(lines(result.output)) == 1, result.output
    assert re.fullmatch(  # every service listens on loopback by default (its bind setting)
        rf"error: {variable}: port {taken_port} on 127\.0\.0\.1 is already in use by "
        rf"{re.escape(holder)}\. Stop that process, or set {variable} to a free port\.",
        lines(result.output)[0],
    )


def test_infra_up_refuses_a_taken_port_before_starting_anything(
    taken_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_module, "require_tool", lambda name: name)  # whether java is installed is not the point
    fetched: list[bool] = []
    monkeypatch.setattr(local_kafka, "fetch_jars", lambda *a, **k: fetched.append(True))
    kafka_port, controller_port = free_ports(2)
    env = {
        "INFRA_DATA_DIR": str(tmp_path),
        "INFRA_KAFKA_PORT": str(kafka_port),
        "INFRA_CONTROLLER_PORT": str(controller_port),
        "INFRA_REDIS_PORT": str(taken_port),
    }
    result = runner.invoke(app, ["infra", "up"], env=env)
    assert result.exit_code == 1
    assert lines(result.output) == [lines(result.output)[0]]
    assert result.output.startswith(f"error: INFRA_REDIS_PORT: port {taken_port} on 127.0.0.1 is already in use by ")
    assert not fetched and not (tmp_path / "stack.json").exists()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_the_local_stack_is_suggested_only_for_its_own_address() -> None:
    assert "streamscore infra up" in BrokerUnavailableError("127.0.0.1:9092", 3).message
    assert "streamscore infra up" in BrokerUnavailableError("localhost:9092", 3).message
    elsewhere = BrokerUnavailableError("kafka.internal:9092", 3).message
    assert "infra up" not in elsewhere and "KAFKA_BOOTSTRAP_SERVERS" in elsewhere
    assert "infra up" not in BrokerUnavailableError("127.0.0.1:29092", 3).message


def test_a_missing_tool_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing(name: str) -> str:
        raise MissingToolError(name, "Install it.")

    monkeypatch.setattr(stack_module, "require_tool", missing)
    result = runner.invoke(app, ["infra", "up"], env={"INFRA_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert lines(result.output) == ["error: 'java' was not found on PATH. Install it."]


# The demo in a fresh interpreter, with redis-server missing: it must stop at the local stack in one line and say
# nothing about a stack that "was already running" (nothing ran, nothing started).
DEMO_WITHOUT_REDIS = """
import sys
import streamscore.infra.stack as stack
from streamscore.errors import MissingToolError

def require_tool(name):
    if name == "redis-server":
        raise MissingToolError(name, "Install Redis.")
    return name

stack.require_tool = require_tool
from streamscore_cli.main import main
sys.argv = ["streamscore", *sys.argv[1:]]
main()
"""


def test_a_demo_that_cannot_start_the_stack_says_so_in_one_line_and_claims_nothing(tmp_path: Path) -> None:
    ports = free_ports(3)
    env = {
        **os.environ,
        "INFRA_DATA_DIR": str(tmp_path / "infra"),
        "INFRA_KAFKA_PORT": str(ports[0]),
        "INFRA_CONTROLLER_PORT": str(ports[1]),
        "INFRA_REDIS_PORT": str(ports[2]),
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-c", DEMO_WITHOUT_REDIS, "demo", "--data-dir", str(tmp_path / "demo")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert lines(result.stderr) == [
        f"error: local stack failed: 'redis-server' was not found on PATH. Install Redis. (log: {tmp_path / 'infra'})"
    ]
    assert "running" not in result.stdout, result.stdout  # neither "was running before" nor "keeps running"
    assert "stopped" not in result.stdout, result.stdout
    assert "step local stack failed" in (tmp_path / "demo" / "logs" / "demo.log").read_text()  # the traceback's place


def test_a_service_that_exited_is_named_with_the_error_its_log_ends_with() -> None:
    tail = (
        "2026-12-07 08:22:27,100 INFO scorer.service loading models\n"
        "2026-12-07 08:22:27,849 ERROR scorer.service invalid scorer settings: SCORER_SHADOWS: not valid JSON\n"
        "2026-12-07 08:22:27,900 INFO librdkafka closing\n"
    )
    error = DemoStepError("starting the scorer", "the process exited during start-up, exit code 2", "s.log", tail)
    assert error.message == (
        "starting the scorer failed: the process exited during start-up, exit code 2: "
        "invalid scorer settings: SCORER_SHADOWS: not valid JSON (log: s.log)"
    )
    assert "loading models" in error.details
    traceback_tail = "Traceback (most recent call last):\n  File ...\nFileNotFoundError: [Errno 2] No such file: 'x'\n"
    assert (
        DemoStepError("s", "p", None, traceback_tail).message
        == "s failed: p: FileNotFoundError: [Errno 2] No such file: 'x'"
    )


def test_redis_that_does_not_answer_is_named_with_its_address() -> None:
    local = describe(redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    assert local.line.startswith("Redis at 127.0.0.1:6379 did not answer (Error 111 connecting")
    assert local.line.endswith("Start it with `streamscore infra up` (or `make up`)") and local.expected
    remote = describe(redis.ConnectionError("Error 111 connecting to cache.internal:6380. Connection refused."))
    assert "REDIS_HOST / REDIS_PORT" in remote.line and "infra up" not in remote.line


def test_a_missing_optional_extra_names_the_extra_to_install() -> None:
    missing = ModuleNotFoundError("No module named 'torch'", name="torch")
    failure = describe(missing)
    assert failure.expected
    assert failure.line == (
        "torch is not installed: training needs the `train` extra "
        "(`make install`, or `pip install 'streamscore[train]'`)"
    )
    assert not describe(ModuleNotFoundError("No module named 'nothing_of_ours'", name="nothing_of_ours")).expected
