"""The ad-hoc API: `create_app()` with a lifespan that loads the very engine the stream scorer runs.

Same features (the same FeatureClient), same model versions by alias (the same ServingBuilder, hot-reloaded by
the same Reloader), same routing (`variant=auto` is the stream's split). A request body and its Content-Type are
validated by the same contract code as a Kafka record and its content-type header (`validate_transaction`, with
the scorer's event-time window and size limit), so an event the stream would dead-letter is refused here with the
same reason: 413 `oversize`, 415 `unsupported_content_type`, else 422.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scorer.api.audit import AuditProducer
from scorer.api.batching import AdaptiveBatcher
from scorer.api.hotpath import (
    ApiValidationError,
    ScoreRoute,
    check_key,
    parse_transaction,
    render_error,
    traceparent_or_none,
)
from scorer.api.limits import BodyLimitMiddleware, error_json
from scorer.api.metrics import ApiMetrics
from scorer.api.security import KEY_HEADER, KeyChecker, RateLimiter
from scorer.api.settings import ApiSettings
from scorer.engine import Request as ScoreRequest
from scorer.engine import Scored, ScoringEngine, Serving
from scorer.features import make_feature_client
from scorer.features.base import FeatureClient
from scorer.metrics import ScorerMetrics
from scorer.models import LoadedModel
from scorer.service import load_serving
from scorer.serving import Reloader, ServingBuilder
from streamscore import __version__
from streamscore.contracts import (
    CONTENT_TYPE_JSON,
    Score,
    ThresholdSource,
    Transaction,
    check_content_type,
    classify,
    describe,
    reject_duplicate_keys,
)
from streamscore.errors import EventError, StreamscoreError
from streamscore.exposition import prepare_exposition
from streamscore.thresholds import Thresholds

logger = logging.getLogger(__name__)


class InferenceError(StreamscoreError):
    http_status = 503

    def __init__(self, problem: str) -> None:
        super().__init__(f"the model could not score this transaction: {problem}")


class ErrorBody(BaseModel):
    error: str = Field(description="Error class, e.g. schema_invalid, unauthorized, rate_limited")
    detail: str = Field(description="What is wrong and how to fix it")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    instances: list[Transaction]


class BatchResponse(BaseModel):
    predictions: list[Score]


class VariantInfo(BaseModel):
    name: str
    kind: str = Field(description="live (scores go to `scores`) or shadow (to `scores.shadow`)")
    alias: str
    weight: float = Field(description="live: relative share of accounts; shadow: share of events")
    model_name: str
    model_version: str
    providers: list[str]
    loaded_at: float = Field(description="Epoch seconds when this version was loaded and warmed up")
    review_threshold: float | None = Field(description="`review` from this score up; null: no review band")
    decline_threshold: float | None = Field(description="`decline` from this score up; null: declines nothing")
    thresholds: ThresholdSource = Field(description="model (the version's operating point), override or default")


class ModelsResponse(BaseModel):
    registered_model: str
    experiment_id: str
    variants: list[VariantInfo]
    aliases: dict[str, str] = Field(description="The registry's aliases when last read")


class Status(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key"},
    404: {"model": ErrorBody, "description": "The variant or version asked for serves no model"},
    413: {"model": ErrorBody, "description": "Request body over the limit"},
    415: {"model": ErrorBody, "description": "Content-Type other than application/json"},
    422: {"model": ErrorBody, "description": "Invalid transaction or parameters"},
    429: {"model": ErrorBody, "description": "Rate limit exceeded; see Retry-After"},
    503: {"model": ErrorBody, "description": "Feature store or model unavailable; retry later"},
}


def _request_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@dataclass
class Runtime:
    """What the lifespan builds once and every request uses."""

    settings: ApiSettings
    engine: ScoringEngine
    builder: ServingBuilder
    reloader: Reloader
    features: FeatureClient
    keys: KeyChecker
    limiter: RateLimiter
    metrics: ApiMetrics
    batcher: AdaptiveBatcher[ScoreRequest, Scored] | None = None
    audit: AuditProducer | None = None
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
    )
    """The one thread the engine runs on, batched or not: the event loop never blocks on Redis or ONNX Runtime,
    and with batching off requests are scored one engine call at a time, the honest baseline."""

    def score_batch(
        self,
        requests: Sequence[ScoreRequest],
        *,
        variant: str | None = None,
        model: LoadedModel | None = None,
        thresholds: Thresholds | None = None,
    ) -> list[Scored | BaseException]:
        """One engine call; per request its live score (or why it failed). Shadows are audited, not returned."""
        result = self.engine.score(requests, source="api", variant=variant, model=model, thresholds=thresholds)
        self.metrics.batch_size.observe(len(requests))
        self.metrics.feature_latency.observe(result.feature_seconds)
        self.metrics.inference_latency.observe(result.inference_seconds)
        out: list[Scored | BaseException] = [InferenceError("no score produced")] * len(requests)
        for index, why in result.failed:
            out[index] = InferenceError(why)
        scored: dict[str, int] = {}
        for item in result.scored:
            if not item.shadow:
                out[item.index] = item
                scored[item.score.variant] = scored.get(item.score.variant, 0) + 1
        for variant_name, count in scored.items():  # one label lookup per variant and batch, not per score
            self.metrics.scored.labels(variant=variant_name).inc(count)
        if self.audit is not None:
            self.audit.send(result.scored, requests)  # never raises, never waits: failures are counted
        return out


def build_runtime(settings: ApiSettings) -> Runtime:
    scorer_settings = settings.scorer
    builder, serving = load_serving(scorer_settings)
    features = make_feature_client(scorer_settings.feature_client, scorer_settings.feast)
    engine = ScoringEngine(serving, features, attach_features=True)
    reloader = Reloader(
        builder, serving, ScorerMetrics(registry=_throwaway_registry()), scorer_settings.reload_interval_s
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        builder=builder,
        reloader=reloader,
        features=features,
        keys=KeyChecker(settings.active_keys()),
        limiter=RateLimiter(settings.rate_per_s, settings.burst),
        metrics=ApiMetrics(),
    )
    if settings.audit:
        registry = scorer_settings.topics.registry()
        runtime.audit = AuditProducer(
            scorer_settings.kafka,
            (registry.scores.name, registry.scores_shadow.name),
            runtime.metrics,
            timeout_s=settings.audit_timeout_s,
        )
    return runtime


def _throwaway_registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def require_key(request: Request, runtime: RuntimeDep) -> str:
    """The caller's key name; 401 without a valid key, 429 over its rate. (Async, like every dependency here:
    FastAPI runs a sync dependency on a worker thread, which costs more than the check itself.)"""
    return check_key(request.headers.get(KEY_HEADER), runtime)


KeyDep = Annotated[str, Depends(require_key)]


def _swap_if_reloaded(runtime: Runtime) -> None:
    serving = runtime.reloader.take()
    if serving is not None:
        runtime.engine.serving = serving


async def score_requests(
    rt: Runtime, requests: list[ScoreRequest], variant: str | None, version: str | None
) -> list[Scored]:
    """Live scores for `requests`: single requests with the stream's routing through the batcher (when on), the
    rest in one engine call on the engine thread."""
    _swap_if_reloaded(rt)
    loop = asyncio.get_running_loop()
    model: LoadedModel | None = None
    thresholds: Thresholds | None = None
    if version is not None:
        model, thresholds = await loop.run_in_executor(None, _load_version, rt, version)
    if variant == "auto":
        variant = None
    if rt.batcher is not None and len(requests) == 1 and variant is None and model is None:
        return [await rt.batcher.submit(requests[0])]
    results = await loop.run_in_executor(
        rt.executor, lambda: rt.score_batch(requests, variant=variant, model=model, thresholds=thresholds)
    )
    out: list[Scored] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        out.append(result)
    return out


def score_auto(rt: Runtime, tx: Transaction, traceparent: str | None) -> Awaitable[Scored]:
    """`POST /v1/score` with `variant=auto`, what the hot path (scorer.api.hotpath) asks for: with batching, the
    batcher's future itself (no coroutine frame in between)."""
    request = ScoreRequest(tx, time.time(), traceparent)
    if rt.batcher is not None:
        _swap_if_reloaded(rt)
        return rt.batcher.submit(request)
    return _only(score_requests(rt, [request], None, None))


async def _only(scored: Awaitable[list[Scored]]) -> Scored:
    return (await scored)[0]


def _content_type(request: Request) -> bytes | None:
    value = request.headers.get("content-type")
    return None if value is None else value.encode("latin-1")


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_json(error, detail), status_code=status, headers=headers, media_type=CONTENT_TYPE_JSON)


def create_app(settings: ApiSettings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The API app; its lifespan builds the runtime from `settings` (default: the environment) unless given."""
    settings = settings or ApiSettings()
    prepare_exposition()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            rt = runtime
        else:
            rt = await asyncio.get_running_loop().run_in_executor(None, build_runtime, settings)
        app.state.runtime = rt
        if settings.batching:
            rt.batcher = AdaptiveBatcher(
                rt.score_batch,
                max_batch_size=settings.max_batch_size,
                max_queue_delay_ms=settings.max_queue_delay_ms,
                executor=rt.executor,
                on_batch=lambda size, waited: rt.metrics.queue_latency.observe(waited),
            )
            rt.batcher.start()
        rt.reloader.start()
        if rt.audit is not None:
            rt.audit.start()
        # As in the stream scorer: what start-up loaded lives for the whole run; the collector need not rescan it.
        gc.collect()
        gc.freeze()
        logger.info("API ready: models %s, batching %s", rt.engine.serving.versions(), settings.batching)
        try:
            yield
        finally:
            rt.reloader.stop()
            if rt.batcher is not None:
                await rt.batcher.stop()
            if rt.audit is not None:
                rt.audit.close(10)
            rt.executor.shutdown(wait=True)
            rt.features.close()

    app = ApiApp(
        title="streamscore API",
        version=__version__,
        description="Score card transactions with the models and features the stream scorer uses. "
        f"Every route except /livez and /readyz needs an `{KEY_HEADER}` header.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(StreamscoreError)
    async def on_error(request: Request, exc: StreamscoreError) -> Response:
        status, body, headers = render_error(exc, getattr(request.app.state, "runtime", None))
        return Response(body, status_code=status, headers=headers, media_type=CONTENT_TYPE_JSON)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for detail in exc.errors():
            where = ".".join(str(p) for p in detail.get("loc", ())) or "<request>"
            parts.append(f"{where}: {detail.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(parts))

    app.add_middleware(ObserveMiddleware)
    window = settings.scorer.contract.window()
    app.hot_route = ScoreRoute(
        max_bytes=settings.max_body_bytes,
        score=score_auto,
        window=window,
        max_message_bytes=settings.scorer.max_message_bytes,
    )

    configured = ["auto"] + [v.name for v in settings.scorer.variants] + [s.name for s in settings.scorer.shadows]
    variant_query = Query(
        "auto",
        description="`auto` follows the stream's split; or name a configured variant (404 if it serves no model now)",
        json_schema_extra={"enum": configured},
    )
    version_query = Query(
        None, pattern=r"^[0-9]{1,9}$", description="Score with this registered version instead of a variant"
    )

    @app.post(
        "/v1/score",
        response_model=Score,
        responses=ERRORS,
        openapi_extra=_request_body(Transaction.model_json_schema()),
        summary="Score one transaction",
    )
    async def score_one(
        request: Request,
        rt: RuntimeDep,
        _key: KeyDep,
        variant: str = variant_query,
        version: str | None = version_query,
    ) -> Response:
        tx = parse_transaction(
            await request.body(),
            _content_type(request),
            window=window,
            max_bytes=settings.scorer.max_message_bytes,
        )
        traceparent = traceparent_or_none(request.headers.get("traceparent"))
        scored = await score_requests(rt, [ScoreRequest(tx, time.time(), traceparent)], variant, version)
        # The score's own JSON (the stream's bytes): FastAPI would re-validate it against `response_model` and
        # encode it again, ~20 µs a request for nothing; `response_model` still documents it.
        return Response(scored[0].score.to_json(), media_type=CONTENT_TYPE_JSON)

    @app.post(
        "/v1/score/batch",
        response_model=BatchResponse,
        responses=ERRORS,
        openapi_extra=_request_body(
            {
                "type": "object",
                "properties": {
                    "instances": {
                        "type": "array",
                        "items": Transaction.model_json_schema(),
                        "minItems": 1,
                        "maxItems": settings.max_instances,
                    }
                },
                "required": ["instances"],
                "additionalProperties": False,
            }
        ),
        summary="Score a batch of transactions",
    )
    async def score_batch(
        request: Request,
        rt: RuntimeDep,
        _key: KeyDep,
        variant: str = variant_query,
        version: str | None = version_query,
    ) -> Response:
        body = await request.body()
        try:
            check_content_type(_content_type(request))
            batch = BatchRequest.model_validate_json(body, context=window.at())
            reject_duplicate_keys(body, batch)
        except EventError as exc:
            raise ApiValidationError(exc.reason, exc.detail) from None
        except ValidationError as exc:
            raise ApiValidationError(classify(exc), describe(exc)) from None
        if not batch.instances:
            raise ApiValidationError("schema_invalid", "instances: at least one transaction is needed")
        if len(batch.instances) > settings.max_instances:
            raise ApiValidationError(
                "too_many_instances",
                f"instances: {len(batch.instances)} transactions, at most {settings.max_instances} per request",
            )
        now = time.time()
        traceparent = traceparent_or_none(request.headers.get("traceparent"))
        scored = await score_requests(
            rt, [ScoreRequest(t, now, traceparent) for t in batch.instances], variant, version
        )
        predictions = b'{"predictions":[' + b",".join(s.score.to_json() for s in scored) + b"]}"
        return Response(predictions, media_type=CONTENT_TYPE_JSON)

    @app.get("/v1/models", response_model=ModelsResponse, responses={401: ERRORS[401], 429: ERRORS[429]})
    async def models(rt: RuntimeDep, _key: KeyDep) -> ModelsResponse:
        _swap_if_reloaded(rt)
        serving: Serving = rt.engine.serving
        return ModelsResponse(
            registered_model=rt.builder.registry.name,
            experiment_id=serving.experiment_id,
            variants=[
                VariantInfo(
                    name=v.name,
                    kind="shadow" if v.shadow else "live",
                    alias=v.alias,
                    weight=v.weight,
                    model_name=serving.models[v.name].name,
                    model_version=serving.models[v.name].version,
                    providers=list(serving.models[v.name].providers),
                    loaded_at=serving.models[v.name].loaded_at,
                    review_threshold=serving.thresholds_of(v.name).review,
                    decline_threshold=serving.thresholds_of(v.name).decline,
                    thresholds=serving.thresholds_of(v.name).source,
                )
                for v in serving.variants
            ],
            aliases=rt.reloader.registry_aliases,
        )

    @app.get("/livez", response_model=Status, summary="The process is alive (no dependency checked)")
    async def livez() -> Status:
        return Status(status="ok")

    @app.get("/healthz", include_in_schema=False)
    async def healthz(rt: RuntimeDep) -> Response:
        """/readyz under the name the other services use (supervisors and the demo probe it)."""
        return await readyz(rt)

    @app.get(
        "/readyz",
        response_model=Status,
        responses={503: {"model": Status, "description": "A dependency is not ready"}},
        summary="Models loaded, feature store reachable, registry read recently by the model watcher",
    )
    async def readyz(rt: RuntimeDep) -> Response:
        checks = await asyncio.get_running_loop().run_in_executor(None, _readiness, rt)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={401: ERRORS[401], 429: ERRORS[429]},
        summary="Prometheus metrics",
    )
    async def metrics(request: Request, rt: RuntimeDep) -> Response:
        if settings.metrics_require_key:
            check_key(request.headers.get(KEY_HEADER), rt)
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if settings.demo_ui:
        from scorer.api.ui import mount_demo

        mount_demo(app)  # mounts on `app` itself (gradio returns the app it was given)
    return app


class ApiApp(FastAPI):
    """FastAPI, except that `POST /v1/score` without query parameters is answered by the hot route
    (scorer.api.hotpath) before FastAPI's own machinery runs; the FastAPI route documents it and answers it
    when a query string is given."""

    hot_route: ScoreRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot_route
        if hot is not None and hot.matches(scope):
            runtime: Runtime | None = getattr(self.state, "runtime", None)
            if runtime is not None:
                await hot(runtime, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class ObserveMiddleware:
    """Requests and latency by route and status (pure ASGI: Starlette's BaseHTTPMiddleware costs a task group
    and a memory stream per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            state = scope["app"].state if "app" in scope else None
            runtime = getattr(state, "runtime", None)
            if runtime is not None:
                path = getattr(scope.get("route"), "path", "other")
                runtime.metrics.requests.labels(route=path, status=str(status)).inc()
                runtime.metrics.latency.labels(route=path).observe(time.perf_counter() - started)


def _load_version(rt: Runtime, version: str) -> tuple[LoadedModel, Thresholds]:
    """The version's model and the thresholds it decides with, as a variant serving it would
    (`ServingBuilder.thresholds`: its own operating point, read now, or the override)."""
    from mlflow.exceptions import MlflowException

    try:
        return rt.builder.cache.get(version), rt.builder.thresholds(version)
    except MlflowException as exc:
        raise VersionNotFoundError(rt.builder.registry.name, version) from exc


class VersionNotFoundError(StreamscoreError):
    http_status = 404

    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"registered model {name!r} has no version {version}")


def _readiness(rt: Runtime) -> dict[str, str]:
    checks = {"models": "ok" if rt.engine.serving.models else "no model loaded"}
    try:
        rt.features.ping()
        checks["feature_store"] = "ok"
    except StreamscoreError as exc:
        checks["feature_store"] = str(exc)[:200]
    # From the model watcher's state, not a registry round trip: a probe every few seconds per replica would be
    # MLflow's busiest client, and a slow MLflow would fail probes of an API that serves fine from loaded models.
    age, bound = rt.reloader.registry_age_s(), rt.settings.registry_stale_after_s
    if age <= bound:
        checks["registry"] = "ok"
    else:
        why = rt.reloader.registry_error or "no answer"
        checks["registry"] = f"not read for {age:.0f} s (API_REGISTRY_STALE_AFTER_S={bound:g}): {why}"[:200]
    if rt.audit is not None:
        checks["audit"] = rt.audit.health()
    return checks
