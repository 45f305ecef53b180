"""Settings of the producers (`PRODUCER_…`), composed with the shared Kafka and topic blocks."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamscore.settings import KafkaSettings, TopicSettings


class ProducerSettings(BaseSettings):
    """Defaults of `streamscore produce`; every one can be overridden by a CLI option."""

    model_config = SettingsConfigDict(env_prefix="PRODUCER_", extra="forbid", use_attribute_docstrings=True)

    seed: int = 7
    """Seed of the synthetic world and traffic: the same seed gives the same events."""
    accounts: int = Field(default=20_000, ge=1)
    """Number of simulated card accounts."""
    merchants: int = Field(default=2_000, ge=1)
    """Number of simulated merchants."""
    fraud_rate: float = Field(default=0.01, ge=0.0, le=0.5)
    """Share of transactions that belong to a fraud pattern."""
    rate: float = Field(default=200.0, ge=0.0)
    """Events per second in live mode; 0 sends as fast as possible."""
    label_delay_s: float = Field(default=30.0, ge=0.0)
    """Maturity delay: a transaction's label is produced this many seconds after it."""
    linger_ms: int = Field(default=10, ge=0)
    """Producer batching delay (librdkafka linger.ms)."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
