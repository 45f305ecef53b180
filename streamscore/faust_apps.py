"""How our Faust services (the feature processor, the monitor) are built: the same guarantees and local-stack
choices for both, and aiokafka's URLs and credentials from the `KafkaSettings` the librdkafka clients use.
Imported by the Faust apps only (it imports faust)."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from streamscore.errors import ConfigError
from streamscore.settings import KafkaSettings


def broker_urls(kafka: KafkaSettings) -> list[str]:
    return [f"kafka://{host.strip()}" for host in kafka.bootstrap_servers.split(",") if host.strip()]


def broker_credentials(kafka: KafkaSettings) -> Any:
    """aiokafka credentials matching the librdkafka settings of KafkaSettings (None for PLAINTEXT)."""
    protocol = kafka.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context() if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ConfigError("KAFKA_SASL_USERNAME", f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    raise ConfigError("KAFKA_SECURITY_PROTOCOL", f"unknown protocol {kafka.security_protocol!r}")


def faust_app(
    app_id: str,
    kafka: KafkaSettings,
    *,
    client: str,
    partitions: int,
    web_port: int,
    web_bind: str,
    offset_reset: str = "earliest",
    **options: Any,
) -> Any:
    """A Faust app as our services run one; `options` adds Faust settings (commit cadence, store, …).

    - at-least-once, a new group starting from the earliest record (`offset_reset`), `stream_wait_empty=False`: on a
      rebalance or at shutdown Faust commits what is acknowledged and does not wait for queued events (the
      partition's next owner replays them, which the services' idempotence makes harmless);
    - an empty `env`: Faust reads its own variables (`WEB_PORT`, `BROKER_URL`, …) and lets them override the
      arguments, so only our settings configure it;
    - replication factor 1, no leader-election topic, no standby replicas: the single-node local stack;
    - raw keys and values: the services decode the contracts themselves (dead letters, strict validation);
    - Faust's web server (in the worker's event loop) serves the service's `/metrics` and `/healthz`.
    """
    return faust.App(
        app_id,
        env={},
        autodiscover=False,
        broker=broker_urls(kafka),
        broker_credentials=broker_credentials(kafka),
        broker_client_id=f"{kafka.client_id_prefix}-{client}",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset=offset_reset,
        stream_wait_empty=False,
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        table_standby_replicas=0,
        web_enabled=True,
        web_port=web_port,
        web_bind=web_bind,
        key_serializer="raw",
        value_serializer="raw",
        **options,
    )
