"""scorer.models' start-up check of the CUDA provider: with no usable GPU it says why, once, and then either serves on
the CPU (SCORER_DEVICE=auto) or refuses to start with that reason (SCORER_DEVICE=cuda).

The provider list and the driver are the two facts a CPU host and a GPU host differ in; they are replaced here to play
the hosts this one is not. The probe itself runs for real (tests/unit/bench/test_gpu.py and bench.gpu check CUDA's
scores on a GPU host)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest

from scorer import models
from scorer.models import CPU, CUDA, ModelLoadError, RuntimeOptions, cuda_available, cuda_status, load_model
from streamscore.features import FEATURE_NAMES
from streamscore.registry import ModelFiles
from tests.support.models import linear_weights, logistic_onnx


@pytest.fixture(autouse=True)
def fresh_status() -> Iterator[None]:
    """cuda_status is decided once per process: each test decides it anew, and leaves no faked answer behind."""
    cuda_status.cache_clear()
    yield
    cuda_status.cache_clear()


@pytest.fixture
def files(tmp_path: Path) -> ModelFiles:
    weights, bias = linear_weights(1)
    path = tmp_path / "v1.onnx"
    path.write_bytes(logistic_onnx(weights, bias))
    return ModelFiles("fraud-detector", "1", path, "sha", "fraud_v1", FEATURE_NAMES, "run")


def _no_driver() -> None:
    raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")


def test_a_cpu_only_onnxruntime_is_named_and_the_scorer_serves_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, files: ModelFiles
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with caplog.at_level(logging.INFO, logger="scorer.models"):
        loaded = load_model(files, RuntimeOptions(warmup_batch=8, cuda_min_batch=16))
    assert loaded.providers == (CPU,) and loaded.cuda is None
    assert cuda_available() is False
    reason = cuda_status()
    assert reason is not None and "has no CUDA provider" in reason
    said = [r.getMessage() for r in caplog.records if "no CUDA" in r.getMessage()]
    assert len(said) == 1 and reason in said[0] and "run on the CPU" in said[0]


def test_no_driver_is_said_before_any_cuda_library_is_loaded(
    monkeypatch: pytest.MonkeyPatch, files: ModelFiles
) -> None:
    """A CUDA image on a host (or in a container) without a GPU: the provider is there, the driver is not."""
    preloaded: list[bool] = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])

    def preload() -> str:
        preloaded.append(True)
        return ""

    monkeypatch.setattr(sys, "platform", "linux")  # the driver check is Linux's (this host's) own
    monkeypatch.setattr(models, "_load_driver", _no_driver)
    monkeypatch.setattr(models, "_preload_cuda_libraries", preload)
    reason = cuda_status()
    assert reason is not None and reason.startswith("no NVIDIA driver: libcuda.so.1 cannot be loaded")
    assert preloaded == []  # a CPU host does not map a gigabyte of CUDA libraries for nothing
    with pytest.raises(
        ModelLoadError, match="SCORER_DEVICE=cuda but ONNX Runtime has no working CUDA: no NVIDIA driver"
    ):
        load_model(files, RuntimeOptions(device="cuda", warmup_batch=8, cuda_min_batch=16))


def test_cuda_libraries_that_did_not_load_are_part_of_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Driver present, CUDA wheels incomplete: ONNX Runtime prints what it could not load (on stdout, which a service's
    log does not show); the reason carries those lines instead, and the probe then runs for real."""
    missing = "Failed to load /opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib/libcublasLt.so.13: no such file"

    def preload() -> None:
        print(missing)
        print("Please follow https://onnxruntime.ai/docs/install/#cuda-and-cudnn to install CUDA.")

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(models, "_load_driver", lambda: None)
    monkeypatch.setattr(ort, "preload_dlls", preload, raising=False)
    assert models._preload_cuda_libraries() == missing
    reason = cuda_status()
    if reason is not None:  # None only on a host whose GPU works without those wheels
        assert reason.startswith("the CUDA provider ") and reason.endswith("; " + missing)


def test_this_host_gets_an_answer_and_serves_accordingly(files: ModelFiles) -> None:
    """No faking: on a CPU host (CI) the reason is given and `auto` serves on the CPU; on a GPU host CUDA attaches."""
    reason = cuda_status()
    loaded = load_model(files, RuntimeOptions(warmup_batch=8, cuda_min_batch=16))
    if reason is None:
        assert loaded.providers == (CUDA, CPU)
    else:
        assert reason.strip() and loaded.providers == (CPU,)
        with pytest.raises(ModelLoadError, match="no working CUDA: " + re.escape(reason)):
            load_model(files, RuntimeOptions(device="cuda", warmup_batch=8, cuda_min_batch=16))
