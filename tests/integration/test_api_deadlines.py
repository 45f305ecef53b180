"""Read deadlines of the API under uvicorn (scorer.api.server), as `streamscore api` runs it: a client trickling its
headers or its body is cut off with 408 and the connection closed, on the wire route and on the ASGI path, while
other clients are served; a keep-alive client pausing between requests is not affected; each cut is counted.

The slow clients send one byte every 0.2 s of a request far longer than the 1 s deadline allows, so the check is
"the server closed the connection before the request was complete", not a measured time."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from scorer.api.settings import ApiSettings
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry
from tests.integration.test_api import KEY, Server, _post, _raw_responses, api_settings, body
from tests.support.scoring import ScorerEnv, make_scorer_env

BYTE_EVERY_S = 0.2
DEADLINE_S = 1.0


@pytest.fixture
def scorer_env(
    tmp_path: Path,
    kafka: KafkaSettings,
    redis_settings: RedisSettings,
    topics: TopicRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> ScorerEnv:
    env = make_scorer_env(tmp_path, kafka, redis_settings, topics)
    for name, value in env.env.items():
        monkeypatch.setenv(name, value)
    return env


def deadlines() -> ApiSettings:
    return api_settings(header_timeout_s=DEADLINE_S, body_timeout_s=DEADLINE_S)


def trickle(port: int, head: bytes, slow: bytes) -> tuple[int, bytes]:
    """Send `head` at once, then `slow` one byte every BYTE_EVERY_S until the server answers or closes. Returns how
    many bytes of `slow` were sent and everything the server wrote before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sent = 0
        for byte in slow:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:  # an answer or the close: stop writing into a connection the server has left
                break
            sock.sendall(bytes([byte]))
            sent += 1
            time.sleep(BYTE_EVERY_S)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return sent, received


def status_and_headers(response: bytes) -> tuple[int, dict[str, str]]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    return int(status_line.split()[1]), {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}


def serve_meanwhile(url: str, stop: threading.Event, codes: list[int]) -> None:
    """A well-behaved client, scoring on its own connection while the slow one trickles."""
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            response = client.post("/v1/score", json=body(100 + i), headers={"X-API-Key": KEY})
            codes.append(response.status_code)
            i += 1
            time.sleep(0.05)


def read_timeouts(url: str) -> dict[str, float]:
    metrics = httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}).text
    return {
        line.split('phase="')[1].split('"')[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("streamscore_api_read_timeouts_total{")
    }


def test_slow_headers_and_bodies_are_cut_off_while_others_are_served(scorer_env: ScorerEnv) -> None:
    h = {"X-API-Key": KEY, "Content-Type": "application/json"}
    payload = json.dumps(body(1)).encode()
    with Server(deadlines()) as url:
        port = int(url.rsplit(":", 1)[1])
        stop, codes = threading.Event(), list[int]()
        normal = threading.Thread(target=serve_meanwhile, args=(url, stop, codes))
        normal.start()
        try:
            cases: list[tuple[str, bytes, bytes]] = []
            # Headers: 120 bytes of a request head at 5 bytes/s would take 24 s.
            head = _post(payload, h).split(b"\r\n\r\n", 1)[0] + b"\r\nX-Padding: " + b"p" * 60 + b"\r\n\r\n"
            cases.append(("header", b"", head[:120]))
            # Bodies: on the wire route (a plain POST /v1/score with a Content-Length) and on the ASGI path
            # (FastAPI answers it with a query string); the body would take len(payload) / 5 s.
            cases.append(("wire body", _post(payload, h)[: -len(payload)], payload))
            request = _post(payload, h, "/v1/score?variant=auto")
            cases.append(("ASGI body", request[: -len(payload)], payload))
            for what, fast, slow in cases:
                sent, received = trickle(port, fast, slow)
                assert sent < len(slow), f"{what}: the server kept the connection until the request was complete"
                status, headers = status_and_headers(received)
                assert (status, headers["connection"]) == (408, "close"), (what, received)
        finally:
            stop.set()
            normal.join(30)
        # A connection that never sends a byte is closed too, without an answer.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            assert idle.recv(1) == b""
        counted = read_timeouts(url)
    assert codes and set(codes) == {200}, codes  # served all along
    assert counted == {"header": 2.0, "body": 2.0}


def test_a_keep_alive_client_pausing_between_requests_keeps_its_connection(scorer_env: ScorerEnv) -> None:
    """The deadlines count from a request's first byte: pauses longer than them between requests fall under
    uvicorn's keep-alive timeout (5 s) instead."""
    h = {"X-API-Key": KEY, "Content-Type": "application/json"}
    with Server(deadlines()) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            answers: list[Any] = []
            for i in range(3):
                sock.sendall(_post(json.dumps(body(200 + i)).encode(), h))
                answers += _raw_responses(sock, 1)  # fails if the server closed the connection
                time.sleep(DEADLINE_S * 1.5)
            sock.sendall(_post(json.dumps(body(203)).encode(), h))
            answers += _raw_responses(sock, 1)
        counted = read_timeouts(url)
    assert [status for status, _, _ in answers] == [200] * 4
    assert all("connection" not in headers for _, headers, _ in answers)
    assert counted == {"header": 0.0, "body": 0.0}, "exported at 0 from the start, and nothing cut"
