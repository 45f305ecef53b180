"""The Feast objects of streamscore: entities, sources, feature views and feature services.

The view and field names are a contract: the stream processor pushes `account_realtime`, the scorer reads
all three views, training asks for the services `fraud_v1` and `fraud_v1_lite`. Each view's fields are
exactly those of its dataclass in `streamscore.features` (a unit test compares them).

`definitions(data_dir)` builds a fresh set whose file sources point into `data_dir` (tests, the CLI, any
deployment with its own folder). The module-level objects below are the same set for the default
`FEAST_DATA_DIR`, so the plain `feast` CLI works in this folder (`feast plan`, `feast apply`, …).
"""

from __future__ import annotations

from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, FeastType, Float64, Int64, String

from feature_repo.layout import (
    BATCH_TTL,
    CREATED_FIELD,
    MERCHANT_FILE,
    MERCHANT_VIEW,
    PROFILE_FILE,
    PROFILE_VIEW,
    REALTIME_FILE,
    REALTIME_PUSH_SOURCE,
    REALTIME_TTL,
    REALTIME_VIEW,
    SERVICES,
    TIMESTAMP_FIELD,
    FieldKind,
)
from feature_repo.layout import MERCHANT_FIELDS as MERCHANT_NAMES
from feature_repo.layout import PROFILE_FIELDS as PROFILE_NAMES
from feature_repo.layout import REALTIME_FIELDS as REALTIME_NAMES
from feature_repo.settings import FeastSettings

_TYPES: dict[FieldKind, FeastType] = {"int": Int64, "float": Float64, "string": String, "strings": Array(String)}


def _typed(fields: tuple[tuple[str, FieldKind], ...]) -> tuple[tuple[str, FeastType], ...]:
    return tuple((name, _TYPES[kind]) for name, kind in fields)


REALTIME_FIELDS = _typed(REALTIME_NAMES)
PROFILE_FIELDS = _typed(PROFILE_NAMES)
MERCHANT_FIELDS = _typed(MERCHANT_NAMES)
VIEW_FIELDS: dict[str, tuple[tuple[str, FeastType], ...]] = {
    REALTIME_VIEW: REALTIME_FIELDS,
    PROFILE_VIEW: PROFILE_FIELDS,
    MERCHANT_VIEW: MERCHANT_FIELDS,
}
__all__ = ["BATCH_TTL", "REALTIME_TTL", "SERVICES", "VIEW_FIELDS", "definitions"]


def _schema(fields: tuple[tuple[str, FeastType], ...]) -> list[Field]:
    return [Field(name=name, dtype=dtype) for name, dtype in fields]


def definitions(data_dir: Path) -> list[object]:
    """Every Feast object of the repository, its file sources under `data_dir`."""
    data_dir = data_dir.resolve()
    account = Entity(
        name="account", join_keys=["account_id"], value_type=ValueType.STRING, description="A card account."
    )
    merchant = Entity(
        name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING, description="A merchant."
    )
    realtime_log = FileSource(
        name="account_realtime_log",
        path=str(data_dir / REALTIME_FILE),
        timestamp_field=TIMESTAMP_FIELD,
        description="Offline log of the real-time view: the snapshot after every transaction of the history.",
    )
    realtime_push = PushSource(name=REALTIME_PUSH_SOURCE, batch_source=realtime_log)
    profile_source = FileSource(
        name="account_profile_daily",
        path=str(data_dir / PROFILE_FILE),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_FIELD,
    )
    merchant_source = FileSource(
        name="merchant_risk_daily",
        path=str(data_dir / MERCHANT_FILE),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_FIELD,
    )
    realtime = FeatureView(
        name=REALTIME_VIEW,
        entities=[account],
        ttl=REALTIME_TTL,
        schema=_schema(REALTIME_FIELDS),
        source=realtime_push,
        online=True,
        description="Per-account windows as of the account's latest transaction (streamscore.features).",
    )
    profile = FeatureView(
        name=PROFILE_VIEW,
        entities=[account],
        ttl=BATCH_TTL,
        schema=_schema(PROFILE_FIELDS),
        source=profile_source,
        online=True,
        description="The account's habits over the 30 days before each day's 00:00 UTC.",
    )
    merchant_risk = FeatureView(
        name=MERCHANT_VIEW,
        entities=[merchant],
        ttl=BATCH_TTL,
        schema=_schema(MERCHANT_FIELDS),
        source=merchant_source,
        online=True,
        description="Smoothed fraud rate over the 30 days before each day's 00:00 UTC, labels known by then.",
    )
    views = {REALTIME_VIEW: realtime, PROFILE_VIEW: profile, MERCHANT_VIEW: merchant_risk}
    services = [
        FeatureService(name=name, features=[views[v] for v in members], description=f"Model inputs of {name}.")
        for name, members in SERVICES.items()
    ]
    return [account, merchant, realtime_log, realtime_push, profile_source, merchant_source, *views.values(), *services]


# The default set, for the plain `feast` CLI (it collects the Feast objects it finds at module level).
(
    account,
    merchant,
    account_realtime_log,
    account_realtime_push,
    account_profile_daily,
    merchant_risk_daily,
    account_realtime,
    account_profile,
    merchant_risk,
    fraud_v1,
    fraud_v1_lite,
) = definitions(FeastSettings().data_dir)
