"""The exported ONNX graph reproduces the torch model, preprocessing included, at any batch size."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from training.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxVerificationError,
    export_model,
    run_onnx,
    to_onnx,
    verify,
)
from training.model import MLP, FitConfig, Preprocessor, ScoringModel, fit, predict

FEATURES = 6
CLIP = 3.0


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    rng = np.random.default_rng(5)
    scales = np.array([1.0, 10.0, 0.1, 100.0, 1.0, 5.0])
    offsets = np.array([0.0, 50.0, -1.0, 1000.0, 3.0, 0.0])
    x = rng.standard_normal((3000, FEATURES)) * scales + offsets
    x[:, 4] = (x[:, 4] > 3.0).astype(np.float64)  # a binary feature
    x[:, 5] = 2.5  # a constant feature: std 0 must not divide by zero
    out: np.ndarray = x.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def model(raw: np.ndarray) -> ScoringModel:
    torch.manual_seed(0)
    built = ScoringModel(Preprocessor.fit(raw, CLIP), MLP(FEATURES, (8, 4), dropout=0.2), scale=1.3, shift=-0.4)
    return built.eval()


@pytest.fixture(scope="module")
def onnx_bytes(model: ScoringModel) -> bytes:
    return to_onnx(model)


def test_graph_has_named_input_output_and_a_dynamic_batch_axis(onnx_bytes: bytes) -> None:
    graph = onnx.load_model_from_string(onnx_bytes).graph
    (given,) = graph.input
    (score,) = graph.output
    assert (given.name, score.name) == (INPUT_NAME, OUTPUT_NAME)
    assert given.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch, width = given.type.tensor_type.shape.dim
    assert batch.dim_param == "batch" and width.dim_value == FEATURES
    (out_batch,) = score.type.tensor_type.shape.dim  # the score is 1-D: one probability per row
    assert out_batch.dim_param == "batch"
    assert {op.op_type for op in graph.node} >= {"IsNaN", "Where", "Clip", "Sigmoid"}


@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_onnx_equals_torch_at_any_batch_size(
    onnx_bytes: bytes, model: ScoringModel, raw: np.ndarray, rows: int
) -> None:
    x = raw[:rows]
    scores = run_onnx(onnx_bytes, x)
    assert scores.shape == (rows,)
    np.testing.assert_allclose(scores, predict(model, x), atol=1e-5, rtol=0)


def test_missing_values_take_the_training_defaults(onnx_bytes: bytes, model: ScoringModel, raw: np.ndarray) -> None:
    x = raw[:200].copy()
    holes = np.random.default_rng(1).random(x.shape) < 0.3
    x[holes] = np.nan
    x[0, :] = np.nan
    defaults = np.nanmedian(raw.astype(np.float64), axis=0).astype(np.float32)
    filled = np.where(np.isnan(x), defaults, x)
    scores = run_onnx(onnx_bytes, x)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, predict(model, x), atol=1e-5, rtol=0)
    np.testing.assert_allclose(scores, run_onnx(onnx_bytes, filled), atol=1e-6, rtol=0)
    assert verify(onnx_bytes, model, x) <= 1e-5


def test_preprocessing_is_inside_the_graph(onnx_bytes: bytes, model: ScoringModel, raw: np.ndarray) -> None:
    # Raw values (with outliers and infinities) into ONNX = the bare MLP on values standardized and clipped by hand.
    x = raw[:500].copy()
    x[:5, 1] = [1e9, -1e9, np.inf, -np.inf, 0.0]
    stats = raw.astype(np.float64)
    mean, std = stats.mean(axis=0), stats.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    standardized = np.clip((x - mean) / std, -CLIP, CLIP).astype(np.float32)
    with torch.inference_mode():
        logits = model.mlp(torch.from_numpy(standardized)).numpy()
    expected = 1.0 / (1.0 + np.exp(-(1.3 * logits - 0.4)))
    np.testing.assert_allclose(run_onnx(onnx_bytes, x), expected, atol=1e-5, rtol=0)


def test_export_model_verifies_and_fingerprints(model: ScoringModel, raw: np.ndarray) -> None:
    exported = export_model(model, raw)
    assert exported.sha256 == hashlib.sha256(exported.onnx_bytes).hexdigest()
    assert exported.rows_checked == len(raw)
    assert exported.max_diff <= 1e-5
    onnx.checker.check_model(onnx.load_model_from_string(exported.onnx_bytes))


def test_verification_refuses_a_graph_that_is_not_the_model(
    onnx_bytes: bytes, model: ScoringModel, raw: np.ndarray
) -> None:
    torch.manual_seed(1)
    other = ScoringModel(model.preprocessor, MLP(FEATURES, (8, 4), dropout=0.0), scale=1.3, shift=-0.4).eval()
    with pytest.raises(OnnxVerificationError, match="differs from torch"):
        verify(onnx_bytes, other, raw[:100])


def test_same_seed_same_model_bytes(raw: np.ndarray) -> None:
    y = (raw[:, 0] + 0.1 * raw[:, 1] > 6.0).astype(np.float32)
    config = FitConfig((8,), 0.1, 2, 2, 256, 1e-2, 0.0, None, CLIP, seed=11)
    first, second = (fit(raw[:2000], y[:2000], raw[2000:], y[2000:], config) for _ in range(2))
    assert to_onnx(first.model) == to_onnx(second.model)
    other = fit(raw[:2000], y[:2000], raw[2000:], y[2000:], replace(config, seed=12))
    assert to_onnx(other.model) != to_onnx(first.model)
