"""The ad-hoc API against the real Redis, registry and broker: the same scores as the stream, keys, rate
limits, body limits, strict validation, batching, audit to Kafka, and the Gradio page in headless Chromium."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from feature_repo.settings import FeastSettings
from feature_repo.store import apply, open_store, push_realtime
from scorer.api.app import create_app
from scorer.api.hotpath import ScoreRoute
from scorer.api.security import digest
from scorer.api.server import config
from scorer.api.settings import ApiKey, ApiSettings
from streamscore.contracts import DEFAULT_WINDOW, Score
from streamscore.features import RealtimeSnapshot
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.thresholds import DEFAULT_THRESHOLDS, Thresholds, threshold_tags
from streamscore.topics import TopicRegistry
from tests.support.scoring import OutputReader, Record, ScorerEnv, free_port, make_scorer_env, produce, valid

CHAMPION_THRESHOLDS = Thresholds(0.45, 0.55)
CHAMPION_OPERATING_POINT = threshold_tags(CHAMPION_THRESHOLDS.review, CHAMPION_THRESHOLDS.decline, "test")
KEY, OTHER, REVOKED = "k-" + uuid.uuid4().hex, "o-" + uuid.uuid4().hex, "r-" + uuid.uuid4().hex


@pytest.fixture
def scorer_env(
    tmp_path: Path,
    kafka: KafkaSettings,
    redis_settings: RedisSettings,
    topics: TopicRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> ScorerEnv:
    # The champion has its own operating point, the challenger none (the defaults): every score must say which.
    env = make_scorer_env(tmp_path, kafka, redis_settings, topics, champion_tags=CHAMPION_OPERATING_POINT)
    for name, value in env.env.items():
        monkeypatch.setenv(name, value)
    return env


def api_settings(**overrides: Any) -> ApiSettings:
    keys = [
        ApiKey(name="investigator", sha256=digest(KEY)),
        ApiKey(name="other-team", sha256=digest(OTHER)),
        ApiKey(name="former", sha256=digest(REVOKED), revoked=True),
    ]
    values: dict[str, Any] = {"keys": keys, "demo_ui": False, "rate_per_s": 1000.0, "burst": 1000}
    values.update(overrides)
    return ApiSettings(**values)


def body(i: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(valid(i).to_json())
    return data


@pytest.fixture
def client(scorer_env: ScorerEnv) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings())) as c:
        yield c


def push_features(env: ScorerEnv, accounts: list[str]) -> None:
    settings = FeastSettings()  # from the test's environment: its project and Redis
    store = open_store(settings)
    apply(store, settings.data_dir)
    now = time.time()
    rows = [
        (
            a,
            RealtimeSnapshot(
                1 + i % 4, 3 + i % 7, 10 + i, 25.0 * (i % 5), 90.0, 400.0 + i, 2, now - 30 - i, ("dev-1",), ("DE",)
            ),
        )
        for i, a in enumerate(accounts)
    ]
    push_realtime(store, rows)


def test_the_api_gives_the_scores_the_stream_gave(scorer_env: ScorerEnv) -> None:
    txs = [valid(i) for i in range(400)]
    accounts = sorted({t.account_id for t in txs})
    push_features(scorer_env, accounts[: len(accounts) // 2])  # half the accounts have real-time features
    produce(
        scorer_env.kafka,
        scorer_env.topics.transactions.name,
        [Record(t.account_id.encode(), t.to_json(), [("content-type", b"application/json")]) for t in txs],
    )
    reader = OutputReader(scorer_env.kafka, [scorer_env.topics.scores.name])
    scorer = scorer_env.process().start()
    try:
        reader.wait_until(lambda seen: len(seen) >= len(txs), 120, "the stream's scores")
        assert scorer.terminate() == 0, scorer.tail()
    finally:
        scorer.stop()
    stream = {s.event_id: s for s in (Score.model_validate_json(o.value or b"") for o in reader.seen)}

    with TestClient(create_app(api_settings(audit=True))) as c:
        api: dict[str, Score] = {}
        for start in (0, 200):
            response = c.post(
                "/v1/score/batch",
                json={"instances": [body(i) for i in range(start, start + 200)]},
                headers={"X-API-Key": KEY},
            )
            assert response.status_code == 200, response.text
            for p in response.json()["predictions"]:
                api[p["event_id"]] = Score.model_validate(p, strict=False)
        for i in range(0, 400, 40):  # and one at a time, through the batcher
            response = c.post("/v1/score", json=body(i), headers={"X-API-Key": KEY})
            assert response.status_code == 200, response.text
            single = Score.model_validate(response.json(), strict=False)
            assert single.score == pytest.approx(api[single.event_id].score, abs=1e-6)
    assert set(api) == set(stream)
    statuses = set()
    for event_id, s in stream.items():
        a = api[event_id]
        assert a.score == pytest.approx(s.score, abs=1e-6), event_id
        assert (a.variant, a.model_version, a.decision, a.feature_status, a.experiment_id) == (
            s.variant,
            s.model_version,
            s.decision,
            s.feature_status,
            s.experiment_id,
        )
        assert a.features == pytest.approx(s.features)
        assert (a.source, s.source) == ("api", "stream")
        # Both transports decide with the variant's own version's thresholds, and say which.
        applied = CHAMPION_THRESHOLDS if s.model_version == "1" else DEFAULT_THRESHOLDS
        for scored in (a, s):
            assert (scored.review_threshold, scored.decline_threshold, scored.thresholds) == (
                applied.review,
                applied.decline,
                applied.source,
            )
            assert scored.decision == applied.decide(scored.score)
        statuses.add(s.feature_status)
    assert {"missing", "default"} <= statuses  # features really came from Redis for half of the accounts
    # Audit: the API's predictions are on `scores`, marked as coming from the API.
    reader.poll_for(3)
    audited = [Score.model_validate_json(o.value or b"") for o in reader.seen if b'"source":"api"' in (o.value or b"")]
    reader.close()
    assert len({s.event_id for s in audited}) == 400


def test_keys_protect_every_route_but_health_and_are_compared_by_digest(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").json()["status"] == "ok"
    for headers in ({}, {"X-API-Key": "nope"}, {"X-API-Key": REVOKED}):
        for method, path, payload in (
            ("post", "/v1/score", body(1)),
            ("post", "/v1/score/batch", {"instances": [body(1)]}),
            ("get", "/v1/models", None),
            ("get", "/metrics", None),
        ):
            response = client.request(method, path, json=payload, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert "X-API-Key" in response.json()["detail"]
    ok = client.post("/v1/score", json=body(1), headers={"X-API-Key": KEY})
    assert ok.status_code == 200 and ok.json()["model_version"] in {"1", "2"}
    models = client.get("/v1/models", headers={"X-API-Key": OTHER}).json()
    assert {v["name"]: v["model_version"] for v in models["variants"]} == {
        "champion": "1",
        "challenger": "2",
        "shadow": "2",
    }
    assert models["aliases"] == {"champion": "1", "challenger": "2"}
    metrics = client.get("/metrics", headers={"X-API-Key": KEY})
    assert metrics.status_code == 200 and "streamscore_api_requests_total" in metrics.text


def test_explicit_variant_and_version(client: TestClient) -> None:
    h = {"X-API-Key": KEY}
    challenger = client.post(
        "/v1/score/batch?variant=challenger", json={"instances": [body(i) for i in range(20)]}, headers=h
    )
    assert {(p["variant"], p["model_version"]) for p in challenger.json()["predictions"]} == {("challenger", "2")}
    explicit = client.post("/v1/score?version=1", json=body(3), headers=h).json()
    assert (explicit["variant"], explicit["model_version"]) == ("explicit", "1")
    # An explicit version decides with its own operating point, as a variant serving it does.
    assert (explicit["review_threshold"], explicit["decline_threshold"], explicit["thresholds"]) == (
        0.45,
        0.55,
        "model",
    )
    old = client.post("/v1/score?version=2", json=body(3), headers=h).json()
    assert (old["review_threshold"], old["decline_threshold"], old["thresholds"]) == (0.3, 0.7, "default")
    assert client.post("/v1/score?variant=nobody", json=body(3), headers=h).status_code == 404
    assert client.post("/v1/score?version=999", json=body(3), headers=h).status_code == 404


def test_rate_limit_per_key_with_retry_after(scorer_env: ScorerEnv) -> None:
    with TestClient(create_app(api_settings(rate_per_s=0.5, burst=3))) as c:
        codes = [c.get("/v1/models", headers={"X-API-Key": KEY}).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        limited = c.get("/v1/models", headers={"X-API-Key": KEY})
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert "rate limit" in limited.json()["detail"]
        # Another key is not affected by the first one's exhaustion.
        assert c.get("/v1/models", headers={"X-API-Key": OTHER}).status_code == 200
        # One bucket per key whatever the route: the hot route sees the exhausted key too.
        hot = c.post("/v1/score", json=body(1), headers={"X-API-Key": KEY})
        assert hot.status_code == 429 and int(hot.headers["Retry-After"]) >= 1


def test_body_limit_with_and_without_content_length(scorer_env: ScorerEnv) -> None:
    with TestClient(create_app(api_settings(max_body_bytes=4096))) as c:
        big = json.dumps({"instances": [body(i) for i in range(40)]}).encode()
        assert len(big) > 4096
        h = {"X-API-Key": KEY, "content-type": "application/json"}
        announced = c.post("/v1/score/batch", content=big, headers=h)
        assert announced.status_code == 413 and "4096" in announced.json()["detail"]

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        streamed = c.post("/v1/score/batch", content=chunks(), headers=h)  # chunked: no Content-Length
        assert streamed.status_code == 413
        # The same on the hot route (scorer.api.hotpath), which reads the body itself.
        assert c.post("/v1/score", content=big, headers=h).status_code == 413
        hot_streamed = c.post("/v1/score", content=chunks(), headers=h)
        assert hot_streamed.status_code == 413 and "more than 4096" in hot_streamed.json()["detail"]
        small = json.dumps({"instances": [body(1)]}).encode()
        assert c.post("/v1/score/batch", content=small, headers=h).status_code == 200


INVALID = [
    (b'{"amount": NaN}', "amount"),
    (json.dumps({**body(1), "amount": math.inf}).encode(), "amount"),
    (json.dumps({**body(1), "amount": -3}).encode(), "greater than 0"),
    (json.dumps({**body(1), "amount": "12"}).encode(), "amount"),
    (json.dumps({**body(1), "currency": "XYZ"}).encode(), "ISO-4217"),
    (json.dumps({**body(1), "colour": "red"}).encode(), "colour"),
    (json.dumps({**body(1), "event_time": "2026-01-01T00:00:00"}).encode(), "timezone"),
    (b"not json at all", "JSON"),
    (b"", "JSON"),
    (b"[]", "object"),
    (json.dumps({**body(1), "schema_version": 3}).encode(), "schema_version"),
]


def test_the_api_gives_the_streams_reason_for_the_same_bytes(client: TestClient) -> None:
    """docs/contracts.md, *One contract, one verdict*: content type, UTF-8, repeated keys and the event-time window
    are refused with the dead-letter reason the stream gives, on the hot route and the FastAPI route alike."""
    good = json.dumps(body(1)).encode()
    cases = [
        (good, "text/plain", 415, "unsupported_content_type"),
        (good, "application/x-www-form-urlencoded", 415, "unsupported_content_type"),
        (b'{"event_id": "\xff"}', "application/json", 422, "not_utf8"),
        (good[:-1] + b', "account_id": "acct-99999"}', "application/json", 422, "schema_invalid"),
        (json.dumps({**body(1), "schema_version": 1.0}).encode(), "application/json", 422, "unknown_schema_version"),
        (json.dumps({**body(1), "merchant_category": "５４１１"}).encode(), "application/json", 422, "schema_invalid"),
        (json.dumps({**body(1), "event_time": "2100-01-01T00:00:00Z"}).encode(), None, 422, "event_time_out_of_window"),
    ]
    for payload, content_type, status, error in cases:
        headers = {"X-API-Key": KEY} | ({"content-type": content_type} if content_type else {})
        for url in ("/v1/score", "/v1/score?variant=auto"):
            response = client.post(url, content=payload, headers=headers)
            assert (response.status_code, response.json()["error"]) == (status, error), (url, payload[:60])
    assert (
        client.post(
            "/v1/score", content=good, headers={"X-API-Key": KEY, "content-type": "Application/JSON"}
        ).status_code
        == 200
    )


@pytest.mark.parametrize(("payload", "fragment"), INVALID)
def test_invalid_transactions_are_422_with_a_message(client: TestClient, payload: bytes, fragment: str) -> None:
    response = client.post("/v1/score", content=payload, headers={"X-API-Key": KEY, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert fragment.lower() in response.json()["detail"].lower()


def test_the_hot_route_answers_as_the_fastapi_route_does(client: TestClient) -> None:
    """`POST /v1/score` is answered by scorer.api.hotpath unless a query string is given (`?variant=auto` is the
    default, so both ask for the same thing): status, body and headers must be the FastAPI route's, for good and
    bad requests alike (scores differ only in when they were made)."""
    h = {"X-API-Key": KEY, "content-type": "application/json"}
    cases: list[tuple[bytes, dict[str, str]]] = [(json.dumps(body(i)).encode(), h) for i in range(5)]
    cases += [(payload, h) for payload, _ in INVALID]
    cases += [(json.dumps(body(1)).encode(), {}), (json.dumps(body(1)).encode(), {"X-API-Key": REVOKED})]
    cases += [(b"x" * (256 * 1024 + 1), h)]  # over the default body limit
    for payload, headers in cases:
        hot = client.post("/v1/score", content=payload, headers=headers)
        routed = client.post("/v1/score?variant=auto", content=payload, headers=headers)
        assert hot.status_code == routed.status_code, (payload[:80], hot.text, routed.text)
        for name in ("content-type", "www-authenticate", "retry-after"):
            assert hot.headers.get(name) == routed.headers.get(name), name
        if hot.status_code == 200:
            a, b = hot.json(), routed.json()
            for moment in ("scored_time", "latency_ms"):
                a.pop(moment), b.pop(moment)
            assert a == b
        else:
            assert hot.content == routed.content
    counted = client.get("/metrics", headers={"X-API-Key": KEY}).text
    assert 'streamscore_api_requests_total{route="/v1/score",status="200"} 10.0' in counted
    assert 'streamscore_api_requests_total{route="/v1/score",status="422"} 22.0' in counted
    # (FastAPI's 413 is refused before routing, so its middleware counts it under route "other")
    assert 'streamscore_api_requests_total{route="/v1/score",status="413"} 1.0' in counted


def test_invalid_batches_are_422(client: TestClient) -> None:
    h = {"X-API-Key": KEY}
    too_many = client.post("/v1/score/batch", json={"instances": [body(i) for i in range(257)]}, headers=h)
    assert too_many.status_code == 422 and "at most 256" in too_many.json()["detail"]
    assert client.post("/v1/score/batch", json={"instances": []}, headers=h).status_code == 422
    assert client.post("/v1/score/batch", json={"instances": [body(1)], "x": 1}, headers=h).status_code == 422
    assert client.post("/v1/score/batch", json=[body(1)], headers=h).status_code == 422
    nan = client.post("/v1/score/batch", content=b'{"instances": [{"amount": NaN}]}', headers=h)
    assert nan.status_code == 422


class Server:
    """uvicorn in a thread on a free port (the lifespan and the batcher run as in production)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            config(settings.model_copy(update={"host": "127.0.0.1", "port": self.port}), log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.app: Any = self.server.config.app

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.server.started
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_concurrent_single_requests_are_gathered_into_micro_batches(scorer_env: ScorerEnv) -> None:
    # One client per thread, as 32 independent callers would have: httpcore 1.0.9's shared sync pool can close a
    # surplus keep-alive connection that another thread has just been handed (encode/httpcore#1110), which
    # surfaced here once in CI as a client-side "[Errno 9] Bad file descriptor".
    local = threading.local()
    clients: list[httpx.Client] = []
    with Server(api_settings(max_queue_delay_ms=5.0)) as url:

        def call(i: int) -> int:
            if not hasattr(local, "http"):
                local.http = httpx.Client(base_url=url, timeout=30)
                clients.append(local.http)
            return int(local.http.post("/v1/score", json=body(i), headers={"X-API-Key": KEY}).status_code)

        try:
            with ThreadPoolExecutor(32) as pool:
                codes = list(pool.map(call, range(640)))
        finally:
            for client in clients:
                client.close()
        metrics = httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}).text
    assert codes == [200] * 640
    values = {
        line.split()[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("streamscore_api_batch_")
    }
    batches, requests = values["streamscore_api_batch_size_count"], values["streamscore_api_batch_size_sum"]
    assert requests == 640
    assert batches < 640 / 2, f"{batches} engine calls for 640 concurrent requests: not batched"


def counting_matches(seen: list[Any]) -> Callable[[Any], bool]:
    """ScoreRoute.matches that also records each scope it matches: the requests the ASGI app itself answered."""

    def matches(scope: Any) -> bool:
        if ScoreRoute.matches(scope):
            seen.append(scope)
            return True
        return False

    return matches


def _raw_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` HTTP/1.1 responses read off a raw socket: (status, headers, body), each body by its Content-Length."""
    data = b""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection after {len(out)} responses"
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(data) < length:
            data += sock.recv(65536)
        out.append((int(status_line.split()[1]), headers, data[:length]))
        data = data[length:]
    return out


def _post(payload: bytes, headers: dict[str, str], path: str = "/v1/score") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def test_the_wire_route_answers_byte_for_byte_as_fastapi_does(scorer_env: ScorerEnv) -> None:
    """Under uvicorn, a plain `POST /v1/score` is answered by the wire route (scorer.api.server), below ASGI; with a
    query string FastAPI answers. Same status, same headers (names, values, order of ours; the date aside), same
    body for every refusal, over the valid bodies, the whole 422 corpus, missing and revoked keys and an oversize
    body (which the wire route leaves to the ASGI hot route)."""
    h = {"X-API-Key": KEY, "Content-Type": "application/json"}
    cases: list[tuple[bytes, dict[str, str]]] = [(json.dumps(body(i)).encode(), h) for i in range(5)]
    cases += [(payload, h) for payload, _ in INVALID]
    cases += [(json.dumps(body(1)).encode(), {}), (json.dumps(body(1)).encode(), {"X-API-Key": REVOKED})]
    cases += [(b"x" * (256 * 1024 + 1), h)]
    server = Server(api_settings())
    asgi_answered: list[
        Any
    ] = []  # plain POST /v1/score requests that reached the ASGI app: only those the wire route left
    server.app.hot_route.matches = counting_matches(asgi_answered)
    with server as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            for payload, headers in cases:
                sock.sendall(_post(payload, headers))
                [(wire_status, wire_headers, wire_body)] = _raw_responses(sock, 1)
                sock.sendall(_post(payload, headers, "/v1/score?variant=auto"))
                [(status, routed_headers, routed_body)] = _raw_responses(sock, 1)
                assert wire_status == status, (payload[:80], wire_body, routed_body)
                wire_headers.pop("date"), routed_headers.pop("date")
                if status == 200:
                    assert wire_headers == {"content-length": str(len(wire_body)), "content-type": "application/json"}
                    assert routed_headers["content-type"] == "application/json"
                    a, b = json.loads(wire_body), json.loads(routed_body)
                    for moment in ("scored_time", "latency_ms"):
                        a.pop(moment), b.pop(moment)
                    assert a == b
                else:
                    assert wire_headers == routed_headers and wire_body == routed_body, (payload[:80], wire_body)
        metrics = httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}).text
    assert len(asgi_answered) == 1  # the oversize body; every other one was answered on the wire
    counted = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith('streamscore_api_requests_total{route="/v1/score"')
    }
    assert counted['streamscore_api_requests_total{route="/v1/score",status="200"}'] == 10
    assert counted['streamscore_api_requests_total{route="/v1/score",status="422"}'] == 2 * len(INVALID)
    assert counted['streamscore_api_requests_total{route="/v1/score",status="401"}'] == 4


def test_the_wire_route_keeps_http_semantics(scorer_env: ScorerEnv) -> None:
    """Pipelined requests are answered in order; `Connection: close` and HTTP/1.0 close after the answer; chunked
    bodies and `Expect: 100-continue` are left to the ASGI path and answered there."""
    h = {"X-API-Key": KEY, "Content-Type": "application/json"}
    first, second = json.dumps(body(11)).encode(), json.dumps(body(12)).encode()
    server = Server(api_settings(max_queue_delay_ms=5.0))
    asgi_answered: list[Any] = []
    server.app.hot_route.matches = counting_matches(asgi_answered)
    with server as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_post(first, h) + _post(b"{}", h) + _post(second, h))  # three requests in one segment
            answers = _raw_responses(sock, 3)
            assert [status for status, _, _ in answers] == [200, 422, 200]
            assert [json.loads(answers[i][2])["event_id"] for i in (0, 2)] == [
                body(11)["event_id"],
                body(12)["event_id"],
            ]
            # Still open (keep-alive) for the next one.
            sock.sendall(_post(first, h))
            assert _raw_responses(sock, 1)[0][0] == 200
        for closing in ({**h, "Connection": "close"},):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(_post(first, closing))
                [(status, headers, _)] = _raw_responses(sock, 1)
                assert status == 200 and headers["connection"] == "close"
                assert sock.recv(1) == b""  # closed by the server
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_post(first, h).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
            [(status, headers, _)] = _raw_responses(sock, 1)
            assert status == 200 and headers["connection"] == "close"
            assert sock.recv(1) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            chunked = (
                b"POST /v1/score HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                + f"X-API-Key: {KEY}\r\nContent-Type: application/json\r\n\r\n".encode()
                + b"%x\r\n%b\r\n0\r\n\r\n" % (len(first), first)
            )
            sock.sendall(chunked)
            [(status, _, answer)] = _raw_responses(sock, 1)
            assert status == 200 and json.loads(answer)["event_id"] == body(11)["event_id"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                _post(b"", {**h, "Expect": "100-continue"}).replace(
                    b"Content-Length: 0", b"Content-Length: %d" % len(first)
                )
            )
            [(status, _, _)] = _raw_responses(sock, 1)
            assert status == 100
            sock.sendall(first)
            [(status, _, answer)] = _raw_responses(sock, 1)
            assert status == 200 and json.loads(answer)["event_id"] == body(11)["event_id"]
    assert len(asgi_answered) == 2  # the chunked and the 100-continue requests; the rest went on the wire


def _outside_the_window(body: Any, response: Any) -> bool:
    """A 422 `event_time_out_of_window` for a body with an event time outside the window around the clock: the right
    answer to a schema-valid body (JSON Schema cannot say "relative to now")."""
    if response.status_code != 422 or response.json().get("error") != "event_time_out_of_window":
        return False
    events = body.get("instances", []) if isinstance(body, dict) and "instances" in body else [body]
    bounds = DEFAULT_WINDOW.at()
    times = [datetime.fromisoformat(e["event_time"]).timestamp() for e in events if isinstance(e, dict)]
    return any(not bounds.earliest_s <= t <= bounds.latest_s for t in times)


def test_schemathesis_against_the_apps_own_openapi(scorer_env: ScorerEnv) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    with Server(api_settings()) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        failures: list[str] = []

        def run(op: Any, auth: dict[str, str], expect_401: bool) -> None:
            @settings(
                max_examples=25 if expect_401 else 200,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
                derandomize=True,  # the same 200 cases in every run: a failure in CI reproduces locally
            )
            @given(op.as_strategy())
            def check(case: Any) -> None:
                response = case.call(headers=auth)
                if response.status_code >= 500:
                    failures.append(f"{op.label}: {response.status_code} {response.text[:200]}")
                    return
                if expect_401 and op.path not in ("/livez", "/readyz") and response.status_code != 401:
                    failures.append(f"{op.label} without a key: {response.status_code}")
                    return
                if _outside_the_window(case.body, response):
                    return  # the schema states the window in its x-streamscore-event-time-window: no generator reads it
                try:
                    case.validate_response(response)
                except Exception as exc:  # noqa: BLE001 - collect every schema violation
                    failures.append(f"{op.label}: {str(exc)[:300]}")

            check()

        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        assert {op.path for op in operations} >= {"/v1/score", "/v1/score/batch", "/v1/models", "/readyz"}
        for op in operations:
            run(op, {"X-API-Key": KEY}, expect_401=False)
            run(op, {}, expect_401=True)
        assert not failures, "\n".join(failures[:20])


def test_the_demo_page_scores_a_transaction_in_headless_chromium(scorer_env: ScorerEnv) -> None:
    from playwright.sync_api import sync_playwright

    from streamscore.infra.process import require_tool

    chromium = require_tool("chromium")
    with Server(api_settings(demo_ui=True)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/demo/", wait_until="networkidle", timeout=60_000)
            assert "Score a transaction" in page.content()
            page.locator("#api-key input, #api-key textarea").first.fill(KEY)
            page.locator("#account-id input, #account-id textarea").first.fill("acct-00042")
            page.locator("#score-button").click()
            score = page.locator("#score input, #score textarea").first
            page.wait_for_function("el => el.value && el.value.length > 0", arg=score.element_handle(), timeout=30_000)
            value = score.input_value()
            decision = page.locator("#decision input, #decision textarea").first.input_value()
            model = page.locator("#model input, #model textarea").first.input_value()
        finally:
            browser.close()
    assert 0.0 <= float(value) <= 1.0, value
    assert decision in {"approve", "review", "decline"}
    assert "fraud-detector v" in model and "variant" in model
