"""The local stack's configuration and its start-up errors, without starting anything."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from streamscore.errors import MissingToolError
from streamscore.infra import LocalStack
from streamscore.infra.kafka import new_cluster_id, pinned_version, server_properties
from streamscore.infra.process import TOOLS, ProcessRecord, StateFile, is_running, require_tool
from streamscore.infra.settings import InfraSettings


def test_ports_must_differ() -> None:
    with pytest.raises(ValueError, match="INFRA_KAFKA_PORT"):
        InfraSettings(kafka_port=7000, redis_port=7000)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFRA_KAFKA_PORT", "29092")
    monkeypatch.setenv("INFRA_DATA_DIR", str(tmp_path))
    settings = InfraSettings()
    assert settings.bootstrap_servers == "127.0.0.1:29092"
    assert settings.data_dir == tmp_path


def test_single_broker_properties_allow_transactions(tmp_path: Path) -> None:
    props = dict(
        line.split("=", 1)
        for line in server_properties(
            InfraSettings(data_dir=tmp_path, kafka_port=1234, controller_port=1235)
        ).splitlines()
        if line and not line.startswith("#")
    )
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1234,CONTROLLER://127.0.0.1:1235"
    assert props["log.dirs"].startswith(str(tmp_path))


def test_cluster_ids_never_look_like_an_option() -> None:
    # One random id in 64 starts with "-" (seen: "kafka-storage: error: argument --cluster-id/-t: expected one
    # argument"); 2 000 draws would meet one with probability 1 - (63/64)**2000 > 0.999999.
    ids = [new_cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {22}


def test_kafka_is_pinned_to_3_9() -> None:
    assert pinned_version(InfraSettings().jars_list).startswith("3.9.")


def test_missing_tools_say_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for name, tool in TOOLS.items():  # a machine where neither wheel is installed (or has none for it)
        monkeypatch.setitem(TOOLS, name, replace(tool, in_wheel=lambda: None))
    for name, hint in (("java", "openjdk"), ("redis-server", "redis-server")):
        with pytest.raises(MissingToolError, match=hint) as raised:
            require_tool(name)
        assert "streamscore[local]" in raised.value.message and "\n" not in raised.value.message
    with pytest.raises(MissingToolError, match="java"):
        LocalStack(InfraSettings(data_dir=tmp_path)).up()


def test_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    import os

    me = ProcessRecord("x", os.getpid(), 1, marker="definitely-not-in-my-cmdline", log="", started_at=0)
    assert not is_running(me)
    assert not is_running(ProcessRecord("x", 2**22 + 7, 1, marker="", log="", started_at=0))
    state = StateFile(tmp_path / "s.json")
    assert state.load() == {}
    state.save({"x": me})
    assert state.load() == {"x": me}
