"""The CLI answers `--help` without loading the heavy libraries: they load in the commands that use them.

How fast it answers is measured by `python -m bench.cli` (docs/benchmarks.md), never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from streamscore.infra.settings import PROJECT_ROOT

HEAVY = (
    "aiohttp",
    "duckdb",
    "fastapi",
    "faust",
    "feast",
    "gradio",
    "mlflow",
    "numpy",
    "onnx",
    "onnxruntime",
    "pandas",
    "pyarrow",
    "redis",
    "scipy",
    "sklearn",
    "sqlalchemy",
    "starlette",
    "torch",
    "uvicorn",
)
"""Each takes from a tenth of a second to seconds to import (`python -X importtime`); confluent_kafka (35 ms) and
prometheus_client (20 ms, imported first on purpose: streamscore/__init__.py) are not on the list."""

# In a fresh interpreter: the CLI's import, then `--help` of the root and of every command and group, in process.
PROBE = """
import json, sys
import typer.main
from streamscore_cli.main import app

root = typer.main.get_command(app)
paths = []

def walk(command, path):
    paths.append(path)
    for name, child in sorted(getattr(command, "commands", {}).items()):
        walk(child, [*path, name])

walk(root, [])
codes = {}
for path in paths:
    try:
        root.main([*path, "--help"], prog_name="streamscore", standalone_mode=False)
        codes[" ".join(path)] = 0
    except SystemExit as exc:
        codes[" ".join(path)] = exc.code
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"codes": codes, "loaded": loaded}))
"""


def test_help_loads_no_heavy_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *HEAVY], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["codes"]) > 20, "every command and group of the CLI"
    assert {"", "demo", "infra up", "score", "monitor", "features batch", "train"} <= set(report["codes"])
    assert set(report["codes"].values()) == {0}, report["codes"]
    assert report["loaded"] == [], f"imported by `streamscore ... --help`: {report['loaded']}"


def test_the_probe_sees_a_heavy_import() -> None:
    # The test above cannot pass by looking in the wrong place: the same probe, after a command that loads numpy.
    probe = PROBE.replace(
        "loaded = sorted(", "import streamscore_cli.demo_summary as s\ns.latency_percentiles([1.0])\nloaded = sorted("
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *HEAVY], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1])["loaded"] == ["numpy"]
