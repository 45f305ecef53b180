"""MLflow: one run per training (params, metrics, the ONNX model, its feature list and the drift reference),
one version of the registered model per run, and the evaluation gate that decides its alias.

Gate (`gate_reasons`): a candidate may take an alias only if its test PR-AUC, ROC-AUC and calibration error
meet the absolute thresholds and its test PR-AUC is at most `champion_tolerance` below the champion's. The
champion's figure is measured on the candidate's own test set when both use the same feature service (same
rows, same inputs: a fair duel); otherwise it is the champion's recorded test PR-AUC (version tag).

Aliases: no champion yet → a passing candidate becomes `champion`; otherwise it becomes `challenger`, and
with `promote` it takes `champion` instead (the challenger alias is then dropped, it would name the same
version). A failing candidate is registered (its run and numbers stay auditable) but gets no alias.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from numpy.typing import NDArray

from streamscore.features import FEATURE_NAMES
from streamscore.registry import (
    CHALLENGER,
    CHAMPION,
    FEATURES_FILE,
    MODEL_DIR,
    MODEL_FILE,
    REFERENCE_FILE,
    Registry,
    RegistrySettings,
    download,
    mlflow_client,
)
from streamscore.registry import aliases as current_aliases
from streamscore.thresholds import OPERATING_POINT_FILE, format_threshold, threshold_tags
from training.export import ExportedModel, run_onnx, sha256_hex
from training.metrics import DecisionMetrics, OperatingPoint, RuleBaseline, ScoreMetrics, average_precision
from training.model import EpochReport
from training.settings import TrainingSettings

logger = logging.getLogger(__name__)

REFERENCE_BINS = 10
REFERENCE_SCHEMA_VERSION = 2


# --- what a run records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A trained, exported and evaluated model, ready to be logged and judged."""

    exported: ExportedModel
    feature_service: str
    params: dict[str, Any]
    validation: ScoreMetrics
    test: ScoreMetrics
    baseline: RuleBaseline
    """Best single-feature rule on the test split."""
    reference: dict[str, Any]
    """reference.json: frozen drift bins and a reference sample (`build_reference`)."""
    x_test: NDArray[np.float32] | None = None
    """The test inputs, to score the champion on the very same rows; None = compare with its recorded figure."""
    y_test: NDArray[np.float32] | None = None
    history: Sequence[EpochReport] = ()
    feature_names: tuple[str, ...] = FEATURE_NAMES
    operating_point: OperatingPoint | None = None
    """The thresholds chosen on the validation split; None: none recorded (the scorer then uses its defaults)."""
    decisions_validation: DecisionMetrics | None = None
    decisions_test: DecisionMetrics | None = None
    """The operating point's figures on each split (metrics `val_decline_rate`, `test_decline_recall`, ...)."""


@dataclass(frozen=True)
class RegistrationResult:
    version: str
    aliases: tuple[str, ...]
    gate_passed: bool
    reasons: tuple[str, ...]
    """Why the gate refused the candidate; empty when it passed."""
    run_id: str = ""
    champion_version: str | None = None
    """The champion the candidate was compared with (before any promotion)."""
    champion_pr_auc: float | None = None
    champion_pr_auc_source: str = ""
    """'same test set' or 'registry tag'."""
    notes: tuple[str, ...] = field(default_factory=tuple)


class ResolvedModel(NamedTuple):
    version: str
    onnx_path: Path
    sha256: str


def quantile_edges(values: NDArray[np.floating], bins: int = REFERENCE_BINS) -> list[float]:
    """Interior cut points of `bins` equal-frequency bins, duplicates dropped (a binary feature keeps one)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return []
    cuts = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return [float(v) for v in np.unique(cuts)]


def bin_shares(values: NDArray[np.floating], edges: Sequence[float]) -> list[float]:
    """Share of `values` per bin (-inf, e0], (e0, e1], ..., (e_last, +inf)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return [float(c) for c in counts / max(len(values), 1)]


DAY_STRATA = 24
"""Time-of-day strata of the reference (the hour of day, UTC): the monitor compares a window with the sample rows
re-drawn to the window's own hours, so inputs that follow the daily rhythm are compared with the same hours."""
MAX_CATEGORIES = 64
"""A feature with at most this many distinct training values gets its categories and their shares (PSI bins of
the features the monitor treats as categorical)."""
POINT_MASS = 0.5 / REFERENCE_BINS
"""A value holding this share of the training rows at an edge gets a bin of its own (see `build_reference`)."""


def build_reference(
    x_train: NDArray[np.floating],
    scores_train: NDArray[np.floating],
    *,
    feature_names: Sequence[str] = FEATURE_NAMES,
    feature_service: str,
    seed: int,
    sample_size: int,
    event_ts: NDArray[np.floating] | None = None,
) -> dict[str, Any]:
    """The monitor's frozen reference (reference.json, schema 2): quantile bin edges (10 bins, training set) of
    every feature and of the score, the training shares of each bin, and a seeded sample of training rows with
    their scores — the values as the model sees them (`x_train` is the float32 model input).

    With `event_ts` (epoch seconds of the training rows) it also holds each sample row's time of day
    (`sample.time_of_day_s`, seconds since UTC midnight), `day_strata`, and per block the bin shares per
    stratum (`strata_shares`): the monitor re-draws the sample to a window's hours and grades PSI against the
    same mix. Features with at most `MAX_CATEGORIES` distinct values also get `categories` (values, shares and
    per-stratum shares): a flag's PSI bins, since the deciles of a flag that is 1 in 95 % of rows are all 1 and
    collapse its two values into one bin. For the same reason an edge value holding `POINT_MASS` of the rows with
    rows below it down to the previous edge is given a bin of its own (an edge just below it)."""
    if x_train.shape != (len(scores_train), len(feature_names)):
        raise ValueError(f"x_train {x_train.shape} does not match {len(scores_train)} scores x {len(feature_names)}")
    if event_ts is not None and len(event_ts) != len(scores_train):
        raise ValueError(f"{len(event_ts)} event times for {len(scores_train)} training rows")
    strata = (
        None
        if event_ts is None
        else np.minimum(
            (np.asarray(event_ts, dtype=np.float64) % 86_400.0 * (DAY_STRATA / 86_400.0)).astype(np.intp),
            DAY_STRATA - 1,
        )
    )

    def edges_of(values: NDArray[np.float64]) -> list[float]:
        edges = quantile_edges(values)
        finite = values[np.isfinite(values)]
        isolated = set(edges)
        for i, e in enumerate(edges):
            below = edges[i - 1] if i else -np.inf
            if np.mean(finite == e) >= POINT_MASS and np.any((finite > below) & (finite < e)):
                isolated.add(float(np.nextafter(e, -np.inf)))
        return sorted(isolated)

    groups = [] if strata is None else [np.flatnonzero(strata == h) for h in range(DAY_STRATA)]

    def per_stratum(values: NDArray[np.float64], share: Any) -> list[list[float]]:
        return [share(values[rows]) for rows in groups]

    def block(raw: NDArray[np.floating], categorical: bool) -> dict[str, Any]:
        values = np.asarray(raw, dtype=np.float64)
        edges = edges_of(values)
        out: dict[str, Any] = {"edges": edges, "shares": bin_shares(values, edges)}
        if strata is not None:
            out["strata_shares"] = per_stratum(
                values, lambda v: bin_shares(v, edges) if len(v) else [0.0] * len(out["shares"])
            )
        finite = values[np.isfinite(values)]
        distinct = np.unique(finite)
        if categorical and 0 < len(distinct) <= MAX_CATEGORIES:

            def category_shares(v: NDArray[np.float64]) -> list[float]:
                f = v[np.isfinite(v)]
                counts = np.bincount(np.searchsorted(distinct, f), minlength=len(distinct))
                return [float(c) for c in counts / max(len(f), 1)]

            out["categories"] = {"values": [float(v) for v in distinct], "shares": category_shares(values)}
            if strata is not None:
                out["categories"]["strata_shares"] = per_stratum(values, category_shares)
        return out

    # The model's input tensor and its output are float32 (features.json): the reference holds those values.
    x = np.asarray(x_train, dtype=np.float32)
    scores = np.asarray(scores_train, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(scores), size=min(sample_size, len(scores)), replace=False))
    sample = np.asarray(x[rows], dtype=np.float64)
    document: dict[str, Any] = {
        "schema_version": REFERENCE_SCHEMA_VERSION,
        "feature_service": feature_service,
        "feature_names": list(feature_names),
        "bins": REFERENCE_BINS,
        "binning": "bin i of edges e: (-inf, e0], (e0, e1], ..., (e_last, +inf) = searchsorted(e, v, side='left')",
        "precision": "float32",
        "features": {name: block(x[:, j], True) for j, name in enumerate(feature_names)},
        "score": block(scores, False),
        "sample": {
            "seed": seed,
            "rows": len(rows),
            "features": [[None if np.isnan(v) else float(v) for v in row] for row in sample],
            "scores": [float(v) for v in scores[rows]],
        },
    }
    if event_ts is not None:
        document["day_strata"] = DAY_STRATA
        document["sample"]["time_of_day_s"] = [
            float(t) for t in np.asarray(event_ts, dtype=np.float64)[rows] % 86_400.0
        ]
    return document


def features_document(feature_service: str, feature_names: Sequence[str] = FEATURE_NAMES) -> dict[str, Any]:
    """features.json: the ordered model inputs (the `features` tensor's columns) and the feature service."""
    return {
        "feature_service": feature_service,
        "feature_names": list(feature_names),
        "input": {"name": "features", "dtype": "float32", "shape": ["batch", len(feature_names)]},
        "output": {"name": "score", "dtype": "float32", "shape": ["batch"]},
    }


# --- the gate --------------------------------------------------------------------------------------------


def gate_reasons(test: ScoreMetrics, settings: TrainingSettings, champion_pr_auc: float | None) -> list[str]:
    """Every rule the candidate breaks (empty = it passes)."""
    reasons = []
    if not test.pr_auc >= settings.min_test_pr_auc:
        reasons.append(
            f"test PR-AUC {test.pr_auc:.4f} < minimum {settings.min_test_pr_auc:.4f} (TRAIN_MIN_TEST_PR_AUC)"
        )
    if not test.roc_auc >= settings.min_test_roc_auc:
        reasons.append(
            f"test ROC-AUC {test.roc_auc:.4f} < minimum {settings.min_test_roc_auc:.4f} (TRAIN_MIN_TEST_ROC_AUC)"
        )
    if not test.ece <= settings.max_test_ece:
        reasons.append(f"test ECE {test.ece:.4f} > maximum {settings.max_test_ece:.4f} (TRAIN_MAX_TEST_ECE)")
    if champion_pr_auc is not None and test.pr_auc < champion_pr_auc - settings.champion_tolerance:
        reasons.append(
            f"test PR-AUC {test.pr_auc:.4f} is more than {settings.champion_tolerance:.4f} below the champion's "
            f"{champion_pr_auc:.4f} (TRAIN_CHAMPION_TOLERANCE)"
        )
    return reasons


# --- MLflow ----------------------------------------------------------------------------------------------


def client(settings: TrainingSettings) -> MlflowClient:
    """A client on the tracking URI (also the registry URI); a local SQLite store gets its folder created."""
    return mlflow_client(settings.mlflow_tracking_uri)


def experiment_id(mlflow: MlflowClient, settings: TrainingSettings) -> str:
    """The training experiment, created with the local artifact folder when it does not exist yet."""
    existing = mlflow.get_experiment_by_name(settings.experiment_name)
    if existing is not None:
        return str(existing.experiment_id)
    location = None
    if not settings.mlflow_tracking_uri.startswith(("http://", "https://", "databricks")):
        settings.mlflow_artifact_dir.mkdir(parents=True, exist_ok=True)
        location = settings.mlflow_artifact_dir.resolve().as_uri()
    return str(mlflow.create_experiment(settings.experiment_name, artifact_location=location))


def _champion_pr_auc(
    mlflow: MlflowClient, settings: TrainingSettings, version: str, candidate: Candidate
) -> tuple[float | None, str]:
    """The champion's test PR-AUC: re-measured on the candidate's test rows when comparable, else its tag."""
    mv = mlflow.get_model_version(settings.registered_model, version)
    tags = dict(mv.tags or {})
    comparable = (
        candidate.x_test is not None
        and candidate.y_test is not None
        and tags.get("feature_service") == candidate.feature_service
        and tags.get("features") == ",".join(candidate.feature_names)
    )
    if comparable and candidate.x_test is not None and candidate.y_test is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = download(mlflow, str(mv.source), MODEL_FILE, Path(tmp))
            data = path.read_bytes()
        if sha256_hex(data) == tags.get("sha256"):
            return average_precision(candidate.y_test, run_onnx(data, candidate.x_test)), "same test set"
        logger.warning("champion version=%s checksum mismatch; comparing with its recorded metric", version)
    recorded = tags.get("test_pr_auc")
    return (float(recorded), "registry tag") if recorded is not None else (None, "unknown")


def log_and_register(candidate: Candidate, settings: TrainingSettings, *, promote: bool = False) -> RegistrationResult:
    """Log the run, register a version of `settings.registered_model`, apply the gate and set the aliases."""
    mlflow = client(settings)
    name = settings.registered_model
    run = mlflow.create_run(
        experiment_id(mlflow, settings), run_name=f"{candidate.params.get('architecture', 'model')}"
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        _log_run(mlflow, run_id, candidate)
        status = "FINISHED"
    finally:
        mlflow.set_terminated(run_id, status=status)

    aliases_before = current_aliases(mlflow, name)
    if not aliases_before and not _model_exists(mlflow, name):
        mlflow.create_registered_model(name, description="Fraud score of a transaction (streamscore).")
    champion_version = aliases_before.get(CHAMPION)
    champion_pr_auc, source = (None, "")
    if champion_version is not None:
        champion_pr_auc, source = _champion_pr_auc(mlflow, settings, champion_version, candidate)

    reasons = gate_reasons(candidate.test, settings, champion_pr_auc)
    passed = not reasons
    version = str(
        mlflow.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{MODEL_DIR}",
            run_id=run_id,
            tags=_version_tags(candidate, passed, reasons),
            description=f"{candidate.params.get('architecture', '')} on {candidate.feature_service}",
        ).version
    )
    aliases: list[str] = []
    notes: list[str] = []
    if passed:
        if champion_version is None:
            aliases.append(CHAMPION)
            notes.append("no champion yet: the first passing model becomes champion")
        elif promote:
            aliases.append(CHAMPION)
            notes.append(f"promoted: champion moves from version {champion_version} to {version}")
        else:
            aliases.append(CHALLENGER)
        for alias in aliases:
            mlflow.set_registered_model_alias(name, alias, version)
        if CHAMPION in aliases and aliases_before.get(CHALLENGER) is not None and champion_version is not None:
            mlflow.delete_registered_model_alias(name, CHALLENGER)
            notes.append(f"challenger alias removed from version {aliases_before[CHALLENGER]}")
    elif promote:
        notes.append("not promoted: the candidate did not pass the gate")
    mlflow.set_tag(run_id, "registered_version", version)
    mlflow.set_tag(run_id, "gate", "passed" if passed else "failed")
    logger.info("registered %s version=%s gate_passed=%s aliases=%s", name, version, passed, aliases)
    return RegistrationResult(
        version=version,
        aliases=tuple(aliases),
        gate_passed=passed,
        reasons=tuple(reasons),
        run_id=run_id,
        champion_version=champion_version,
        champion_pr_auc=champion_pr_auc,
        champion_pr_auc_source=source,
        notes=tuple(notes),
    )


def _model_exists(mlflow: MlflowClient, name: str) -> bool:
    try:
        mlflow.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _metrics(candidate: Candidate) -> dict[str, float]:
    return {
        **candidate.validation.as_dict("val_"),
        **candidate.test.as_dict("test_"),
        "baseline_test_pr_auc": candidate.baseline.pr_auc,
        "test_pr_auc_lift": candidate.test.pr_auc / candidate.baseline.pr_auc if candidate.baseline.pr_auc > 0 else 0.0,
        **(candidate.decisions_validation.as_dict("val_") if candidate.decisions_validation else {}),
        **(candidate.decisions_test.as_dict("test_") if candidate.decisions_test else {}),
    }


def operating_point_document(candidate: Candidate) -> dict[str, Any] | None:
    """operating_point.json: the thresholds, the objective they were chosen for, and their figures on the validation
    and test splits (None when the candidate has no operating point)."""
    point = candidate.operating_point
    if point is None:
        return None

    def figures(decisions: DecisionMetrics | None) -> dict[str, float | int] | None:
        if decisions is None:
            return None
        return {
            **decisions.as_dict(),
            "declined": decisions.declined,
            "rows": decisions.rows,
            "fraud": decisions.positives,
        }

    return {
        "schema_version": 1,
        "review_threshold": point.review,
        "decline_threshold": point.decline,
        "rule": "decline when score >= decline_threshold, review when score >= review_threshold, approve below; "
        "null: the band is off (no threshold met its objective)",
        "objective": {
            "split": "validation",
            "decline_max_fpr": point.decline_max_fpr,
            "review_max_fpr": point.review_max_fpr,
            "text": point.objective,
        },
        "validation": figures(candidate.decisions_validation),
        "test": figures(candidate.decisions_test),
    }


def _version_tags(candidate: Candidate, passed: bool, reasons: Sequence[str]) -> dict[str, str]:
    tags = {key: f"{value:.6f}" for key, value in _metrics(candidate).items()}
    if candidate.decisions_test is not None:  # the counts behind the rates: how sure a comparison with them can be
        test = candidate.decisions_test
        tags.update(test_rows=str(test.rows), test_fraud=str(test.positives), test_declined=str(test.declined))
    if candidate.operating_point is not None:  # exact values: the scorer decides with them (streamscore.thresholds)
        point = candidate.operating_point
        tags.update(threshold_tags(point.review, point.decline, point.objective))
    tags.update(
        feature_service=candidate.feature_service,
        features=",".join(candidate.feature_names),
        sha256=candidate.exported.sha256,
        baseline_rule=candidate.baseline.rule,
        gate="passed" if passed else "failed",
        architecture=str(candidate.params.get("architecture", "")),
    )
    if reasons:
        tags["gate_reasons"] = "; ".join(reasons)[:4000]
    return tags


def _log_run(mlflow: MlflowClient, run_id: str, candidate: Candidate) -> None:
    params = {
        **{k: str(v) for k, v in candidate.params.items()},
        "feature_service": candidate.feature_service,
        "features": ",".join(candidate.feature_names),
        "baseline_rule": candidate.baseline.rule,
        "sha256": candidate.exported.sha256,
    }
    if candidate.operating_point is not None:
        params["review_threshold"] = format_threshold(candidate.operating_point.review)
        params["decline_threshold"] = format_threshold(candidate.operating_point.decline)
    metrics = [Metric(key, float(value), 0, 0) for key, value in _metrics(candidate).items()]
    for report in candidate.history:
        metrics.append(Metric("epoch_train_loss", report.loss, 0, report.epoch))
        metrics.append(Metric("epoch_val_pr_auc", report.val_pr_auc, 0, report.epoch))
    mlflow.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in sorted(params.items())])
    for key, value in (("feature_service", candidate.feature_service), ("sha256", candidate.exported.sha256)):
        mlflow.set_tag(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL_DIR
        folder.mkdir()
        (folder / MODEL_FILE).write_bytes(candidate.exported.onnx_bytes)
        _write_json(folder / FEATURES_FILE, features_document(candidate.feature_service, candidate.feature_names))
        _write_json(folder / REFERENCE_FILE, candidate.reference)
        point = operating_point_document(candidate)
        if point is not None:
            _write_json(folder / OPERATING_POINT_FILE, point)
        mlflow.log_artifacts(run_id, str(folder), artifact_path=MODEL_DIR)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, allow_nan=False, separators=(",", ":")) + "\n")


def registry(settings: TrainingSettings, cache_dir: Path | None = None) -> Registry:
    """The read side of the registry (streamscore.registry) on the training settings' store."""
    return Registry(
        RegistrySettings(
            tracking_uri=settings.mlflow_tracking_uri,
            model_name=settings.registered_model,
            cache_dir=cache_dir or settings.mlflow_artifact_dir.parent / "cache",
        )
    )


def resolve_alias(
    alias: str, settings: TrainingSettings | None = None, *, cache_dir: Path | None = None
) -> ResolvedModel:
    """(version, local path of model.onnx, sha256) of the version carrying `alias`, verified (see
    `streamscore.registry.Registry.files`)."""
    reader = registry(settings or TrainingSettings(), cache_dir)
    files = reader.files(reader.version_of(alias))
    return ResolvedModel(version=files.version, onnx_path=files.onnx_path, sha256=files.sha256)


def download_reference(version: str, settings: TrainingSettings, dst: Path) -> dict[str, Any]:
    """reference.json of a version (for the monitor and for tests)."""
    return registry(settings).reference(version, dst)
