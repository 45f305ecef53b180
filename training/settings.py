"""Settings of `streamscore train` (`TRAIN_…`), and the named presets `v1` and `v1_lite`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamscore.errors import ConfigError
from streamscore.infra.settings import PROJECT_ROOT

FeatureService = Literal["fraud_v1", "fraud_v1_lite"]
FEATURE_SERVICES: tuple[FeatureService, ...] = ("fraud_v1", "fraud_v1_lite")
MLFLOW_DIR = PROJECT_ROOT / "data" / "mlflow"


class TrainingSettings(BaseSettings):
    """Training, evaluation gate and MLflow registry of `streamscore train`."""

    model_config = SettingsConfigDict(env_prefix="TRAIN_", extra="forbid", use_attribute_docstrings=True)

    seed: int = Field(default=7, ge=0)
    """Seed of torch, numpy, the batch order and the reference sample: the same seed and data give the same model."""
    hidden_sizes: tuple[int, ...] = (64, 32)
    """Widths of the MLP's hidden layers, e.g. `[64,32]` in the environment."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout after each hidden layer during training."""
    epochs: int = Field(default=20, ge=1)
    """Most epochs to train; early stopping on validation PR-AUC usually ends sooner."""
    patience: int = Field(default=4, ge=1)
    """Epochs without a better validation PR-AUC before training stops."""
    batch_size: int = Field(default=1024, ge=1)
    """Rows per optimizer step."""
    lr: float = Field(default=2e-3, gt=0.0)
    """AdamW learning rate."""
    weight_decay: float = Field(default=1e-4, ge=0.0)
    """AdamW weight decay."""
    pos_weight: float | None = Field(default=None, gt=0.0)
    """Weight of a fraud row in the loss; unset = negatives / positives of the training set. The score is
    recalibrated on the validation set afterwards, so the weight does not inflate probabilities."""
    clip: float = Field(default=8.0, gt=0.0)
    """Standardized inputs are clipped to [-clip, clip] inside the model (outliers, drifted or infinite values)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto = CUDA when torch sees a GPU, else CPU."""
    threads: int = Field(default=1, ge=1)
    """CPU threads of torch while training. The MLP is small: one thread is as fast as two on an idle machine
    and does not slow down tenfold when other processes share the cores."""
    feature_service: FeatureService = "fraud_v1"
    """Feast feature service: fraud_v1 (real-time + profile + merchant risk) or fraud_v1_lite (no merchant risk)."""
    feature_join: Literal["feast", "local"] = "feast"
    """How the training set is joined: feast = Feast historical retrieval (production); local = the in-process
    point-in-time join of `training.dataset` (same semantics, no feature store needed)."""
    history_dir: Path = PROJECT_ROOT / "data" / "history"
    """Folder holding transactions.parquet and labels.parquet (`streamscore produce --history`)."""
    warmup_days: float = Field(default=0.0, ge=0.0)
    """The history's first days only feed later rows' features and are not split into train, validation or test:
    the account profile and merchant risk views aggregate 30 days, and rows whose windows are not full yet look like
    nothing the scorer serves. 30 with a history of 30 + N days (the demo trains on 7 days after 30)."""
    feature_lag_s: float = Field(default=0.0, ge=0.0)
    """Each training row joins the real-time state of up to this many seconds before its event (uniform per row,
    seeded): train on features as fresh as serving reads them. 0 (the default) at real-time speed, where snapshots
    arrive in a fraction of a second; the demo, whose simulated clock runs 750x, sets the wall-clock freshness times
    its speed (a 0.2 s old snapshot misses 150 simulated seconds of the account's events)."""
    validation_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    """Share of events, by event time, in the validation split (after the training split)."""
    test_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    """Share of events, by event time, in the test split (the latest events)."""
    reference_sample_size: int = Field(default=2000, ge=1)
    """Training rows (features and scores) stored in reference.json for the drift monitor."""
    mlflow_tracking_uri: str = f"sqlite:///{MLFLOW_DIR / 'mlflow.db'}"
    """MLflow tracking and registry URI; a server such as http://127.0.0.1:5000 keeps its own artifact store."""
    mlflow_artifact_dir: Path = MLFLOW_DIR / "artifacts"
    """Artifact location of the experiment when it is created (local MLflow store)."""
    experiment_name: str = "fraud-detector"
    """MLflow experiment of the training runs."""
    registered_model: str = "fraud-detector"
    """MLflow registered model every candidate becomes a version of."""
    min_test_pr_auc: float = Field(default=0.5, ge=0.0, le=1.0)
    """Gate: smallest test PR-AUC (average precision) a candidate needs to get an alias."""
    min_test_roc_auc: float = Field(default=0.9, ge=0.0, le=1.0)
    """Gate: smallest test ROC-AUC a candidate needs to get an alias."""
    max_test_ece: float = Field(default=0.02, ge=0.0, le=1.0)
    """Gate: largest test expected calibration error (10 bins) a candidate may have."""
    champion_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    """Gate: how much lower than the champion's test PR-AUC a challenger's may be."""
    decline_max_fpr: float = Field(default=0.005, ge=0.0, le=1.0)
    """Operating point: the decline threshold is the lowest score that declines at most this share of the legitimate
    transactions of the validation split (0.005: one good customer in 200)."""
    review_max_fpr: float = Field(default=0.02, ge=0.0, le=1.0)
    """Operating point: the review threshold is the lowest score that reviews or declines at most this share of the
    legitimate transactions of the validation split; at least TRAIN_DECLINE_MAX_FPR."""

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(width < 1 for width in value):
            raise ValueError("TRAIN_HIDDEN_SIZES must list at least one width, each >= 1")
        return value

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> TrainingSettings:
        if self.validation_fraction + self.test_fraction >= 0.8:
            raise ValueError("TRAIN_VALIDATION_FRACTION + TRAIN_TEST_FRACTION must leave at least 20 % for training")
        if self.review_max_fpr < self.decline_max_fpr:
            raise ValueError(
                "TRAIN_REVIEW_MAX_FPR must be at least TRAIN_DECLINE_MAX_FPR (review is the band below decline), got "
                f"{self.review_max_fpr} < {self.decline_max_fpr}"
            )
        return self

    def architecture(self) -> str:
        """E.g. `mlp-64-32`."""
        return "mlp-" + "-".join(str(width) for width in self.hidden_sizes)


PRESETS: dict[str, dict[str, Any]] = {
    "v1": {"hidden_sizes": (64, 32), "feature_service": "fraud_v1", "epochs": 20, "dropout": 0.1},
    "v1_lite": {"hidden_sizes": (32,), "feature_service": "fraud_v1_lite", "epochs": 8, "dropout": 0.0},
}
"""Named configurations: two really different models (architecture, feature service, budget) to compete."""


def preset_settings(name: str, **overrides: Any) -> TrainingSettings:
    """Settings of the preset `name`. Precedence: `overrides` (CLI options; None = not given) > `TRAIN_…`
    environment variables > the preset > the field defaults."""
    if name not in PRESETS:
        raise ConfigError("--config", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    from_environment = TrainingSettings().model_fields_set
    values = {k: v for k, v in PRESETS[name].items() if k not in from_environment}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainingSettings(**values)
