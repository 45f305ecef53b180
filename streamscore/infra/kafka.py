"""The local Apache Kafka broker: official jars from Maven Central, KRaft combined broker/controller."""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path

from streamscore.errors import InfraError
from streamscore.infra import jars
from streamscore.infra.process import ProcessRecord, require_tool, spawn
from streamscore.infra.settings import InfraSettings

log = logging.getLogger(__name__)

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


def pinned_version(jars_list: Path) -> str:
    """The Kafka version the committed jar list pins."""
    return jars.kafka_version(jars.read_list(jars_list))


def jars_ready(settings: InfraSettings) -> bool:
    return jars.is_cached(jars.read_list(settings.jars_list), settings.jars_dir)


def fetch_jars(settings: InfraSettings, on_step: jars.StepCallback | None = None) -> bool:
    """Download the listed broker jars into the cache, each checked against its SHA-256; a no-op when the cache
    already holds them. Returns True when something was downloaded."""
    listed = jars.read_list(settings.jars_list)
    return jars.fetch(listed, settings.jars_dir, settings.maven_repository, on_step) > 0


def kafka_dir(settings: InfraSettings) -> Path:
    return settings.data_dir / "kafka"


def server_properties(settings: InfraSettings) -> str:
    """A single combined broker/controller on loopback, with what one node needs for transactions."""
    data = kafka_dir(settings) / "data"
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{settings.controller_port}
listeners=PLAINTEXT://127.0.0.1:{settings.kafka_port},CONTROLLER://127.0.0.1:{settings.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{settings.kafka_port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
# One node: internal topics cannot have more than one replica, or transactions and groups hang.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
# No reason to wait for more members to join a group on a single developer machine.
group.initial.rebalance.delay.ms=0
# Every topic comes from the registry (or Faust's own changelogs), never from a typo in a client.
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=168
"""


def log4j_properties(log_file: Path) -> str:
    return f"""\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""


def _java_base(settings: InfraSettings) -> list[str]:
    java = require_tool("java")
    base = kafka_dir(settings)
    return [
        java,
        "-Xms256m",
        f"-Xmx{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{base / 'log4j.properties'}",
        f"-Dkafka.logs.dir={base / 'logs'}",
        "-cp",
        str(settings.jars_dir / "*"),
    ]


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes one (URL-safe base64 of 16 bytes), never starting with "-": the storage
    tool's argument parser reads such an id as an option and fails (1 start in 64; Kafka's own Uuid.randomUuid
    skips those ids for the same reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def prepare(settings: InfraSettings) -> Path:
    """Write the configuration and format KRaft storage once; returns the server.properties path."""
    base = kafka_dir(settings)
    (base / "logs").mkdir(parents=True, exist_ok=True)
    props = base / "server.properties"
    props.write_text(server_properties(settings))
    (base / "log4j.properties").write_text(log4j_properties(base / "logs" / "server.log"))
    if (base / "data" / "meta.properties").exists():
        return props
    argv = [*_java_base(settings), STORAGE_TOOL, "format", "-t", new_cluster_id(), "-c", str(props)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InfraError("kafka", "formatting KRaft storage failed", (result.stdout + result.stderr)[-4000:])
    return props


def start(settings: InfraSettings) -> ProcessRecord:
    props = prepare(settings)
    base = kafka_dir(settings)
    argv = [*_java_base(settings), MAIN_CLASS, str(props)]
    # The properties path is unique to this data dir: it identifies our broker among other JVMs.
    return spawn("kafka", argv, base / "logs" / "stdout.log", settings.kafka_port, marker=str(props))


def server_log(settings: InfraSettings) -> Path:
    return kafka_dir(settings) / "logs" / "server.log"
