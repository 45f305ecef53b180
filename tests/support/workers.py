"""A service run as `python -m <module>` for an integration test: its log in a file, its `/healthz` and `/metrics`
over HTTP, ready when its health says so, stopped with SIGTERM (SIGKILL if it hangs) when the block ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path
    port: int
    started_s: float = 0.0
    """Seconds from spawning the process to its health saying ready."""

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2.0) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self) -> dict[str, Any]:
        status, body = self.get("/healthz")
        return {"status": status, **json.loads(body)}

    def metrics(self, prefix: str) -> dict[str, float]:
        """Every sample whose line starts with `prefix` (name with labels → value)."""
        _, body = self.get("/metrics")
        values = {}
        for line in body.decode().splitlines():
            if line.startswith(prefix):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def metric(self, prefix: str) -> float:
        """The sum of the samples whose line starts with `prefix` (a name, or a name and the first labels)."""
        return sum(self.metrics(prefix).values())

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        # Faust's start-up banner (table rows) says nothing about a failure.
        return "\n".join(line for line in text.splitlines() if not line.startswith(("|", "+", "\u3003")))[-8000:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.log.stem} exited with {self.process.returncode}:\n{self.tail()}")


@contextmanager
def worker_process(
    module: str, env: dict[str, str], log: Path, port: int, ready: Callable[[dict[str, Any]], bool], timeout_s: float
) -> Iterator[WorkerProcess]:
    """`python -m module` until the block ends (also when the test fails), ready once `ready(health)`. The log is
    appended to, so a restarted worker's lines follow the first one's."""
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n===== start {datetime.now(UTC):%H:%M:%S} =====\n".encode())
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(process, log, port)
    try:
        while True:
            worker.check_alive()
            try:
                health = worker.health()
            except (OSError, ValueError):
                health = {}
            if ready(health):
                break
            if time.monotonic() - started > timeout_s:
                pytest.fail(f"{module} was not ready after {timeout_s:.0f} s:\n{worker.tail()}")
            time.sleep(0.1)
        worker.started_s = time.monotonic() - started
        yield worker
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
