"""The fraud model: a torch MLP trained with a class-weighted loss, early-stopped on validation PR-AUC,
recalibrated on the validation set, and wrapped with its preprocessing so that the exported graph takes the
raw feature vector.

`ScoringModel` is what gets exported: `features` float32 [batch, n_features] (raw values, FEATURE_NAMES
order, NaN allowed) → `score` float32 [batch], a calibrated fraud probability. Inside, in this order:

1. NaN → the feature's default (its training-set median), via `torch.where(isnan)`;
2. standardization with the training mean and std (buffers; a constant feature gets std 1);
3. clipping to [-clip, clip] (outliers, drift, ±inf cannot push the network off its training range);
4. the MLP → one logit per row;
5. Platt recalibration `a * logit + b` fitted on the validation set (the class weight of the loss shifts
   logits by about log(weight); this puts probabilities back on the real fraud rate) and a sigmoid.

The output is 1-D ([N], not [N, 1]): one score per row is what every consumer indexes.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from training.metrics import average_precision

logger = logging.getLogger(__name__)

PREDICT_BATCH = 65_536


class Preprocessor(nn.Module):
    """Missing-value defaults, standardization and clipping, with the training statistics as buffers."""

    defaults: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, defaults: NDArray[np.floating], mean: NDArray[np.floating], std: NDArray[np.floating], clip: float
    ):
        super().__init__()
        if not defaults.shape == mean.shape == std.shape or defaults.ndim != 1:
            raise ValueError("defaults, mean and std must be vectors of the same length")
        self.register_buffer("defaults", torch.as_tensor(defaults, dtype=torch.float32))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.clip = float(clip)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        filled = torch.where(torch.isnan(features), self.defaults, features)
        return torch.clamp((filled - self.mean) / self.std, -self.clip, self.clip)

    @classmethod
    def fit(cls, x: NDArray[np.floating], clip: float) -> Preprocessor:
        """Statistics of the training matrix: medians as defaults, mean and std after filling."""
        values = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            defaults = np.nanmedian(values, axis=0) if values.size else np.zeros(values.shape[1])
        defaults = np.nan_to_num(defaults, nan=0.0)
        filled = np.where(np.isnan(values), defaults, values)
        filled = np.clip(filled, np.finfo(np.float32).min, np.finfo(np.float32).max)
        mean = filled.mean(axis=0)
        std = filled.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        return cls(defaults, mean, std, clip)


class MLP(nn.Module):
    """Linear → ReLU → Dropout per hidden layer, then one logit per row."""

    def __init__(self, n_features: int, hidden_sizes: Sequence[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(x).squeeze(-1)
        return logits


class ScoringModel(nn.Module):
    """Raw features [N, F] → calibrated fraud probability [N]; the module that is exported to ONNX."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, preprocessor: Preprocessor, mlp: MLP, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.mlp = mlp
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32))

    @property
    def n_features(self) -> int:
        return self.preprocessor.n_features

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The MLP's uncalibrated logits."""
        out: torch.Tensor = self.mlp(self.preprocessor(features))
        return out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features) * self.scale + self.shift)


def resolve_device(setting: str) -> torch.device:
    """auto → CUDA when torch sees a GPU, else CPU; cuda without a GPU is an error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("TRAIN_DEVICE=cuda but torch sees no CUDA device")
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # for libraries that still read the legacy global state


def predict(model: nn.Module, x: NDArray[np.floating], *, logits: bool = False) -> NDArray[np.float32]:
    """Scores (or, for a ScoringModel with `logits=True`, uncalibrated logits) of `x`, in eval mode, batched."""
    tensors = [*model.buffers(), *model.parameters()]
    device = tensors[0].device if tensors else torch.device("cpu")
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), PREDICT_BATCH):
            batch = torch.as_tensor(np.asarray(x[start : start + PREDICT_BATCH], dtype=np.float32), device=device)
            result = model.logits(batch) if logits and isinstance(model, ScoringModel) else model(batch)
            out.append(result.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


def platt(logits: NDArray[np.floating], y: NDArray[np.floating], *, steps: int = 100) -> tuple[float, float]:
    """(a, b) minimizing the log loss of sigmoid(a * logit + b) on (logits, y): Platt scaling."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    loss_fn = nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss: torch.Tensor = loss_fn(params[0] * z + params[1], t)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    a, b = (float(v) for v in params.detach())
    if not (math.isfinite(a) and math.isfinite(b)):
        return 1.0, 0.0
    return a, b


@dataclass(frozen=True, slots=True)
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    """Mean weighted training loss of the epoch."""
    val_pr_auc: float
    best: bool
    """This epoch is the best so far (its weights are kept)."""
    seconds: float


@dataclass(frozen=True, slots=True)
class FitConfig:
    hidden_sizes: tuple[int, ...]
    dropout: float
    epochs: int
    patience: int
    batch_size: int
    lr: float
    weight_decay: float
    pos_weight: float | None
    clip: float
    seed: int
    device: str = "cpu"
    threads: int = 1


@dataclass(frozen=True)
class FitResult:
    model: ScoringModel
    """On the CPU, in eval mode."""
    epochs_run: int
    best_epoch: int
    best_val_pr_auc: float
    pos_weight: float
    calibration: tuple[float, float]
    history: tuple[EpochReport, ...]
    device: str
    seconds: float


def fit(
    x_train: NDArray[np.floating],
    y_train: NDArray[np.floating],
    x_val: NDArray[np.floating],
    y_val: NDArray[np.floating],
    config: FitConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> FitResult:
    """Train an MLP on (x_train, y_train), keep the weights of the epoch with the best validation PR-AUC, stop
    after `patience` epochs without improvement, then recalibrate on the validation set."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _fit(x_train, y_train, x_val, y_val, config, on_epoch)
    finally:
        torch.set_num_threads(threads_before)


def _fit(
    x_train: NDArray[np.floating],
    y_train: NDArray[np.floating],
    x_val: NDArray[np.floating],
    y_val: NDArray[np.floating],
    config: FitConfig,
    on_epoch: Callable[[EpochReport], None] | None,
) -> FitResult:
    started = time.monotonic()
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    y_train = np.asarray(y_train, dtype=np.float32)
    positives = float(y_train.sum())
    if positives == 0 or positives == len(y_train):
        raise ValueError("the training split needs both fraud and legitimate rows")
    pos_weight = config.pos_weight or (len(y_train) - positives) / positives

    preprocessor = Preprocessor.fit(x_train, config.clip)
    model = ScoringModel(preprocessor, MLP(preprocessor.n_features, config.hidden_sizes, config.dropout)).to(device)
    optimizer = torch.optim.AdamW(model.mlp.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    x_all = torch.as_tensor(np.asarray(x_train, dtype=np.float32), device=device)
    y_all = torch.as_tensor(y_train, device=device)

    best_state = copy.deepcopy(model.state_dict())
    best_ap, best_epoch, stale = -1.0, 0, 0
    history: list[EpochReport] = []
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.monotonic()
        model.train()
        order = torch.as_tensor(rng.permutation(len(y_train)), device=device)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model.logits(x_all[index]), y_all[index])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        val_ap = average_precision(y_val, predict(model, x_val, logits=True))
        improved = val_ap > best_ap
        if improved:
            best_ap, best_epoch, stale = val_ap, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        report = EpochReport(
            epoch, config.epochs, total / len(y_train), val_ap, improved, time.monotonic() - epoch_started
        )
        history.append(report)
        logger.info("epoch=%d loss=%.5f val_pr_auc=%.4f best=%s", epoch, report.loss, val_ap, improved)
        if on_epoch is not None:
            on_epoch(report)
        if stale >= config.patience:
            break

    model.load_state_dict(best_state)
    model = model.cpu().eval()
    scale, shift = platt(predict(model, x_val, logits=True), np.asarray(y_val))
    model.scale.fill_(scale)
    model.shift.fill_(shift)
    return FitResult(
        model=model,
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_val_pr_auc=best_ap,
        pos_weight=pos_weight,
        calibration=(scale, shift),
        history=tuple(history),
        device=str(device),
        seconds=time.monotonic() - started,
    )
