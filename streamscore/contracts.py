"""Event contracts: one typed model per event, JSON on the wire, strict validation.

Every event carries `schema_version`. Validation is strict: unknown fields are rejected, numbers must be
finite, amounts and scores are bounded, currencies are ISO-4217, countries ISO-3166 alpha-2, and event
times must carry a timezone. `decode_transaction` maps every defect to one reason of the fixed
`DeadLetterReason` list so a stream can dead-letter it with a precise cause.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import orjson
import pycountry
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from streamscore.errors import EventError

CONTENT_TYPE_JSON = "application/json"
MAX_AMOUNT = 1_000_000.0
"""Largest accepted transaction amount in the transaction's currency; above it the event is out of range."""
MAX_MESSAGE_BYTES = 64 * 1024
"""Largest accepted serialized transaction; a larger payload is dead-lettered as `oversize`."""
DEAD_LETTER_MESSAGE_LIMIT = 1024
"""Dead-letter reason messages are capped at this many UTF-8 bytes."""
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)


Headers = list[tuple[str, str | bytes | None]]
"""Kafka record headers as confluent-kafka accepts them."""
HeadersIn = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None]
"""Kafka record headers as confluent-kafka may return them."""


class Header:
    """Kafka header names used on every topic."""

    CONTENT_TYPE = "content-type"
    SCHEMA_VERSION = "schema-version"
    TRACEPARENT = "traceparent"
    MODEL_VERSION = "model-version"
    REPLAY_COUNT = "replay-count"
    SOURCE = "source"


# --- field types ---------------------------------------------------------------------------------

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
Identifier = Annotated[str, Field(pattern=_ID_PATTERN, description="1-64 characters: letters, digits, _ . : -")]


@cache
def _currency_codes() -> frozenset[str]:
    return frozenset(c.alpha_3 for c in pycountry.currencies)


@cache
def _country_codes() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


def _check_currency(code: str) -> str:
    if code not in _currency_codes():
        raise ValueError(f"'{code}' is not an ISO-4217 currency code")
    return code


def _check_country(code: str) -> str:
    if code not in _country_codes():
        raise ValueError(f"'{code}' is not an ISO-3166 alpha-2 country code")
    return code


def _check_event_time(value: datetime) -> datetime:
    # The year as written (in the event's own offset), so the JSON Schema pattern `^[2-9][0-9]{3}-` states
    # exactly the same rule: 2000-01-01T00:00+03:00 is accepted by both.
    if value.year < EARLIEST_EVENT_TIME.year:
        raise ValueError(f"event time {value.isoformat()} is before {EARLIEST_EVENT_TIME.date()}")
    return value


Currency = Annotated[
    str,
    Field(
        min_length=3,
        max_length=3,
        description="ISO-4217 alphabetic currency code, e.g. EUR",
        json_schema_extra={"enum": sorted(_currency_codes())},
    ),
    AfterValidator(_check_currency),
]
Country = Annotated[
    str,
    Field(
        min_length=2,
        max_length=2,
        description="ISO-3166-1 alpha-2 country code, e.g. DE",
        json_schema_extra={"enum": sorted(_country_codes())},
    ),
    AfterValidator(_check_country),
]
EventTime = Annotated[
    AwareDatetime,
    AfterValidator(_check_event_time),
    # JSON Schema cannot bound a date-time; the pattern states the year >= 2000 rule for external validators.
    Field(json_schema_extra={"pattern": r"^[2-9][0-9]{3}-"}),
]
Amount = Annotated[float, Field(gt=0.0, le=MAX_AMOUNT, description="Amount in `currency`, > 0")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Contract(BaseModel):
    """Base of all wire events: strict, frozen, no unknown fields, no NaN or infinity."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        ser_json_timedelta="float",
    )
    SCHEMA_VERSION: ClassVar[int] = 1

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# --- events ----------------------------------------------------------------------------------------


Channel = Literal["pos", "ecommerce", "contactless"]
CHANNELS: tuple[Channel, ...] = ("pos", "ecommerce", "contactless")


class Transaction(Contract):
    """A card payment, keyed by `account_id` on the `transactions` topic."""

    schema_version: Literal[1] = 1
    event_id: Identifier
    account_id: Identifier
    merchant_id: Identifier
    merchant_category: Annotated[str, Field(pattern=r"^\d{4}$", description="ISO-18245 merchant category code")]
    amount: Amount
    currency: Currency
    country: Country
    channel: Channel
    device_id: Identifier | None = None
    event_time: EventTime


class Label(Contract):
    """The outcome of a transaction, known only after a maturity delay; keyed by `account_id`."""

    schema_version: Literal[1] = 1
    event_id: Identifier
    account_id: Identifier
    is_fraud: bool
    fraud_pattern: Identifier | None = Field(default=None, description="Generator pattern, when known")
    event_time: EventTime
    labeled_at: EventTime


Decision = Literal["approve", "review", "decline"]
FeatureStatus = Literal["ok", "missing", "default"]
"""ok: all features found; missing: the entity has no features (documented defaults used);
default: some features were absent and took their defaults."""
ScoreSource = Literal["stream", "api"]


class Score(Contract):
    """One model's verdict on one transaction, keyed by `account_id` on `scores` / `scores.shadow`."""

    schema_version: Literal[1] = 1
    event_id: Identifier
    account_id: Identifier
    score: Probability
    decision: Decision
    model_name: Annotated[str, Field(min_length=1, max_length=128)]
    model_version: Annotated[str, Field(min_length=1, max_length=64)]
    variant: Identifier
    experiment_id: Identifier
    feature_status: FeatureStatus
    amount: Amount
    currency: Currency
    event_time: EventTime
    scored_time: EventTime
    latency_ms: Annotated[float, Field(ge=0.0)]
    source: ScoreSource = "stream"
    features: dict[str, float] | None = Field(
        default=None, description="The exact feature values the model scored with (for drift monitoring)"
    )

    @classmethod
    def trusted(
        cls,
        *,
        event_id: str,
        account_id: str,
        score: float,
        decision: Decision,
        model_name: str,
        model_version: str,
        variant: str,
        experiment_id: str,
        feature_status: FeatureStatus,
        amount: float,
        currency: str,
        event_time: datetime,
        scored_time: datetime,
        latency_ms: float,
        source: ScoreSource,
        features: dict[str, float] | None,
    ) -> Score:
        """A Score from values that already meet the contract, without validating them again: the engine's
        (ids and amounts from a validated Transaction, the score checked to be a probability, names from validated
        settings), for less than half the validating constructor's cost — a score is made per transaction scored
        (`python -m timeit` on both, docs/benchmarks.md). The result is equal, field for field
        and byte for byte, to `Score(...)` with the same values (a test holds it). Feature values are the one input
        not checked upstream: any NaN or infinity among them (their sum is then not finite) takes the validating
        constructor, which refuses it exactly as before."""
        if features is not None and not math.isfinite(sum(features.values())):
            return cls(**{k: v for k, v in locals().items() if k in _SCORE_ARGUMENTS})
        obj = _new_object(cls)
        _set_attribute(
            obj,
            "__dict__",
            {
                "schema_version": 1,
                "event_id": event_id,
                "account_id": account_id,
                "score": score,
                "decision": decision,
                "model_name": model_name,
                "model_version": model_version,
                "variant": variant,
                "experiment_id": experiment_id,
                "feature_status": feature_status,
                "amount": amount,
                "currency": currency,
                "event_time": event_time,
                "scored_time": scored_time,
                "latency_ms": latency_ms,
                "source": source,
                "features": features,
            },
        )
        _set_attribute(obj, "__pydantic_fields_set__", set(_SCORE_ARGUMENTS))
        _set_attribute(obj, "__pydantic_extra__", None)
        _set_attribute(obj, "__pydantic_private__", None)
        return obj

    def to_json(self) -> bytes:
        """The same bytes as pydantic's `model_dump_json` (a test holds them equal), ~5× cheaper: every field is
        a str, float, int, UTC datetime or a dict of floats, already validated at construction. Scores are the
        scorer's hottest output."""
        return orjson.dumps(self.__dict__, option=orjson.OPT_UTC_Z)


_new_object = object.__new__
_set_attribute = object.__setattr__
_SCORE_ARGUMENTS = frozenset(Score.model_fields) - {"schema_version"}


class DeadLetterReason(StrEnum):
    """The fixed list of dead-letter error classes. Documented in docs/contracts.md."""

    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    SCHEMA_INVALID = "schema_invalid"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    NON_FINITE_NUMBER = "non_finite_number"
    OUT_OF_RANGE = "out_of_range"
    INVALID_CODE = "invalid_code"
    INVALID_TIMESTAMP = "invalid_timestamp"
    MISSING_KEY = "missing_key"
    KEY_MISMATCH = "key_mismatch"
    OVERSIZE = "oversize"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    INFERENCE_FAILED = "inference_failed"
    UNWRITABLE_FEATURES = "unwritable_features"
    PROCESSING_FAILED = "processing_failed"


DeadLetterStage = Literal["decode", "validate", "features", "inference", "apply", "push"]


_DLQ_PREFIX = "dlq-"


class DeadLetter(Contract):
    """Why an event was dead-lettered. Travels as headers beside the original, untouched bytes."""

    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp_ms: int
    consumer_group: str
    stage: DeadLetterStage
    error_class: Annotated[DeadLetterReason, Field(strict=False)]
    error_message: str
    scorer_version: str
    payload_size: int
    payload_sha256: str
    truncated: bool = False

    @staticmethod
    def cap_message(message: str) -> str:
        """Cut `message` to at most DEAD_LETTER_MESSAGE_LIMIT UTF-8 bytes without splitting a character."""
        raw = message.encode("utf-8")
        if len(raw) <= DEAD_LETTER_MESSAGE_LIMIT:
            return message
        return raw[: DEAD_LETTER_MESSAGE_LIMIT - 3].decode("utf-8", errors="ignore") + "..."

    @classmethod
    def build(cls, payload: bytes | None, **fields: Any) -> DeadLetter:
        data = payload or b""
        fields["error_message"] = cls.cap_message(str(fields.get("error_message", "")))
        return cls(payload_size=len(data), payload_sha256=hashlib.sha256(data).hexdigest(), **fields)

    def to_headers(self) -> Headers:
        return [
            (_DLQ_PREFIX + name.replace("_", "-"), str(value).encode())
            for name, value in self.model_dump(mode="json").items()
        ]

    @classmethod
    def from_headers(cls, headers: HeadersIn | None) -> DeadLetter:
        pairs = headers.items() if isinstance(headers, Mapping) else headers or []
        raw = {
            name[len(_DLQ_PREFIX) :].replace("-", "_"): value.decode() if isinstance(value, bytes) else value
            for name, value in pairs
            if name.startswith(_DLQ_PREFIX) and value is not None
        }
        return cls.model_validate(raw, strict=False)


ContractT = TypeVar("ContractT", bound=Contract)

EVENT_MODELS: dict[str, type[Contract]] = {
    "Transaction": Transaction,
    "Label": Label,
    "Score": Score,
    "DeadLetter": DeadLetter,
}


# --- decoding with precise reasons -----------------------------------------------------------------

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _classify(error: ValidationError) -> DeadLetterReason:
    details = error.errors(include_url=False)
    types = {d["type"] for d in details}
    if "json_invalid" in types:
        return DeadLetterReason.NOT_JSON
    if any(d["loc"][:1] == ("schema_version",) and d["type"] == "literal_error" for d in details):
        return DeadLetterReason.UNKNOWN_SCHEMA_VERSION
    if "finite_number" in types:
        return DeadLetterReason.NON_FINITE_NUMBER
    if types & _RANGE_ERRORS:
        return DeadLetterReason.OUT_OF_RANGE
    if "timezone_aware" in types or any(d["loc"][:1] == ("event_time",) for d in details):
        return DeadLetterReason.INVALID_TIMESTAMP
    if any(d["type"] == "value_error" and d["loc"][:1] in {("currency",), ("country",)} for d in details):
        return DeadLetterReason.INVALID_CODE
    return DeadLetterReason.SCHEMA_INVALID


def describe(error: ValidationError) -> str:
    """A one-line, human message naming each offending field."""
    parts = []
    for detail in error.errors(include_url=False):
        where = ".".join(str(p) for p in detail["loc"]) or "<event>"
        parts.append(f"{where}: {detail['msg']}")
    return "; ".join(parts)


def header_value(headers: HeadersIn | None, name: str) -> bytes | None:
    """The first value of header `name`, as bytes."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or []
    for key, value in pairs:
        if key == name:
            return value.encode() if isinstance(value, str) else value
    return None


def decode_transaction(
    key: bytes | None,
    value: bytes | None,
    headers: HeadersIn | None = None,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Transaction:
    """Decode and validate one `transactions` record, raising EventError with a DeadLetterReason."""
    if value is None:
        raise EventError(DeadLetterReason.SCHEMA_INVALID, "the record has no value (tombstone)")
    if len(value) > max_bytes:
        raise EventError(DeadLetterReason.OVERSIZE, f"payload of {len(value)} bytes exceeds {max_bytes}")
    content_type = header_value(headers, Header.CONTENT_TYPE)
    if content_type is not None and content_type.split(b";")[0].strip() != CONTENT_TYPE_JSON.encode():
        raise EventError(
            DeadLetterReason.UNSUPPORTED_CONTENT_TYPE,
            f"content-type {content_type[:100]!r} is not {CONTENT_TYPE_JSON}",
        )
    if not key:
        raise EventError(DeadLetterReason.MISSING_KEY, "the record has no key; the key must be the account_id")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(DeadLetterReason.NOT_UTF8, f"value is not UTF-8: {exc}") from None
    try:
        event = Transaction.model_validate_json(text)
    except ValidationError as exc:
        raise EventError(_classify(exc), describe(exc)) from None
    if event.account_id.encode() != key:
        raise EventError(
            DeadLetterReason.KEY_MISMATCH,
            f"key {key[:64]!r} differs from account_id {event.account_id!r}",
        )
    return event


def parse_event(model: type[ContractT], value: bytes) -> ContractT:
    """Decode a trusted event of a known type (labels, scores) — raises EventError on any defect."""
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        raise EventError(_classify(exc), describe(exc)) from None


def headers_for(event: Contract, traceparent: str | None = None, **extra: str) -> Headers:
    headers: Headers = [
        (Header.CONTENT_TYPE, CONTENT_TYPE_JSON.encode()),
        (Header.SCHEMA_VERSION, str(event.SCHEMA_VERSION).encode()),
    ]
    if traceparent:
        headers.append((Header.TRACEPARENT, traceparent.encode()))
    headers.extend((name.replace("_", "-"), value.encode()) for name, value in extra.items())
    return headers


_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def is_traceparent(value: str) -> bool:
    """W3C trace-context `traceparent`, version 00."""
    return bool(_TRACEPARENT.match(value))


def json_schemas() -> dict[str, str]:
    """JSON Schema text for every event, as written to docs/schemas/."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(mode="validation"), indent=2, sort_keys=True) + "\n"
        for name, model in EVENT_MODELS.items()
    }
