"""The services `streamscore demo` runs as child processes (the feature processor, the scorer): started with their
logs in files, health-checked over HTTP, stopped by process id. Process records go to a state file, so a later
demo stops what an earlier `--keep` left running instead of colliding with it on the ports."""

from __future__ import annotations

import json
import os
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

Health = Literal["down", "healthy", "ready"]
"""down: no 200 from `/healthz`; healthy: 200 but still preparing (see Readiness); ready: ready for traffic."""
Readiness = Callable[[dict[str, Any]], str | None]
"""What a healthy service's `/healthz` JSON says it still waits for; None when it is ready for traffic."""


class DemoStepError(StreamscoreError):
    """A step of the demo failed; names the step and where its log is."""

    def __init__(self, step: str, problem: str, log: Path | str | None = None, log_tail: str = "") -> None:
        message = f"{step} failed: {problem}"
        if log_tail.strip():
            message += "\n--- last lines of the log ---\n" + log_tail.rstrip()
        if log is not None:
            message += f"\nlog: {log}"
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class ServiceSpec:
    """A service run with `python -m <module>`; it serves `/healthz` and `/metrics` on `port`."""

    name: str
    module: str
    port: int
    port_variable: str
    """The setting that moves the port (named when the port is taken)."""

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
    """The demo's child processes and their state file."""

    def __init__(self, state_path: Path, log_dir: Path) -> None:
        self.state = StateFile(state_path)
        self.log_dir = log_dir
        self.records: dict[str, ProcessRecord] = {}

    def stop_leftovers(self) -> list[ProcessRecord]:
        """Stop what an earlier demo left running (`--keep`), checked by pid and command line."""
        stopped = [record for record in self.state.load().values() if stop(record, timeout_s=30.0)]
        self.state.save({})
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

    def start(self, spec: ServiceSpec, env: Mapping[str, str]) -> ProcessRecord:
        log = self.log_path(spec.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            handle.write(f"\n===== streamscore demo: {spec.name} started {time.strftime('%F %T')} =====\n".encode())
        argv = [sys.executable, "-m", spec.module]
        record = spawn(spec.name, argv, log, spec.port, f"-m {spec.module}", env={**env, "PYTHONPATH": _pythonpath()})
        self.records[spec.name] = record
        self.state.save(self.records)
        return record

    def probe(self, spec: ServiceSpec, ready: Readiness) -> tuple[Health, str]:
        """The service's state and what its `/healthz` said. A process that has exited raises DemoStepError with
        its log's last lines."""
        record = self.records[spec.name]
        if not is_running(record):
            raise DemoStepError(
                f"starting the {spec.name}",
                f"the process (pid {record.pid}) exited during start-up",
                record.log,
                tail(record.log, 25),
            )
        try:
            status, body = http_get(f"{spec.base_url}/healthz")
        except OSError as exc:
            return "down", f"/healthz not answering ({exc})"
        if status != 200:
            return "down", f"/healthz answered {status}: {body[:120]}"
        try:
            details: dict[str, Any] = json.loads(body)
        except ValueError:
            details = {}
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
        """SIGTERM each child by pid and wait for it (SIGKILL after 30 s), newest first."""
        stopped = [name for name, record in reversed(self.records.items()) if stop(record, timeout_s=30.0)]
        self.records.clear()
        self.state.save({})
        return stopped


def _pythonpath() -> str:
    """The children import this checkout's packages, whatever the installation maps."""
    current = os.environ.get("PYTHONPATH", "")
    return str(PROJECT_ROOT) + (os.pathsep + current if current else "")
