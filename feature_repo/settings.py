"""Settings of the Feast repository (`FEAST_…`): where its files live and which online store it uses.

The Redis connection comes from the shared `RedisSettings` block (`REDIS_…`), so the stream processor, the
scorer and the CLI reach the same Redis with the same variables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamscore.settings import RedisSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPO_DIR = Path(__file__).resolve().parent
"""This folder: `feature_store.yaml` and the definitions the plain `feast` CLI reads."""
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,62}$")


class FeastSettings(BaseSettings):
    """The Feast feature store: registry, offline files and online store (`FEAST_…`)."""

    model_config = SettingsConfigDict(env_prefix="FEAST_", extra="forbid", use_attribute_docstrings=True)

    project: str = "streamscore"
    """Feast project: the namespace of the registry entries and of every online-store key (tests use a unique
    one each, so they can share one Redis)."""
    data_dir: Path = PROJECT_ROOT / "data" / "features"
    """The offline sources: the batch parquet files (account_profile, merchant_risk) and the real-time log
    (account_realtime), written by `streamscore features batch`."""
    registry_path: Path = PROJECT_ROOT / "data" / "feast" / "registry.db"
    """Feast's file registry (what `streamscore features apply` wrote)."""
    online_store: Literal["redis", "sqlite"] = "redis"
    """Online store: `redis` (the default, REDIS_* settings) or `sqlite` (a machine without Redis)."""
    sqlite_path: Path = PROJECT_ROOT / "data" / "feast" / "online_store.db"
    """SQLite file of the online store when FEAST_ONLINE_STORE=sqlite."""
    registry_cache_ttl_s: int = Field(default=60, ge=0)
    """How long a process trusts its cached copy of the registry before re-reading the file (0 = never
    re-read)."""
    redis_key_ttl_s: int = Field(default=9 * 86400, ge=0)
    """A Redis online-store key not written for this long expires (Feast's `key_ttl_seconds`: every write, pushed or
    materialized, sets it again). The default, two days idle (no row that old joins: the views' TTLs) plus the
    event-time window's seven days of lateness, is when the stream processor drops the account's state too, so the
    store holds the accounts of the last nine days, not every account seen. 0: keys never expire."""
    redis: RedisSettings = Field(default_factory=RedisSettings)

    @field_validator("project")
    @classmethod
    def _valid_project(cls, value: str) -> str:
        if not _PROJECT_NAME.match(value):
            raise ValueError(
                "FEAST_PROJECT must start with a letter or digit and contain only letters, digits and '_' "
                f"(at most 63 characters), got {value!r}"
            )
        return value
