"""Running the API under uvicorn: `serve(settings)` is what `streamscore api` and `python -m scorer.api` call.

uvicorn's httptools protocol writes a response as two `transport.write` calls — the status line and headers when
the app sends `http.response.start`, the body when it sends `http.response.body` — and with an idle socket each
write is its own `send` system call and its own TCP segment. `CoalescingHttpToolsProtocol` hands uvicorn a
transport that gathers the writes made during one pass of the event loop and sends them as one: one system call
and one segment per small response (measured: docs/api.md, *Request batching*). Order, flow control (pause and
resume reading, write-buffer limits) and closing are the real transport's; `close()` sends what is gathered first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from scorer.api.settings import ApiSettings


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


def _protocol() -> Any:
    """uvicorn's httptools protocol with a coalescing transport; uvicorn's default choice without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is an optional dependency of uvicorn
        return "auto"

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            proxy: Any = CoalescingTransport(transport, asyncio.get_running_loop())
            super().connection_made(proxy)

    return CoalescingHttpToolsProtocol


def config(settings: ApiSettings, *, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration the API runs with (the integration tests run the same)."""
    from scorer.api.app import create_app

    # No access log: one line per request costs more than scoring it; /metrics counts requests by route and status.
    # No proxy-header rewriting: nothing here uses the client's address (keys identify callers), and uvicorn's
    # middleware for it would inspect every request's headers. No `server` header: it only advertises the software.
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        http=_protocol(),
    )


def serve(settings: ApiSettings) -> None:
    uvicorn.Server(config(settings)).run()
