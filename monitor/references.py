"""The drift references of the model versions the monitor meets, fetched once per version and cached.

A score says which model version produced it (`Score.model_version`); that version's reference.json (frozen
bins and a reference sample, written by training at registration) is what its scores — and, for the champion,
the features it scored with — are compared with. Documents come from the MLflow registry
(`streamscore.registry.Registry.reference`) in production and from a dict in tests; loading is blocking (MLflow),
so the Faust edge calls `load` on an executor and the statistics only ever see loaded references.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from monitor.reference import SCORE_PREFIX, DriftReference, drift_reference, score_reference
from streamscore.errors import StreamscoreError

log = logging.getLogger(__name__)

Loader = Callable[[str], Mapping[str, Any]]
"""Version → its reference.json document; raises ReferenceUnavailableError when the registry cannot be read,
any other exception when the version has no readable reference."""


class ReferenceUnavailableError(StreamscoreError):
    """The registry could not be asked for a version's reference (infrastructure: retried by the caller)."""

    retryable = True

    def __init__(self, version: str, problem: str) -> None:
        super().__init__(f"reference.json of model version {version}: {problem}")


def score_series(variant: str, version: str) -> str:
    """Series name of a variant's scores from one model version: `score:<variant>@<version>`. The version is in
    the name so that a window never mixes two versions' scores (a hot swap mid-window gives two series, each
    against its own reference)."""
    return f"{SCORE_PREFIX}{variant}@{version}"


class ReferenceBook:
    """Model version → its drift references (features and score), loaded once; a version without a readable
    reference is remembered as missing and asked for again after `retry_s`."""

    def __init__(self, loader: Loader, *, categorical: Collection[str] = (), retry_s: float = 60.0) -> None:
        self.loader = loader
        self.categorical = tuple(categorical)
        self.retry_s = retry_s
        self._documents: dict[str, Mapping[str, Any] | None] = {}
        self._failed_at: dict[str, float] = {}
        self._features: dict[str, DriftReference | None] = {}
        self._scores: dict[tuple[str, str], DriftReference | None] = {}

    def needs(self, version: str) -> bool:
        """Whether `load(version)` has something to do (never tried, or missing and due for a retry)."""
        if version not in self._documents:
            return True
        failed = self._failed_at.get(version)
        return failed is not None and time.monotonic() - failed >= self.retry_s

    def load(self, version: str) -> bool:
        """Fetch a version's document (blocking). True when a reference is available. Raises
        ReferenceUnavailableError when the registry cannot be reached (nothing is remembered then)."""
        try:
            document = self.loader(version)
        except ReferenceUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a missing artifact
            log.warning("model version %s has no readable reference.json (%s): its drift is not measured", version, exc)
            self._documents[version] = None
            self._failed_at[version] = time.monotonic()
            self._features.pop(version, None)
            self._scores = {k: v for k, v in self._scores.items() if k[1] != version}
            return False
        self._documents[version] = document
        self._failed_at.pop(version, None)
        return True

    def document(self, version: str) -> Mapping[str, Any] | None:
        return self._documents.get(version)

    def features(self, version: str) -> DriftReference | None:
        """Every feature of `version`'s reference (categorical ones per the settings), or None."""
        if version not in self._features:
            document = self._documents.get(version)
            if document is None:
                return None
            names = set(document["feature_names"])
            self._features[version] = drift_reference(
                document, {}, categorical=[c for c in self.categorical if c in names]
            )
        return self._features[version]

    def score(self, variant: str, version: str) -> DriftReference | None:
        """The one-series reference of `variant`'s scores from `version`, or None."""
        key = (variant, version)
        if key not in self._scores:
            document = self._documents.get(version)
            if document is None:
                return None
            self._scores[key] = DriftReference((score_reference(score_series(variant, version), document),))
        return self._scores[key]


def registry_loader(registry: Any) -> Loader:
    """A loader over `streamscore.registry.Registry`: a failure to reach the store is retryable, a version
    without reference.json is not."""
    from streamscore.registry import RegistryUnavailableError

    def load(version: str) -> Mapping[str, Any]:
        try:
            registry.client.get_model_version(registry.name, version)
        except RegistryUnavailableError as exc:
            raise ReferenceUnavailableError(version, exc.message) from exc
        except Exception as exc:
            if _unreachable(exc):
                raise ReferenceUnavailableError(version, f"{type(exc).__name__}: {exc}") from exc
            raise
        document: Mapping[str, Any] = registry.reference(version)
        return document

    return load


def _unreachable(exc: BaseException) -> bool:
    """Connection-level failures (a tracking server down, a locked or missing SQLite file) as opposed to an
    answer that the version or file does not exist."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("connection", "timeout", "timed out", "unable to open", "operationalerror"))
