"""Shared settings blocks. Only `settings.py` modules read the environment.

Services compose these blocks into their own settings class with their own prefix.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamscore.contracts import EVENT_TIME_MAX_AHEAD_S, EVENT_TIME_MAX_BEHIND_S, EventTimeWindow
from streamscore.topics import TopicRegistry


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster (`KAFKA_…`)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="forbid", use_attribute_docstrings=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of brokers."""
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str | None = None
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when a SASL protocol is used."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password."""
    client_id_prefix: str = "streamscore"
    """Prefix of every client.id this deployment uses (visible in broker logs and quotas)."""

    @field_validator("bootstrap_servers")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS must name at least one host:port")
        return value

    def client_config(self) -> dict[str, str]:
        """The librdkafka properties shared by every producer, consumer and admin client."""
        config = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config


class TopicSettings(BaseSettings):
    """Topic naming and sizing (`TOPICS_…`)."""

    model_config = SettingsConfigDict(env_prefix="TOPICS_", extra="forbid", use_attribute_docstrings=True)

    prefix: str = ""
    """Prepended to every topic name, e.g. `staging.`; tests use a unique prefix per test."""
    partitions: int = Field(default=6, ge=1, le=1000)
    """Partitions of every topic created by `streamscore infra up`."""

    def registry(self) -> TopicRegistry:
        return TopicRegistry.build(prefix=self.prefix, partitions=self.partitions)


class RedisSettings(BaseSettings):
    """How to reach the Redis online store (`REDIS_…`)."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="forbid", use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Redis host."""
    port: int = Field(default=6379, ge=1, le=65535)
    """Redis port."""
    db: int = Field(default=0, ge=0)
    """Redis database number."""
    password: SecretStr | None = None
    """Redis password (AUTH), if the server requires one."""

    def connection_string(self) -> str:
        """Feast's `connection_string` form: host:port,db=N[,password=…]."""
        text = f"{self.host}:{self.port},db={self.db}"
        if self.password:
            text += f",password={self.password.get_secret_value()}"
        return text


class ContractSettings(BaseSettings):
    """What the receivers of transactions accept (`CONTRACT_…`): one block that the scorer, the API (through the
    scorer's settings) and the feature processor all read, so they apply the same event-time window."""

    model_config = SettingsConfigDict(env_prefix="CONTRACT_", extra="forbid", use_attribute_docstrings=True)

    event_time_max_ahead_s: float = Field(default=EVENT_TIME_MAX_AHEAD_S, ge=0.0, le=3600.0)
    """How far a transaction's event time may be ahead of the receiving clock (clock skew between a terminal or
    switch and us; at most an hour); a later one is dead-lettered as `event_time_out_of_window` (the API answers
    422). The feature processor's state refuses anything a day ahead regardless (streamscore.features)."""
    event_time_max_behind_s: float = Field(default=EVENT_TIME_MAX_BEHIND_S, gt=0.0, le=366 * 86400.0)
    """How far it may be behind the receiving clock (default 7 days: Kafka's default retention, so a consumer
    catching up after an outage accepts all the topic still holds); an older one is dead-lettered likewise."""

    def window(self) -> EventTimeWindow:
        return EventTimeWindow(self.event_time_max_ahead_s, self.event_time_max_behind_s)
