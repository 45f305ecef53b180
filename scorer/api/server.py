"""Running the API under uvicorn: `serve(settings)` is what `streamscore api` and `python -m scorer.api` call.

uvicorn's httptools protocol writes a response as two `transport.write` calls — the status line and headers when
the app sends `http.response.start`, the body when it sends `http.response.body` — and with an idle socket each
write is its own `send` system call and its own TCP segment. `CoalescingHttpToolsProtocol` hands uvicorn a
transport that gathers the writes made during one pass of the event loop and sends them as one: one system call
and one segment per small response (measured: docs/api.md, *Request batching*). Order, flow control (pause and
resume reading, write-buffer limits) and closing are the real transport's; `close()` sends what is gathered first.

The same protocol holds every connection to **read deadlines** (docs/api.md, *Slow clients*): a request's head must
arrive within `API_HEADER_TIMEOUT_S` of its first byte (the first request's: of the connection's start) and its
body within `API_BODY_TIMEOUT_S` of the head's end. uvicorn's `timeout_keep_alive` only closes a connection that is
idle after a response; a client trickling its headers a byte at a time kept one open for as long as it liked. The
deadlines live in the parser callbacks, so they hold for the wire route and the ASGI path alike, and cost one
timer per connection, not one per request: the timer fires at the deadline it was armed for, and a request that
finished in time merely moved the deadline (a float), so the timer re-arms itself for the current one or lapses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from scorer.api.hotpath import CLIENT_GONE, ScoreRoute, render_error, scan_headers
from scorer.api.settings import ApiSettings
from streamscore.errors import StreamscoreError
from streamscore.failures import env_name
from streamscore.ports import ensure_free

if TYPE_CHECKING:
    from scorer.api.app import Runtime
    from scorer.engine import Scored

log = logging.getLogger(__name__)


class CoalescingTransport:
    """A transport proxy: `write`s made in one loop iteration go to the real transport as one `write`."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class WireRoute:
    """`POST /v1/score` answered on the connection itself, without an ASGI request cycle.

    uvicorn runs every request as an ASGI cycle: a task, an event, message dicts for the body and for each half
    of the response, and a header check per response header; for this route that costs about as much as the
    route's own work (docs/api.md, *Request batching*, has the figures). A request the wire route takes is
    answered with the hot route's own steps (`ScoreRoute.submit`, `render_error`, `ScoreRoute.count`), from
    parser callbacks and the score's future callback; the response bytes are the ones uvicorn would write for
    the ASGI answer (status line, uvicorn's default headers, Starlette's content-length and content-type, the
    error's extra headers, `connection: close` when the connection ends), and completing it goes through
    uvicorn's own `on_response` (keep-alive timer, pipelined requests, read flow control).

    It takes only the plain case: the hot route's requests (`ScoreRoute.matches`) with a valid Content-Length
    within both the body limit and uvicorn's read buffer, no Transfer-Encoding and no `Expect: 100-continue`,
    once the app's lifespan has built its runtime. Everything else — chunked or oversize bodies, other routes,
    uvicorn's concurrency limit — takes the ASGI path exactly as before."""

    __slots__ = ("api", "max_bytes", "route")

    def __init__(self, api: Any, route: ScoreRoute, max_bytes: int) -> None:
        self.api = api
        self.route = route
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, app: Any) -> WireRoute | None:
        from scorer.api.app import ApiApp

        route = getattr(app, "hot_route", None) if isinstance(app, ApiApp) else None
        if route is None:
            return None
        return cls(app, route, min(route.max_bytes, HIGH_WATER_LIMIT))

    def runtime_for(self, scope: dict[str, Any], waiting_for_100_continue: bool) -> Runtime | None:
        """The runtime to answer this request with, or None when the ASGI path must answer it."""
        if waiting_for_100_continue or not ScoreRoute.matches(scope):
            return None
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if length is not None:
                    return None
                length = value
            elif name == b"transfer-encoding":
                return None
        if length is None or not length.isdigit() or int(length) > self.max_bytes:
            return None
        return getattr(self.api.state, "runtime", None)


def _protocol(settings: ApiSettings | None = None) -> Any:
    """uvicorn's httptools protocol with a coalescing transport, read deadlines (the settings', else their
    defaults) and the wire route; uvicorn's default choice without httptools (a dependency of the project: then
    no read deadlines either)."""
    fields = ApiSettings.model_fields
    header_s: float = settings.header_timeout_s if settings else fields["header_timeout_s"].default
    body_s: float = settings.body_timeout_s if settings else fields["body_timeout_s"].default
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:  # httptools is an optional dependency of uvicorn
        log.warning("httptools is not installed: uvicorn's h11 protocol runs the API, without read deadlines")
        return "auto"

    class ApiHttpProtocol(HttpToolsProtocol):
        _wire: WireRoute | None = None
        _waiting: tuple[Any, Runtime] | None = None
        """A wire request whose body is still arriving: (its cycle, the runtime)."""
        header_timeout_s = header_s
        body_timeout_s = body_s
        _deadline: float | None = None
        """Loop time by which the part of the request being read (`_reading`) must have arrived; None while the
        connection waits for nothing from the client (idle between requests: uvicorn's keep-alive timeout; or
        the server is behind with a pipelined request)."""
        _reading = "header"
        """"header" or "body": what the deadline is for."""
        _began = False
        """Whether a byte of the request under the header deadline has arrived (then it is answered with 408)."""
        _timer: asyncio.TimerHandle | None = None
        _timer_at = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            proxy: Any = CoalescingTransport(transport, asyncio.get_running_loop())
            super().connection_made(proxy)
            self._wire = WireRoute.of(self.config.app)
            # The first request's head counts from the connection's start: a connection that sends nothing
            # is closed too (uvicorn arms its keep-alive timeout only after a response).
            self._read_by("header", self.loop.time() + self.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            waiting, self._waiting = self._waiting, None
            self._deadline = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)
            if waiting is not None and self._wire is not None:  # gone before its body arrived, counted as the
                self._wire.route.count(waiting[1], CLIENT_GONE, 0.0)  # ASGI route counts it

        # --- read deadlines -------------------------------------------------------------------------------

        def _read_by(self, reading: str, deadline: float) -> None:
            self._reading = reading
            self._deadline = deadline
            timer = self._timer
            if timer is None or self._timer_at > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer_at = deadline
                self._timer = self.loop.call_at(deadline, self._on_deadline)

        def _on_deadline(self) -> None:
            self._timer = None
            deadline = self._deadline
            if deadline is None or self.transport.is_closing():
                return
            if self.loop.time() < deadline - 0.001:  # the request it was armed for finished: wait for this one
                self._timer_at = deadline
                self._timer = self.loop.call_at(deadline, self._on_deadline)
                return
            self._expire()

        def _expire(self) -> None:
            reading, cycle = self._reading, self.cycle
            self._deadline = None
            runtime = getattr(getattr(self.config.app, "state", None), "runtime", None)
            if runtime is not None:
                runtime.metrics.read_timeouts.labels(phase=reading).inc()
            limit = self.header_timeout_s if reading == "header" else self.body_timeout_s
            log.info(
                "closing the connection from %s: request %s not received within %g s",
                self.client,
                reading,
                limit,
            )
            # 408 only where it is the next response on the connection (never ahead of a pipelined request's
            # answer), and only to a request that began: a connection that never sent a byte is just closed, as
            # nginx does, since a client may have sent a request the moment it is closed.
            if reading == "body":
                answer = not self.pipeline and cycle is not None and not cycle.response_started
            else:
                answer = self._began and not self.pipeline and (cycle is None or cycle.response_complete)
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # nothing more is written for it; its app sees http.disconnect
                cycle.keep_alive = False
            if answer:
                headers = b"".join(b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers)
                self.transport.write(STATUS_LINE[408] + headers + TIMEOUT_HEADERS + b"\r\n" + TIMEOUT_BODY)
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._began = True
            if self._deadline is None:  # not the first request, whose head counts from the connection's start
                self._read_by("header", self.loop.time() + self.header_timeout_s)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if self.pipeline and self.pipeline[0][0] is self.cycle:
                # Queued behind the request being answered, with reading paused: the server is behind, not the
                # client. Its body deadline starts when uvicorn starts it (`_start_asgi_task`).
                self._deadline = None
            else:
                self._read_by("body", self.loop.time() + self.body_timeout_s)

        def handle_websocket_upgrade(self) -> None:
            self._deadline = None  # the connection belongs to the WebSocket protocol from here on
            super().handle_websocket_upgrade()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if self._deadline is None and cycle is self.cycle and cycle.more_body and not self.transport.is_closing():
                self._read_by("body", self.loop.time() + self.body_timeout_s)  # a queued request, started now
            wire = self._wire
            runtime = None
            if wire is not None and app is self.app:  # not uvicorn's 503 app for its concurrency limit
                runtime = wire.runtime_for(cycle.scope, cycle.waiting_for_100_continue)
            if runtime is None:
                super()._start_asgi_task(cycle, app)
            elif cycle.more_body:
                self._waiting = (cycle, runtime)  # answered by on_message_complete
            else:  # a pipelined request, started once the one before it was answered: its body is all here
                self._answer(cycle, runtime)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._deadline = None
            self._began = False
            waiting = self._waiting
            if waiting is not None and waiting[0] is self.cycle and not self.cycle.more_body:
                self._waiting = None
                self._answer(*waiting)

        def _answer(self, cycle: Any, runtime: Runtime) -> None:
            assert self._wire is not None
            route = self._wire.route
            started = time.perf_counter()
            presented, traceparent, _, content_type = scan_headers(cycle.scope["headers"])
            try:
                pending = route.submit(runtime, presented, traceparent, bytes(cycle.body), content_type)
            except StreamscoreError as exc:
                self._respond(cycle, runtime, started, *render_error(exc, runtime))
                return
            except Exception as exc:  # noqa: BLE001 - answered as uvicorn answers an app's exception
                self._fail(cycle, runtime, started, exc)
                return
            future = pending if isinstance(pending, asyncio.Future) else asyncio.ensure_future(pending)
            future.add_done_callback(functools.partial(self._scored, cycle, runtime, started))

        def _scored(self, cycle: Any, runtime: Runtime, started: float, future: asyncio.Future[Scored]) -> None:
            error = future.exception() if not future.cancelled() else asyncio.CancelledError()
            if error is None:
                self._respond(cycle, runtime, started, 200, future.result().score.to_json(), None)
            elif isinstance(error, StreamscoreError):
                self._respond(cycle, runtime, started, *render_error(error, runtime))
            else:
                self._fail(cycle, runtime, started, error)

        def _fail(self, cycle: Any, runtime: Runtime, started: float, error: BaseException) -> None:
            self.logger.error("Exception in ASGI application\n", exc_info=error)
            assert self._wire is not None
            self._wire.route.count(runtime, 500, time.perf_counter() - started)
            if not cycle.disconnected:
                cycle.keep_alive = False
                self._write(cycle, STATUS_LINE[500], INTERNAL_ERROR_HEADERS, INTERNAL_ERROR)

        def _respond(
            self,
            cycle: Any,
            runtime: Runtime,
            started: float,
            status: int,
            body: bytes,
            extra: dict[str, str] | None,
        ) -> None:
            assert self._wire is not None
            self._wire.route.count(runtime, status, time.perf_counter() - started)
            if cycle.disconnected:  # as uvicorn's `send` into a closed connection: nothing is written
                return
            # Starlette's headers for a JSON body (scorer.api.limits.send_json), lower-cased as uvicorn writes them.
            headers = b"content-length: %d\r\ncontent-type: application/json\r\n" % len(body)
            if extra:
                headers += b"".join(
                    b"%s: %s\r\n" % (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in extra.items()
                )
            self._write(cycle, STATUS_LINE[status], headers, body)

        def _write(self, cycle: Any, status_line: bytes, headers: bytes, body: bytes) -> None:
            if self.flow.write_paused:  # the client is not reading: wait, as uvicorn's `send` does
                waiting = asyncio.ensure_future(self.flow.drain())
                waiting.add_done_callback(lambda _: self._write(cycle, status_line, headers, body))
                return
            if cycle.disconnected:
                return
            default = b"".join(b"%s: %s\r\n" % (name, value) for name, value in cycle.default_headers)
            close = b"" if cycle.keep_alive else b"connection: close\r\n"
            self.transport.write(b"".join((status_line, default, headers, close, b"\r\n", body)))
            # What uvicorn's `send` does once a response's last body part is written.
            cycle.response_started = cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                self.transport.close()
            on_response, cycle.on_response = cycle.on_response, _nothing
            on_response()

    return ApiHttpProtocol


INTERNAL_ERROR = b"Internal Server Error"
INTERNAL_ERROR_HEADERS = b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n"
"""uvicorn's answer when the app fails before responding (its `send_500_response`), `connection: close` added."""
TIMEOUT_BODY = b"Request Timeout"
TIMEOUT_HEADERS = b"content-type: text/plain; charset=utf-8\r\ncontent-length: 15\r\nconnection: close\r\n"
"""A read deadline's answer, in the form of uvicorn's own 400 for an unparsable request."""


def _nothing() -> None:
    return None


def config(settings: ApiSettings, *, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration the API runs with (the integration tests run the same)."""
    from scorer.api.app import create_app

    # No access log: one line per request costs more than scoring it; /metrics counts requests by route and status.
    # No log config of uvicorn's own: its lines go through the handler the entry point configured (LOG_FORMAT).
    # No proxy-header rewriting: nothing here uses the client's address (keys identify callers), and uvicorn's
    # middleware for it would inspect every request's headers. No `server` header: it only advertises the software.
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        http=_protocol(settings),
    )


def serve(settings: ApiSettings) -> None:
    # uvicorn reports a taken port in a log line and exits the process: check first, to name the setting.
    ensure_free(settings.port, env_name(ApiSettings, "port"), settings.host)
    uvicorn.Server(config(settings)).run()
