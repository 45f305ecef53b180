"""The names of the feature repository — views, fields, services, TTLs, files and timestamp columns —
without importing Feast (which takes seconds), so training and the batch builder can use them cheaply.
`feature_repo.definitions` builds the Feast objects from exactly these names."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from streamscore.features import IDLE_S

FieldKind = Literal["int", "float", "string", "strings"]

REALTIME_VIEW = "account_realtime"
PROFILE_VIEW = "account_profile"
MERCHANT_VIEW = "merchant_risk"
REALTIME_PUSH_SOURCE = "account_realtime_push"
SERVICES: dict[str, tuple[str, ...]] = {
    "fraud_v1": (REALTIME_VIEW, PROFILE_VIEW, MERCHANT_VIEW),
    "fraud_v1_lite": (REALTIME_VIEW, PROFILE_VIEW),
}
"""The views of each feature service, one service per model configuration."""

REALTIME_TTL = timedelta(seconds=IDLE_S)
"""A real-time row older than this no longer joins: the account counts as having no recent history (and its state
starts afresh at its next transaction: `streamscore.features.IDLE_S`)."""
BATCH_TTL = timedelta(days=2)
"""Daily batch rows: yesterday's snapshot always joins, a missed day is tolerated, older rows do not."""
VIEW_TTLS: dict[str, timedelta] = {REALTIME_VIEW: REALTIME_TTL, PROFILE_VIEW: BATCH_TTL, MERCHANT_VIEW: BATCH_TTL}

REALTIME_FIELDS: tuple[tuple[str, FieldKind], ...] = (
    ("tx_count_5m", "int"),
    ("tx_count_1h", "int"),
    ("tx_count_24h", "int"),
    ("amount_sum_5m", "float"),
    ("amount_sum_1h", "float"),
    ("amount_sum_24h", "float"),
    ("distinct_merchants_1h", "int"),
    ("last_event_ts", "float"),
    ("known_devices", "strings"),
    ("known_countries", "strings"),
)
PROFILE_FIELDS: tuple[tuple[str, FieldKind], ...] = (
    ("amount_mean_30d", "float"),
    ("amount_std_30d", "float"),
    ("tx_count_30d", "int"),
    ("home_country", "string"),
    ("usual_countries", "strings"),
    ("usual_devices", "strings"),
)
MERCHANT_FIELDS: tuple[tuple[str, FieldKind], ...] = (
    ("fraud_rate_30d", "float"),
    ("tx_count_30d", "int"),
)
VIEW_FIELDS: dict[str, tuple[tuple[str, FieldKind], ...]] = {
    REALTIME_VIEW: REALTIME_FIELDS,
    PROFILE_VIEW: PROFILE_FIELDS,
    MERCHANT_VIEW: MERCHANT_FIELDS,
}

TRANSACTIONS_FILE = "transactions.parquet"
LABELS_FILE = "labels.parquet"
REALTIME_FILE = "account_realtime.parquet"
PROFILE_FILE = "account_profile.parquet"
MERCHANT_FILE = "merchant_risk.parquet"
ACCOUNT_STATE_FILE = "account_state.parquet"
"""Each account's stream-processor state after the whole history (account_id, state as JSON): the seed the feature
processor continues from, so live windows and known devices include the history (FEATURES_SEED_PATH)."""
TIMESTAMP_FIELD = "event_timestamp"
"""Event timestamp column of every offline source (the snapshot instant, or the transaction's event time)."""
CREATED_FIELD = "created_timestamp"
"""When a batch row was computed (Feast's tie-breaker between rows with the same event timestamp)."""
