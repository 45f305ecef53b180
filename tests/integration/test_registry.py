"""MLflow on a temporary SQLite store: runs, versions, the evaluation gate, aliases, and `streamscore train`
end to end on a small generated history. No broker needed."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from producers.generator import GeneratorConfig, TransactionGenerator
from producers.history import write_history
from producers.world import build_world
from streamscore.features import FEATURE_NAMES
from streamscore.registry import CHALLENGER, CHAMPION, AliasNotFoundError, Registry, RegistrySettings
from streamscore_cli import train as train_cli
from training.export import export_model, run_onnx
from training.metrics import best_single_rule, evaluate
from training.model import FitConfig, fit, predict
from training.registry import (
    Candidate,
    build_reference,
    download_reference,
    log_and_register,
    resolve_alias,
)
from training.settings import TrainingSettings

N_FEATURES = len(FEATURE_NAMES)


@pytest.fixture
def settings(tmp_path: Path) -> TrainingSettings:
    return TrainingSettings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        mlflow_artifact_dir=tmp_path / "mlflow" / "artifacts",
        min_test_pr_auc=0.5,
        min_test_roc_auc=0.8,
        max_test_ece=0.1,
        champion_tolerance=0.05,
    )


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """A learnable problem in the model's input shape: fraud when two features are jointly high."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.7 * x[:, 1] + 0.3 * rng.standard_normal(6000) > 2.4).astype(np.float32)
    return {
        "x_train": x[:4000],
        "y_train": y[:4000],
        "x_val": x[4000:5000],
        "y_val": y[4000:5000],
        "x_test": x[5000:],
        "y_test": y[5000:],
    }


def candidate(
    data: dict[str, np.ndarray], seed: int, *, constant: bool = False, service: str = "fraud_v1"
) -> Candidate:
    config = FitConfig((16,), 0.0, 6, 6, 128, 1e-2, 0.0, None, 8.0, seed)
    model = fit(data["x_train"], data["y_train"], data["x_val"], data["y_val"], config).model
    if constant:
        # A broken candidate: the same probability for every transaction (the base rate, so well calibrated).
        rate = float(data["y_train"].mean())
        model.scale.fill_(0.0)
        model.shift.fill_(math.log(rate / (1 - rate)))
    x_test, y_test = data["x_test"], data["y_test"]
    return Candidate(
        exported=export_model(model, x_test),
        feature_service=service,
        params={"architecture": "mlp-16", "seed": seed},
        validation=evaluate(data["y_val"], predict(model, data["x_val"])),
        test=evaluate(y_test, predict(model, x_test)),
        baseline=best_single_rule(x_test, y_test, FEATURE_NAMES),
        reference=build_reference(
            data["x_train"], predict(model, data["x_train"]), feature_service=service, seed=seed, sample_size=300
        ),
        x_test=x_test,
        y_test=y_test,
    )


def run_params(client: MlflowClient, run_id: str) -> dict[str, str]:
    return dict(client.get_run(run_id).data.params)


def aliases(settings: TrainingSettings) -> dict[str, str]:
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    return {k: str(v) for k, v in client.get_registered_model(settings.registered_model).aliases.items()}


def test_gate_and_aliases(settings: TrainingSettings, data: dict[str, np.ndarray], tmp_path: Path) -> None:
    first, second, bad, better = (
        candidate(data, 1),
        candidate(data, 2),
        candidate(data, 3, constant=True),
        candidate(data, 4),
    )
    assert first.test.pr_auc > 0.7 and bad.test.pr_auc < 0.2

    # 1. No champion yet: the first passing model becomes champion.
    result = log_and_register(first, settings)
    assert (result.version, result.aliases, result.gate_passed, result.reasons) == ("1", (CHAMPION,), True, ())
    assert result.champion_version is None

    # 2. A second passing model becomes challenger; the champion was re-scored on the same test rows.
    result = log_and_register(second, settings)
    assert (result.version, result.aliases, result.gate_passed) == ("2", (CHALLENGER,), True)
    assert result.champion_version == "1" and result.champion_pr_auc_source == "same test set"
    assert result.champion_pr_auc == pytest.approx(first.test.pr_auc, abs=1e-6)

    # 3. A constant model is registered but refused an alias, with the reason; --promote does not help it.
    result = log_and_register(bad, settings, promote=True)
    assert (result.version, result.aliases, result.gate_passed) == ("3", (), False)
    assert any("PR-AUC" in reason and "minimum" in reason for reason in result.reasons)
    assert aliases(settings) == {CHAMPION: "1", CHALLENGER: "2"}

    # 4. --promote moves champion to a passing candidate (and the challenger alias, now redundant, goes).
    result = log_and_register(better, settings, promote=True)
    assert (result.version, result.aliases, result.gate_passed) == ("4", (CHAMPION,), True)
    assert aliases(settings) == {CHAMPION: "4"}

    # 5. resolve_alias downloads the ONNX file; its checksum is the registered one and it scores as trained.
    version, path, sha256 = resolve_alias(CHAMPION, settings, cache_dir=tmp_path / "cache")
    assert version == "4" and sha256 == better.exported.sha256
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    np.testing.assert_allclose(
        run_onnx(path.read_bytes(), data["x_test"][:50]), run_onnx(better.exported.onnx_bytes, data["x_test"][:50])
    )
    path.write_bytes(b"corrupted")  # a damaged cache entry is fetched again
    assert (
        resolve_alias(CHAMPION, settings, cache_dir=tmp_path / "cache").onnx_path.read_bytes()
        == better.exported.onnx_bytes
    )
    with pytest.raises(AliasNotFoundError):
        resolve_alias(CHALLENGER, settings, cache_dir=tmp_path / "cache")

    # 6. The run carries features.json and reference.json with bins for every feature and the score.
    reference = download_reference("4", settings, tmp_path / "ref")
    assert set(reference["features"]) == set(FEATURE_NAMES)
    for block in [*reference["features"].values(), reference["score"]]:
        assert 1 <= len(block["edges"]) <= 9 and len(block["shares"]) == len(block["edges"]) + 1
        assert sum(block["shares"]) == pytest.approx(1.0)
        assert block["edges"] == sorted(block["edges"])
    assert len(reference["sample"]["scores"]) == 300 and len(reference["sample"]["features"][0]) == N_FEATURES
    # Deciles of a standard normal feature: the training set is spread evenly over ten bins.
    assert reference["features"][FEATURE_NAMES[5]]["shares"] == pytest.approx([0.1] * 10, abs=0.002)


def test_a_challenger_much_worse_than_the_champion_is_refused(
    settings: TrainingSettings, data: dict[str, np.ndarray]
) -> None:
    champion = candidate(data, 1)
    assert log_and_register(champion, settings).aliases == (CHAMPION,)
    strict = settings.model_copy(update={"min_test_pr_auc": 0.0, "min_test_roc_auc": 0.0, "max_test_ece": 1.0})
    weak = candidate(data, 5, constant=True)
    result = log_and_register(weak, strict)
    assert not result.gate_passed and result.aliases == ()
    assert result.reasons == (
        f"test PR-AUC {weak.test.pr_auc:.4f} is more than 0.0500 below the champion's "
        f"{result.champion_pr_auc:.4f} (TRAIN_CHAMPION_TOLERANCE)",
    )
    # Another feature service cannot be re-scored on these rows: the champion's recorded figure is used.
    other = candidate(data, 6, service="fraud_v1_lite")
    result = log_and_register(other, strict)
    assert result.champion_pr_auc_source == "registry tag" and result.gate_passed


@pytest.fixture(scope="module")
def small_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generator = TransactionGenerator(
        build_world(5, accounts=300, merchants=60), GeneratorConfig(seed=5, fraud_rate=0.05)
    )
    out = tmp_path_factory.mktemp("history")
    end = datetime(2026, 3, 4, tzinfo=UTC)
    write_history(generator, 2.0, out, end=end, rate_per_s=0.05, label_delay=timedelta(seconds=30))
    return out


def test_streamscore_train_end_to_end(small_history: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(train_cli.train)

    @app.callback()
    def root() -> None:
        """Stand-in for the umbrella CLI."""

    env = {
        "TRAIN_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "TRAIN_MLFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "TRAIN_HISTORY_DIR": str(small_history),
        "TRAIN_MIN_TEST_PR_AUC": "0.1",
        "TRAIN_MIN_TEST_ROC_AUC": "0.5",
        "TRAIN_MAX_TEST_ECE": "0.5",
        "TRAIN_REFERENCE_SAMPLE_SIZE": "100",
    }
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--join", "local", "--epochs", "2"], env=env)
    assert result.exit_code == 0, result.output
    assert "champion" in result.output and "baseline PR-AUC" in result.output
    assert "decline at" in result.output and "good customers declined (FPR)" in result.output

    # The lite preset, with a gate it cannot pass: registered, no alias, exit 1 with the reason.
    result = runner.invoke(
        app,
        ["train", "--config", "v1_lite", "--join", "local", "--epochs", "1"],
        env={**env, "TRAIN_MAX_TEST_ECE": "0"},
    )
    assert result.exit_code == 1
    assert "TRAIN_MAX_TEST_ECE" in result.output and "without an alias" in result.output
    settings = TrainingSettings(mlflow_tracking_uri=env["TRAIN_MLFLOW_TRACKING_URI"])
    assert aliases(settings) == {CHAMPION: "1"}
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    lite = client.get_model_version(settings.registered_model, "2")
    assert lite.tags["feature_service"] == "fraud_v1_lite" and lite.tags["gate"] == "failed"
    assert lite.run_id is not None
    run = client.get_run(lite.run_id)
    assert run.data.params["architecture"] == "mlp-32" and run.data.params["features"] == ",".join(FEATURE_NAMES)
    assert {"test_pr_auc", "val_ece", "baseline_test_pr_auc"} <= set(run.data.metrics)
    features = json.loads(
        Path(client.download_artifacts(lite.run_id, "model/features.json", str(tmp_path))).read_text()
    )
    assert features["feature_names"] == list(FEATURE_NAMES) and features["feature_service"] == "fraud_v1_lite"

    # The operating point: chosen on validation, recorded as exact version tags (what the scorer reads), as run
    # params, as test_* metrics at that point and in operating_point.json; `train` prints it.
    champion = client.get_model_version(settings.registered_model, "1")
    assert champion.run_id is not None
    thresholds = Registry(RegistrySettings(tracking_uri=settings.mlflow_tracking_uri)).thresholds("1")
    assert thresholds.source == "model"
    assert champion.tags["review_threshold"] == run_params(client, champion.run_id)["review_threshold"]
    point = json.loads(
        Path(client.download_artifacts(champion.run_id, "model/operating_point.json", str(tmp_path))).read_text()
    )
    assert (point["review_threshold"], point["decline_threshold"]) == (thresholds.review, thresholds.decline)
    assert point["objective"]["decline_max_fpr"] == 0.005 and point["validation"]["decline_fpr"] <= 0.005
    metrics = client.get_run(champion.run_id).data.metrics
    for key in ("decline_rate", "decline_precision", "decline_recall", "decline_fpr", "decline_amount_recall"):
        assert metrics[f"test_{key}"] == pytest.approx(point["test"][key])
        assert float(champion.tags[f"test_{key}"]) == pytest.approx(point["test"][key], abs=1e-6)

    result = runner.invoke(app, ["train", "--config", "nope"], env=env)
    assert result.exit_code == 1 and "unknown preset" in result.output
