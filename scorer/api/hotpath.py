"""The API's hot route, `POST /v1/score` without query parameters, answered in pure ASGI before FastAPI runs.

FastAPI's request machinery — its own wrappers, Starlette's middleware stack, routing, dependency resolution,
`Request` objects, our two middlewares — cost several times uvicorn's own per-request work, and request batching
cannot share any of it (docs/api.md, *Request batching*, has the figures). This route does the FastAPI route's
steps in the same order with the same functions: body limit (`read_announced_body`), key and rate (`check_key`), the
stream's contract validation (`parse_transaction`), the engine through the batcher, the score's own JSON, the same
error bodies (`render_error`) and metrics — and nothing else. Every other request, `/v1/score` with `variant` or
`version` included, goes to FastAPI, which also documents this route in its OpenAPI schema; a test holds both
answers byte for byte equal over valid and invalid requests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from scorer.api.limits import ClientGoneError, error_json, read_announced_body, send_json
from scorer.api.security import KEY_HEADER, RateLimitedError, UnauthorizedError
from streamscore.contracts import (
    DEFAULT_WINDOW,
    MAX_MESSAGE_BYTES,
    DeadLetterReason,
    EventTimeWindow,
    Transaction,
    is_traceparent,
    validate_transaction,
)
from streamscore.errors import EventError, StreamscoreError

if TYPE_CHECKING:
    from scorer.api.app import Runtime
    from scorer.engine import Scored

ROUTE = "/v1/score"
CLIENT_GONE = 499
"""Status recorded in the metrics for a client that disconnected before its body arrived (nginx's convention;
nothing is sent)."""

_KEY = KEY_HEADER.lower().encode()

ScoreOne = Callable[["Runtime", Transaction, "str | None"], Awaitable["Scored"]]
"""Returns the awaitable of the request's live score (scorer.api.app.score_auto)."""


STATUS_OF_REASON: dict[str, int] = {
    DeadLetterReason.OVERSIZE: 413,
    DeadLetterReason.UNSUPPORTED_CONTENT_TYPE: 415,
}
"""The HTTP status of a contract violation whose reason has its own (every other reason is a 422)."""


class ApiValidationError(StreamscoreError):
    http_status = 422

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.http_status = STATUS_OF_REASON.get(reason, 422)


def parse_transaction(
    body: bytes,
    content_type: bytes | None = None,
    *,
    window: EventTimeWindow = DEFAULT_WINDOW,
    max_bytes: int = MAX_MESSAGE_BYTES,
    now_s: float | None = None,
) -> Transaction:
    """The stream's own contract check, on the same bytes with the same content-type rule
    (`validate_transaction`): an event the scorer would dead-letter is refused with the same reason — 413
    `oversize`, 415 `unsupported_content_type`, else 422. `window` and `max_bytes`: the scorer's settings; `now_s`:
    the receiving clock (default: now)."""
    try:
        return validate_transaction(body, content_type, max_bytes=max_bytes, window=window, now_s=now_s)
    except EventError as exc:
        raise ApiValidationError(exc.reason, exc.detail) from None


def check_key(presented: str | None, runtime: Runtime) -> str:
    """The caller's key name; UnauthorizedError without a valid key, RateLimitedError over its rate."""
    name = runtime.keys.name_of(presented)
    runtime.limiter.take(name)
    return name


def traceparent_or_none(value: str | None) -> str | None:
    return value if value and is_traceparent(value) else None


def render_error(exc: StreamscoreError, runtime: Runtime | None) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and extra headers of the answer to `exc` (5xx become 503: retry later), counted as rejected."""
    error = getattr(exc, "reason", None) or {
        401: "unauthorized",
        429: "rate_limited",
        503: "unavailable",
    }.get(exc.http_status, type(exc).__name__)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = KEY_HEADER
    if runtime is not None:
        runtime.metrics.rejected.labels(reason=str(error)).inc()
    status = exc.http_status if exc.http_status < 500 else 503
    return status, error_json(str(error), str(exc)), headers


def scan_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, bytes | None, bytes | None]:
    """The API key, traceparent, Content-Length and Content-Type of a request, in one pass over its headers (names
    lower-case, as ASGI servers give them; the first of a repeated header counts, as in Starlette)."""
    presented = traceparent = length = content_type = None
    for name, value in headers:
        if name == _KEY:
            presented = presented or value.decode("latin-1")
        elif name == b"content-length":
            length = length or value
        elif name == b"content-type":
            content_type = content_type or value
        elif name == b"traceparent":
            traceparent = traceparent or value.decode("latin-1")
    return presented, traceparent, length, content_type


class ScoreRoute:
    """Answers `POST /v1/score` without a query string; `ApiApp.__call__` asks `matches` before anything else."""

    def __init__(
        self,
        *,
        max_bytes: int,
        score: ScoreOne,
        window: EventTimeWindow = DEFAULT_WINDOW,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.max_bytes = max_bytes
        self.score = score
        self.window = window
        """The scorer's event-time window and record size limit (SCORER_MAX_MESSAGE_BYTES): same bytes, same
        verdict as the stream."""
        self.max_message_bytes = max_message_bytes
        self._metrics: Any = None
        self._children: dict[int, Any] = {}

    @staticmethod
    def matches(scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["path"] == ROUTE
            and scope["method"] == "POST"
            and not scope["query_string"]
            and not scope.get("root_path")
        )

    async def __call__(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500
        try:
            status = await self._answer(runtime, scope, receive, send)
        finally:
            self.count(runtime, status, time.perf_counter() - started)

    async def _answer(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> int:
        presented, traceparent, length, content_type = scan_headers(scope["headers"])
        try:
            # The order of the FastAPI route: body limit (middleware), key and rate (dependency), then the body.
            body = await read_announced_body(receive, self.max_bytes, length)
            scored = await self.submit(runtime, presented, traceparent, body, content_type)
        except ClientGoneError:
            return CLIENT_GONE
        except StreamscoreError as exc:
            status, payload, extra = render_error(exc, runtime)
            await send_json(send, status, payload, extra)
            return status
        await send_json(send, 200, scored.score.to_json())
        return 200

    def submit(
        self,
        runtime: Runtime,
        presented: str | None,
        traceparent: str | None,
        body: bytes,
        content_type: bytes | None = None,
    ) -> Awaitable[Scored]:
        """The steps after the body limit, for this route and the wire route (scorer.api.server): key and rate,
        the contract check, then the awaitable of the live score. Raises StreamscoreError for a refused request."""
        check_key(presented, runtime)
        tx = parse_transaction(body, content_type, window=self.window, max_bytes=self.max_message_bytes)
        return self.score(runtime, tx, traceparent_or_none(traceparent))

    def count(self, runtime: Runtime, status: int, seconds: float) -> None:
        """The same series as ObserveMiddleware (route, status), with the label lookups done once."""
        metrics = runtime.metrics
        if metrics is not self._metrics:
            self._metrics, self._children = metrics, {}
        children = self._children.get(status)
        if children is None:
            children = self._children[status] = (
                metrics.requests.labels(route=ROUTE, status=str(status)),
                metrics.latency.labels(route=ROUTE),
            )
        children[0].inc()
        children[1].observe(seconds)
