"""docker-compose.yml and the service image: the stack's wiring, checked without starting anything.

Every compose assertion runs twice over the same normalised view: once on the file as YAML (always), once
on `docker compose config --format json` (when the Docker CLI with its compose plugin is present), so the
interpolated, merged result Compose would actually run is checked too.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streamscore.topics import TopicRegistry

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

LOOPBACK = "127.0.0.1"


# ---- normalised view ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Port:
    host_ip: str
    published: str
    target: str


@dataclass(frozen=True)
class Service:
    image: str | None
    build: dict[str, str] | None
    environment: dict[str, str]
    command: list[str]
    ports: list[Port]
    volumes: list[tuple[str, str]]
    depends_on: dict[str, str]
    healthcheck: dict[str, Any] | None
    restart: str | None


@dataclass(frozen=True)
class Compose:
    services: dict[str, Service]
    volumes: set[str] = field(default_factory=set)


def _scalar(value: Any) -> str:
    """Compose's string form of a YAML scalar (YAML 1.1 may turn `no` into False)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _environment(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: _scalar(value) for key, value in raw.items()}


def _command(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return shlex.split(raw)
    return [_scalar(part) for part in raw]


def _port(raw: Any) -> Port:
    if isinstance(raw, dict):
        return Port(_scalar(raw.get("host_ip")), _scalar(raw.get("published")), _scalar(raw["target"]))
    text = _scalar(raw).split("/", 1)[0]
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        return Port(parts[0].strip("[]"), parts[1], parts[2])
    if len(parts) == 2:
        return Port("", parts[0], parts[1])
    return Port("", "", parts[0])


def _volume(raw: Any) -> tuple[str, str]:
    if isinstance(raw, dict):
        return _scalar(raw.get("source")), _scalar(raw["target"])
    source, target = _scalar(raw).split(":")[:2]
    return source, target


def _depends_on(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def _healthcheck(raw: Any) -> dict[str, Any] | None:
    if not raw or raw.get("disable"):
        return None
    test = raw.get("test")
    check = dict(raw)
    check["test"] = ["CMD-SHELL", test] if isinstance(test, str) else [_scalar(part) for part in test or []]
    return check


def _build(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    spec = {"context": raw} if isinstance(raw, str) else dict(raw)
    context = (REPO / spec.get("context", ".")).resolve()
    return {"context": str(context), "dockerfile": str(context / spec.get("dockerfile", "Dockerfile"))}


def normalise(document: dict[str, Any]) -> Compose:
    """One shape for the raw file and for `docker compose config`: short and long syntaxes folded together."""
    services = {
        name: Service(
            image=spec.get("image"),
            build=_build(spec.get("build")),
            environment=_environment(spec.get("environment")),
            command=_command(spec.get("command")),
            ports=[_port(port) for port in spec.get("ports") or []],
            volumes=[_volume(volume) for volume in spec.get("volumes") or []],
            depends_on=_depends_on(spec.get("depends_on")),
            healthcheck=_healthcheck(spec.get("healthcheck")),
            restart=None if spec.get("restart") is None else _scalar(spec["restart"]),
        )
        for name, spec in (document.get("services") or {}).items()
    }
    return Compose(services=services, volumes=set(document.get("volumes") or {}))


@functools.cache
def _raw_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@functools.cache
def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@functools.cache
def _docker_document() -> dict[str, Any]:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture(params=["yaml", "docker-compose-config"])
def compose(request: pytest.FixtureRequest) -> Compose:
    if request.param == "yaml":
        return normalise(_raw_document())
    if not _docker_compose_available():
        pytest.skip("docker CLI with the compose plugin not available; the YAML variant still ran")
    return normalise(_docker_document())


# ---- helpers over the normalised view ---------------------------------------------------------------


def _listeners(text: str) -> dict[str, tuple[str, int]]:
    """`NAME://host:port,...` → {NAME: (host, port)}."""
    parsed = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, address = item.split("://", 1)
        host, port = address.rsplit(":", 1)
        parsed[name] = (host, int(port))
    return parsed


@dataclass(frozen=True)
class KafkaListeners:
    bound: dict[str, tuple[str, int]]
    advertised: dict[str, tuple[str, int]]
    controller: set[str]
    host: str
    container: str


def _kafka_listeners(compose: Compose) -> KafkaListeners:
    env = compose.services["kafka"].environment
    bound = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    controller = set(env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(","))
    host = [name for name, (h, p) in advertised.items() if h in {"localhost", LOOPBACK} and p == 9092]
    container = [name for name, (h, _) in advertised.items() if h == "kafka"]
    assert len(host) == 1, f"exactly one listener must be advertised as localhost:9092: {advertised}"
    assert len(container) == 1, f"exactly one listener must be advertised as kafka:<port>: {advertised}"
    return KafkaListeners(bound, advertised, controller, host[0], container[0])


def _container_bootstrap(compose: Compose) -> str:
    listeners = _kafka_listeners(compose)
    host, port = listeners.advertised[listeners.container]
    return f"{host}:{port}"


def _strings(node: Any) -> list[str]:
    """Every scalar value of a YAML document (keys excluded)."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [] if node is None else [str(node)]


# ---- compose: services and Kafka --------------------------------------------------------------------


def test_the_first_services_are_defined(compose: Compose) -> None:
    assert {"kafka", "topics", "redis", "mlflow"} <= set(compose.services)


def test_kafka_is_apache_kafka_3_9_in_kraft_combined_mode(compose: Compose) -> None:
    kafka = compose.services["kafka"]
    assert kafka.image is not None and kafka.image.startswith("apache/kafka:3.9")
    env = kafka.environment
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_NODE_ID"] == "1"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    controller_port = {port for name, (_, port) in _listeners(env["KAFKA_LISTENERS"]).items() if name == "CONTROLLER"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] in {f"1@kafka:{port}" for port in controller_port}


def test_kafka_has_one_listener_for_the_host_and_one_for_containers(compose: Compose) -> None:
    kafka = compose.services["kafka"]
    listeners = _kafka_listeners(compose)
    client_listeners = set(listeners.bound) - listeners.controller
    assert len(client_listeners) == 2, f"two client listeners expected besides the controller: {listeners.bound}"
    assert listeners.controller <= set(listeners.bound)
    assert set(listeners.advertised) == client_listeners, "the controller listener must not be advertised"
    assert listeners.host != listeners.container

    # The host listener listens on the port that is published on the host's loopback as 9092.
    host_port = listeners.bound[listeners.host][1]
    assert Port(LOOPBACK, "9092", str(host_port)) in kafka.ports
    # The container listener is not published: only the compose network reaches it.
    container_port = listeners.bound[listeners.container][1]
    assert container_port == listeners.advertised[listeners.container][1]
    assert all(port.target != str(container_port) for port in kafka.ports)

    env = kafka.environment
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == listeners.container
    protocol_map = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners.bound) <= set(protocol_map)


def test_kafka_has_single_broker_settings(compose: Compose) -> None:
    env = compose.services["kafka"].environment
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_NUM_PARTITIONS"] == "6"


def test_kafka_keeps_its_data_in_a_named_volume(compose: Compose) -> None:
    kafka = compose.services["kafka"]
    log_dirs = kafka.environment["KAFKA_LOG_DIRS"]
    assert any(source in compose.volumes and target == log_dirs for source, target in kafka.volumes)


def test_kafka_healthcheck_asks_the_broker_for_its_api_versions(compose: Compose) -> None:
    check = compose.services["kafka"].healthcheck
    assert check is not None
    test = " ".join(check["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in test
    bootstrap = re.search(r"--bootstrap-server\s+(\S+)", test)
    assert bootstrap is not None
    listeners = _kafka_listeners(compose)
    reachable = {f"{h}:{p}" for h, p in listeners.advertised.values()}
    reachable |= {f"localhost:{p}" for name, (_, p) in listeners.bound.items() if name not in listeners.controller}
    assert bootstrap.group(1) in reachable
    assert {"interval", "retries", "start_period"} <= set(check)


# ---- compose: the topics job ------------------------------------------------------------------------


def test_topics_job_runs_the_cli_once_kafka_is_healthy(compose: Compose) -> None:
    topics = compose.services["topics"]
    assert topics.command[:2] == ["infra", "topics"]
    assert "--wait" in topics.command
    assert topics.depends_on.get("kafka") == "service_healthy"
    assert topics.restart == "no"
    assert topics.environment["KAFKA_BOOTSTRAP_SERVERS"] == _container_bootstrap(compose)


def test_topics_job_is_built_from_the_streamscore_image(compose: Compose) -> None:
    build = compose.services["topics"].build
    assert build is not None
    assert Path(build["context"]) == REPO
    assert Path(build["dockerfile"]) == DOCKERFILE


def test_streamscore_containers_reach_redis_and_mlflow_by_service_name(compose: Compose) -> None:
    env = compose.services["topics"].environment
    assert env["REDIS_HOST"] == "redis"
    assert any(port.target == env["REDIS_PORT"] for port in compose.services["redis"].ports)
    tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert tracking.hostname == "mlflow"
    assert any(port.target == str(tracking.port) for port in compose.services["mlflow"].ports)


def test_no_topic_name_is_written_in_the_compose_file() -> None:
    names = {spec.name for spec in TopicRegistry.build().all()}
    tokens = {token for text in _strings(_raw_document()) for token in re.split(r"[\s,=\"']+", text)}
    assert not names & tokens, "topic names come from the registry via `streamscore infra topics`"


# ---- compose: redis and mlflow ----------------------------------------------------------------------


def test_redis_is_ephemeral_and_checked_with_ping(compose: Compose) -> None:
    redis = compose.services["redis"]
    assert redis.image is not None and redis.image.startswith("redis:7")
    command = redis.command
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert redis.healthcheck is not None
    assert "redis-cli ping" in " ".join(redis.healthcheck["test"])


def test_mlflow_serves_sqlite_and_artifacts_from_a_named_volume(compose: Compose) -> None:
    mlflow = compose.services["mlflow"]
    assert mlflow.image is not None and mlflow.image.startswith("ghcr.io/mlflow/mlflow:v")
    command = mlflow.command
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    store = command[command.index("--backend-store-uri") + 1]
    artifacts = command[command.index("--artifacts-destination") + 1]
    assert store.startswith("sqlite:////")
    assert "--serve-artifacts" in command
    mounts = {target for source, target in mlflow.volumes if source in compose.volumes}
    for path in (store.removeprefix("sqlite:///"), artifacts):
        assert any(path.startswith(mount.rstrip("/") + "/") for mount in mounts), f"{path} is not on a volume"
    assert mlflow.healthcheck is not None
    assert "/health" in " ".join(mlflow.healthcheck["test"])


def test_mlflow_server_accepts_the_host_name_containers_use(compose: Compose) -> None:
    command = compose.services["mlflow"].command
    allowed = set(command[command.index("--allowed-hosts") + 1].split(","))
    tracking = urlsplit(compose.services["topics"].environment["MLFLOW_TRACKING_URI"])
    assert tracking.netloc in allowed


def test_mlflow_server_is_not_older_than_the_client(compose: Compose) -> None:
    """A 3.x client's log_model calls the logged-models API, which 2.x servers answer with 404."""
    image = compose.services["mlflow"].image
    assert image is not None
    tag = re.fullmatch(r".*:v(\d+)\.(\d+)\.(\d+)", image)
    assert tag is not None, f"pin a concrete vX.Y.Z tag: {image}"
    try:
        client = importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mlflow is not installed here")
    assert int(tag.group(1)) >= int(client.split(".")[0])


def test_published_ports_are_bound_to_loopback(compose: Compose) -> None:
    published = {(name, port.published) for name, service in compose.services.items() for port in service.ports}
    assert {("kafka", "9092"), ("redis", "6379"), ("mlflow", "5000")} <= published
    for name, service in compose.services.items():
        for port in service.ports:
            assert port.host_ip == LOOPBACK, f"{name} publishes {port} on every interface"


# ---- the image --------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    ]


def test_dockerfile_is_based_on_python_3_11() -> None:
    assert DOCKERFILE.is_file()
    froms = [args.split() for instruction, args in _instructions() if instruction == "FROM"]
    assert froms, "no FROM line"
    stages: list[str] = []
    for words in froms:
        base = words[0]
        assert base.startswith("python:3.11") or base in stages, f"unexpected base image {base}"
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.append(words[2])


def test_dockerfile_runs_the_cli_as_a_non_root_user() -> None:
    instructions = _instructions()
    last_stage = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    final = instructions[last_stage:]
    users = [args.split(":")[0] for instruction, args in final if instruction == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    assert users[-1] not in {"root", "0"}
    entrypoints = [json.loads(args) for instruction, args in final if instruction == "ENTRYPOINT"]
    assert entrypoints[-1] == ["streamscore"]


def test_dockerfile_installs_dependencies_before_copying_the_source() -> None:
    instructions = _instructions()
    copies = [i for i, (instruction, args) in enumerate(instructions) if instruction == "COPY" and "--from" not in args]
    manifest = next(i for i in copies if "pyproject.toml" in instructions[i][1])
    source = next(i for i in copies if instructions[i][1].split()[0] == ".")
    assert manifest < source
    assert any("pip install" in args for instruction, args in instructions[manifest:source] if instruction == "RUN")


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for required in (".git", ".venv", ".streamscore", "deploy/local/lib", "*.parquet", "mlruns"):
        assert required in entries, f"{required} missing from .dockerignore"
    assert {"__pycache__", "**/__pycache__"} & entries


# ---- compose: the streamscore services, restarts and health ------------------------------------------

ONE_SHOT_JOBS = {"topics"}
SERVICE_PORTS = {
    "features": (["features", "stream"], "FEATURES_METRICS_PORT", "FEATURES_METRICS_BIND"),
    "scorer": (["score"], "SCORER_METRICS_PORT", "SCORER_METRICS_BIND"),
    "api": (["api"], "API_PORT", "API_HOST"),
    "monitor": (["monitor"], "MONITOR_METRICS_PORT", "MONITOR_METRICS_BIND"),
}
"""Each streamscore service: its CLI command, the setting of the port its `/livez` is served on, its bind."""


def test_every_long_running_service_is_restarted_by_compose_and_has_a_healthcheck(compose: Compose) -> None:
    for name, service in compose.services.items():
        if name in ONE_SHOT_JOBS:
            assert service.restart == "no", name  # a job that finished must not run again
            continue
        assert service.restart in {"unless-stopped", "always"}, f"{name}: restart {service.restart!r}"
        assert service.healthcheck is not None, f"{name} has no healthcheck"
        assert {"interval", "retries", "start_period"} <= set(service.healthcheck), name


def test_the_streamscore_services_run_from_the_image_and_probe_their_liveness_page(compose: Compose) -> None:
    for name, (command, port_variable, bind_variable) in SERVICE_PORTS.items():
        service = compose.services[name]
        assert service.command == command, name
        assert service.build is not None and Path(service.build["dockerfile"]) == DOCKERFILE, name
        assert service.environment[bind_variable] == "0.0.0.0", name
        assert service.environment["KAFKA_BOOTSTRAP_SERVERS"] == _container_bootstrap(compose), name
        assert service.healthcheck is not None
        url = re.search(r"http://localhost:(\d+)(/\S*?)'", " ".join(service.healthcheck["test"]))
        assert url is not None, f"{name}: the healthcheck asks no local URL"
        assert (url.group(1), url.group(2)) == (service.environment[port_variable], "/livez"), name
        assert service.depends_on.get("kafka") == "service_healthy", name
        assert service.depends_on.get("topics") == "service_completed_successfully", name
