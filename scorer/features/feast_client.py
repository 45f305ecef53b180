"""`FeastFeatureClient`: the reference reader, Feast's own SDK through `feature_repo.store.read_online` (one
`get_online_features` call per batch; Feast fetches each distinct entity once per view).

Feast builds its redis-py client from the connection string with redis-py's defaults: no socket timeouts (a
hung Redis blocks the read forever) and 3 retries with random exponential backoff of up to 1 + 2 + 4 s. The
connection string can carry timeouts but not a retry policy, so `from_settings` gives Feast's Redis online
store a client with short timeouts and no retries of its own: the scorer's loop does the backing off (with
its partitions paused), a read just fails fast with `FeatureStoreUnavailableError`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

import redis
from feast import FeatureStore

from feature_repo.settings import FeastSettings
from feature_repo.store import open_store, read_online
from scorer.features.base import FeatureClient, FeatureStoreUnavailableError, OnlineRow, check_as_of
from scorer.features.connection import DEFAULT_TIMEOUT_S, bounded_redis_client
from streamscore.settings import RedisSettings

logger = logging.getLogger(__name__)

_PING_KEY = ("__streamscore_ping__", "__streamscore_ping__")
_UNAVAILABLE: tuple[type[BaseException], ...] = (redis.RedisError, OSError, sqlite3.OperationalError)


class FeastFeatureClient(FeatureClient):
    """Feast's SDK over any online store of `FeastSettings` (Redis or SQLite)."""

    def __init__(
        self, store: FeatureStore, *, description: str = "the Feast online store", address: str | None = None
    ) -> None:
        self.store = store
        self.description = description
        self.address = address
        """host:port of a Redis online store (None: SQLite), named in the error when it does not answer."""

    @classmethod
    def from_settings(
        cls,
        settings: FeastSettings,
        *,
        connect_timeout_s: float = DEFAULT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> FeastFeatureClient:
        store = open_store(settings)
        address = None
        if settings.online_store == "redis":
            address = f"{settings.redis.host}:{settings.redis.port}"
            _give_feast_a_bounded_client(store, settings.redis, connect_timeout_s, read_timeout_s)
            where = f"Redis at {settings.redis.host}:{settings.redis.port} (Feast SDK, project {settings.project})"
        else:
            where = f"SQLite online store {settings.sqlite_path} (Feast SDK, project {settings.project})"
        return cls(store, description=where, address=address)

    def read(self, keys: Sequence[tuple[str, str]], as_of: Sequence[float] | None = None) -> list[OnlineRow]:
        check_as_of(keys, as_of)
        if not keys:
            return []
        instants = None if as_of is None else [datetime.fromtimestamp(t, UTC) for t in as_of]
        try:
            return read_online(self.store, keys, as_of=instants)
        except _UNAVAILABLE as exc:
            raise FeatureStoreUnavailableError(
                self.description, f"read failed: {type(exc).__name__}: {exc}", self.address
            ) from exc

    def ping(self) -> None:
        # Feast has no ping: a read of a key nobody writes exercises the registry and the online store.
        self.read([_PING_KEY])

    def close(self) -> None:
        online = getattr(self.store.provider, "online_store", None)
        client = getattr(online, "_client", None)
        if isinstance(client, redis.Redis):
            client.close()


def _give_feast_a_bounded_client(
    store: FeatureStore, settings: RedisSettings, connect_timeout_s: float, read_timeout_s: float
) -> None:
    # RedisOnlineStore creates its client lazily into `_client` (Feast 0.67, feast/infra/online_stores/redis.py,
    # `_get_client`); setting it first is the only way to choose the retry policy. If a Feast upgrade renames
    # it, reads still work with Feast's defaults (slower to fail), and the integration test that expects a
    # fast FeatureStoreUnavailableError on a closed port says so.
    online = getattr(store.provider, "online_store", None)
    if online is None or not hasattr(type(online), "_client"):
        logger.warning("Feast's Redis online store has no `_client`: keeping its default timeouts and retries")
        return
    online._client = bounded_redis_client(settings, connect_timeout_s, read_timeout_s)
