"""Event contracts: one typed model per event, JSON on the wire, strict validation.

Every event carries `schema_version`. Validation is strict: unknown fields are rejected, numbers must be
finite, amounts and scores are bounded, currencies are ISO-4217, countries ISO-3166 alpha-2, and event
times must carry a timezone. `decode_transaction` maps every defect to one reason of the fixed
`DeadLetterReason` list so a stream can dead-letter it with a precise cause.

One contract, one verdict: the model, the exported JSON Schema, the stream's `decode_transaction` and the API's
parsing (`validate_transaction`) accept and refuse the same bytes (a property-based test holds them equal). Hence
ASCII classes (`[0-9]`, never `\\d`, which Python's and Rust's regex engines extend to every Unicode digit), event
times in one RFC 3339 form both pydantic and a JSON Schema `date-time` accept, integer schema versions, and no
repeated keys.

A transaction's event time must also lie in a window around the clock of whoever receives it (`EventTimeWindow`:
`CONTRACT_EVENT_TIME_MAX_AHEAD_S` / `..._MAX_BEHIND_S`), applied through pydantic's validation context by the
receiving points (the scorer, the feature processor, the API, the producer client); building a model offline (the
history, training, the bench) passes no context and keeps the absolute bounds only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, TypeVar

import orjson
import pycountry
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from streamscore.errors import EventError

CONTENT_TYPE_JSON = "application/json"
MAX_AMOUNT = 1_000_000.0
"""Largest accepted transaction amount in the transaction's currency; above it the event is out of range."""
MAX_MESSAGE_BYTES = 64 * 1024
"""Largest accepted serialized transaction; a larger payload is dead-lettered as `oversize`."""
DEAD_LETTER_MESSAGE_LIMIT = 1024
"""Dead-letter reason messages are capped at this many UTF-8 bytes."""
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
"""Absolute lower bound of every event time (its year as written)."""
LATEST_EVENT_YEAR = 2199
"""Absolute upper bound of every event time's year as written: far inside pandas' nanosecond range (which ends in
2262), so an event some offline path accepts without a clock still converts for Feast (issue 12: one event dated
9999 wedged the feature processor with `OutOfBoundsDatetime`)."""
EVENT_TIME_MAX_AHEAD_S = 300.0
"""Default of how far a transaction's event time may be ahead of the receiving clock: clock skew between a
terminal or payment switch and us (NTP keeps servers within milliseconds; card terminals drift by minutes)."""
EVENT_TIME_MAX_BEHIND_S = 7 * 86400.0
"""Default of how far a transaction's event time may be behind the receiving clock: Kafka's default retention, so
a consumer catching up after an outage never refuses what the topic can still hold, and store-and-forward
(offline) card payments, presented within days, still pass."""


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
# Patterns use ASCII classes only and `$` only after a class that excludes a line break: Python's `re` (the
# `jsonschema` library), Rust's `regex` (pydantic, jsonschema-rs) and ECMA-262 (JSON Schema's own dialect) then
# agree on every string.

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


_TIME_OF_DAY = r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
_DATE = r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_EVENT_TIME_TEXT = re.compile(r"^[0-9]{4}" + _DATE + _TIME_OF_DAY)
"""The one accepted spelling of a time: RFC 3339 (a JSON Schema `date-time`) with an upper-case `T` and `Z`, seconds,
at most microseconds and a `±hh:mm` offset — the forms pydantic also parses, so both accept the same strings (pydantic
alone would take a space for `T`, `+0100`, missing seconds or a comma; RFC 3339 alone a leap second `:60`)."""
EVENT_TIME_PATTERN = r"^(20|21)[0-9]{2}" + _DATE + _TIME_OF_DAY
"""`_EVENT_TIME_TEXT` with the absolute year bounds, as the JSON Schema states them."""
WINDOW_KEYWORD = "x-streamscore-event-time-window"
"""JSON Schema extension keyword of `Transaction.event_time`: the window around the receiving clock."""


@dataclass(frozen=True, slots=True)
class EventTimeWindow:
    """How far a received transaction's event time may be ahead of and behind the receiving clock."""

    max_ahead_s: float = EVENT_TIME_MAX_AHEAD_S
    max_behind_s: float = EVENT_TIME_MAX_BEHIND_S

    def at(self, now_s: float | None = None) -> Received:
        """The validation context of an event received at `now_s` (epoch seconds; default: now)."""
        now = time.time() if now_s is None else now_s
        return Received(now - self.max_behind_s, now + self.max_ahead_s)


DEFAULT_WINDOW = EventTimeWindow()


def receiving_clock(timestamp_ms: float | None, log_append_time: bool) -> float | None:
    """The receiving clock (epoch seconds) of a Kafka record for the event-time window: the broker's append time when
    the topic stamps records itself (LogAppendTime, as the transactions topic does), so the scorer, the feature
    processor and any replay judge a record against the same instant, and a backlog scored after an outage is judged
    by when it arrived, not by when it was read. None — the consumer's wall clock — when the timestamp is the
    producer's own (CreateTime): a producer whose clock is wrong would move the window with its events."""
    if log_append_time and timestamp_ms is not None and timestamp_ms > 0:
        return timestamp_ms / 1000.0
    return None


class Received(NamedTuple):
    """Pydantic validation context of a received transaction: the bounds of its event time (epoch seconds). A named
    tuple: one is made per transaction received, and it is the cheapest to make."""

    earliest_s: float
    latest_s: float


_YEARS = (f"{EARLIEST_EVENT_TIME.year:04d}", f"{LATEST_EVENT_YEAR:04d}")


def _event_time(value: object, info: ValidationInfo) -> datetime:
    """Every check of an event time in one call (this runs once per transaction received): the spelling, the
    absolute years, and, when the validation context says when it was received (`Received`), the window."""
    if isinstance(value, str):
        # The year as written (in the event's own offset), as the JSON Schema pattern states it.
        if not _EVENT_TIME_TEXT.match(value):
            raise PydanticCustomError(
                "event_time_format",
                "a time must be a string YYYY-MM-DDThh:mm:ss[.ffffff] with a timezone, Z or ±hh:mm (RFC 3339)",
            )
        if not _YEARS[0] <= value[:4] <= _YEARS[1]:
            raise _outside_years(value)
        try:
            # For the spelling above, the standard library's parser gives pydantic's datetime (a test holds it),
            # at a fraction of the cost; the datetime then passes pydantic's own (strict) check as it is.
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:  # a day the month does not have
            raise PydanticCustomError("datetime_from_date_parsing", "{problem}", {"problem": str(exc)}) from None
    elif isinstance(value, datetime):
        parsed = value
        if parsed.tzinfo is not None and not EARLIEST_EVENT_TIME.year <= parsed.year <= LATEST_EVENT_YEAR:
            raise _outside_years(parsed.isoformat())
    else:
        raise PydanticCustomError("datetime_type", "a time must be a string (RFC 3339)")
    bounds = info.context
    if type(bounds) is Received and parsed.tzinfo is not None:
        at = parsed.timestamp()
        if not bounds.earliest_s <= at <= bounds.latest_s:
            raise PydanticCustomError(
                "event_time_out_of_window",
                "event time {time} is outside the window of {earliest} to {latest} around the receiving clock "
                "(CONTRACT_EVENT_TIME_MAX_AHEAD_S / CONTRACT_EVENT_TIME_MAX_BEHIND_S)",
                {"time": parsed.isoformat(), "earliest": _iso(bounds.earliest_s), "latest": _iso(bounds.latest_s)},
            )
    return parsed


def _outside_years(written: str) -> PydanticCustomError:
    return PydanticCustomError(
        "event_time_out_of_window",
        "event time {time} is outside the years {first}-{last}",
        {"time": written, "first": EARLIEST_EVENT_TIME.year, "last": LATEST_EVENT_YEAR},
    )


def _iso(epoch_s: float) -> str:
    if not math.isfinite(epoch_s):  # an open end (parse_event bounds times from above only)
        return "any time" if epoch_s < 0 else "no limit"
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")


def _integer(value: object) -> object:
    # JSON `1.0` and `true` equal 1 in Python, so Literal[1] alone accepts them; a version is written as an integer.
    if type(value) is not int:
        raise PydanticCustomError("schema_version_type", "schema_version must be an integer")
    return value


SchemaVersion = Annotated[Literal[1], BeforeValidator(_integer)]


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
    BeforeValidator(_event_time),
    # JSON Schema cannot bound a date-time; the pattern states the spelling and the absolute year bounds.
    Field(json_schema_extra={"pattern": EVENT_TIME_PATTERN}),
]
"""An event time; with a `Received` validation context (only `Transaction.event_time` gets one: the receiving points
pass it) also inside the window around the receiving clock."""
ReceivedEventTime = Annotated[
    EventTime,
    Field(
        description="When the payment happened. A receiver refuses a time more than "
        f"{WINDOW_KEYWORD}.max_ahead_s ahead of its clock or max_behind_s behind it (dead letter "
        "`event_time_out_of_window`); JSON Schema cannot say 'relative to now', so external producers check it "
        "themselves (docs/contracts.md).",
        json_schema_extra={
            WINDOW_KEYWORD: {
                "relative_to": "the receiver's clock",
                "max_ahead_s": EVENT_TIME_MAX_AHEAD_S,
                "max_behind_s": EVENT_TIME_MAX_BEHIND_S,
                "settings": ["CONTRACT_EVENT_TIME_MAX_AHEAD_S", "CONTRACT_EVENT_TIME_MAX_BEHIND_S"],
            }
        },
    ),
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

    schema_version: SchemaVersion = 1
    event_id: Identifier
    account_id: Identifier
    merchant_id: Identifier
    merchant_category: Annotated[str, Field(pattern=r"^[0-9]{4}$", description="ISO-18245 merchant category code")]
    amount: Amount
    currency: Currency
    country: Country
    channel: Channel
    device_id: Identifier | None = None
    event_time: ReceivedEventTime


class Label(Contract):
    """The outcome of a transaction, known only after a maturity delay; keyed by `account_id`."""

    schema_version: SchemaVersion = 1
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
ThresholdSource = Literal["model", "override", "default"]
"""Where the thresholds that decided a score came from: model = the version's own operating point (chosen by training
on its validation split, recorded with the version in the registry); override = SCORER_REVIEW_THRESHOLD /
SCORER_DECLINE_THRESHOLD; default = the documented defaults (0.3 / 0.7) for a version registered without one."""
Threshold = Annotated[float, Field(ge=0.0, le=1.0)]


class Score(Contract):
    """One model's verdict on one transaction, keyed by `account_id` on `scores` / `scores.shadow`."""

    schema_version: SchemaVersion = 1
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
    review_threshold: Threshold | None = Field(
        default=None,
        description="`review` from this score up (below `decline_threshold`); null with `thresholds` set: no score "
        "is reviewed (no threshold met the version's review objective)",
    )
    decline_threshold: Threshold | None = Field(
        default=None,
        description="`decline` from this score up; null with `thresholds` set: no score is declined (no threshold "
        "met the version's decline objective)",
    )
    thresholds: ThresholdSource | None = Field(
        default=None,
        description="Which thresholds decided: model (the version's own operating point), override (the scorer's "
        "SCORER_REVIEW_THRESHOLD / SCORER_DECLINE_THRESHOLD) or default (a version without a recorded operating "
        "point: 0.3 / 0.7). Null only on scores written before thresholds were recorded.",
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
        review_threshold: float | None,
        decline_threshold: float | None,
        thresholds: ThresholdSource | None,
    ) -> Score:
        """A Score from values that already meet the contract, without validating them again: the engine's
        (ids and amounts from a validated Transaction, the score checked to be a probability, names from validated
        settings, thresholds from a checked `streamscore.thresholds.Thresholds`), for less than half the validating
        constructor's cost — a score is made per transaction scored (`python -m timeit` on both,
        docs/benchmarks.md). The result is equal, field for field
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
                "review_threshold": review_threshold,
                "decline_threshold": decline_threshold,
                "thresholds": thresholds,
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
    EVENT_TIME_OUT_OF_WINDOW = "event_time_out_of_window"
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
    if any(d["loc"][:1] == ("schema_version",) for d in details):
        return DeadLetterReason.UNKNOWN_SCHEMA_VERSION
    if "finite_number" in types:
        return DeadLetterReason.NON_FINITE_NUMBER
    if types & _RANGE_ERRORS:
        return DeadLetterReason.OUT_OF_RANGE
    if "event_time_out_of_window" in types:
        return DeadLetterReason.EVENT_TIME_OUT_OF_WINDOW
    if "timezone_aware" in types or any(d["loc"][:1] == ("event_time",) for d in details):
        return DeadLetterReason.INVALID_TIMESTAMP
    if any(d["type"] == "value_error" and d["loc"][:1] in {("currency",), ("country",)} for d in details):
        return DeadLetterReason.INVALID_CODE
    return DeadLetterReason.SCHEMA_INVALID


def classify(error: ValidationError) -> DeadLetterReason:
    """The DeadLetterReason of a contract's ValidationError (a batch of transactions gets its reasons too)."""
    return _classify(error)


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


_JSON = CONTENT_TYPE_JSON.encode()


def check_content_type(content_type: bytes | None) -> None:
    """EventError `unsupported_content_type` unless `content_type` (a Kafka header or an HTTP header, raw) is absent
    or `application/json`, with or without parameters, in any case (media types are case-insensitive)."""
    if content_type is not None and content_type.split(b";", 1)[0].strip().lower() != _JSON:
        raise EventError(
            DeadLetterReason.UNSUPPORTED_CONTENT_TYPE,
            f"content-type {content_type[:100]!r} is not {CONTENT_TYPE_JSON}",
        )


def _refuse_duplicate(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise EventError(DeadLetterReason.SCHEMA_INVALID, f"{repeated}: the key appears more than once")
    return dict(pairs)


_SCALARS = (str, float, int, bool, type(None), datetime)
"""Values whose JSON holds no separating comma. Checked first, with concrete types: a score's 25 features are
scalars, and `isinstance` against the abstract `Mapping` costs ~1 µs a call (this check ran at 40 µs a score)."""


def _fewest_commas(value: object) -> int:
    """The commas the JSON of validated `value` has at the least: one between two members or items."""
    if isinstance(value, _SCALARS):
        return 0
    if isinstance(value, BaseModel):
        fields = value.model_fields_set
        items: Iterable[object] = (getattr(value, name) for name in fields)
        size = len(fields)
    elif isinstance(value, dict | Mapping):
        items, size = value.values(), len(value)
    elif isinstance(value, list | tuple):
        items, size = value, len(value)
    else:
        return 0
    return max(size - 1, 0) + sum(0 if isinstance(item, _SCALARS) else _fewest_commas(item) for item in items)


def reject_duplicate_keys(text: str | bytes, parsed: BaseModel, commas: int | None = None) -> None:
    """EventError `schema_invalid` when the JSON `text`, which validated as `parsed`, repeats a key in an object.

    pydantic (like every JSON parser here) keeps the last of repeated keys, so a body with `account_id` twice would
    be scored as the second. Parsing again to find repeats costs more than the validation itself; instead: a JSON
    value whose objects have no repeated key has exactly `_fewest_commas(parsed)` separating commas (each member of
    each object is a distinct field of the model, `extra="forbid"`), a repeat adds at least one more, and so does a
    comma inside a string. Only text with more commas than that (never a valid transaction: its strings hold no
    comma) is parsed again, with the standard library's hook, to tell the two apart. `commas`: the count when the
    caller knows it (a flat model: its fields set, less one)."""
    expected = _fewest_commas(parsed) if commas is None else commas
    found = text.count(",") if isinstance(text, str) else text.count(b",")
    if found <= expected:
        return
    try:
        json.loads(text, object_pairs_hook=_refuse_duplicate)
    except ValueError as exc:  # pydantic parsed it, so this does not happen; refuse rather than trust it
        raise EventError(DeadLetterReason.NOT_JSON, f"value is not JSON: {exc}") from None


def validate_transaction(
    value: bytes,
    content_type: bytes | None = None,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    window: EventTimeWindow | None = DEFAULT_WINDOW,
    now_s: float | None = None,
) -> Transaction:
    """Validate one received transaction's bytes (the value of a Kafka record or the body of an HTTP request) with
    its content type, raising EventError with a DeadLetterReason; the one check behind both transports.

    `window`: the event time's window around the receiving clock (`now_s`, default: now); None only for offline
    data (the history, tests of the generator), which keeps the absolute bounds."""
    if len(value) > max_bytes:
        raise EventError(DeadLetterReason.OVERSIZE, f"payload of {len(value)} bytes exceeds {max_bytes}")
    check_content_type(content_type)
    return _validate(value, window, now_s)


def _validate(value: bytes, window: EventTimeWindow | None, now_s: float | None) -> Transaction:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(DeadLetterReason.NOT_UTF8, f"value is not UTF-8: {exc}") from None
    try:
        event = Transaction.model_validate_json(text, context=None if window is None else window.at(now_s))
    except ValidationError as exc:
        raise EventError(_classify(exc), describe(exc)) from None
    # A transaction is flat: every member is one of its fields set.
    reject_duplicate_keys(text, event, len(event.model_fields_set) - 1)
    return event


def decode_transaction(
    key: bytes | None,
    value: bytes | None,
    headers: HeadersIn | None = None,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    window: EventTimeWindow | None = DEFAULT_WINDOW,
    now_s: float | None = None,
) -> Transaction:
    """Decode and validate one `transactions` record, raising EventError with a DeadLetterReason.

    `window` as in `validate_transaction`: a receiving service passes its configured one (ContractSettings)."""
    if value is None:
        raise EventError(DeadLetterReason.SCHEMA_INVALID, "the record has no value (tombstone)")
    if len(value) > max_bytes:
        raise EventError(DeadLetterReason.OVERSIZE, f"payload of {len(value)} bytes exceeds {max_bytes}")
    check_content_type(header_value(headers, Header.CONTENT_TYPE))
    if not key:
        raise EventError(DeadLetterReason.MISSING_KEY, "the record has no key; the key must be the account_id")
    event = _validate(value, window, now_s)
    if event.account_id.encode() != key:
        raise EventError(
            DeadLetterReason.KEY_MISMATCH,
            f"key {key[:64]!r} differs from account_id {event.account_id!r}",
        )
    return event


def parse_event(model: type[ContractT], value: bytes, *, not_after_s: float | None = None) -> ContractT:
    """Decode a trusted event of a known type (labels, scores) — raises EventError on any defect. No window behind
    the clock: their transaction's time was checked when it was received, and a label may come weeks after it (a
    chargeback). `not_after_s` (epoch seconds) bounds every time of the event from above: a reader whose clocks follow
    event time (the monitor's windows) refuses an event from the future as `event_time_out_of_window`, so one bad
    record cannot move its clock years ahead."""
    try:
        event = model.model_validate_json(
            value, context=None if not_after_s is None else Received(-math.inf, not_after_s)
        )
    except ValidationError as exc:
        raise EventError(_classify(exc), describe(exc)) from None
    reject_duplicate_keys(value, event)
    return event


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
