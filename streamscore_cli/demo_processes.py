"""The services `streamscore demo` runs (the feature processor, the scorer, the API, the monitor): started under a
detached supervisor (`streamscore_cli.supervise`) that restarts one that exits, their logs in files, health-checked
over HTTP, stopped through the supervisor. The supervisor's process record goes to a state file and the services'
current pids and restart counts to the supervisor's status file, so a later demo stops what an earlier `--keep`
left running instead of colliding with it on the ports."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from streamscore.errors import StreamscoreError
from streamscore.infra.process import ProcessRecord, StateFile, is_running, spawn, stop, tail
from streamscore.infra.settings import PROJECT_ROOT
from streamscore_cli.supervise import MARKER, ChildStatus, Plan, Program, RestartPolicy, read_status

Health = Literal["down", "healthy", "ready"]
"""down: no 200 from `/healthz`; healthy: 200 but still preparing (see Readiness); ready: ready for traffic."""
Readiness = Callable[[dict[str, Any]], str | None]
"""What a healthy service's `/healthz` JSON says it still waits for; None when it is ready for traffic."""


class DemoStepError(StreamscoreError):
    """A step of the demo failed: one line naming the step, what went wrong (for a service that exited, the error
    its log ends with) and where its log is; the log's last lines are the details (`streamscore --debug`)."""

    def __init__(self, step: str, problem: str, log: Path | str | None = None, log_tail: str = "") -> None:
        message = f"{step} failed: {problem}"
        reason = last_error(log_tail)
        if reason:
            message += f": {reason}"
        if log is not None:
            message += f" (log: {log})"
        details = "--- last lines of the log ---\n" + log_tail.rstrip() if log_tail.strip() else ""
        super().__init__(message, details)
        self.step = step


_LOGGED_ERROR = re.compile(r"^\S+ \S+ (?:ERROR|CRITICAL) \S+ (?P<message>.+)$")
"""A line of our services' log format (streamscore.logs) at ERROR: the message after the logger's name."""
_RAISED = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit): .+$")
"""The last line of a traceback: `SomeError: what`."""


def last_error(log_tail: str, limit: int = 300) -> str:
    """The error a service's log ends with: its last ERROR line (a service's one-line failure), else the last line
    of a traceback; "" when there is none."""
    for line in reversed(log_tail.strip().splitlines()):
        line = line.strip()
        logged = _LOGGED_ERROR.match(line)
        if logged:
            return logged.group("message")[:limit]
        if _RAISED.match(line):
            return line[:limit]
    return ""


@dataclass(frozen=True)
class ServiceSpec:
    """A service run with `python -m <module>`; it serves `/healthz` and `/metrics` on `port`."""

    name: str
    module: str
    port: int
    port_variable: str
    """The setting that moves the port (named when the port is taken)."""
    args: tuple[str, ...] = ()
    """Arguments after `python -m <module>`."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; a 5xx answer is a status, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


class Services:
    """The demo's services under their supervisor, and the files that find them again."""

    SUPERVISOR = "supervisor"
    STOP_TIMEOUT_S = 40.0
    """How long the supervisor may take to stop: it gives its services 25 s together before SIGKILL."""

    def __init__(self, state_path: Path, log_dir: Path, policy: RestartPolicy | None = None) -> None:
        self.state = StateFile(state_path)
        self.log_dir = log_dir
        self.plan_path = state_path.with_name(state_path.stem + ".plan.json")
        self.status_path = state_path.with_name(state_path.stem + ".status.json")
        self.policy = policy or RestartPolicy()
        self.supervisor: ProcessRecord | None = None

    @property
    def records(self) -> dict[str, ProcessRecord]:
        """Each service's current process, as the supervisor last wrote it."""
        return {name: _record(status) for name, status in read_status(self.status_path).items()}

    def statuses(self) -> dict[str, ChildStatus]:
        return read_status(self.status_path)

    def restarts(self) -> dict[str, int]:
        """Restarts per service since the supervisor started it (also after it stopped)."""
        return {name: status.restarts for name, status in read_status(self.status_path).items()}

    def stop_leftovers(self) -> list[ProcessRecord]:
        """Stop what an earlier demo left running (`--keep`), checked by pid and command line: its supervisor
        first (it stops its services), then any service a supervisor killed outright left behind."""
        stopped = [record for record in self.state.load().values() if stop(record, timeout_s=self.STOP_TIMEOUT_S)]
        stopped += [record for record in self.records.values() if stop(record, timeout_s=30.0)]
        self.state.save({})
        self.status_path.unlink(missing_ok=True)
        return stopped

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def ensure_free(self, specs: Sequence[ServiceSpec]) -> None:
        """Refuse to start anything when a service's port is taken (by something other than our children)."""
        for spec in specs:
            if port_in_use(spec.port):
                raise DemoStepError(
                    f"starting the {spec.name}",
                    f"port {spec.port} is already in use; stop what listens there or set {spec.port_variable}",
                )

    def start(
        self, specs: Sequence[ServiceSpec], env: Mapping[str, str], timeout_s: float = 30.0
    ) -> dict[str, ProcessRecord]:
        """Start the supervisor (detached: it outlives the demo with `--keep`) with `env` for every service, and
        return each service's first process once the supervisor has started them all."""
        programs = [
            Program(
                spec.name,
                [sys.executable, "-m", spec.module, *spec.args],
                str(self.log_path(spec.name)),
                spec.port,
                f"-m {spec.module}",
            )
            for spec in specs
        ]
        self.status_path.unlink(missing_ok=True)
        Plan(programs, str(self.status_path), self.policy).save(self.plan_path)
        log = self.log_path(self.SUPERVISOR)
        argv = [sys.executable, "-m", "streamscore_cli.supervise", str(self.plan_path)]
        self.supervisor = spawn(self.SUPERVISOR, argv, log, 0, MARKER, env={**env, "PYTHONPATH": _pythonpath()})
        self.state.save({self.SUPERVISOR: self.supervisor})
        deadline = time.monotonic() + timeout_s
        while len(records := self.records) < len(specs):
            if self.supervisor_exited() or time.monotonic() > deadline:
                raise DemoStepError(
                    "starting the services",
                    f"the supervisor (pid {self.supervisor.pid}) did not start them",
                    log,
                    tail(log, 25),
                )
            time.sleep(0.05)
        return records

    def supervisor_exited(self) -> bool:
        """Whether the supervisor this demo started has exited. Asked of the kernel as its parent: right after a
        spawn, /proc/<pid>/cmdline is briefly empty (the exec is still under way), so `is_running` can say no."""
        if self.supervisor is None:
            return True
        try:
            pid, _ = os.waitpid(self.supervisor.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            return True
        return pid != 0

    def probe(self, spec: ServiceSpec, ready: Readiness) -> tuple[Health, str]:
        """The service's state and what its `/healthz` said. A process that has exited raises DemoStepError with
        its log's last lines."""
        if self.supervisor_exited():
            log = self.log_path(self.SUPERVISOR)
            raise DemoStepError(f"starting the {spec.name}", "the supervisor exited", log, tail(log, 25))
        child = self.statuses()[spec.name]
        if child.restarts or child.state != "running":
            # The supervisor noticed an exit (it polls every 0.2 s) and restarts the service (with --keep it goes
            # on doing so); a demo that is starting stops here.
            code = "" if child.last_exit is None else f", exit code {child.last_exit}"
            raise DemoStepError(
                f"starting the {spec.name}",
                f"the process (pid {child.pid}) exited during start-up{code}",
                child.log,
                tail(child.log, 25),
            )
        try:
            status, body = http_get(f"{spec.base_url}/healthz")
        except OSError as exc:
            return "down", f"/healthz not answering ({exc})"
        try:
            details: dict[str, Any] = json.loads(body)
        except ValueError:
            details = {}
        if status != 200:
            # /healthz is readiness (503 while a table is rebuilt); a live service is only still preparing.
            try:
                live = status == 503 and http_get(f"{spec.base_url}/livez")[0] == 200
            except OSError:
                live = False
            if not live:
                return "down", f"/healthz answered {status}: {body[:120]}"
            return "healthy", ready(details) or "; ".join(details.get("reasons") or ["not ready"])
        waiting_for = ready(details)
        return ("ready", "ready") if waiting_for is None else ("healthy", waiting_for)

    def wait_healthy(
        self,
        checks: Sequence[tuple[ServiceSpec, Readiness]],
        timeout_s: float,
        *,
        healthy_is_enough: Collection[str] = (),
        on_wait: Callable[[str], None] | None = None,
    ) -> dict[str, tuple[float, bool]]:
        """Poll every service's `/healthz` until each answers 200 and `ready(body)` waits for nothing. Returns, per
        service, the seconds waited and whether it got ready. After `timeout_s`, a service named in
        `healthy_is_enough` that answers 200 counts as started (not ready); any other service not ready, or a
        process that exits, raises DemoStepError with its log's last lines."""
        started = time.monotonic()
        done: dict[str, tuple[float, bool]] = {}
        while True:
            waiting: list[tuple[ServiceSpec, Health, str]] = []
            for spec, ready in checks:
                if spec.name in done:
                    continue
                state, said = self.probe(spec, ready)
                if state == "ready":
                    done[spec.name] = (time.monotonic() - started, True)
                else:
                    waiting.append((spec, state, said))
            waited = time.monotonic() - started
            if waited > timeout_s:
                for spec, state, said in waiting:
                    if state == "healthy" and spec.name in healthy_is_enough:
                        done[spec.name] = (waited, False)
                        continue
                    record = self.records[spec.name]
                    raise DemoStepError(
                        f"starting the {spec.name}",
                        f"not ready within {timeout_s:.0f} s; {said}",
                        record.log,
                        tail(record.log, 25),
                    )
                waiting = []
            if not waiting:
                return done
            if on_wait is not None:
                on_wait(" · ".join(f"{spec.name}: {said[:70]}" for spec, _, said in waiting) + f" · {waited:.0f} s")
            time.sleep(0.5)

    def metrics(self, spec: ServiceSpec) -> str | None:
        """The service's `/metrics` text, or None when it does not answer."""
        try:
            status, body = http_get(f"{spec.base_url}/metrics")
        except OSError:
            return None
        return body if status == 200 else None

    def running(self) -> dict[str, ProcessRecord]:
        return {name: record for name, record in self.records.items() if is_running(record)}

    def stop_all(self) -> list[str]:
        """SIGTERM the supervisor, which stops every service (SIGKILL after 25 s) and then itself; returns the
        services that were running. The status file stays (restart counts for the summary)."""
        running = list(self.running())
        if self.supervisor is not None:
            stop(self.supervisor, timeout_s=self.STOP_TIMEOUT_S)
        for record in self.running().values():  # only if the supervisor could not stop them
            stop(record, timeout_s=30.0)
        self.state.save({})
        return running


def _record(status: ChildStatus) -> ProcessRecord:
    return ProcessRecord(status.name, status.pid, status.port, status.marker, status.log, status.started_at)


def _pythonpath() -> str:
    """The children import this checkout's packages, whatever the installation maps."""
    current = os.environ.get("PYTHONPATH", "")
    return str(PROJECT_ROOT) + (os.pathsep + current if current else "")
