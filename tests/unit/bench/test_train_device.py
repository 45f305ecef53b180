"""bench.train_device on a machine without a GPU (CI): it trains on the CPU, exports and verifies the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.train_device import dataset, main


def test_the_synthetic_data_is_learnable_and_imbalanced() -> None:
    x, y = dataset(20_000, 3)
    assert x.shape == (20_000, 24) and 0.005 < y.mean() < 0.1


def test_cpu_run_trains_exports_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    assert main(["--rows", "20000", "--epochs", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    cpu = result["runs"]["cpu"]
    _, y = dataset(20_000, 7)
    assert cpu["best_val_pr_auc"] > 3 * y.mean()  # it learned something: well above the base rate
    assert cpu["onnx_vs_torch_max_abs_diff"] <= 1e-5 and len(cpu["epoch_seconds"]) == 2
    assert ("cuda" in result["runs"]) == torch.cuda.is_available()
