"""Request body limit as pure ASGI: 413 for a body over the limit, announced (Content-Length) or not (chunked).

`read_body` reads a request's body up to the limit (the score route's fast path calls it directly);
`BodyLimitMiddleware` does it for every other route and replays the body to the app, so no route ever sees more."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamscore.errors import StreamscoreError


class BodyTooLargeError(StreamscoreError):
    http_status = 413
    reason = "body_too_large"

    def __init__(self, max_bytes: int, size: int | None = None) -> None:
        what = f"more than {max_bytes}" if size is None else f"{size}"
        super().__init__(f"request body of {what} bytes exceeds the limit of {max_bytes} bytes (API_MAX_BODY_BYTES)")


class BadContentLengthError(StreamscoreError):
    http_status = 400
    reason = "invalid_request"

    def __init__(self) -> None:
        super().__init__("Content-Length is not a number")


class ClientGoneError(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The whole body, at most `max_bytes`; BodyTooLargeError / BadContentLengthError / ClientGoneError otherwise.
    An announced length over the limit is refused before a byte of the body is read."""
    declared = None
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            declared = value
            break
    return await read_announced_body(receive, max_bytes, declared)


async def read_announced_body(receive: Receive, max_bytes: int, declared: bytes | None) -> bytes:
    """`read_body` for a caller that has already found the Content-Length header's value (`declared`)."""
    if declared is not None:
        try:
            announced = int(declared)
        except ValueError:
            raise BadContentLengthError() from None
        if announced > max_bytes:
            raise BodyTooLargeError(max_bytes, announced)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGoneError()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the common case: one message
        if len(body) > max_bytes:
            raise BodyTooLargeError(max_bytes)
        return body
    chunks = [body]
    size = len(body)
    while True:
        if size > max_bytes:
            raise BodyTooLargeError(max_bytes)
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError()
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if size > max_bytes:
        raise BodyTooLargeError(max_bytes)
    return b"".join(chunks)


def error_json(error: str, detail: str) -> bytes:
    """An error body, encoded exactly as Starlette's JSONResponse encodes it (the FastAPI routes' errors)."""
    return json.dumps(
        {"error": error, "detail": detail}, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


async def send_json(send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    """A complete JSON response: the headers Starlette's Response would send (content-length, content-type)."""
    start: list[Any] = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    start += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.max_bytes)
        except (BodyTooLargeError, BadContentLengthError) as exc:
            await send_json(send, exc.http_status, error_json(exc.reason, str(exc)))
            return
        except ClientGoneError:
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
