"""Every invalid transaction is rejected with the right dead-letter reason and a message naming the field."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streamscore.contracts import (
    DEAD_LETTER_MESSAGE_LIMIT,
    DeadLetter,
    DeadLetterReason,
    EventTimeWindow,
    Label,
    Score,
    Transaction,
    decode_transaction,
    headers_for,
    is_traceparent,
    json_schemas,
    parse_event,
    validate_transaction,
)
from streamscore.errors import EventError
from streamscore.settings import ContractSettings

REPO = Path(__file__).resolve().parents[3]
NOW = datetime.now(UTC).replace(microsecond=0)
"""Event times relative to the clock: the receiving points accept only times around it."""


def stamp(moment: datetime, offset_hours: int = 1) -> str:
    """`moment` as written in another offset (+01:00 by default), as an RFC 3339 string."""
    return moment.astimezone(timezone(timedelta(hours=offset_hours))).isoformat()


def valid() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": "evt-1",
        "account_id": "acc-000001",
        "merchant_id": "mer-00001",
        "merchant_category": "5411",
        "amount": 42.5,
        "currency": "EUR",
        "country": "DE",
        "channel": "pos",
        "device_id": "dev-1",
        "event_time": stamp(NOW - timedelta(hours=1)),
    }


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def reason_of(value: bytes, key: bytes | None = b"acc-000001", headers: list[tuple[str, bytes]] | None = None) -> str:
    with pytest.raises(EventError) as info:
        decode_transaction(key, value, headers)
    assert info.value.detail, "a dead letter must say what is wrong"
    return info.value.reason


def test_valid_transaction_round_trips() -> None:
    tx = decode_transaction(b"acc-000001", encode(valid()))
    assert tx.amount == 42.5
    assert tx.event_time.utcoffset() == timedelta(hours=1)
    assert decode_transaction(b"acc-000001", tx.to_json()) == tx


def with_(**changes: Any) -> bytes:
    data = valid()
    data.update(changes)
    return encode(data)


def without(field: str) -> bytes:
    data = valid()
    del data[field]
    return encode(data)


@pytest.mark.parametrize(
    ("value", "reason", "field"),
    [
        (b"\xff\xfe{}", DeadLetterReason.NOT_UTF8, None),
        (b'{"event_id": ', DeadLetterReason.NOT_JSON, None),
        (b"[1, 2]", DeadLetterReason.SCHEMA_INVALID, None),
        (b'"text"', DeadLetterReason.SCHEMA_INVALID, None),
        (without("amount"), DeadLetterReason.SCHEMA_INVALID, "amount"),
        (with_(surprise=1), DeadLetterReason.SCHEMA_INVALID, "surprise"),
        (with_(amount="42.5"), DeadLetterReason.SCHEMA_INVALID, "amount"),
        (with_(channel="atm"), DeadLetterReason.SCHEMA_INVALID, "channel"),
        (with_(merchant_category="54"), DeadLetterReason.SCHEMA_INVALID, "merchant_category"),
        (with_(account_id="acc 1/"), DeadLetterReason.SCHEMA_INVALID, "account_id"),
        (with_(schema_version=2), DeadLetterReason.UNKNOWN_SCHEMA_VERSION, "schema_version"),
        (encode(valid()).replace(b"42.5", b"NaN"), DeadLetterReason.NON_FINITE_NUMBER, "amount"),
        (encode(valid()).replace(b"42.5", b"Infinity"), DeadLetterReason.NON_FINITE_NUMBER, "amount"),
        (encode(valid()).replace(b"42.5", b"1e999"), DeadLetterReason.NON_FINITE_NUMBER, "amount"),
        (with_(amount=0), DeadLetterReason.OUT_OF_RANGE, "amount"),
        (with_(amount=-3.0), DeadLetterReason.OUT_OF_RANGE, "amount"),
        (with_(amount=1_000_000.01), DeadLetterReason.OUT_OF_RANGE, "amount"),
        (with_(currency="EUX"), DeadLetterReason.INVALID_CODE, "currency"),
        (with_(currency="eur"), DeadLetterReason.INVALID_CODE, "currency"),
        (with_(country="XX"), DeadLetterReason.INVALID_CODE, "country"),
        (with_(event_time=stamp(NOW)[:-6]), DeadLetterReason.INVALID_TIMESTAMP, "event_time"),
        (with_(event_time="yesterday"), DeadLetterReason.INVALID_TIMESTAMP, "event_time"),
        (with_(event_time=stamp(NOW).replace("T", " ")), DeadLetterReason.INVALID_TIMESTAMP, "event_time"),
        (with_(event_time=stamp(NOW).replace("+01:00", "+0100")), DeadLetterReason.INVALID_TIMESTAMP, "event_time"),
        (with_(event_time=int(NOW.timestamp())), DeadLetterReason.INVALID_TIMESTAMP, "event_time"),
        (with_(event_time="1999-12-31T23:00:00Z"), DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW, "event_time"),
        (with_(event_time="9999-12-31T23:00:00Z"), DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW, "event_time"),
        (with_(event_time="2100-01-01T00:00:00Z"), DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW, "event_time"),
        # Far from the edges: NOW is taken when the module is imported, the test may run many minutes later.
        (with_(event_time=stamp(NOW + timedelta(hours=2))), DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW, "event_time"),
        (with_(event_time=stamp(NOW - timedelta(days=8))), DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW, "event_time"),
        (with_(merchant_category="５４１１"), DeadLetterReason.SCHEMA_INVALID, "merchant_category"),
        (with_(merchant_category="٥٤١١"), DeadLetterReason.SCHEMA_INVALID, "merchant_category"),
        (with_(merchant_category="5411\n"), DeadLetterReason.SCHEMA_INVALID, "merchant_category"),
        (with_(schema_version=1.0), DeadLetterReason.UNKNOWN_SCHEMA_VERSION, "schema_version"),
        (with_(schema_version=True), DeadLetterReason.UNKNOWN_SCHEMA_VERSION, "schema_version"),
        (with_(schema_version="1"), DeadLetterReason.UNKNOWN_SCHEMA_VERSION, "schema_version"),
        (encode(valid())[:-1] + b', "account_id": "acc-000002"}', DeadLetterReason.SCHEMA_INVALID, "account_id"),
        (encode(valid())[:-1] + b', "acc\\u006funt_id": "acc-000001"}', DeadLetterReason.SCHEMA_INVALID, "account_id"),
    ],
)
def test_defective_transactions_get_their_reason(value: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(EventError) as info:
        decode_transaction(b"acc-000001", value)
    assert info.value.reason == reason
    if field:
        assert field in info.value.detail


def test_record_level_defects() -> None:
    good = encode(valid())
    assert reason_of(good, key=None) == DeadLetterReason.MISSING_KEY
    assert reason_of(good, key=b"") == DeadLetterReason.MISSING_KEY
    assert reason_of(good, key=b"acc-999") == DeadLetterReason.KEY_MISMATCH
    assert reason_of(b"{" + b" " * 70_000 + b"}") == DeadLetterReason.OVERSIZE
    assert reason_of(good, headers=[("content-type", b"application/avro")]) == DeadLetterReason.UNSUPPORTED_CONTENT_TYPE
    with pytest.raises(EventError):
        decode_transaction(b"acc-000001", None)
    # A JSON content type with parameters is still JSON, in any case (media types are case-insensitive).
    decode_transaction(b"acc-000001", good, [("content-type", b"application/json; charset=utf-8")])
    decode_transaction(b"acc-000001", good, [("content-type", b"Application/JSON")])


def test_the_window_is_around_the_receiving_clock_and_configurable() -> None:
    value = with_(event_time=stamp(NOW - timedelta(days=30)))
    # Offline (no window): the absolute bounds only, so the history and old test data still build models.
    assert decode_transaction(b"acc-000001", value, window=None).event_time == NOW - timedelta(days=30)
    assert Transaction.model_validate_json(value).event_time == NOW - timedelta(days=30)
    # Received 30 days later than now, or with a wider window, it is inside.
    decode_transaction(b"acc-000001", value, now_s=(NOW - timedelta(days=29)).timestamp())
    wide = ContractSettings(event_time_max_behind_s=31 * 86400).window()
    assert wide == EventTimeWindow(300.0, 31 * 86400.0)
    decode_transaction(b"acc-000001", value, window=wide)
    # The edges are inside.
    at = NOW.timestamp()
    for edge in (NOW + timedelta(seconds=300), NOW - timedelta(days=7)):
        validate_transaction(with_(event_time=stamp(edge)), now_s=at)
    for beyond in (NOW + timedelta(seconds=301), NOW - timedelta(days=7, seconds=1)):
        with pytest.raises(EventError) as info:
            validate_transaction(with_(event_time=stamp(beyond)), now_s=at)
        assert info.value.reason == DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW


def test_the_api_and_the_stream_share_the_value_checks() -> None:
    good = encode(valid())
    assert validate_transaction(good, b"application/json") == decode_transaction(b"acc-000001", good)
    for content_type in (b"text/plain", b"application/x-www-form-urlencoded", b""):
        with pytest.raises(EventError) as info:
            validate_transaction(good, content_type)
        assert info.value.reason == DeadLetterReason.UNSUPPORTED_CONTENT_TYPE
    with pytest.raises(EventError) as info:
        validate_transaction(b'{"event_id": "\xff"}')
    assert info.value.reason == DeadLetterReason.NOT_UTF8
    with pytest.raises(EventError) as info:
        validate_transaction(good, max_bytes=100)
    assert info.value.reason == DeadLetterReason.OVERSIZE


def test_parse_event_refuses_repeated_keys_in_nested_objects_too() -> None:
    now = datetime.now(UTC).isoformat()
    score = (
        '{"event_id": "e", "account_id": "a", "score": 0.2, "decision": "approve", "model_name": "m", '
        '"model_version": "3", "variant": "champion", "experiment_id": "exp-1", "feature_status": "ok", '
        f'"amount": 10.0, "currency": "USD", "event_time": "{now}", "scored_time": "{now}", "latency_ms": 3.2, '
        '"features": {"a": 1.0, "b": 2.0, "a": 3.0}}'
    )
    with pytest.raises(EventError) as info:
        parse_event(Score, score.encode())
    assert info.value.reason == DeadLetterReason.SCHEMA_INVALID
    assert parse_event(Score, score.replace('"a": 3.0', '"c": 3.0').encode()).features == {"a": 1.0, "b": 2.0, "c": 3.0}
    # Commas inside strings are not repeated keys.
    label = f'{{"event_id": "e", "account_id": "a", "is_fraud": true, "event_time": "{now}", "labeled_at": "{now}"}}'
    assert parse_event(Label, label.encode()).is_fraud


def test_python_construction_is_strict_too() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        Transaction.model_validate({**valid(), "event_time": datetime(2026, 1, 1)}, strict=False)
    with pytest.raises(ValidationError, match="finite"):
        Transaction.model_validate({**valid(), "amount": float("nan")}, strict=False)


def test_label_and_score_are_validated() -> None:
    now = datetime.now(UTC)
    label = Label(event_id="e", account_id="a", is_fraud=True, event_time=now, labeled_at=now)
    assert Label.model_validate_json(label.to_json()) == label
    score = {
        "event_id": "e",
        "account_id": "a",
        "score": 0.2,
        "decision": "approve",
        "model_name": "fraud-detector",
        "model_version": "3",
        "variant": "champion",
        "experiment_id": "exp-1",
        "feature_status": "ok",
        "amount": 10.0,
        "currency": "USD",
        "event_time": now.isoformat(),
        "scored_time": now.isoformat(),
        "latency_ms": 3.2,
    }
    assert Score.model_validate_json(json.dumps(score)).source == "stream"
    for bad in ({"score": 1.5}, {"decision": "maybe"}, {"feature_status": "stale"}, {"latency_ms": -1}):
        with pytest.raises(ValidationError):
            Score.model_validate_json(json.dumps({**score, **bad}))


def test_score_json_is_byte_for_byte_what_pydantic_writes() -> None:
    """`Score.to_json` is a fast path (orjson); it must write exactly pydantic's `model_dump_json`."""
    rng = random.Random(7)
    names = [f"f{i}" for i in range(24)]
    specials = [0.0, -0.0, 1.0, 1e-7, 1e-300, 1.5e300, 123456789.125, 0.1 + 0.2, 5e-324, 2.0**53 + 2]
    for i in range(2_000):
        when = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, 3e8))
        if i % 3 == 0:
            when = when.replace(microsecond=0)
        number = (
            (lambda: rng.choice(specials))
            if i % 4 == 0
            else (lambda: rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-12, 6))
        )
        score = Score(
            event_id=f"evt-{i}",
            account_id=f"acc-{rng.randint(0, 10**6):06d}",
            score=rng.random(),
            decision=rng.choice(["approve", "review", "decline"]),
            model_name="fraud-detector",
            model_version=str(rng.randint(1, 99)),
            variant=rng.choice(["champion", "challenger", "explicit"]),
            experiment_id="exp-1",
            feature_status=rng.choice(["ok", "missing", "default"]),
            amount=round(rng.uniform(0.01, 10_000), 2),
            currency=rng.choice(["EUR", "USD", "JPY"]),
            event_time=when,
            scored_time=when + timedelta(microseconds=rng.randint(0, 10**6)),
            latency_ms=rng.uniform(0, 5_000),
            source=rng.choice(["stream", "api"]),
            features=None if i % 10 == 0 else {name: number() for name in names},
            review_threshold=None if i % 7 == 0 else rng.choice([0.3, rng.random() / 2, 0.0]),
            decline_threshold=None if i % 5 == 0 else rng.choice([0.7, 0.5 + rng.random() / 2, 1.0]),
            thresholds=rng.choice(["model", "override", "default", None]),
        )
        assert score.to_json() == score.model_dump_json().encode()
        fields = {name: getattr(score, name) for name in Score.model_fields if name != "schema_version"}
        trusted = Score.trusted(**fields)
        assert trusted == score and trusted.to_json() == score.to_json()
        assert trusted.model_dump_json() == score.model_dump_json()
        assert trusted.__pydantic_fields_set__ == score.__pydantic_fields_set__


def test_a_trusted_score_with_a_non_finite_feature_is_refused_as_before() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    values: dict[str, Any] = {
        "event_id": "evt-1",
        "account_id": "acc-1",
        "score": 0.5,
        "decision": "review",
        "model_name": "fraud-detector",
        "model_version": "1",
        "variant": "champion",
        "experiment_id": "exp-1",
        "feature_status": "ok",
        "amount": 10.0,
        "currency": "EUR",
        "event_time": now,
        "scored_time": now,
        "latency_ms": 1.0,
        "source": "stream",
        "review_threshold": 0.3,
        "decline_threshold": 0.7,
        "thresholds": "default",
    }
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValidationError, match="finite"):
            Score.trusted(**values, features={"a": 1.0, "b": bad})
    assert Score.trusted(**values, features=None) == Score(**values, features=None)


def test_dead_letter_headers_round_trip_and_cap_the_message() -> None:
    payload = b"\x00" * 10
    letter = DeadLetter.build(
        payload,
        original_topic="transactions",
        original_partition=3,
        original_offset=17,
        original_timestamp_ms=1_700_000_000_000,
        consumer_group="scorer",
        stage="decode",
        error_class=DeadLetterReason.NOT_JSON,
        error_message="ü" * 5000,
        scorer_version="0.1.0",
    )
    assert len(letter.error_message.encode()) <= DEAD_LETTER_MESSAGE_LIMIT
    assert letter.payload_size == 10
    assert len(letter.payload_sha256) == 64
    headers = letter.to_headers()
    assert all(name.startswith("dlq-") for name, _ in headers)
    assert DeadLetter.from_headers([*headers, ("traceparent", b"x")]) == letter


def test_standard_headers() -> None:
    tx = Transaction.model_validate_json(encode(valid()))
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = dict(headers_for(tx, tp, model_version="4"))
    assert headers == {
        "content-type": b"application/json",
        "schema-version": b"1",
        "traceparent": tp.encode(),
        "model-version": b"4",
    }
    assert is_traceparent(tp)
    assert not is_traceparent("01-xyz")


def test_committed_json_schemas_are_current() -> None:
    directory = REPO / "docs" / "schemas"
    for name, text in json_schemas().items():
        path = directory / name
        assert path.exists(), f"{path} is missing: run `make schemas`"
        assert path.read_text() == text, f"{path} is stale: run `make schemas`"


def test_json_schema_is_strict() -> None:
    schema = json.loads(json_schemas()["Transaction.schema.json"])
    assert schema["additionalProperties"] is False
    assert "EUR" in schema["properties"]["currency"]["enum"]
    assert set(schema["required"]) >= {"event_id", "account_id", "amount", "currency", "event_time"}
