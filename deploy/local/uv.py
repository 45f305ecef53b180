"""Print the path of a uv binary for `make install`: `uv` on PATH, else the pinned uv wheel from PyPI, checked
against its committed SHA-256 and unpacked into the user's cache (`~/.cache/streamscore/uv/<version>/uv`).

Standard library only, on purpose: it runs before any virtualenv exists, with a system Python that may be externally
managed (PEP 668: `pip install uv` is refused) and may lack ensurepip (Debian without python3-venv: `python3 -m venv`
fails). uv then creates the virtualenv itself and installs the locked dependencies (uv.lock).

Usage: python3 deploy/local/uv.py [--download]   (--download: ignore a uv on PATH; for tests)
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import NoReturn

VERSION = "0.13.9"
_FILES = "https://files.pythonhosted.org/packages"
WHEELS = {
    ("linux", "x86_64"): (
        f"{_FILES}/3d/aa/26d64642d808de4a652579ef950d7cd2d37f080a8babf9c67c6b75fc4c3f/"
        f"uv-{VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",
    ),
    ("linux-musl", "x86_64"): (
        f"{_FILES}/fe/fe/794884de0efd3ac77a427cab21aa72c0483e100c55a42cd5cbb02c141b84/"
        f"uv-{VERSION}-py3-none-musllinux_1_1_x86_64.whl",
        "2c45530751517d6c3bbc69a19473f6effe47cce047bede01ffd8af7ea7b36b25",
    ),
    ("linux", "aarch64"): (
        f"{_FILES}/57/15/94b6cd62ac3ff6550288328e8035288875197cbc183f51554b266a69877b/"
        f"uv-{VERSION}-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl",
        "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",
    ),
    ("darwin", "arm64"): (
        f"{_FILES}/f3/a7/a8d7b074798c7fb3b26b37584b8fe2e29df2ccdc24ce7902caab2a53edbf/"
        f"uv-{VERSION}-py3-none-macosx_11_0_arm64.whl",
        "66c512266d633bef48384a1f53003f41f2a8e7b36fe6e7fbfd3e0fd52d96fa63",
    ),
    ("darwin", "x86_64"): (
        f"{_FILES}/1e/db/08e9ef4879bd667e6d7b4705e594e5bd3e4585f10fc63cb16b9fa2fac63e/"
        f"uv-{VERSION}-py3-none-macosx_10_12_x86_64.whl",
        "c16ed11e013557536b3e60065f1b912f6407bd6518e041b961e23ef9e6b4fbf5",
    ),
}
"""The uv wheels of VERSION by platform: URL and SHA-256 as PyPI publishes them (the aarch64 one is glibc and musl)."""
HELP = "install uv (https://docs.astral.sh/uv/getting-started/installation/) and run `make install` again"


def fail(problem: str) -> NoReturn:
    sys.stderr.write(f"error: {problem}; {HELP}\n")
    raise SystemExit(1)


def platform_key() -> tuple[str, str]:
    system = sys.platform
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "arm64" if system == "darwin" else "aarch64"}.get(machine, machine)
    if system == "linux" and platform.libc_ver()[0] != "glibc" and machine == "x86_64":
        return ("linux-musl", machine)
    return (system, machine)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamscore" / "uv" / VERSION


def download(url: str, sha256: str, into: Path) -> Path:
    """The wheel at `url` in `into`, only if its SHA-256 is `sha256` (a partial or altered file is never kept)."""
    wheel = into / url.rsplit("/", 1)[1]
    digest = hashlib.sha256()
    sys.stderr.write(f"downloading uv {VERSION} from PyPI ({url.rsplit('/', 1)[1]})\n")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, wheel.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        fail(f"could not download {url} ({exc})")
    if digest.hexdigest() != sha256:
        wheel.unlink()
        fail(f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256}")
    return wheel


def unpack(wheel: Path, binary: Path) -> None:
    """Extract the `uv` executable of the wheel (`uv-<version>.data/scripts/uv`) to `binary`, atomically."""
    name = "uv.exe" if sys.platform == "win32" else "uv"
    with zipfile.ZipFile(wheel) as archive:
        member = next((m for m in archive.namelist() if m.endswith(f".data/scripts/{name}")), None)
        if member is None:
            fail(f"{wheel.name} holds no {name} executable")
        partial = binary.with_suffix(".partial")
        with archive.open(member) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out)
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(binary)


def uv_binary(*, use_path: bool = True) -> Path:
    found = shutil.which("uv") if use_path else None
    if found:
        return Path(found)
    binary = cache_dir() / ("uv.exe" if sys.platform == "win32" else "uv")
    if binary.exists():
        return binary
    key = platform_key()
    if key not in WHEELS:
        fail(f"no pinned uv wheel for {key[0]} {key[1]}")
    url, sha256 = WHEELS[key]
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as scratch:
        unpack(download(url, sha256, Path(scratch)), binary)
    return binary


if __name__ == "__main__":
    sys.stdout.write(f"{uv_binary(use_path='--download' not in sys.argv[1:])}\n")
