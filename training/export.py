"""ONNX export of a `ScoringModel`, checked by onnx and verified against ONNX Runtime before anyone uses it.

The TorchScript-based exporter (`dynamo=False`) is used on purpose: the torch.export-based default of torch
>= 2.9 needs `onnxscript`, which is not a dependency, and this graph (where, clamp, gemm, sigmoid) gains
nothing from it. Its deprecation warning is silenced here, in one place.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from streamscore.errors import StreamscoreError
from training.model import ScoringModel, predict

INPUT_NAME = "features"
OUTPUT_NAME = "score"
BATCH_AXIS = "batch"
OPSET = 17
TOLERANCE = 1e-5
"""Largest absolute difference allowed between ONNX Runtime's and torch's scores (float32 probabilities;
kernels differ in summation order, which costs a few 1e-7 at most)."""


class OnnxVerificationError(StreamscoreError):
    """The exported graph does not reproduce the torch model."""

    def __init__(self, max_diff: float, rows: int, tolerance: float) -> None:
        super().__init__(
            f"ONNX Runtime differs from torch by up to {max_diff:.3g} on {rows} rows (allowed {tolerance:g})"
        )
        self.max_diff = max_diff


@dataclass(frozen=True, slots=True)
class ExportedModel:
    onnx_bytes: bytes
    sha256: str
    """Hex SHA-256 of `onnx_bytes`: the identity of the model everywhere (registry tags, scorer cache)."""
    max_diff: float
    """Largest |ONNX Runtime - torch| seen during verification."""
    rows_checked: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_onnx(model: ScoringModel, *, opset: int = OPSET) -> bytes:
    """The model as ONNX bytes: input `features` float32 [batch, n_features], output `score` float32 [batch]."""
    model = model.cpu().eval()
    example = torch.zeros(2, model.n_features, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
            opset_version=opset,
        )
        data = path.read_bytes()
    onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
    return data


def session(onnx_bytes: bytes, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with a fixed thread count (never the host's core count)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def run_onnx(onnx_bytes: bytes | ort.InferenceSession, x: NDArray[np.floating]) -> NDArray[np.float32]:
    """Scores of `x` by ONNX Runtime on the CPU."""
    sess = onnx_bytes if isinstance(onnx_bytes, ort.InferenceSession) else session(onnx_bytes)
    (scores,) = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(scores, dtype=np.float32)


def verify(onnx_bytes: bytes, model: ScoringModel, x: NDArray[np.floating], *, tolerance: float = TOLERANCE) -> float:
    """Max |ONNX Runtime - torch| over the rows of `x`; raises OnnxVerificationError above `tolerance`."""
    if len(x) == 0:
        raise ValueError("verification needs at least one row")
    expected = predict(model, x)
    actual = run_onnx(onnx_bytes, x)
    if actual.shape != expected.shape:
        raise OnnxVerificationError(float("inf"), len(x), tolerance)
    both_nan = np.isnan(actual) & np.isnan(expected)
    diff = np.where(both_nan, 0.0, np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
    max_diff = float(np.nan_to_num(diff, nan=np.inf).max())
    if not max_diff <= tolerance:
        raise OnnxVerificationError(max_diff, len(x), tolerance)
    return max_diff


def export_model(model: ScoringModel, x_check: NDArray[np.floating], *, tolerance: float = TOLERANCE) -> ExportedModel:
    """Export, check with onnx.checker, verify against ONNX Runtime on `x_check` (e.g. the test set)."""
    data = to_onnx(model)
    max_diff = verify(data, model, x_check, tolerance=tolerance)
    return ExportedModel(onnx_bytes=data, sha256=sha256_hex(data), max_diff=max_diff, rows_checked=len(x_check))
