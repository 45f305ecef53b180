"""API keys (SHA-256 digests, constant-time comparison) and per-key token-bucket rate limiting."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streamscore.errors import StreamscoreError

KEY_HEADER = "X-API-Key"


class UnauthorizedError(StreamscoreError):
    http_status = 401

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}: send a valid key in the {KEY_HEADER} header")


class RateLimitedError(StreamscoreError):
    http_status = 429

    def __init__(self, name: str, retry_after_s: int) -> None:
        super().__init__(f"key {name!r} is over its rate limit; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


class KeyChecker:
    """Maps a presented key to its name. Every configured digest is compared, in constant time, whatever
    matches: the time taken does not tell which key (or how much of one) was right."""

    def __init__(self, digests: Mapping[str, str]) -> None:
        self._digests = [(bytes.fromhex(d), name) for d, name in digests.items()]

    def name_of(self, presented: str | None) -> str:
        if not presented:
            raise UnauthorizedError("missing API key")
        candidate = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for stored, name in self._digests:
            if hmac.compare_digest(candidate, stored):
                found = name
        if found is None:
            raise UnauthorizedError("unknown or revoked API key")
        return found


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """One token bucket per key name: `rate` tokens per second, at most `burst` stored. Single-threaded use
    (the event loop)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str) -> None:
        now = self.clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        raise RateLimitedError(name, max(1, math.ceil((1.0 - bucket.tokens) / self.rate)))
