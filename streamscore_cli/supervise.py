"""The demo's process supervisor: `python -m streamscore_cli.supervise PLAN` runs the services a plan lists and
restarts one that exits — whatever its exit code, since the demo wants it running — after a backoff, logging each
exit and counting the restarts in a status file the demo reads. `streamscore demo` starts it detached, so with
`--keep` the supervision goes on after the demo returns; SIGTERM to the supervisor stops the services and then
itself.

Why not a library: supervisord restarts a process that dies while starting with a backoff that grows by one
second per try and then gives up for good (FATAL), restarts one that had run without any backoff, and counts
nothing; it needs its own config file, socket and pid file. circus brings ZeroMQ and tornado; honcho stops every
process when one exits. What the demo needs — restart always, exponential backoff reset by a stable run, counts
the demo can print — is the small loop below.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = "-m streamscore_cli.supervise"
"""In the supervisor's command line: a recycled pid is never taken for it."""


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts: `initial_s`, then `factor` times longer per consecutive quick exit,
    at most `max_s`; a run of at least `stable_after_s` counts as healthy and starts the backoff over. Never gives
    up (as Compose's `restart: unless-stopped`): a service waiting for a dependency comes back when it does."""

    initial_s: float = 1.0
    max_s: float = 30.0
    factor: float = 2.0
    stable_after_s: float = 30.0

    def delay(self, quick_exits: int) -> float:
        """Seconds before the restart that follows `quick_exits` consecutive quick exits (counting this one)."""
        return float(min(self.max_s, self.initial_s * self.factor ** max(quick_exits - 1, 0)))


@dataclass
class Backoff:
    """One service's restart state under a policy."""

    policy: RestartPolicy
    quick_exits: int = 0

    def on_exit(self, ran_s: float) -> float:
        """The delay before restarting a service that exited after running `ran_s` seconds."""
        self.quick_exits = 1 if ran_s >= self.policy.stable_after_s else self.quick_exits + 1
        return self.policy.delay(self.quick_exits)


@dataclass(frozen=True)
class Program:
    """One supervised service: its command line, its log (appended to) and what identifies its process."""

    name: str
    argv: list[str]
    log: str
    port: int
    marker: str


@dataclass
class ChildStatus:
    """What the status file says of one service (the demo reads it)."""

    name: str
    pid: int
    port: int
    marker: str
    log: str
    started_at: float
    restarts: int = 0
    last_exit: int | None = None
    state: str = "running"
    """running, or backoff (exited; restarting at `restart_at`)."""
    restart_at: float | None = None


@dataclass
class _Child:
    program: Program
    backoff: Backoff
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None
    status: ChildStatus | None = None


def spawn(program: Program) -> subprocess.Popen[bytes]:
    """Start a service in its own session (a signal meant for the supervisor's group does not reach it), its
    output appended to its log, with the supervisor's environment."""
    path = Path(program.log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(f"\n===== supervisor: {program.name} started {time.strftime('%F %T')} =====\n".encode())
        handle.flush()
        return subprocess.Popen(
            program.argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


class Supervisor:
    """Runs programs and restarts each one that exits, with its own backoff; `poll` is one pass (tested without
    processes through `start` and `clock`)."""

    def __init__(
        self,
        programs: list[Program],
        policy: RestartPolicy,
        status_path: Path,
        *,
        start: Callable[[Program], subprocess.Popen[bytes]] = spawn,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = [_Child(program, Backoff(policy)) for program in programs]
        self.status_path = status_path
        self._start = start
        self._clock = clock

    def start_all(self) -> None:
        for child in self.children:
            self._launch(child)
        self.write_status()

    def _launch(self, child: _Child) -> None:
        child.process = self._start(child.program)
        child.started = self._clock()
        child.restart_at = None
        previous = child.status
        child.status = ChildStatus(
            child.program.name,
            child.process.pid,
            child.program.port,
            child.program.marker,
            child.program.log,
            time.time(),
            restarts=0 if previous is None else previous.restarts + 1,
            last_exit=None if previous is None else previous.last_exit,
        )

    def poll(self) -> bool:
        """Notice exits, restart those whose backoff has passed. Returns whether anything changed."""
        changed = False
        now = self._clock()
        for child in self.children:
            process, status = child.process, child.status
            assert status is not None
            if process is not None and (code := process.poll()) is not None:
                ran = now - child.started
                delay = child.backoff.on_exit(ran)
                child.process, child.restart_at = None, now + delay
                status.state, status.last_exit, status.restart_at = "backoff", code, time.time() + delay
                log.warning(
                    "%s (pid %d) exited with code %d after %.1f s; restart #%d in %.1f s (log %s)",
                    child.program.name,
                    process.pid,
                    code,
                    ran,
                    status.restarts + 1,
                    delay,
                    child.program.log,
                )
                changed = True
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                self._launch(child)
                assert child.status is not None
                log.info(
                    "%s restarted: pid %d (restart #%d)", child.program.name, child.status.pid, child.status.restarts
                )
                changed = True
        if changed:
            self.write_status()
        return changed

    def stop_all(self, timeout_s: float = 25.0) -> None:
        """SIGTERM every running service at once, wait up to `timeout_s` for all of them, SIGKILL the rest."""
        running = [child.process for child in self.children if child.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop within %.0f s: SIGKILL", process.pid, timeout_s)
                process.kill()
                process.wait()
        for child in self.children:
            child.process = None
            if child.status is not None:
                child.status.state = "stopped"
        self.write_status()

    def statuses(self) -> dict[str, ChildStatus]:
        return {c.program.name: c.status for c in self.children if c.status is not None}

    def write_status(self) -> None:
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({name: asdict(s) for name, s in self.statuses().items()}, indent=2))
        tmp.replace(self.status_path)


@dataclass(frozen=True)
class Plan:
    """The supervisor's input file: what to run, the policy, where to write the status."""

    programs: list[Program]
    status: str
    policy: RestartPolicy = field(default_factory=RestartPolicy)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Plan:
        raw: dict[str, Any] = json.loads(path.read_text())
        return cls([Program(**p) for p in raw["programs"]], raw["status"], RestartPolicy(**raw.get("policy", {})))


def read_status(path: Path) -> dict[str, ChildStatus]:
    """The status file a supervisor writes; empty when there is none (yet)."""
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {name: ChildStatus(**status) for name, status in raw.items()}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m streamscore_cli.supervise PLAN.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = Plan.load(Path(args[0]))
    supervisor = Supervisor(plan.programs, plan.policy, Path(plan.status))
    stop = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        log.info("signal %d: stopping the services", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the demo's terminal closing must not stop the supervision
    log.info("supervising %s (pid %d)", ", ".join(p.name for p in plan.programs), os.getpid())
    supervisor.start_all()
    while not stop.wait(0.2):
        supervisor.poll()
    supervisor.stop_all()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
