"""The local redis-server: loopback only, nothing on disk unless configured."""

from __future__ import annotations

import time

import redis

from streamscore.errors import InfraError
from streamscore.infra.process import ProcessRecord, is_running, require_tool, spawn, tail
from streamscore.infra.settings import InfraSettings


def start(settings: InfraSettings) -> ProcessRecord:
    binary = require_tool("redis-server")
    base = settings.data_dir / "redis"
    base.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(settings.redis_port),
        "--dir",
        str(base),
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]
    argv += ["--save", "3600 1 300 100"] if settings.redis_save else ["--save", ""]
    return spawn("redis", argv, base / "redis.log", settings.redis_port, marker=f"127.0.0.1:{settings.redis_port}")


def wait_ready(record: ProcessRecord, timeout_s: float) -> float:
    started = time.monotonic()
    client = redis.Redis(host="127.0.0.1", port=record.port, socket_timeout=1.0)
    while True:
        try:
            if client.ping():
                return time.monotonic() - started
        except redis.RedisError:
            pass
        if not is_running(record):
            raise InfraError("redis", "redis-server exited during start-up", tail(record.log), record.log)
        if time.monotonic() - started > timeout_s:
            raise InfraError(
                "redis", f"no PING answer on port {record.port} within {timeout_s:.0f} s", tail(record.log), record.log
            )
        time.sleep(0.05)
