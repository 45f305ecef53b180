"""Starting and stopping local daemons by process id, and checking the tools they need."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from streamscore.errors import MissingToolError

INSTALL_HINTS = {
    "java": "Install a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`, "
    "or run the stack with Docker: `docker compose up -d`.",
    "mvn": "Install Apache Maven, e.g. `apt-get install maven` (it fetches the Kafka jars once), "
    "or run the stack with Docker: `docker compose up -d`.",
    "redis-server": "Install Redis, e.g. `apt-get install redis-server`, or run the stack with Docker: "
    "`docker compose up -d`.",
    "chromium": "Install Chromium for the demo page's browser test, e.g. `apt-get install chromium`.",
}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(name, INSTALL_HINTS.get(name, f"Install '{name}'."))
    return path


@dataclass
class ProcessRecord:
    """What `up` started: enough to find and stop exactly that process later."""

    name: str
    pid: int
    port: int
    marker: str
    """A string that must appear in the process's command line, so a recycled pid is never killed."""
    log: str
    started_at: float


def is_running(record: ProcessRecord) -> bool:
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{record.pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # A zombie (state Z) has exited; it only waits for its parent to reap it.
    state = stat.rsplit(")", 1)[1].split()[0]
    # Right after spawn() the child may not have exec'd yet: its command line is still empty (or the parent's) for a
    # moment. A pid we recorded less than a second ago is ours.
    young = time.time() - record.started_at < 1.0
    return state != "Z" and (record.marker in cmdline or young)


def spawn(
    name: str, argv: list[str], log_path: Path, port: int, marker: str, env: dict[str, str] | None = None
) -> ProcessRecord:
    """Start a daemon in its own session (it outlives the CLI) with stdout/stderr appended to its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return ProcessRecord(name, proc.pid, port, marker, str(log_path), time.time())


def stop(record: ProcessRecord, timeout_s: float = 20.0) -> bool:
    """SIGTERM, wait, then SIGKILL. Returns True when the process was running."""
    if not is_running(record):
        return False
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(record):
            _reap(record.pid)
            return True
        _reap(record.pid)
        time.sleep(0.1)
    os.kill(record.pid, signal.SIGKILL)
    while is_running(record):
        _reap(record.pid)
        time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    # Only our own children can be reaped; for a daemon started by an earlier CLI call this is a no-op.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path | str, lines: int = 40) -> str:
    try:
        with Path(path).open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except FileNotFoundError:
        return ""


class StateFile:
    """The pid file of the local stack: one JSON object of ProcessRecords by service name."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, ProcessRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {name: ProcessRecord(**record) for name, record in raw.items()}

    def save(self, records: dict[str, ProcessRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({name: asdict(r) for name, r in records.items()}, indent=2))
        tmp.replace(self.path)
