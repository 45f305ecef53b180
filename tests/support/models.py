"""Tiny ONNX models for tests, built in code (never committed as binaries), and registering them in MLflow."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from mlflow import MlflowClient
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from streamscore.features import FEATURE_NAMES
from streamscore.registry import FEATURES_FILE, MODEL_DIR, MODEL_FILE, mlflow_client, sha256_file

N_FEATURES = len(FEATURE_NAMES)


def linear_weights(seed: int) -> tuple[NDArray[np.float32], float]:
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 0.3, N_FEATURES).astype(np.float32), float(rng.normal(-2.0, 0.5)))


def logistic_onnx(
    weights: NDArray[np.float32], bias: float, *, poison: bool = False, nan_when: int | None = None
) -> bytes:
    """score = sigmoid(features · weights + bias), input `features` [batch, 24], output `score` [batch].
    `poison` divides by zero: every score is NaN (warm-up refuses such a model). `nan_when=k` makes the score
    NaN exactly for rows whose feature k is 1 (zero rows are fine, so it passes warm-up)."""
    w = numpy_helper.from_array(weights.reshape(N_FEATURES, 1).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([bias], dtype=np.float32), "b")
    shape = numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z1"]),
        helper.make_node("Sigmoid", ["z1"], ["p"]),
    ]
    initializers = [w, b, shape]
    if nan_when is not None:
        initializers += [
            numpy_helper.from_array(np.array([nan_when], dtype=np.int64), "k"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "nil"),
        ]
        nodes += [
            helper.make_node("Gather", ["features", "k"], ["g"], axis=1),
            helper.make_node("Sub", ["one", "g"], ["h"]),
            helper.make_node("Div", ["g", "h"], ["ratio"]),
            helper.make_node("Mul", ["ratio", "nil"], ["void"]),
            helper.make_node("Add", ["p", "void"], ["pn"]),
            helper.make_node("Reshape", ["pn", "shape"], ["score"]),
        ]
    elif poison:
        zero = numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero")
        initializers.append(zero)
        nodes += [helper.make_node("Mul", ["p", "zero"], ["q"]), helper.make_node("Div", ["q", "zero"], ["r"])]
        nodes.append(helper.make_node("Reshape", ["r", "shape"], ["score"]))
    else:
        nodes.append(helper.make_node("Reshape", ["p", "shape"], ["score"]))
    graph = helper.make_graph(
        nodes,
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def expected_scores(x: NDArray[np.float32], weights: NDArray[np.float32], bias: float) -> NDArray[np.float64]:
    z = x.astype(np.float64) @ weights.astype(np.float64) + bias
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def register(
    tracking_uri: str,
    name: str,
    onnx_bytes: bytes,
    *,
    alias: str | None = None,
    feature_service: str = "fraud_v1",
    feature_names: tuple[str, ...] = FEATURE_NAMES,
    artifact_dir: Path | None = None,
    sha256: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log `onnx_bytes` as a run's model folder, register it as a version of `name`, set `alias`; the version.
    `sha256` overrides the recorded checksum (to simulate a tampered file); `tags`: more version tags (an operating
    point: `streamscore.thresholds.threshold_tags`)."""
    client: MlflowClient = mlflow_client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (artifact_dir or Path(tempfile.mkdtemp(prefix="mlruns-"))).resolve().as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL_DIR
        folder.mkdir()
        (folder / MODEL_FILE).write_bytes(onnx_bytes)
        (folder / FEATURES_FILE).write_text(
            json.dumps({"feature_service": feature_service, "feature_names": list(feature_names)})
        )
        client.log_artifacts(run.info.run_id, str(folder), artifact_path=MODEL_DIR)
        checksum = sha256 or sha256_file(folder / MODEL_FILE)
    client.set_terminated(run.info.run_id)
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        client.create_registered_model(name)
    version = str(
        client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{MODEL_DIR}",
            run_id=run.info.run_id,
            tags={"sha256": checksum, **(tags or {})},
        ).version
    )
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version
