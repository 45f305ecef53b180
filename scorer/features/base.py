"""The scorer's feature-read interface: one `read` per batch, whatever store answers it.

`FeatureClient.read` returns, for every (account_id, merchant_id) of a batch and in order, what the Feast online
store holds: the account's real-time snapshot, its daily profile and the merchant's risk, each None when the
view has no row (never zeros; `streamscore.features.transaction_features` applies the documented defaults).
Two implementations, proven equal by a randomized integration test: `FeastFeatureClient` (Feast's SDK, the
reference) and `RedisFeatureClient` (one pipelined Redis round trip over Feast's own key layout, the fast
path).

Failures of the store itself (connection refused, timeouts, Redis errors) raise `FeatureStoreUnavailableError`,
an infrastructure error: the scorer backs off and retries the batch, it never dead-letters an event for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from feature_repo.layout import VIEW_TTLS
from streamscore.errors import LOCAL_REDIS, InfraError, start_hint
from streamscore.features import AccountProfile, MerchantRisk, RealtimeSnapshot

OnlineRow = tuple[RealtimeSnapshot | None, AccountProfile | None, MerchantRisk | None]
"""What the online store holds for one (account, merchant) pair; None where a view has no row."""

TTL_SECONDS: dict[str, float] = {view: ttl.total_seconds() for view, ttl in VIEW_TTLS.items()}
"""Per view: a row older than this at the key's `as_of` counts as absent (the offline join's rule)."""


class FeatureStoreUnavailableError(InfraError):
    """The online store cannot be read (connection refused, timeout, a Redis error): retry with backoff, never
    dead-letter — the events are fine, the store is not."""

    http_status = 503

    def __init__(self, store: str, problem: str, address: str | None = None) -> None:
        """`address`: host:port of a Redis store (None for SQLite); `streamscore infra up` is suggested only for the
        local stack's own address."""
        hint = start_hint(address, LOCAL_REDIS, "REDIS_HOST / REDIS_PORT") if address else "check the FEAST_… settings"
        super().__init__(store, f"{problem}; {hint[0].lower()}{hint[1:]}")
        self.problem = problem


class FeatureClient(ABC):
    """Reads the three feature views of many (account, merchant) pairs at once."""

    @abstractmethod
    def read(self, keys: Sequence[tuple[str, str]], as_of: Sequence[float] | None = None) -> list[OnlineRow]:
        """For each (account_id, merchant_id) of `keys`, in order: (real-time snapshot, profile, merchant risk),
        None where the view has no row. `as_of` gives one instant per key (epoch seconds, the transaction's
        event time): a row older than its view's TTL at that instant also counts as absent, exactly as
        `feature_repo.store.read_online(as_of=...)` and the offline join decide. A key repeated in the batch is
        fetched once. Raises FeatureStoreUnavailableError when the store cannot be reached in time."""

    @abstractmethod
    def ping(self) -> None:
        """Return when the store answers; raise FeatureStoreUnavailableError otherwise."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (the client is not used afterwards)."""


def check_as_of(keys: Sequence[tuple[str, str]], as_of: Sequence[float] | None) -> None:
    if as_of is not None and len(as_of) != len(keys):
        raise ValueError(f"as_of has {len(as_of)} instants for {len(keys)} keys")
