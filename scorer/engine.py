"""The scoring engine: features → route → infer → scores, for a batch of valid transactions.

Both transports call it — the Kafka loop (`scorer.stream`) and the HTTP API — so a transaction gets the same
features, the same variant and the same model whichever way it came in. The engine knows nothing of Kafka
or HTTP: decoding and dead-lettering happen in the transport, delivery too.

What serves is one immutable `Serving` (experiment, router, a loaded model and its thresholds per variant). The
transport swaps it between batches (`engine.serving = new`) when an alias moves or a version's operating point is
re-tagged, so a batch is never scored by two versions, or two operating points, of the same variant. Each variant
decides with its own version's thresholds (`streamscore.thresholds`), and every score says which.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from feature_repo.layout import MERCHANT_VIEW, PROFILE_VIEW, REALTIME_VIEW, SERVICES
from scorer.features.base import FeatureClient, OnlineRow
from scorer.models import LoadedModel
from scorer.routing import Router
from streamscore.contracts import FeatureStatus, Score, ScoreSource, Transaction
from streamscore.errors import StreamscoreError
from streamscore.features import TransactionFacts, transaction_features
from streamscore.thresholds import DEFAULT_THRESHOLDS, Thresholds

logger = logging.getLogger(__name__)


EXPLICIT = "explicit"
"""The variant name of scores from a version asked for explicitly (API `?version=`)."""


class UnknownVariantError(StreamscoreError):
    http_status = 404

    def __init__(self, variant: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown variant {variant!r}; this deployment serves {', '.join(known)}")


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    alias: str
    """The MLflow alias it serves (its version follows the alias)."""
    weight: float
    """Live variants: share of accounts (relative weight). Shadows: share of events scored on top."""
    shadow: bool = False


@dataclass(frozen=True)
class Serving:
    """Everything that decides a score, swapped as a whole between batches."""

    experiment_id: str
    router: Router
    variants: tuple[Variant, ...]
    models: dict[str, LoadedModel]
    """Variant name → the loaded version it serves."""
    thresholds: dict[str, Thresholds] = field(default_factory=dict)
    """Variant name → the thresholds it decides with (its version's operating point, or the override). The builder
    fills it for every variant; a variant absent here decides with the documented defaults (source `default`)."""

    def versions(self) -> dict[str, str]:
        return {name: model.version for name, model in self.models.items()}

    def thresholds_of(self, variant: str) -> Thresholds:
        return self.thresholds.get(variant, DEFAULT_THRESHOLDS)

    def live(self) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if not v.shadow)


@dataclass(slots=True)
class Request:
    tx: Transaction
    arrived: float
    """Epoch seconds when the event entered the system (the Kafka record's timestamp, or the HTTP arrival):
    the origin of the score's `latency_ms`."""
    traceparent: str | None = None


@dataclass(slots=True)
class Scored:
    index: int
    """Position of the request in the batch."""
    score: Score
    shadow: bool


@dataclass(slots=True)
class BatchResult:
    scored: list[Scored] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    """Requests whose live inference failed (index, why): the transport dead-letters them."""
    shadow_failures: int = 0
    feature_seconds: float = 0.0
    inference_seconds: float = 0.0


def feature_status(row: OnlineRow, service: str) -> FeatureStatus:
    """missing: neither real-time state nor a profile (all account features took their defaults);
    default: some view the service reads had no row; ok otherwise."""
    realtime, profile, merchant = row
    if realtime is None and profile is None:
        return "missing"
    views = SERVICES[service]
    absent = (
        (REALTIME_VIEW in views and realtime is None)
        or (PROFILE_VIEW in views and profile is None)
        or (MERCHANT_VIEW in views and merchant is None)
    )
    return "default" if absent else "ok"


class ScoringEngine:
    def __init__(
        self,
        serving: Serving,
        features: FeatureClient,
        *,
        attach_features: bool = True,
    ) -> None:
        self.serving = serving
        self.features = features
        self.attach_features = attach_features

    def score(
        self,
        requests: Sequence[Request],
        *,
        source: ScoreSource = "stream",
        variant: str | None = None,
        model: LoadedModel | None = None,
        thresholds: Thresholds | None = None,
    ) -> BatchResult:
        """Score a batch. `variant` forces one variant for every request (no shadows) instead of the
        router's choice; `model` scores every request with that version instead (variant `explicit`), deciding with
        `thresholds` (its own operating point, `ServingBuilder.thresholds`; None: the documented defaults). Raises
        FeatureStoreUnavailableError when the online store cannot be read: the caller retries the whole batch;
        nothing is half-scored."""
        result = BatchResult()
        if not requests:
            return result
        serving = self.serving
        models = serving.models if model is None else {**serving.models, EXPLICIT: model}
        decides_with = serving.thresholds
        if model is not None:
            variant = EXPLICIT
            decides_with = {**decides_with, EXPLICIT: thresholds or DEFAULT_THRESHOLDS}

        started = time.perf_counter()
        facts = [TransactionFacts.of(r.tx) for r in requests]
        rows = self.features.read([(f.account_id, f.merchant_id) for f in facts], [f.event_ts for f in facts])
        result.feature_seconds = time.perf_counter() - started

        # Which variant scores which request: live first, shadows after, each group one inference.
        groups: dict[str, list[int]] = {}
        shadow_of: dict[str, bool] = {v.name: v.shadow for v in serving.variants}
        if variant is not None:
            if variant not in models:
                raise UnknownVariantError(variant, tuple(serving.models))
            groups[variant] = list(range(len(requests)))
            shadow_of = {**shadow_of, variant: False}
        else:
            for i, f in enumerate(facts):
                route = serving.router.route(f.account_id)
                groups.setdefault(route.live, []).append(i)
                for name in route.shadows:
                    groups.setdefault(name, []).append(i)

        infer_started = time.perf_counter()
        scored_at = datetime.now(UTC)
        now = scored_at.timestamp()
        attach = self.attach_features
        trusted = Score.trusted
        scored = result.scored
        experiment_id = serving.experiment_id
        status_of: dict[str, list[FeatureStatus]] = {}
        for name, indices in groups.items():
            model = models[name]
            service = model.feature_service
            use_merchant = MERCHANT_VIEW in SERVICES[service]
            statuses = status_of.get(service)
            if statuses is None:
                statuses = status_of[service] = [feature_status(row, service) for row in rows]
            feature_rows = [
                transaction_features(facts[i], rows[i][0], rows[i][1], rows[i][2] if use_merchant else None)
                for i in indices
            ]
            x = np.asarray([fr.values for fr in feature_rows], dtype=np.float32)
            values, errors = _predict(model, x)
            shadow = shadow_of[name]
            applied = decides_with.get(name, DEFAULT_THRESHOLDS)
            decide, review, decline, source_of = applied.decide, applied.review, applied.decline, applied.source
            for j, i in enumerate(indices):
                if errors[j] is not None:
                    if shadow:
                        result.shadow_failures += 1
                    else:
                        result.failed.append((i, f"model {model.name} v{model.version}: {errors[j]}"))
                    continue
                request = requests[i]
                tx = request.tx
                value = values[j]
                scored.append(
                    Scored(
                        i,
                        trusted(  # every value below already meets the contract
                            event_id=tx.event_id,
                            account_id=tx.account_id,
                            score=value,
                            decision=decide(value),
                            model_name=model.name,
                            model_version=model.version,
                            variant=name,
                            experiment_id=experiment_id,
                            feature_status=statuses[i],
                            amount=tx.amount,
                            currency=tx.currency,
                            event_time=tx.event_time,
                            scored_time=scored_at,
                            latency_ms=max(now - request.arrived, 0.0) * 1000.0,
                            source=source,
                            features=feature_rows[j].as_dict() if attach else None,
                            review_threshold=review,
                            decline_threshold=decline,
                            thresholds=source_of,
                        ),
                        shadow,
                    )
                )
        if len(groups) > 1:
            # Inference ran per variant; hand the scores back in input order (live before its shadows), so a
            # partition's scores keep the order of its transactions (the monitor's windows rely on it).
            result.scored.sort(key=_input_order)
        result.inference_seconds = time.perf_counter() - infer_started
        return result


def _input_order(item: Scored) -> tuple[int, bool]:
    return item.index, item.shadow


def _predict(model: LoadedModel, x: np.ndarray) -> tuple[list[float], list[str | None]]:
    """Scores of the rows (Python floats) and, per row, why it could not be scored (None = fine). A failing batch
    is retried row by row so one poisonous row does not take its neighbours down."""
    try:
        scores = model.predict(x)
        errors: list[str | None] = [None] * len(x)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; fall back to one row at a time
        logger.warning("batch inference failed (%s); retrying %d rows one by one", exc, len(x))
        scores = np.zeros(len(x), dtype=np.float32)
        errors = [None] * len(x)
        for i in range(len(x)):
            try:
                scores[i] = model.predict(x[i : i + 1])[0]
            except Exception as row_exc:  # noqa: BLE001 - the row's own failure: it will be dead-lettered
                errors[i] = f"inference failed: {type(row_exc).__name__}: {row_exc}"
    values: list[float] = scores.tolist()
    for i, value in enumerate(values):
        if errors[i] is None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            errors[i] = f"the model returned {value!r}, not a probability"
    return values, errors
