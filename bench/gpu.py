"""GPU benchmark: ONNX Runtime's CUDA provider against its CPU provider for the scorer's model, per batch size.

`python -m bench.gpu [--onnx PATH] [--require-cuda]` (or `make bench-gpu`):

1. the model: the graph of the `v1` preset's MLP with its in-graph preprocessing (`bench._data.mlp_onnx`: the
   production model's shape and operators, random weights), or an exported graph named with `--onnx`;
2. loads it exactly as the scorer does (`scorer.models.load_model`, `SCORER_DEVICE=auto`) and reports the
   providers it got: with a working GPU a CPU session and a CUDA session, without one the CPU session alone;
3. per batch size, the median wall time of one `run` on each session (CPU: one intra-op thread, the scorer's
   setting; CUDA: inputs and outputs in host memory, i.e. the copies the scorer pays), and the largest
   difference between the two sessions' scores;
4. checks `LoadedModel.predict`'s dispatch: batches below `cuda_min_batch` on the CPU session, the others on
   the CUDA one, with the same scores;
5. reports where CUDA starts to win (the smallest batch size from which it is faster at every larger size), the
   figure `SCORER_CUDA_MIN_BATCH` should follow.

Writes bench/results/gpu-<stamp>.json. Without a GPU (CI, this project's development machines) it measures the
CPU session alone and says so; `--require-cuda` makes that an error (exit 2) for a run on a GPU host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from scorer.models import CPU, CUDA, RuntimeOptions, cuda_available, load_model
from streamscore.features import FEATURE_NAMES
from streamscore.registry import ModelFiles, sha256_file

RESULTS = Path(__file__).parent / "results"
BATCH_SIZES = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)
TOLERANCE = 1e-5
"""Largest difference allowed between the CPU and CUDA sessions' scores (float32 probabilities: the kernels differ
in summation order only; TF32 is off, `scorer.models.CUDA_OPTIONS`)."""


@dataclass
class Point:
    batch: int
    cpu_ms: float
    cuda_ms: float | None
    max_abs_diff: float | None

    @property
    def cpu_rows_per_s(self) -> float:
        return self.batch / (self.cpu_ms / 1000.0)

    @property
    def cuda_rows_per_s(self) -> float | None:
        return None if self.cuda_ms is None else self.batch / (self.cuda_ms / 1000.0)


def _inputs(rows: int, seed: int) -> np.ndarray:
    """Feature rows like the scorer's: finite values of varied scale, a few missing (NaN → default in-graph)."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0.0, 1.5, size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    x[rng.random(x.shape) < 0.02] = np.nan
    return x


def _median_ms(run: Any, x: np.ndarray, budget_s: float, min_runs: int = 5) -> float:
    for _ in range(3):  # warm-up: the first runs of a shape allocate and pick kernels
        run(x)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < 2000):
        started = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def crossover(points: list[Point]) -> int | None:
    """The smallest measured batch size from which CUDA is faster than the CPU at every larger measured size."""
    best: int | None = None
    for point in reversed(points):
        if point.cuda_ms is None or point.cuda_ms >= point.cpu_ms:
            break
        best = point.batch
    return best


def _model_files(onnx: Path | None, workdir: Path) -> ModelFiles:
    if onnx is None:
        from bench._data import mlp_onnx

        onnx = workdir / "model.onnx"
        onnx.write_bytes(mlp_onnx(7, _inputs(2000, 1)))
    return ModelFiles("bench-gpu", "1", onnx, sha256_file(onnx), "fraud_v1", FEATURE_NAMES, "bench")


def measure(
    onnx: Path | None, batch_sizes: tuple[int, ...], budget_s: float, cuda_min_batch: int
) -> tuple[list[str], list[Point], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        files = _model_files(onnx, Path(tmp))
        model = load_model(files, RuntimeOptions(device="auto", cuda_min_batch=cuda_min_batch))
    points: list[Point] = []
    for rows in batch_sizes:
        x = _inputs(rows, rows)
        cpu_out = model.cpu.run(None, {"features": x})[0]
        cpu_ms = _median_ms(lambda a: model.cpu.run(None, {"features": a}), x, budget_s)
        cuda_ms = diff = None
        if model.cuda is not None:
            cuda_out = model.cuda.run(None, {"features": x})[0]
            diff = float(np.max(np.abs(np.asarray(cuda_out) - np.asarray(cpu_out))))
            cuda_ms = _median_ms(lambda a: model.cuda.run(None, {"features": a}), x, budget_s)
        points.append(Point(rows, cpu_ms, cuda_ms, diff))
        print(
            f"  batch {rows:>6}: CPU {cpu_ms:8.3f} ms"
            + (f", CUDA {cuda_ms:8.3f} ms, max |Δ| {diff:.2e}" if cuda_ms is not None else ""),
            flush=True,
        )
    return list(model.providers), points, {"dispatch": _dispatch(model)}


def _dispatch(model: Any) -> dict[str, Any]:
    """Which session `predict` used per batch size, and whether its scores equal that session's own."""

    class Counting:
        def __init__(self, inner: Any, name: str, log: list[tuple[int, str]]) -> None:
            self.inner, self.name, self.log = inner, name, log

        def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> Any:
            self.log.append((len(next(iter(feeds.values()))), self.name))
            return self.inner.run(outputs, feeds)

    log: list[tuple[int, str]] = []
    cpu, cuda = model.cpu, model.cuda
    model.cpu = Counting(cpu, CPU, log)
    if cuda is not None:
        model.cuda = Counting(cuda, CUDA, log)
    same = True
    try:
        for rows in (1, model.cuda_min_batch - 1, model.cuda_min_batch, 4 * model.cuda_min_batch):
            x = _inputs(rows, 99)
            session = cuda if cuda is not None and rows >= model.cuda_min_batch else cpu
            expected = session.run(None, {"features": x})[0]
            same &= bool(np.array_equal(model.predict(x), np.asarray(expected).reshape(rows), equal_nan=True))
    finally:
        model.cpu, model.cuda = cpu, cuda
    return {"cuda_min_batch": model.cuda_min_batch, "calls": log, "scores_equal_session": same}


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["available_providers"] = ort.get_available_providers()
    except ImportError:  # pragma: no cover - scorer.models already imported it
        pass
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu_model"] = line.split(":", 1)[1].strip()
            break
    try:
        import subprocess

        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        info["gpu"] = gpu.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="an exported model graph (default: the v1 MLP's shape)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--budget-s", type=float, default=1.0, help="time per session and batch size")
    parser.add_argument("--cuda-min-batch", type=int, default=RuntimeOptions().cuda_min_batch)
    parser.add_argument("--require-cuda", action="store_true", help="fail (exit 2) without a working CUDA provider")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/gpu-<stamp>.json)")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))

    has_cuda = cuda_available()
    print(f"ONNX Runtime CUDA provider {'works' if has_cuda else 'is not usable here: measuring the CPU alone'}")
    if args.require_cuda and not has_cuda:
        print("--require-cuda: no working CUDA provider (onnxruntime-gpu, an NVIDIA driver and CUDA 13 libraries)")
        return 2
    providers, points, extra = measure(args.onnx, sizes, args.budget_s, args.cuda_min_batch)
    if args.require_cuda and CUDA not in providers:
        print("--require-cuda: the model loaded without a CUDA session (see the warning above)")
        return 2
    worst = max((p.max_abs_diff for p in points if p.max_abs_diff is not None), default=None)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": _machine(),
        "providers": providers,
        "points": [
            asdict(p) | {"cpu_rows_per_s": p.cpu_rows_per_s, "cuda_rows_per_s": p.cuda_rows_per_s} for p in points
        ],
        "cuda_faster_from_batch": crossover(points),
        "max_abs_diff": worst,
        "agree_within_tolerance": None if worst is None else worst <= TOLERANCE,
        **extra,
    }
    out = args.out or RESULTS / f"gpu-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"providers: {', '.join(providers)}")
    if worst is not None:
        print(f"CPU vs CUDA scores: max |Δ| {worst:.2e} (tolerance {TOLERANCE:g})")
        crossing = result["cuda_faster_from_batch"]
        print(f"CUDA faster from batch {crossing} (SCORER_CUDA_MIN_BATCH={args.cuda_min_batch})")
    print(f"dispatch: {extra['dispatch']['calls']}, scores equal: {extra['dispatch']['scores_equal_session']}")
    print(f"wrote {out}")
    failed = (worst is not None and worst > TOLERANCE) or not extra["dispatch"]["scores_equal_session"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
