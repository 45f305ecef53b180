"""ONNX Runtime sessions, one per model version, loaded from the MLflow registry by alias.

A version is loaded from its verified local files (`streamscore.registry`), checked against the inputs this
scorer computes, and warmed up (the first runs of a session allocate and pick kernels; that cost must not
land on a live batch). With a GPU, a version also gets a CUDA session, used for batches of at least
`cuda_min_batch` rows: below that, the host↔device copies and the kernel launches cost more than the CPU kernels
of a small MLP (bench/gpu.py measures where CUDA starts to win; on an H200 with the v1 MLP, from 1024 rows).

Whether there is a usable GPU is decided once per process (`cuda_status`), and why not is logged: the CUDA image
(deploy/docker/Dockerfile, FLAVOUR=cuda) ships CUDA and cuDNN as wheels, which ONNX Runtime does not find by itself,
so they are loaded first (`onnxruntime.preload_dlls`), and only where an NVIDIA driver is present.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from streamscore.errors import StreamscoreError
from streamscore.features import FEATURE_NAMES
from streamscore.registry import ModelFiles, Registry

logger = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "score"
CUDA = "CUDAExecutionProvider"
CUDA_OPTIONS = {"use_tf32": "0"}
"""TF32 GEMMs (ONNX Runtime's default on Ampere and later) round inputs to 10-bit mantissas: a transaction's score
would then depend on which batch it landed in. Full float32 keeps CUDA's scores within float32 summation-order
noise of the CPU's (bench/gpu.py checks it); this MLP is far too small for tensor cores to matter."""
CPU = "CPUExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]


class ModelLoadError(StreamscoreError):
    """A model version cannot serve: unreadable file, wrong inputs, or non-probability outputs."""

    http_status = 503

    def __init__(self, name: str, version: str, problem: str) -> None:
        super().__init__(f"model {name} version {version} cannot be served: {problem}")
        self.version = version


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    device: Device = "auto"
    cuda_min_batch: int = 1024
    warmup_batch: int = 512


@dataclass(eq=False)
class LoadedModel:
    """One model version with its sessions; `predict` picks CUDA for large batches when available."""

    name: str
    version: str
    sha256: str
    feature_service: str
    feature_names: tuple[str, ...]
    cpu: ort.InferenceSession
    cuda: ort.InferenceSession | None = None
    cuda_min_batch: int = 1024
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    @property
    def providers(self) -> tuple[str, ...]:
        return (CUDA, CPU) if self.cuda is not None else (CPU,)

    def predict(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Scores in [0, 1] for the rows of `x` (float32, [n, len(feature_names)])."""
        session = self.cuda if self.cuda is not None and len(x) >= self.cuda_min_batch else self.cpu
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(x))


def _session(data: bytes, providers: list[Any], options: RuntimeOptions) -> ort.InferenceSession:
    so = ort.SessionOptions()
    # Thread counts come from settings, never from the host's core count: several processes share the cores.
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=so, providers=providers)


def cuda_available() -> bool:
    """Whether ONNX Runtime can really run on a GPU here (decided once per process: `cuda_status`)."""
    return cuda_status() is None


@cache
def cuda_status() -> str | None:
    """None when ONNX Runtime can run on a GPU here, else why not; logged once, at start (the first model load)."""
    problem = cuda_problem()
    if problem is None:
        logger.info("ONNX Runtime %s: CUDA available", ort.__version__)
    else:
        logger.info("ONNX Runtime %s: no CUDA, sessions run on the CPU: %s", ort.__version__, problem)
    return problem


def cuda_problem() -> str | None:
    """Why ONNX Runtime cannot run on a GPU here, or None. onnxruntime-gpu lists the CUDA provider even without a GPU
    or CUDA libraries and only fails (loudly, on stderr) when a session asks for it: probe once, quietly."""
    if CUDA not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDA provider (a CPU-only build)"
    if sys.platform == "linux":
        try:
            _load_driver()
        except OSError as exc:
            return f"no NVIDIA driver: libcuda.so.1 cannot be loaded ({exc}); no GPU here, or a container without one"
    unloaded = _preload_cuda_libraries()
    ort.set_default_logger_severity(4)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        session = ort.InferenceSession(_probe_graph(), sess_options=so, providers=[CUDA, CPU])
        if CUDA in session.get_providers():
            return None
        problem = "the CUDA provider did not attach to a session"
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable CUDA
        first_line = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        problem = f"the CUDA provider failed: {first_line}"
    finally:
        ort.set_default_logger_severity(2)
    return f"{problem}; {unloaded}" if unloaded else problem


def _load_driver() -> None:
    """Load the NVIDIA driver's CUDA library (the NVIDIA container toolkit mounts it into a GPU container)."""
    ctypes.CDLL("libcuda.so.1")


def _preload_cuda_libraries() -> str:
    """Load CUDA and cuDNN from the nvidia-* wheels (the `cuda` extra), which ONNX Runtime's CUDA provider does not
    look for; a machine's own CUDA on the library path still serves when there are none. Returns what failed to load
    (ONNX Runtime prints it; it goes into the reason instead), empty when all loaded or nothing was tried."""
    preload = getattr(ort, "preload_dlls", None)  # ONNX Runtime >= 1.21
    if preload is None:
        return ""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # noqa: BLE001 - a failed preload leaves the library path to the CUDA provider
        return f"loading the CUDA wheels failed: {exc}"
    failed = [line.strip() for line in printed.getvalue().splitlines() if line.strip().startswith("Failed to load")]
    return "; ".join(failed)


def _probe_graph() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def load_model(files: ModelFiles, options: RuntimeOptions) -> LoadedModel:
    """Sessions for `files`, checked and warmed up; ModelLoadError with the reason otherwise."""
    started = time.perf_counter()
    if tuple(files.feature_names) != FEATURE_NAMES:
        raise ModelLoadError(
            files.name,
            files.version,
            f"it expects the inputs {list(files.feature_names)}, this scorer computes {list(FEATURE_NAMES)}",
        )
    try:
        data = files.onnx_path.read_bytes()
        cpu = _session(data, [CPU], options)
    except Exception as exc:  # onnxruntime raises its own exception types for a corrupt graph
        raise ModelLoadError(files.name, files.version, f"ONNX Runtime refused {files.onnx_path}: {exc}") from exc
    cuda = None
    if options.device != "cpu" and cuda_available():
        try:
            candidate = _session(data, [(CUDA, CUDA_OPTIONS), CPU], options)
            if CUDA in candidate.get_providers():
                cuda = candidate
        except Exception as exc:  # noqa: BLE001 - a broken CUDA install must not stop a CPU-capable scorer
            logger.warning("CUDA session for %s v%s failed, serving on CPU: %s", files.name, files.version, exc)
    if options.device == "cuda" and cuda is None:
        reason = cuda_status() or "its CUDA session did not load (logged above)"
        raise ModelLoadError(
            files.name, files.version, f"SCORER_DEVICE=cuda but ONNX Runtime has no working CUDA: {reason}"
        )
    model = LoadedModel(
        name=files.name,
        version=files.version,
        sha256=files.sha256,
        feature_service=files.feature_service,
        feature_names=files.feature_names,
        cpu=cpu,
        cuda=cuda,
        cuda_min_batch=options.cuda_min_batch,
    )
    _warm_up(model, options)
    model.load_seconds = time.perf_counter() - started
    logger.info(
        "loaded model=%s version=%s providers=%s in %.2fs",
        files.name,
        files.version,
        ",".join(model.providers),
        model.load_seconds,
    )
    return model


def _warm_up(model: LoadedModel, options: RuntimeOptions) -> None:
    width = len(model.feature_names)
    for rows in sorted({1, 8, options.warmup_batch, max(options.cuda_min_batch, 1)}):
        x = np.zeros((rows, width), dtype=np.float32)
        try:
            scores = model.predict(x)
        except Exception as exc:  # wrong input name, shape or type: the graph does not fit our contract
            raise ModelLoadError(model.name, model.version, f"inference failed at warm-up: {exc}") from exc
        if scores.shape != (rows,) or not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
            raise ModelLoadError(model.name, model.version, "warm-up scores are not probabilities in [0, 1]")


class ModelCache:
    """Loaded versions by version string, so variants sharing a version share its sessions."""

    def __init__(self, registry: Registry, options: RuntimeOptions) -> None:
        self.registry = registry
        self.options = options
        self._models: dict[str, LoadedModel] = {}

    def get(self, version: str) -> LoadedModel:
        model = self._models.get(version)
        if model is None:
            model = load_model(self.registry.files(version), self.options)
            self._models[version] = model
        return model

    def retain(self, versions: Mapping[str, Any]) -> None:
        """Drop sessions of versions no variant serves any more."""
        for version in list(self._models):
            if version not in versions:
                del self._models[version]
