"""One contract, one verdict: generated transactions — valid ones, mutated fields, odd digits, floats for integers,
repeated keys, bad UTF-8, content types, event times in and out of the window — get the same verdict from every path:
the stream's `decode_transaction`, the pydantic model, the API's parsing and the exported JSON Schema (checked with
jsonschema-rs, with the receiving rules the schema cannot state applied as docs/contracts.md tells external producers
to: content type, size, UTF-8, no repeated keys, and its `x-streamscore-event-time-window` keyword)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scorer.api.hotpath import ApiValidationError, parse_transaction
from streamscore.contracts import (
    DEFAULT_WINDOW,
    MAX_MESSAGE_BYTES,
    WINDOW_KEYWORD,
    DeadLetterReason,
    Transaction,
    _classify,
    decode_transaction,
)
from streamscore.errors import EventError

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "docs" / "schemas" / "Transaction.schema.json").read_text())
VALIDATOR = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)
WINDOW = SCHEMA["properties"]["event_time"][WINDOW_KEYWORD]
NOW = datetime.now(UTC).replace(microsecond=0)
"""The receiving clock of every path (the session may run long after this module was imported)."""

KEY_REASONS = {DeadLetterReason.MISSING_KEY, DeadLetterReason.KEY_MISMATCH}
Verdict = str | None
"""None: accepted; else the reason."""


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


OFFSETS = st.one_of(
    st.integers(-int(WINDOW["max_behind_s"]) + 60, int(WINDOW["max_ahead_s"]) - 60),  # inside
    st.integers(int(WINDOW["max_ahead_s"]) + 60, 80 * 365 * 86400),  # ahead
    st.integers(-30 * 365 * 86400, -int(WINDOW["max_behind_s"]) - 60),  # behind
).map(lambda seconds: NOW + timedelta(seconds=seconds))
ZONES = st.sampled_from(["Z", "+00:00", "-00:00", "+01:00", "-05:30", "+14:00"])


@st.composite
def event_times(draw: st.DrawFn) -> str:
    moment = draw(OFFSETS)
    zone = draw(ZONES)
    text = moment.astimezone(
        UTC if zone in ("Z", "-00:00") else datetime.fromisoformat(f"2000-01-01T00:00{zone}").tzinfo
    )
    written = text.replace(tzinfo=None).isoformat() + zone
    return draw(
        st.sampled_from(
            [
                written,
                written.replace("T", " "),
                written.replace("T", "t"),
                written.lower(),
                written.replace(":00", ":60", 1) if written.count(":") > 1 else written,
                written[:16] + written[19:],  # no seconds
                written[:19] + ".1234567" + written[19:],
                written[:19] + ",5" + written[19:],
                written[:19] + ".5" + written[19:],
                written[:-3] + written[-2:] if zone != "Z" else written,  # +0100
                written[:19],  # naive
            ]
        )
    )


DIGITS = ["５４１１", "٥٤١١", "54١1", "5411\n", "541", "54111", "", "０"]
IDENTIFIERS = ["acc 1", "acc,1", "acc-1\n", "ａcc", "x" * 65, "", "ß", "a٣"]
CODES = ["eur", "EUX", "DE", "xx", "atm", "ＥUR", "EUR\n"]
TIMES = ["9999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "2026-02-30T00:00:00Z", "٢٠٢٦-01-01"]
ODD_FOR = {
    "merchant_category": DIGITS,
    "event_id": IDENTIFIERS,
    "account_id": IDENTIFIERS,
    "merchant_id": IDENTIFIERS,
    "device_id": IDENTIFIERS,
    "currency": CODES,
    "country": CODES,
    "channel": CODES,
    "event_time": TIMES,
}
ODD = st.sampled_from(DIGITS + IDENTIFIERS + CODES + TIMES)
NUMBERS = st.one_of(
    st.sampled_from([1, 1.0, 2, True, False, 0, -1, 1_000_000, 1_000_000.01, 10, "1", None, 1e-300]),
    st.floats(min_value=-2e6, max_value=2e6, allow_nan=False),
)
FIELDS = [
    "schema_version",
    "event_id",
    "account_id",
    "merchant_id",
    "merchant_category",
    "amount",
    "currency",
    "country",
    "channel",
    "device_id",
    "event_time",
]


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": draw(st.from_regex(r"\Aev-[0-9a-z]{1,8}\Z")),
        "account_id": draw(st.sampled_from(["acct-00042", "a", "A.b:c_d-9"])),
        "merchant_id": "m-001",
        "merchant_category": draw(st.sampled_from(["5411", "0000", "9999"])),
        "amount": draw(st.one_of(st.floats(min_value=0.01, max_value=1e6), st.integers(1, 1000))),
        "currency": draw(st.sampled_from(["EUR", "USD", "JPY"])),
        "country": draw(st.sampled_from(["DE", "FR", "US"])),
        "channel": draw(st.sampled_from(["pos", "ecommerce", "contactless"])),
        "device_id": draw(st.sampled_from(["dev-1", None])),
        "event_time": draw(event_times()),
    }
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([*FIELDS, "surprise"]))
        action = draw(st.sampled_from(["odd", "number", "drop"]))
        if action == "drop":
            event.pop(name, None)
        elif action == "odd":
            event[name] = draw(st.sampled_from(ODD_FOR[name]) if name in ODD_FOR else ODD)
        else:
            event[name] = draw(NUMBERS)
    return event


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    event = draw(events())
    text = json.dumps(event, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:  # a repeated key, spelled plainly or escaped, same value or another
        name = draw(st.sampled_from(FIELDS))
        spelled = name if draw(st.booleans()) else name[0] + "".join(f"\\u{ord(c):04x}" for c in name[1:])
        value = event.get(name, "x") if draw(st.booleans()) else draw(st.one_of(ODD, NUMBERS))
        at = draw(st.sampled_from(["start", "end"]))
        member = f'"{spelled}": {json.dumps(value)}'
        text = "{" + member + ", " + text[1:] if at == "start" else text[:-1] + ", " + member + "}"
    if draw(st.integers(0, 5)) == 0:  # a non-finite literal
        text = text.replace(
            '"amount": ' + json.dumps(event.get("amount")),
            '"amount": ' + draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "1E2", "0.0e0"])),
            1,
        )
    raw = text.encode()
    mangle = draw(st.integers(0, 9))
    if mangle == 0:
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])) + raw[cut:]
    elif mangle == 1:
        raw = text.encode("utf-16")
    elif mangle == 2:
        raw = raw[: draw(st.integers(0, len(raw)))]
    content_type = draw(
        st.sampled_from(
            [
                None,
                b"application/json",
                b"application/json; charset=utf-8",
                b"APPLICATION/JSON",
                b" application/json ;x=1",
                b"text/plain",
                b"application/x-www-form-urlencoded",
                b"application/jsonx",
                b"",
            ]
        )
    )
    return raw, content_type


# --- the paths ---------------------------------------------------------------------------------------


def key_of(raw: bytes) -> bytes:
    """The key a producer would use: the (last) account_id, when there is one."""
    try:
        value = json.loads(raw).get("account_id")
    except (ValueError, AttributeError):
        return b"k"
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) and value else b"k"


def by_stream(raw: bytes, content_type: bytes | None) -> Verdict:
    headers = [] if content_type is None else [("content-type", content_type)]
    try:
        decode_transaction(key_of(raw), raw, headers, now_s=NOW.timestamp())
    except EventError as exc:
        return str(exc.reason)
    return None


def by_api(raw: bytes, content_type: bytes | None) -> Verdict:
    try:
        parse_transaction(raw, content_type, now_s=NOW.timestamp())
    except ApiValidationError as exc:
        return exc.reason
    return None


def by_model(raw: bytes) -> Verdict:
    """The pydantic model alone (it neither checks UTF-8 apart nor sees repeated keys: the contract layer does)."""
    try:
        Transaction.model_validate_json(raw, context=DEFAULT_WINDOW.at(NOW.timestamp()))
    except ValidationError as exc:
        return str(_classify(exc))
    return None


class RepeatedKeyError(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({name for name, _ in pairs}) != len(pairs):
        raise RepeatedKeyError
    return dict(pairs)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def by_json_schema(raw: bytes, content_type: bytes | None) -> bool:
    """What an external producer following docs/contracts.md checks: accepted or not."""
    if content_type is not None and content_type.split(b";")[0].strip().lower() != b"application/json":
        return False
    if len(raw) > MAX_MESSAGE_BYTES:
        return False
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_constant)
    except ValueError:  # not UTF-8, not JSON, a repeated key
        return False
    if not VALIDATOR.is_valid(document):
        return False
    moment = datetime.fromisoformat(document["event_time"]).timestamp()
    earliest, latest = NOW.timestamp() - float(WINDOW["max_behind_s"]), NOW.timestamp() + float(WINDOW["max_ahead_s"])
    return earliest <= moment <= latest


def integral_float_version(raw: bytes) -> bool:
    """`"schema_version": 1.0`: JSON Schema's data model cannot tell it from 1 (the one documented exception)."""
    try:
        version = json.loads(raw).get("schema_version")
    except (ValueError, AttributeError):
        return False
    return isinstance(version, float) and version == 1.0


def has_repeats(raw: bytes) -> bool:
    try:
        json.loads(raw, object_pairs_hook=_pairs)
    except RepeatedKeyError:
        return True
    except ValueError:
        return False
    return False


# --- the property ------------------------------------------------------------------------------------


def _valid(**changes: Any) -> bytes:
    event = {
        "event_id": "ev-1",
        "account_id": "acct-00042",
        "merchant_id": "m-001",
        "merchant_category": "5411",
        "amount": 12.5,
        "currency": "EUR",
        "country": "DE",
        "channel": "pos",
        "event_time": z(NOW - timedelta(minutes=1)),
    }
    event.update(changes)
    return json.dumps(event).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
@example((_valid(merchant_category="５４１１"), b"application/json"))
@example((_valid(schema_version=True), None))
def test_every_path_gives_the_same_verdict(record: tuple[bytes, bytes | None]) -> None:
    raw, content_type = record
    stream = by_stream(raw, content_type)
    api = by_api(raw, content_type)
    assert stream == api or (stream in KEY_REASONS and api is None), (raw, content_type, stream, api)
    accepted = stream is None
    schema = by_json_schema(raw, content_type)
    if integral_float_version(raw) and schema:
        assert stream == DeadLetterReason.UNKNOWN_SCHEMA_VERSION
    else:
        assert accepted == schema or (stream in KEY_REASONS and schema), (raw, content_type, stream, schema)
    # The model's own reason is the stream's for a UTF-8 JSON value with a JSON content type and no repeated key.
    plain = content_type in (None, b"application/json") and not has_repeats(raw)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        plain = False
    if plain and stream not in KEY_REASONS:
        assert by_model(raw) == stream, (raw, stream)


@pytest.mark.parametrize(
    ("raw", "content_type", "reason"),
    [
        (_valid(), b"text/plain", DeadLetterReason.UNSUPPORTED_CONTENT_TYPE),
        (b'{"event_id": "\xff"}', None, DeadLetterReason.NOT_UTF8),
        (_valid()[:-1] + b', "account_id": "acct-1"}', None, DeadLetterReason.SCHEMA_INVALID),
        (_valid(schema_version=1.0), None, DeadLetterReason.UNKNOWN_SCHEMA_VERSION),
        (_valid(merchant_category="５４１１"), None, DeadLetterReason.SCHEMA_INVALID),
        (_valid(event_time="9999-12-31T23:59:59Z"), None, DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW),
        (_valid(event_time=z(NOW + timedelta(days=1))), None, DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW),
        (b"{" + b" " * MAX_MESSAGE_BYTES + _valid()[1:], None, DeadLetterReason.OVERSIZE),
    ],
)
def test_the_defects_of_issue_12_get_one_reason_everywhere(raw: bytes, content_type: bytes | None, reason: str) -> None:
    assert by_stream(raw, content_type) == reason
    assert by_api(raw, content_type) == reason
    assert not by_json_schema(raw, content_type) or reason == DeadLetterReason.UNKNOWN_SCHEMA_VERSION
    assert by_stream(_valid(), None) is None and by_api(_valid(), None) is None and by_json_schema(_valid(), None)


def test_the_api_answers_content_type_and_size_with_their_http_status() -> None:
    for raw, content_type, status in [
        (_valid(), b"text/plain", 415),
        (b"{" + b" " * MAX_MESSAGE_BYTES + _valid()[1:], None, 413),
        (_valid(amount=-1), None, 422),
        (b"\xff", None, 422),
    ]:
        with pytest.raises(ApiValidationError) as info:
            parse_transaction(raw, content_type, now_s=NOW.timestamp())
        assert info.value.http_status == status


def test_the_time_parser_gives_pydantics_datetime() -> None:
    """The contract parses event times with `datetime.fromisoformat` (cheaper); for the one accepted spelling it
    gives what pydantic's own parser gives, instant, offset and serialization."""
    from pydantic import AwareDatetime, TypeAdapter

    adapter = TypeAdapter(AwareDatetime)
    for text in ["2026-12-07T00:00:00.5Z", "2026-12-07T00:00:00.123456+05:30", "2026-12-07T23:59:59-00:00"]:
        ours = Transaction.model_validate_json(_valid(event_time=text)).event_time
        theirs = adapter.validate_python(text)
        assert ours == theirs and ours.utcoffset() == theirs.utcoffset()
        assert adapter.dump_json(ours) == adapter.dump_json(theirs)
    assert math.isclose(datetime.fromisoformat("2026-12-07T00:00:00Z").timestamp(), 1796601600.0)
