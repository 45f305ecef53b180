"""The world a fault campaign runs in: a private local stack (real Kafka and redis-server on free loopback ports, in a
folder of its own), the registry's topics under a prefix, a Feast repository applied to that Redis, two registered
model versions with a drift reference, and the services as child processes under a supervisor that restarts any that
exits — as Compose or `make demo --keep` would. The supervisor counts the exits, so the campaign can tell a service
that recovered by itself from one that had to be restarted."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feature_repo.settings import FeastSettings
from feature_repo.store import apply, open_store
from streamscore.infra import LocalStack
from streamscore.infra.settings import InfraSettings
from streamscore.registry import mlflow_client
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry
from tests.support.models import linear_weights, logistic_onnx, register
from tests.support.monitoring import draw_features, model_scores, reference_document
from tests.support.scoring import MODEL, free_port

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6
OWN_PREFIXES = ("KAFKA_", "TOPICS_", "REDIS_", "FEAST_", "FEATURES_", "INFRA_", "SCORER_", "MONITOR_", "REGISTRY_")
RESTART_DELAY_S = 1.0
"""How long the supervisor waits before starting an exited service again (Compose's first restart delay is ~0)."""


@dataclass
class Exit:
    at: float
    """time.monotonic() when the supervisor saw the exit."""
    code: int
    expected: bool
    """True when the campaign itself killed the process (SIGKILL fault), False when it exited on its own."""


@dataclass
class Service:
    """One supervised child process: `python -m module` with `env`, its log appended to across restarts."""

    name: str
    module: str
    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    exits: list[Exit] = field(default_factory=list)
    starts: int = 0
    supervised: bool = True
    """False while the campaign has stopped it on purpose (scale-in): an exit is then not restarted."""
    _killing: bool = False

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.process is not None and self.alive():
            self._killing = sig == signal.SIGKILL
            self.process.send_signal(sig)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (SIGKILL after `timeout_s`), not restarted."""
        self.supervised = False
        if self.process is None or not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def get(self, path: str, timeout_s: float = 2.0) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of GET `path` on its metrics port; (0, {}) when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout_s) as response:
                return int(response.status), _json(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())
        except (OSError, ValueError):
            return 0, {}

    def ready(self) -> bool:
        status, _ = self.get(READINESS_PATH)
        return status == 200

    def unexpected_exits(self, since: float = 0.0) -> list[Exit]:
        return [e for e in self.exits if e.at >= since and not e.expected]

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


READINESS_PATH = "/healthz"
"""Every service answers readiness here (200 ready, 503 not)."""


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Supervisor:
    """Restarts any supervised service that exits, after RESTART_DELAY_S; records each exit."""

    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def add(self, service: Service) -> None:
        self.services.append(service)
        service.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for service in list(self.services):
                process = service.process
                if process is None or process.poll() is None or not service.supervised:
                    continue
                service.exits.append(Exit(time.monotonic(), int(process.returncode), service._killing))
                log.info("%s exited with %s; restarting in %.1f s", service.name, process.returncode, RESTART_DELAY_S)
                service._killing = False
                service.process = None
                threading.Timer(RESTART_DELAY_S, self._restart, args=(service,)).start()

    def _restart(self, service: Service) -> None:
        if service.supervised and not self._stop.is_set():
            service.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for service in self.services:
            service.stop()


@dataclass
class World:
    stack: LocalStack
    kafka: KafkaSettings
    redis: RedisSettings
    topics: TopicRegistry
    feast: FeastSettings
    tracking_uri: str
    folder: Path
    supervisor: Supervisor
    base_env: dict[str, str]

    def service(self, name: str) -> Service:
        return next(s for s in self.supervisor.services if s.name == name)

    def scorers(self) -> list[Service]:
        return [s for s in self.supervisor.services if s.module == "scorer" and s.supervised]

    def add_scorer(self, index: int) -> Service:
        service = scorer_service(self, index)
        self.supervisor.add(service)
        return service

    def wait_ready(self, timeout_s: float, services: list[Service] | None = None) -> float:
        """Seconds until every (supervised) service answers ready; raises TimeoutError naming the laggards."""
        started = time.monotonic()
        while True:
            pending = [s for s in services or self.supervisor.services if s.supervised and not s.ready()]
            if not pending:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                names = ", ".join(f"{s.name} (log {s.log})" for s in pending)
                raise TimeoutError(f"not ready after {timeout_s:.0f} s: {names}")
            time.sleep(0.2)


def _env(world_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(world_env)
    env.update(extra)
    return env


def scorer_service(world: World, index: int) -> Service:
    port = free_port()
    env = _env(
        world.base_env,
        SCORER_INSTANCE_ID=f"faults-{index}",
        SCORER_METRICS_PORT=str(port),
        SCORER_VARIANTS=json.dumps(
            [
                {"name": "champion", "alias": "champion", "weight": 0.8},
                {"name": "challenger", "alias": "challenger", "weight": 0.2},
            ]
        ),
        SCORER_SHADOWS=json.dumps([{"name": "shadow", "alias": "challenger", "share": 0.25}]),
        SCORER_PROGRESS_INTERVAL_S="5",
    )
    return Service(f"scorer-{index}", "scorer", env, port, world.folder / "logs" / f"scorer-{index}.log")


def _register_models(tracking_uri: str, artifacts: Path) -> None:
    """Champion and challenger, the challenger with a drift reference for the monitor (training writes one)."""
    register(tracking_uri, MODEL, logistic_onnx(*linear_weights(1)), alias="champion", artifact_dir=artifacts)
    version = register(
        tracking_uri, MODEL, logistic_onnx(*linear_weights(2)), alias="challenger", artifact_dir=artifacts
    )
    rng = np.random.default_rng(12)
    x = draw_features(rng, 20_000)
    document = reference_document(x, model_scores(x), seed=3)
    client = mlflow_client(tracking_uri)
    for v in {version, "1"}:
        run_id = client.get_model_version(MODEL, v).run_id
        path = artifacts / f"reference-{v}" / "reference.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
        client.log_artifact(str(run_id), str(path), artifact_path="model")


@contextmanager
def fault_world(
    folder: Path,
    *,
    scorers: int = 1,
    monitor: bool = True,
    api: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> Iterator[World]:
    """Start everything, wait until every service is ready, yield; stop everything (services, then the stack)."""
    step = on_step or (lambda message: log.info("%s", message))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    kafka_port, controller_port, redis_port = (free_port() for _ in range(3))
    stack = LocalStack(
        InfraSettings(
            data_dir=folder / "stack", kafka_port=kafka_port, controller_port=controller_port, redis_port=redis_port
        )
    )
    prefix = f"faults.{uuid.uuid4().hex[:6]}."
    topics = TopicRegistry.build(prefix=prefix, partitions=PARTITIONS)
    supervisor: Supervisor | None = None
    try:
        step(f"local stack: Kafka on {kafka_port}, Redis on {redis_port}")
        stack.up(topics)
        kafka = stack.settings.kafka_settings()
        redis = stack.settings.redis_settings()
        feast = FeastSettings(
            project=f"faults_{uuid.uuid4().hex[:8]}",
            data_dir=folder / "features",
            registry_path=folder / "feast" / "registry.db",
            online_store="redis",
            redis=redis,
        )
        step("Feast repository applied to the stack's Redis")
        apply(open_store(feast), feast.data_dir)
        tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        step("two model versions registered (champion, challenger) with a drift reference")
        _register_models(tracking_uri, folder / "artifacts")
        base_env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "TOPICS_PREFIX": prefix,
            "TOPICS_PARTITIONS": str(PARTITIONS),
            "REDIS_HOST": redis.host,
            "REDIS_PORT": str(redis.port),
            "FEAST_PROJECT": feast.project,
            "FEAST_DATA_DIR": str(feast.data_dir),
            "FEAST_REGISTRY_PATH": str(feast.registry_path),
            "FEAST_ONLINE_STORE": "redis",
            "REGISTRY_TRACKING_URI": tracking_uri,
            "REGISTRY_CACHE_DIR": str(folder / "model-cache"),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        world = World(stack, kafka, redis, topics, feast, tracking_uri, folder, Supervisor([]), base_env)
        services = [scorer_service(world, i + 1) for i in range(scorers)]
        features_port = free_port()
        services.append(
            Service(
                "feature-processor",
                "stream_processors",
                _env(
                    base_env,
                    FEATURES_APP_ID=f"faults-features-{uuid.uuid4().hex[:6]}",
                    FEATURES_STATE_DIR=str(folder / "faust" / "features"),
                    FEATURES_METRICS_PORT=str(features_port),
                    FEATURES_METRICS_BIND="127.0.0.1",
                ),
                features_port,
                folder / "logs" / "feature-processor.log",
            )
        )
        if monitor:
            monitor_port = free_port()
            services.append(
                Service(
                    "monitor",
                    "monitor",
                    _env(
                        base_env,
                        MONITOR_APP_ID=f"faults-monitor-{uuid.uuid4().hex[:6]}",
                        MONITOR_STATE_DIR=str(folder / "faust" / "monitor"),
                        MONITOR_METRICS_PORT=str(monitor_port),
                        MONITOR_METRICS_BIND="127.0.0.1",
                        MONITOR_WINDOW_SECONDS="20",
                        MONITOR_LABEL_MATURITY_S="5",
                        MONITOR_EXPECTED_SPLIT=json.dumps({"champion": 0.8, "challenger": 0.2}),
                    ),
                    monitor_port,
                    folder / "logs" / "monitor.log",
                )
            )
        if api:
            api_port = free_port()
            services.append(
                Service(
                    "api", "scorer.api", _env(base_env, API_PORT=str(api_port)), api_port, folder / "logs" / "api.log"
                )
            )
        supervisor = world.supervisor
        step(f"starting {', '.join(s.name for s in services)}")
        for service in services:
            supervisor.add(service)
        supervisor.start()
        seconds = world.wait_ready(180.0)
        step(f"every service ready after {seconds:.0f} s")
        yield world
    finally:
        if supervisor is not None:
            supervisor.close()
        stack.down()
