"""The demo supervisor's restart policy and its loop, with fake processes and a fake clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamscore_cli.supervise import Backoff, Plan, Program, RestartPolicy, Supervisor, read_status


def test_backoff_doubles_per_quick_exit_up_to_the_cap_and_a_stable_run_starts_it_over() -> None:
    policy = RestartPolicy(initial_s=1.0, max_s=10.0, factor=2.0, stable_after_s=30.0)
    backoff = Backoff(policy)
    assert [backoff.on_exit(ran_s=0.5) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.on_exit(ran_s=30.0) == 1.0  # ran long enough: healthy, the backoff starts over
    assert backoff.on_exit(ran_s=2.0) == 2.0


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.code = -signum

    def wait(self, timeout: float | None = None) -> int:
        assert self.code is not None
        return self.code


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path) -> tuple[Supervisor, list[FakeProcess], Clock]:
    started: list[FakeProcess] = []
    clock = Clock()

    def start(program: Program) -> FakeProcess:
        process = FakeProcess(1000 + len(started))
        started.append(process)
        return process

    programs = [Program(name, ["x"], str(tmp_path / f"{name}.log"), 1, f"-m {name}") for name in ("scorer", "api")]
    policy = RestartPolicy(initial_s=1.0, max_s=4.0, stable_after_s=10.0)
    supervisor = Supervisor(programs, policy, tmp_path / "status.json", start=start, clock=clock)  # type: ignore[arg-type]
    return supervisor, started, clock


def test_a_service_that_exits_is_restarted_after_its_backoff_and_counted(tmp_path: Path) -> None:
    supervisor, started, clock = make(tmp_path)
    supervisor.start_all()
    scorer, api = started
    assert {n: s.pid for n, s in read_status(tmp_path / "status.json").items()} == {"scorer": 1000, "api": 1001}

    clock.now += 2.0
    scorer.code = 1
    assert supervisor.poll()
    status = read_status(tmp_path / "status.json")
    assert (status["scorer"].state, status["scorer"].last_exit, status["scorer"].restarts) == ("backoff", 1, 0)
    assert status["api"].state == "running"

    clock.now += 0.5  # the first backoff is 1 s
    assert not supervisor.poll()
    assert len(started) == 2
    clock.now += 0.5
    assert supervisor.poll()
    assert len(started) == 3
    status = read_status(tmp_path / "status.json")
    assert (status["scorer"].pid, status["scorer"].state, status["scorer"].restarts) == (1002, "running", 1)

    # A clean exit is restarted too (the demo wants the service running), after a longer backoff: it ran 1 s.
    clock.now += 1.0
    started[2].code = 0
    supervisor.poll()
    clock.now += 1.9
    supervisor.poll()
    assert len(started) == 3
    clock.now += 0.1
    supervisor.poll()
    assert len(started) == 4
    assert read_status(tmp_path / "status.json")["scorer"].restarts == 2
    assert api.signals == []


def test_stop_all_terminates_every_running_service_and_says_so(tmp_path: Path) -> None:
    supervisor, started, _ = make(tmp_path)
    supervisor.start_all()
    supervisor.stop_all(timeout_s=1.0)
    assert [p.signals for p in started] == [[15], [15]]
    assert {s.state for s in read_status(tmp_path / "status.json").values()} == {"stopped"}


def test_the_plan_round_trips_through_its_file(tmp_path: Path) -> None:
    plan = Plan([Program("scorer", ["python", "-m", "scorer"], "s.log", 9108, "-m scorer")], "status.json")
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    assert json.loads((tmp_path / "plan.json").read_text())["policy"]["max_s"] == 30.0


@pytest.mark.parametrize("content", [None, "", "{not json"])
def test_a_missing_or_half_written_status_reads_as_empty(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "status.json"
    if content is not None:
        path.write_text(content)
    assert read_status(path) == {}
