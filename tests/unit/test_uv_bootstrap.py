"""`deploy/local/uv.py`, which gives `make install` a uv on a machine that has only Python: a uv on PATH first, else
the pinned wheel, kept only when its SHA-256 is the committed one. Served here from a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from streamscore.infra.settings import PROJECT_ROOT


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("uv_bootstrap", PROJECT_ROOT / "deploy" / "local" / "uv.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wheel_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("uv-0.0.0.data/scripts/uv", "#!/bin/sh\necho uv 0.0.0\n")
        archive.writestr("uv-0.0.0.dist-info/METADATA", "Name: uv\n")
    return buffer.getvalue()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    body = wheel_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/uv-0.0.0-py3-none-any.whl"
    server.shutdown()


def pin(module: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, sha256: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(module, "WHEELS", {module.platform_key(): (url, sha256)})


def test_the_wheel_with_the_committed_checksum_gives_an_executable_uv(
    served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uv = load()
    pin(uv, monkeypatch, tmp_path, served, hashlib.sha256(wheel_bytes()).hexdigest())
    binary = uv.uv_binary(use_path=False)
    assert binary == tmp_path / "cache" / "streamscore" / "uv" / uv.VERSION / "uv"
    assert binary.read_text().endswith("echo uv 0.0.0\n")
    assert binary.stat().st_mode & 0o111
    assert sorted(p.name for p in binary.parent.iterdir()) == ["uv"], "no wheel or partial file left behind"


def test_a_wheel_with_another_checksum_is_refused_in_one_line_and_not_kept(
    served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uv = load()
    pin(uv, monkeypatch, tmp_path, served, "0" * 64)
    with pytest.raises(SystemExit) as exited:
        uv.uv_binary(use_path=False)
    assert exited.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "expected 0000" in error and "install uv" in error
    assert list((tmp_path / "cache" / "streamscore" / "uv" / uv.VERSION).iterdir()) == []


def test_a_uv_on_path_is_used_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uv = load()
    own = tmp_path / "bin" / "uv"
    own.parent.mkdir()
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    monkeypatch.setenv("PATH", str(own.parent))
    monkeypatch.setattr(uv, "WHEELS", {})  # a download would fail
    assert uv.uv_binary() == own


@pytest.mark.skipif(sys.platform != "linux", reason="the machines this project is tested on")
def test_this_platform_has_a_pinned_wheel() -> None:
    uv = load()
    assert uv.platform_key() in uv.WHEELS
