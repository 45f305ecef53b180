"""The demo's services run under its supervisor (streamscore_cli.supervise), started detached by the demo's own
`Services`: a service killed with SIGKILL is restarted and counted, a later demo (after `--keep`) stops the
supervisor and its services, and so does the demo's own stop. A small HTTP server stands in for a service."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from streamscore.infra.process import is_running, tail
from streamscore_cli.demo_processes import Services, ServiceSpec, port_in_use
from streamscore_cli.supervise import RestartPolicy
from tests.support.scoring import free_port

POLICY = RestartPolicy(initial_s=0.2, max_s=1.0, stable_after_s=5.0)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def web(port: int) -> ServiceSpec:
    return ServiceSpec("web", "http.server", port, "WEB_PORT", args=(str(port), "--bind", "127.0.0.1"))


def test_a_killed_service_is_restarted_and_a_later_demo_stops_the_supervision(tmp_path: Path) -> None:
    port = free_port()
    state, logs = tmp_path / "processes.json", tmp_path / "logs"
    services = Services(state, logs, POLICY)
    first = services.start([web(port)], env={}, timeout_s=60)["web"]
    supervisor = services.supervisor
    assert supervisor is not None
    try:
        wait_for(lambda: answers(port), "the service to answer")
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: services.statuses()["web"].restarts == 1, "the restart")
        status = services.statuses()["web"]
        assert status.pid != first.pid and status.last_exit == -signal.SIGKILL
        wait_for(lambda: answers(port), "the restarted service to answer")
        assert services.restarts() == {"web": 1}
        assert "exited with code -9" in tail(supervisor.log)

        # The demo returned with --keep; the next demo finds and stops what it left.
        restarted = services.records["web"]
        later = Services(state, logs, POLICY)
        stopped = {record.pid for record in later.stop_leftovers()}
        assert supervisor.pid in stopped
        assert not is_running(supervisor) and not is_running(restarted)
        assert not port_in_use(port)
    finally:
        if is_running(supervisor):
            os.kill(supervisor.pid, signal.SIGKILL)


def test_the_demos_own_stop_ends_the_supervisor_and_its_services(tmp_path: Path) -> None:
    port = free_port()
    services = Services(tmp_path / "processes.json", tmp_path / "logs", POLICY)
    record = services.start([web(port)], env={}, timeout_s=60)["web"]
    supervisor = services.supervisor
    assert supervisor is not None
    try:
        wait_for(lambda: answers(port), "the service to answer")
        assert services.stop_all() == ["web"]
        assert not is_running(record) and not is_running(supervisor)
        assert services.restarts() == {"web": 0}  # the status stays for the summary
        assert services.statuses()["web"].state == "stopped"
    finally:
        if is_running(supervisor):
            os.kill(supervisor.pid, signal.SIGKILL)
