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
