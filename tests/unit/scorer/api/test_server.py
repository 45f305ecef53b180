"""The coalescing transport under uvicorn's protocol: the writes of one loop iteration leave as one."""

from __future__ import annotations

import asyncio
from typing import Any

from scorer.api.server import CoalescingTransport, _protocol


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 42


def test_writes_of_one_iteration_are_sent_as_one_in_order() -> None:
    async def scenario() -> Recorder:
        real = Recorder()
        proxy: Any = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        proxy.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        proxy.write(b"{}")
        assert real.writes == []  # nothing sent until the loop's next pass
        await asyncio.sleep(0)
        proxy.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
        await asyncio.sleep(0)
        assert proxy.get_write_buffer_size() == 42  # everything else is the real transport's
        return real

    real = asyncio.run(scenario())
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"abc"]


def test_close_sends_what_is_gathered_first_abort_drops_it() -> None:
    async def scenario() -> tuple[Recorder, Recorder]:
        loop = asyncio.get_running_loop()
        closed, aborted = Recorder(), Recorder()
        proxy: Any = CoalescingTransport(closed, loop)  # type: ignore[arg-type]
        proxy.write(b"last words")
        proxy.close()
        other: Any = CoalescingTransport(aborted, loop)  # type: ignore[arg-type]
        other.write(b"never sent")
        other.abort()
        await asyncio.sleep(0)  # the scheduled flushes find nothing (or a closed transport)
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed.writes == [b"last words"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


def test_uvicorn_gets_the_httptools_protocol_with_the_coalescing_transport() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    protocol = _protocol()
    assert isinstance(protocol, type) and issubclass(protocol, HttpToolsProtocol)


def test_the_wire_route_takes_only_plain_score_requests() -> None:
    """Anything but a plain POST /v1/score with one valid Content-Length within the limit goes to the ASGI path."""
    from types import SimpleNamespace

    from scorer.api.hotpath import ScoreRoute
    from scorer.api.server import WireRoute

    runtime = object()
    api = SimpleNamespace(state=SimpleNamespace(runtime=runtime))
    wire = WireRoute(api, ScoreRoute(max_bytes=1000, score=lambda *_: None), max_bytes=1000)  # type: ignore[arg-type]

    def scope(**changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "type": "http",
            "path": "/v1/score",
            "method": "POST",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"300")],
        }
        return {**base, **changes}

    assert wire.runtime_for(scope(), waiting_for_100_continue=False) is runtime
    assert wire.runtime_for(scope(), waiting_for_100_continue=True) is None
    refused = [
        scope(query_string=b"variant=auto"),
        scope(method="GET"),
        scope(path="/v1/score/batch"),
        scope(root_path="/api"),
        scope(headers=[]),  # no Content-Length: chunked
        scope(headers=[(b"content-length", b"300"), (b"transfer-encoding", b"chunked")]),
        scope(headers=[(b"content-length", b"300"), (b"content-length", b"300")]),
        scope(headers=[(b"content-length", b"1001")]),  # over the limit: the ASGI route's 413
        scope(headers=[(b"content-length", b"-1")]),
    ]
    for case in refused:
        assert wire.runtime_for(case, waiting_for_100_continue=False) is None, case
    api.state = SimpleNamespace()  # before the lifespan has built the runtime
    assert wire.runtime_for(scope(), waiting_for_100_continue=False) is None
    assert WireRoute.of(object()) is None  # not our app: uvicorn's ASGI path only
