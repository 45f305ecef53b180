"""`train`: history → point-in-time features → torch MLP → ONNX (verified) → MLflow run, version and gate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from streamscore.features import FEATURE_NAMES
from training.dataset import TrainingData, build_dataset
from training.export import export_model, run_onnx, session
from training.metrics import (
    DecisionMetrics,
    OperatingPoint,
    RuleBaseline,
    ScoreMetrics,
    best_single_rule,
    choose_operating_point,
    decision_metrics,
    evaluate,
)
from training.model import EpochReport, FitConfig, fit, predict
from training.registry import Candidate, RegistrationResult, build_reference, log_and_register
from training.settings import TrainingSettings

logger = logging.getLogger(__name__)


class TrainProgress(Protocol):
    """What `train` reports while it runs (the CLI draws it with rich)."""

    def on_stage(self, stage: str) -> None: ...

    def on_epoch(self, report: EpochReport) -> None: ...


class NullProgress:
    def on_stage(self, stage: str) -> None:
        logger.info("stage %s", stage)

    def on_epoch(self, report: EpochReport) -> None:
        pass


@dataclass(frozen=True)
class TrainResult:
    settings: TrainingSettings
    registration: RegistrationResult
    validation: ScoreMetrics
    test: ScoreMetrics
    baseline: RuleBaseline
    """Best single-feature rule on the test split."""
    sha256: str
    epochs_run: int
    best_epoch: int
    device: str
    rows: dict[str, int]
    """rows and positives of each split, rows with missing / partial features."""
    operating_point: OperatingPoint | None = None
    """The version's thresholds, chosen on the validation split (recorded with the version)."""
    decisions_validation: DecisionMetrics | None = None
    decisions_test: DecisionMetrics | None = None
    """What the operating point does on the test split: the model card."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per stage: load history, join, model inputs (the parts of features; absent when the data was
    given), features, training, export, registry, total."""

    @property
    def lift(self) -> float:
        """Test PR-AUC over the baseline's."""
        return self.test.pr_auc / self.baseline.pr_auc if self.baseline.pr_auc > 0 else float("inf")


def fit_config(settings: TrainingSettings) -> FitConfig:
    return FitConfig(
        hidden_sizes=settings.hidden_sizes,
        dropout=settings.dropout,
        epochs=settings.epochs,
        patience=settings.patience,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        pos_weight=settings.pos_weight,
        clip=settings.clip,
        seed=settings.seed,
        device=settings.device,
        threads=settings.threads,
    )


def train(
    settings: TrainingSettings,
    progress: TrainProgress | None = None,
    *,
    promote: bool = False,
    data: TrainingData | None = None,
) -> TrainResult:
    """Train the configured model on the history, export and verify it, log and register it, apply the gate.
    `data` skips building the training set (tests, or two configurations on one join)."""
    report = progress or NullProgress()
    seconds: dict[str, float] = {}
    started = clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[name] = now - clock
        clock = now

    built = data is None
    if data is None:
        data = build_dataset(
            settings.history_dir,
            settings.feature_service,
            join=settings.feature_join,
            validation_fraction=settings.validation_fraction,
            test_fraction=settings.test_fraction,
            warmup_days=settings.warmup_days,
            feature_lag_s=settings.feature_lag_s,
            seed=settings.seed,
            on_stage=report.on_stage,
        )
    elif data.feature_service != settings.feature_service:
        raise ValueError(f"data was built for {data.feature_service}, settings ask for {settings.feature_service}")
    train_split, val_split, test_split = data.train, data.validation, data.test
    lap("features")
    if built:  # the features' own steps (load history, join, model inputs) first
        seconds = {**data.seconds, **seconds}

    report.on_stage(f"training {settings.architecture()}")
    fitted = fit(train_split.x, train_split.y, val_split.x, val_split.y, fit_config(settings), on_epoch=report.on_epoch)
    lap("training")

    report.on_stage("evaluating and exporting to ONNX")
    model = fitted.model
    validation = evaluate(val_split.y, predict(model, val_split.x))
    test = evaluate(test_split.y, predict(model, test_split.x))
    baseline = best_single_rule(test_split.x, test_split.y, FEATURE_NAMES)
    exported = export_model(model, test_split.x)
    # The operating point is chosen and measured on ONNX Runtime's scores, the numbers the scorer compares with the
    # thresholds (torch's differ by up to 1e-5: enough to move a tie across a threshold).
    onnx_session = session(exported.onnx_bytes, threads=settings.threads)
    val_scores, test_scores = run_onnx(onnx_session, val_split.x), run_onnx(onnx_session, test_split.x)
    point = choose_operating_point(
        val_split.y, val_scores, decline_max_fpr=settings.decline_max_fpr, review_max_fpr=settings.review_max_fpr
    )
    decisions_validation = decision_metrics(
        val_split.y, val_scores, val_split.amount, review=point.review, decline=point.decline
    )
    decisions_test = decision_metrics(
        test_split.y, test_scores, test_split.amount, review=point.review, decline=point.decline
    )
    # The drift reference holds the scores as served: ONNX Runtime's, on the validation split. ORT flushes denormal
    # floats to zero where torch keeps them, so on a confident model half the live scores were exactly 0 against
    # tiny positive torch scores in the reference (PSI 5 on the champion's score in every demo window, its inputs
    # clean). Validation rows, not training rows: scores on rows the model learned from are more confident than live.
    reference = build_reference(
        val_split.x,
        val_scores,
        feature_service=settings.feature_service,
        seed=settings.seed,
        sample_size=settings.reference_sample_size,
        event_ts=val_split.event_ts,
    )
    lap("export")

    report.on_stage("logging to MLflow and registering")
    params = {
        "architecture": settings.architecture(),
        "hidden_sizes": ",".join(str(h) for h in settings.hidden_sizes),
        "dropout": settings.dropout,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "batch_size": settings.batch_size,
        "epochs": settings.epochs,
        "epochs_run": fitted.epochs_run,
        "best_epoch": fitted.best_epoch,
        "patience": settings.patience,
        "seed": settings.seed,
        "pos_weight": round(fitted.pos_weight, 6),
        "clip": settings.clip,
        "calibration_scale": round(fitted.calibration[0], 6),
        "calibration_shift": round(fitted.calibration[1], 6),
        "device": fitted.device,
        "threads": settings.threads,
        "feature_join": data.join,
        "feature_join_seconds": round(seconds["join"], 1) if built else "not built here",
        "history_dir": str(settings.history_dir),
        "rows_train": len(train_split),
        "rows_validation": len(val_split),
        "rows_test": len(test_split),
        "onnx_max_abs_diff": f"{exported.max_diff:.3g}",
        "decline_max_fpr": settings.decline_max_fpr,
        "review_max_fpr": settings.review_max_fpr,
    }
    candidate = Candidate(
        exported=exported,
        feature_service=settings.feature_service,
        params=params,
        validation=validation,
        test=test,
        baseline=baseline,
        reference=reference,
        x_test=test_split.x,
        y_test=test_split.y,
        history=fitted.history,
        operating_point=point,
        decisions_validation=decisions_validation,
        decisions_test=decisions_test,
    )
    registration = log_and_register(candidate, settings, promote=promote)
    lap("registry")
    seconds["total"] = time.monotonic() - started
    rows = {
        "train": len(train_split),
        "train_positives": train_split.positives,
        "validation": len(val_split),
        "validation_positives": val_split.positives,
        "test": len(test_split),
        "test_positives": test_split.positives,
        **{f"features_{k}": v for k, v in data.stats.items()},
    }
    return TrainResult(
        settings=settings,
        registration=registration,
        validation=validation,
        test=test,
        baseline=baseline,
        sha256=exported.sha256,
        epochs_run=fitted.epochs_run,
        best_epoch=fitted.best_epoch,
        device=fitted.device,
        rows=rows,
        operating_point=point,
        decisions_validation=decisions_validation,
        decisions_test=decisions_test,
        seconds=seconds,
    )
