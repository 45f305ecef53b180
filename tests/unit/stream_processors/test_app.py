"""The Faust app is built from settings only (no network when the partition count is given): ids, topic
names, guarantees and the web server come from StreamProcessorSettings, never from Faust's own env."""

from __future__ import annotations

import pytest
import typer
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError
from typer.testing import CliRunner

from stream_processors.accounts.pushing import MemorySink
from stream_processors.app import changelog_topic_name, create_app
from stream_processors.metrics import FeatureMetrics
from stream_processors.settings import StreamProcessorSettings
from streamscore.faust_apps import broker_urls
from streamscore.settings import KafkaSettings, TopicSettings
from streamscore_cli.stream import stream


def settings(**overrides: object) -> StreamProcessorSettings:
    base: dict[str, object] = {
        "app_id": "features-test",
        "table_partitions": 4,
        "metrics_port": 16066,
        "commit_interval_s": 0.5,
        "kafka": KafkaSettings(bootstrap_servers="127.0.0.1:19092, 127.0.0.1:19093"),
        "topics": TopicSettings(prefix="t.unit.", partitions=4),
    }
    base.update(overrides)
    return StreamProcessorSettings(**base)  # type: ignore[arg-type]


def test_the_app_is_configured_from_settings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PORT", "1")  # Faust would let its own variables override the arguments
    monkeypatch.setenv("BROKER_URL", "kafka://elsewhere:1")
    processor = create_app(settings(), sink=MemorySink(), metrics=FeatureMetrics(CollectorRegistry()))
    conf = processor.app.conf
    assert conf.id == "t.unit.features-test"
    assert [str(url) for url in conf.broker] == ["kafka://127.0.0.1:19092", "kafka://127.0.0.1:19093"]
    assert conf.processing_guarantee.value == "at_least_once"
    assert conf.web_port == 16066
    assert conf.broker_commit_interval == 0.5
    assert conf.topic_replication_factor == 1
    assert str(conf.store) == "memory:"
    assert not conf.stream_wait_empty


def test_the_table_is_co_partitioned_and_its_changelog_carries_the_topic_prefix() -> None:
    processor = create_app(settings(), sink=MemorySink(), metrics=FeatureMetrics(CollectorRegistry()))
    assert processor.table.partitions == 4
    assert processor.table.changelog_topic.get_topic_name() == changelog_topic_name(processor.settings)
    assert changelog_topic_name(processor.settings) == "t.unit.features-test-account-state-changelog"
    (agent,) = processor.app.agents.values()
    assert agent.concurrency == 1
    assert list(agent.channel.topics) == ["t.unit.transactions"]


def test_unknown_table_stores_and_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="FEATURES_STORE"):
        settings(store="redis://localhost")
    with pytest.raises(ValidationError):
        settings(unknown=1)


def test_broker_urls() -> None:
    assert broker_urls(KafkaSettings(bootstrap_servers="a:1,b:2")) == ["kafka://a:1", "kafka://b:2"]


def test_the_stream_command_names_the_variable_to_fix() -> None:
    cli = typer.Typer()
    cli.command()(stream)
    result = CliRunner().invoke(cli, ["--batch-size", "0"])
    assert result.exit_code == 1
    assert "FEATURES_PUSH_BATCH_SIZE" in result.output
    assert "Traceback" not in result.output

    result = CliRunner().invoke(cli, [], env={"KAFKA_BOOTSTRAP_SERVERS": " "})
    assert result.exit_code == 1
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.output


def test_a_backoff_that_shrinks_is_refused_with_the_variables_to_fix() -> None:
    with pytest.raises(ValidationError, match="FEATURES_PUSH_RETRY_MAX_MS must be at least"):
        settings(push_retry_initial_ms=500, push_retry_max_ms=100)


def test_fausts_own_sensors_are_served_beside_ours_and_several_apps_share_one_registry() -> None:
    metrics = FeatureMetrics(CollectorRegistry())
    first = create_app(settings(), sink=MemorySink(), metrics=metrics)
    second = create_app(settings(app_id="features-other"), sink=MemorySink(), metrics=metrics)  # no duplicate error
    assert type(first.app.monitor).__name__ == type(second.app.monitor).__name__ == "PrometheusMonitor"
    state = second.app.monitor.on_rebalance_start(second.app)
    assert metrics.registry.get_sample_value("streamscore_features_faust_total_rebalances") == 1
    second.app.monitor.on_rebalance_return(second.app, state)
    assert metrics.registry.get_sample_value("streamscore_features_faust_total_rebalances_recovering") == 1
    text = generate_latest(metrics.registry).decode()
    assert "streamscore_features_faust_consumer_commit_latency_bucket" in text
    assert "streamscore_features_events_processed_total" in text, "the service's own metrics, same registry"
