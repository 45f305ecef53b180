"""The monitor's Faust app is built from settings only (no network when the partition count is given), and what
it needs at start-up — the broker, the registry and its champion — is checked with an error naming what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.app import check_registry, create_app
from monitor.app_settings import MonitorAppSettings
from monitor.metrics import MonitorMetrics
from streamscore.registry import AliasNotFoundError, RegistrySettings, RegistryUnavailableError
from streamscore.settings import KafkaSettings, TopicSettings


def settings(**overrides: object) -> MonitorAppSettings:
    base: dict[str, object] = {
        "app_id": "monitor-test",
        "table_partitions": 4,
        "metrics_port": 16067,
        "commit_interval_s": 0.5,
        "kafka": KafkaSettings(bootstrap_servers="127.0.0.1:19092"),
        "topics": TopicSettings(prefix="t.unit.", partitions=4),
    }
    base.update(overrides)
    return MonitorAppSettings(**base)  # type: ignore[arg-type]


def test_the_app_reads_the_three_topics_at_least_once_with_one_agent_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PORT", "1")  # Faust would let its own variables override the arguments
    monitor = create_app(settings(), loader=lambda version: {}, metrics=MonitorMetrics(CollectorRegistry()))
    conf = monitor.app.conf
    assert conf.id == "t.unit.monitor-test"
    assert conf.processing_guarantee.value == "at_least_once"
    assert conf.web_port == 16067
    assert str(conf.store) == "memory:"
    agents = monitor.app.agents
    assert {agent.concurrency for agent in agents.values()} == {1}
    topics = {name: set(agent.channel.topics) for name, agent in agents.items()}
    assert topics[next(n for n in topics if n.endswith("records"))] == {
        "t.unit.scores",
        "t.unit.scores.shadow",
        "t.unit.labels",
    }
    assert topics[next(n for n in topics if n.endswith("merge"))] == {"t.unit.monitor-test-merge"}
    runtime = monitor.runtime
    assert runtime.state_table.partitions == 4, "co-partitioned with the sources"
    assert runtime.merge_table.partitions == 1, "one merging agent"
    assert runtime.state_table.changelog_topic.get_topic_name() == "t.unit.monitor-test-monitor-state-changelog"


def test_a_registry_without_a_champion_names_the_command_that_makes_one(tmp_path: Path) -> None:
    empty = settings(registry=RegistrySettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    with pytest.raises(AliasNotFoundError, match="streamscore train"):
        check_registry(empty)


def test_an_unreachable_registry_names_the_setting_to_fix() -> None:
    # MLflow alone retries for over four minutes; the monitor bounds its retries (MLFLOW_RETRIES).
    down = settings(registry=RegistrySettings(tracking_uri="http://127.0.0.1:1"))
    with pytest.raises(RegistryUnavailableError, match="REGISTRY_TRACKING_URI"):
        check_registry(down)


def test_the_worker_keeps_its_local_state_where_it_is_told(tmp_path: Path) -> None:
    metrics = MonitorMetrics(CollectorRegistry())
    told = create_app(settings(state_dir=tmp_path / "demo" / "faust"), loader=lambda version: {}, metrics=metrics)
    assert Path(told.app.conf.datadir) == tmp_path / "demo" / "faust"
    assert (tmp_path / "demo").is_dir(), "Faust makes the folder itself, not its parents"
    default = create_app(settings(), loader=lambda version: {}, metrics=MonitorMetrics(CollectorRegistry()))
    assert Path(default.app.conf.datadir).name == "t.unit.monitor-test-data", "Faust's own default"
