"""bench.gpu without a GPU (CI): it measures the CPU session alone, checks the dispatch, and says so."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu import Point, crossover, main
from scorer.models import CPU, cuda_available
from tests.support.models import linear_weights, logistic_onnx


def test_crossover_is_where_cuda_wins_from_then_on() -> None:
    def points(*pairs: tuple[float, float | None]) -> list[Point]:
        return [Point(2**i, cpu, cuda, None) for i, (cpu, cuda) in enumerate(pairs)]

    assert crossover(points((1, 2), (2, 2.5), (4, 3), (8, 3.5))) == 4
    # a win followed by a loss is not a crossover: CUDA must stay faster at every larger size
    assert crossover(points((1, 0.5), (2, 2.5), (4, 3), (8, 3.5))) == 4
    assert crossover(points((1, 2), (2, 2.5), (4, 5))) is None
    assert crossover(points((1, None), (2, None))) is None


def test_cpu_only_run_measures_and_checks_dispatch(tmp_path: Path) -> None:
    weights, bias = linear_weights(3)
    model = tmp_path / "model.onnx"
    model.write_bytes(logistic_onnx(weights, bias))
    out = tmp_path / "gpu.json"
    code = main(["--onnx", str(model), "--batch-sizes", "1,64,512", "--budget-s", "0.01", "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0
    assert [p["batch"] for p in result["points"]] == [1, 64, 512]
    assert all(p["cpu_ms"] > 0 and p["cpu_rows_per_s"] > 0 for p in result["points"])
    assert result["dispatch"]["scores_equal_session"] is True
    if not cuda_available():  # CI: the CPU alone, and --require-cuda refuses to pretend
        assert result["providers"] == [CPU]
        assert all(p["cuda_ms"] is None for p in result["points"]) and result["max_abs_diff"] is None
        assert {session for _, session in result["dispatch"]["calls"]} == {CPU}
        assert main(["--onnx", str(model), "--require-cuda", "--out", str(tmp_path / "no.json")]) == 2
        assert not (tmp_path / "no.json").exists()
