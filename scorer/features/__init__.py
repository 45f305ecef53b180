"""Feature reads of the scorer: the `FeatureClient` interface and its two implementations.

- `FeastFeatureClient` (`feast_client.py`): Feast's SDK, the reference (any online store, imports Feast).
- `RedisFeatureClient` (`redis_client.py`): one pipelined round trip to Redis over Feast's key layout, the
  fast path (does not import Feast).

The implementations are imported lazily: choosing `redis` never pays for importing Feast.
"""

from __future__ import annotations

from typing import Literal

from feature_repo.settings import FeastSettings
from scorer.features.base import FeatureClient, FeatureStoreUnavailableError, OnlineRow
from scorer.features.connection import DEFAULT_TIMEOUT_S

__all__ = ["FeatureClient", "FeatureStoreUnavailableError", "OnlineRow", "make_feature_client"]


def make_feature_client(
    kind: Literal["redis", "feast"],
    feast_settings: FeastSettings,
    *,
    connect_timeout_s: float = DEFAULT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FeatureClient:
    """The feature client `kind` for the Feast project and online store of `feast_settings` (the Redis
    connection is its `redis` block). Raises ConfigError when `redis` is asked of a non-Redis online store."""
    if kind == "feast":
        from scorer.features.feast_client import FeastFeatureClient

        return FeastFeatureClient.from_settings(
            feast_settings, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s
        )
    if kind == "redis":
        from scorer.features.redis_client import RedisFeatureClient

        return RedisFeatureClient.from_settings(
            feast_settings, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s
        )
    raise ValueError(f"unknown feature client {kind!r} (expected 'redis' or 'feast')")
