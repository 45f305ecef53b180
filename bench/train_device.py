"""Training on CPU and on CUDA: the same `training.model.fit` with the `v1` preset, the same seed and data, per device.

`python -m bench.train_device [--rows 200000] [--epochs 5]`: a synthetic, learnable dataset (the 24 model inputs,
~2 % fraud driven by a random linear signal plus noise), trained on the CPU and — when torch sees a GPU — on CUDA;
each model is exported to ONNX and verified against torch (`training.export`). Reports seconds per epoch, the best
validation PR-AUC of each, and how far the two models' scores are apart (different kernels and summation orders:
close, not identical). Writes bench/results/train-device-<stamp>.json. Without a GPU it trains on the CPU alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamscore.features import FEATURE_NAMES
from training.export import run_onnx, to_onnx, verify
from training.metrics import average_precision
from training.model import fit
from training.pipeline import fit_config
from training.settings import preset_settings

RESULTS = Path(__file__).parent / "results"


def dataset(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0.0, 1.0, size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    x[rng.random(x.shape) < 0.01] = np.nan
    weights = rng.normal(0.0, 1.0, len(FEATURE_NAMES))
    signal = np.nan_to_num(np.log1p(x)) @ weights
    signal = (signal - signal.mean()) / signal.std()
    y = (signal + rng.normal(0.0, 0.7, rows) > 2.1).astype(np.float32)
    return x, y


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    x, y = dataset(args.rows, args.seed)
    split = int(0.8 * len(y))
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{len(y):,} rows, {y.mean():.2%} fraud; devices: {', '.join(devices)}", flush=True)
    runs: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    for device in devices:
        config = fit_config(
            preset_settings("v1", epochs=args.epochs, patience=args.epochs, seed=args.seed, device=device)
        )
        result = fit(x_train, y_train, x_val, y_val, config)
        onnx_bytes = to_onnx(result.model)
        worst = verify(onnx_bytes, result.model, x_val[:4096])
        scores[device] = run_onnx(onnx_bytes, x_val)
        epoch_s = [e.seconds for e in result.history]
        runs[device] = {
            "seconds": result.seconds,
            "epoch_seconds": epoch_s,
            "best_val_pr_auc": result.best_val_pr_auc,
            "onnx_val_pr_auc": average_precision(y_val, scores[device]),
            "onnx_vs_torch_max_abs_diff": worst,
            "device_used": result.device,
        }
        print(
            f"{device:>4}: {result.seconds:6.1f} s, epochs {', '.join(f'{s:.2f}' for s in epoch_s)} s; "
            f"best val PR-AUC {result.best_val_pr_auc:.4f}; ONNX vs torch max |Δ| {worst:.1e}",
            flush=True,
        )
    out: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.train_device " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": args.rows,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "runs": runs,
    }
    if "cuda" in scores:
        diff = np.abs(scores["cuda"] - scores["cpu"])
        out["cpu_vs_cuda_scores"] = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
        speedup = runs["cpu"]["seconds"] / runs["cuda"]["seconds"]
        print(f"CPU vs CUDA models: scores max |Δ| {diff.max():.2e}, mean {diff.mean():.2e}; CUDA {speedup:.2f}×")
    path = args.out or RESULTS / f"train-device-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
