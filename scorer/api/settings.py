"""Settings of the ad-hoc API (`API_…`), composed with the scorer's: same variants, experiment, thresholds,
feature client and registry as the stream (`SCORER_…`, `FEAST_…`, `REDIS_…`, `REGISTRY_…`)."""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scorer.settings import ScorerSettings

PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "placeholder", "password", "test", "apikey", "api-key"})
"""Keys whose digest is refused at start-up: a placeholder must never protect a deployment."""
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ApiKey(BaseModel):
    """One named key, stored only as the SHA-256 hex digest of the secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    sha256: str
    revoked: bool = False

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        value = value.lower()
        if not _HEX64.match(value):
            raise ValueError("sha256 must be 64 hexadecimal characters (the digest of the key, never the key)")
        if value in {hashlib.sha256(p.encode()).hexdigest() for p in PLACEHOLDERS}:
            raise ValueError("this digest is of a placeholder key; generate one with `streamscore api-key NAME`")
        return value


class ApiSettings(BaseSettings):
    """The investigators' HTTP API (`streamscore api`)."""

    model_config = SettingsConfigDict(env_prefix="API_", extra="forbid", use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Interface uvicorn listens on (0.0.0.0 in containers)."""
    port: int = Field(default=8080, ge=0, le=65535)
    """HTTP port of the API (0 = a free port, logged)."""
    keys: list[ApiKey] = Field(default_factory=list)
    """JSON list of {name, sha256, revoked}: the SHA-256 digests of the accepted `X-API-Key` values. Create one
    with `streamscore api-key NAME`; set `revoked: true` (or remove the entry) to revoke it."""
    metrics_require_key: bool = True
    """Whether `/metrics` needs a key like the scoring routes (false: open to an internal Prometheus)."""
    rate_per_s: float = Field(default=50.0, gt=0)
    """Per key: sustained requests per second (token-bucket refill rate)."""
    burst: int = Field(default=100, ge=1)
    """Per key: bucket size, the most requests accepted at once."""
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    """Larger request bodies are refused with 413, whether they announce a Content-Length or are chunked."""
    header_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    """A request's head (request line and headers) must arrive within this many seconds of its first byte — the
    first request's within this long of the connection's start — else the connection is closed (with 408 when
    part of a request arrived). Between requests uvicorn's keep-alive timeout (5 s) applies instead."""
    body_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """A request's body must arrive within this many seconds of the end of its head, else 408 and the
    connection is closed (with `API_MAX_BODY_BYTES` of 256 KiB: at least ~9 KB/s)."""
    max_instances: int = Field(default=256, ge=1, le=10_000)
    """Most transactions in one `/v1/score/batch` request."""
    batching: bool = True
    """Gather concurrent single requests into micro-batches (the engine's batcher); false = one at a time."""
    max_batch_size: int = Field(default=64, ge=1, le=10_000)
    """A micro-batch of concurrent requests closes at this many requests..."""
    max_queue_delay_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    """...or this long after its first request, whichever comes first."""
    audit: bool = True
    """Write every API prediction to Kafka (`scores` / `scores.shadow`, source=api) for the monitor and audits."""
    audit_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """An audit record not delivered within this long fails and is counted (`streamscore_api_audit_failures_total`);
    `/readyz` reports the audit producer while its deliveries fail or records have waited this long."""
    registry_stale_after_s: float = Field(default=60.0, gt=0.0, le=86400.0)
    """`/readyz` reports the registry when the model watcher (every SCORER_RELOAD_INTERVAL_S) has not read its
    aliases for this long. The probe asks no registry itself: it reads the watcher's state."""
    demo_ui: bool = True
    """Mount the Gradio investigator page at `/demo`."""
    scorer: ScorerSettings = Field(default_factory=ScorerSettings)

    @model_validator(mode="after")
    def _unique_names(self) -> ApiSettings:
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"API_KEYS names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _stale_after_a_poll(self) -> ApiSettings:
        if self.registry_stale_after_s <= self.scorer.reload_interval_s:
            raise ValueError(
                f"API_REGISTRY_STALE_AFTER_S ({self.registry_stale_after_s:g}) must exceed SCORER_RELOAD_INTERVAL_S "
                f"({self.scorer.reload_interval_s:g}): the registry is read only that often"
            )
        return self

    def active_keys(self) -> dict[str, str]:
        """digest → name of the keys that are not revoked."""
        return {k.sha256: k.name for k in self.keys if not k.revoked}
