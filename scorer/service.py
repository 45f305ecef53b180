"""Start-up of the stream scorer: check every dependency *before* consuming anything, then run the loop.

Order: broker reachable → models resolved, verified, loaded and warmed (a bad model file exits non-zero here,
with the reason) → feature store reachable → metrics/health server → consumer and transactional producer →
loop. Exit codes (the supervisor restarts us on any but 0 and 2):

- 0 after SIGTERM/SIGINT;
- 1 a bug: the loop raised something unexpected (traceback in the log);
- 2 configuration or a model is unusable;
- 3 infrastructure (feature store, broker, group coordinator) stayed unreachable for `SCORER_GIVE_UP_AFTER_S`;
- 4 a fatal Kafka client error (a fenced static member or transactional producer, an authorization failure);
- 5 stalled: no progress for `SCORER_STALL_EXIT_AFTER_S` (work waiting and no commit, no partitions while the
  group has some for us, or a committer stuck inside the client).

Once the loop decides to exit (1, 3, 4, 5) the process ends within `SCORER_EXIT_TIMEOUT_S` even when closing a
client or the interpreter's shutdown hangs (`arm_hard_exit`).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from typing import Any

from scorer.engine import ScoringEngine, Serving, Variant
from scorer.features import make_feature_client
from scorer.features.base import FeatureClient, FeatureStoreUnavailableError
from scorer.health import MetricsServer, details, liveness, readiness
from scorer.metrics import ScorerMetrics
from scorer.models import ModelCache, RuntimeOptions
from scorer.serving import Reloader, ServingBuilder
from scorer.settings import ScorerSettings
from scorer.stream import (
    EXIT_CRASH,
    EXIT_FATAL,
    EXIT_INFRA,
    EXIT_STALLED,
    Backoff,
    ScorerExitError,
    StreamScorer,
)
from streamscore.errors import StreamscoreError
from streamscore.failures import describe, env_name
from streamscore.kafka import wait_for_broker
from streamscore.ports import ensure_free
from streamscore.registry import Registry

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
__all__ = ["EXIT_CONFIG", "EXIT_CRASH", "EXIT_FATAL", "EXIT_INFRA", "EXIT_OK", "EXIT_STALLED", "run"]


def arm_hard_exit(code: int, after_s: float) -> threading.Timer:
    """End the process with `code` after `after_s` seconds, whatever still runs: a client that will not close, a
    thread stuck inside librdkafka (the interpreter's shutdown would wait for it). A daemon timer: a process that
    exits in time never fires it."""

    def fire() -> None:
        logger.error("still running %.0f s after deciding to exit with code %d: exiting now", after_s, code)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def runtime_options(settings: ScorerSettings) -> RuntimeOptions:
    return RuntimeOptions(
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        device=settings.device,
        cuda_min_batch=settings.cuda_min_batch,
        warmup_batch=settings.max_batch_size,
    )


def load_serving(settings: ScorerSettings) -> tuple[ServingBuilder, Serving]:
    """Resolve every variant's alias and load its version; any failure raises (start-up is strict)."""
    registry = Registry(settings.registry)
    builder = ServingBuilder(settings, registry, ModelCache(registry, runtime_options(settings)))

    def fail(variant: Variant, version: str, exc: Exception) -> None:
        raise exc

    return builder, builder.build(registry.aliases(), on_failure=fail)


def wait_for_features(client: FeatureClient, settings: ScorerSettings, timeout_s: float) -> None:
    backoff = Backoff(settings.retry_initial_ms / 1000.0, settings.retry_max_ms / 1000.0)
    while True:
        try:
            client.ping()
            return
        except FeatureStoreUnavailableError:
            if backoff.failing_for() > timeout_s:
                raise
            time.sleep(backoff.next_delay())


def publish_models(metrics: ScorerMetrics, serving: Serving) -> None:
    metrics.model_info.clear()
    metrics.model_load_seconds.clear()
    for variant in serving.variants:
        model = serving.models[variant.name]
        metrics.model_info.labels(variant=variant.name).info(
            {
                "model_name": model.name,
                "model_version": model.version,
                "alias": variant.alias,
                "kind": "shadow" if variant.shadow else "live",
                "weight": f"{variant.weight:g}",
                "experiment_id": serving.experiment_id,
                "providers": ",".join(model.providers),
                "sha256": model.sha256[:16],
                "review_threshold": _threshold_label(serving.thresholds_of(variant.name).review),
                "decline_threshold": _threshold_label(serving.thresholds_of(variant.name).decline),
                "thresholds": serving.thresholds_of(variant.name).source,
            }
        )
        metrics.model_load_seconds.labels(variant=variant.name).set(model.load_seconds)


def _threshold_label(value: float | None) -> str:
    return "off" if value is None else f"{value:.6g}"


def stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT set the returned event, from the very start: a stop requested while models load ends the
    process cleanly before it consumes anything, one requested later ends it after the current batch."""
    stopping = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            logger.info("stopping (%s): finishing the current batch", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopping


def run(settings: ScorerSettings | None = None, *, startup_timeout_s: float = 30.0) -> int:
    """Run the stream scorer until SIGTERM/SIGINT; returns the process exit code."""
    stopping = stop_on_signals()
    try:
        settings = settings or ScorerSettings()
    except ValueError as exc:
        logger.error("invalid scorer settings: %s", describe(exc).line)
        return EXIT_CONFIG
    try:
        ensure_free(settings.metrics_port, env_name(ScorerSettings, "metrics_port"), settings.metrics_bind)
        waited = wait_for_broker(settings.kafka, startup_timeout_s)
        logger.info("broker %s answered after %.1fs", settings.kafka.bootstrap_servers, waited)
        builder, serving = load_serving(settings)
        features = make_feature_client(settings.feature_client, settings.feast)
        wait_for_features(features, settings, startup_timeout_s)
    except StreamscoreError as exc:
        logger.error("cannot start: %s", exc)
        return EXIT_INFRA if exc.retryable else EXIT_CONFIG
    if stopping.is_set():
        logger.info("stopped during start-up, before consuming anything")
        return EXIT_OK
    metrics = ScorerMetrics()
    publish_models(metrics, serving)
    engine = ScoringEngine(serving, features, attach_features=settings.attach_features)
    reloader = Reloader(builder, serving, metrics, settings.reload_interval_s)
    try:
        scorer = StreamScorer(
            settings,
            engine,
            metrics,
            reloader=reloader,
            on_swap=lambda: publish_models(metrics, engine.serving),
            stopping=stopping,
            on_exit=lambda code: arm_hard_exit(code, settings.exit_timeout_s),
        )
    except ScorerExitError as exc:  # the transactional producer's init_transactions gave up or was fenced
        logger.error("cannot start: %s", exc)
        features.close()
        return exc.exit_code

    def live() -> tuple[bool, dict[str, Any]]:
        state = scorer.state()
        verdict = liveness(state, scorer.bounds)
        return verdict.ok, {"reasons": list(verdict.reasons), **details(state)}

    def ready() -> tuple[bool, dict[str, Any]]:
        state = scorer.state()
        verdict = readiness(state, scorer.bounds)
        return verdict.ok, {
            "reasons": list(verdict.reasons),
            **details(state),
            "models": engine.serving.versions(),
            "experiment_id": engine.serving.experiment_id,
            "delivery": settings.delivery,
        }

    checks = {"/livez": live, "/readyz": ready, "/healthz": ready, "/health": ready}
    server = MetricsServer(metrics.registry, checks, settings.metrics_bind, settings.metrics_port).start()
    logger.info(
        "scoring %s -> %s (group %s, %s, batch<=%d, delay<=%.1fms) models %s; metrics on http://%s:%d/metrics",
        scorer.input_topic,
        scorer.scores_topic,
        scorer.group,
        settings.delivery,
        settings.max_batch_size,
        settings.max_queue_delay_ms,
        serving.versions(),
        settings.metrics_bind,
        server.port,
    )
    reloader.start()
    # Everything loaded so far (models, Feast's and MLflow's modules) lives for the whole run: freezing it keeps
    # the garbage collector from re-scanning it on every collection (bench: engine 38 → 21 µs/event, decode
    # 12 → 4 µs/event at batch 1024).
    gc.collect()
    gc.freeze()
    try:
        return scorer.run()
    except ScorerExitError as exc:
        logger.error("exit code %d: %s", exc.exit_code, exc)
        return exc.exit_code
    except Exception:
        logger.exception("the scoring loop crashed")
        return EXIT_CRASH
    finally:
        reloader.stop()
        server.stop()
        features.close()
