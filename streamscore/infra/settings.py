"""Settings of the local stack (`INFRA_…`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamscore.infra.jars import MAVEN_CENTRAL
from streamscore.settings import KafkaSettings, RedisSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class InfraSettings(BaseSettings):
    """Where the local Kafka and Redis live and which loopback ports they use."""

    model_config = SettingsConfigDict(env_prefix="INFRA_", extra="forbid", use_attribute_docstrings=True)

    data_dir: Path = PROJECT_ROOT / ".streamscore" / "local"
    """Broker data, logs and the pid file; delete it (after `infra down`) for a clean broker."""
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    """Loopback port of the Kafka client listener."""
    controller_port: int = Field(default=9093, ge=1, le=65535)
    """Loopback port of the KRaft controller listener."""
    redis_port: int = Field(default=6379, ge=1, le=65535)
    """Loopback port of redis-server."""
    jars_list: Path = PROJECT_ROOT / "deploy" / "local" / "kafka-jars.txt"
    """The Kafka broker's jars (Maven coordinates and SHA-256, one per line); it pins the Kafka version."""
    jars_dir: Path = PROJECT_ROOT / "deploy" / "local" / "lib"
    """Cache of the broker jars (git-ignored); filled once from maven_repository, reused offline afterwards."""
    maven_repository: str = MAVEN_CENTRAL
    """Where the broker jars are downloaded from: Maven Central, or a mirror with its layout (each jar is checked
    against the list's SHA-256 whatever the source)."""
    kafka_heap: str = "1g"
    """Maximum JVM heap of the broker (-Xmx)."""
    start_timeout_s: float = Field(default=60.0, gt=0)
    """How long `up` waits for each service to answer before failing with its log tail."""
    redis_save: bool = False
    """Keep Redis data on disk (RDB snapshots in data_dir); off by default: the online store is a cache."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> InfraSettings:
        ports = [self.kafka_port, self.controller_port, self.redis_port]
        if len(set(ports)) != len(ports):
            raise ValueError(
                "INFRA_KAFKA_PORT, INFRA_CONTROLLER_PORT and INFRA_REDIS_PORT must differ, got " + str(ports)
            )
        return self

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers)

    def redis_settings(self) -> RedisSettings:
        return RedisSettings(host="127.0.0.1", port=self.redis_port)
