"""What serves: variants resolved from MLflow aliases to loaded versions with their thresholds, and the hot reload
when aliases move or a version's operating point is re-tagged.

`ServingBuilder.build` turns the configured variants and the registry's current aliases into a `Serving`: each
variant's version and the thresholds it decides with (`ServingBuilder.thresholds`: the SCORER_REVIEW_THRESHOLD /
SCORER_DECLINE_THRESHOLD override when set, else the version's own operating point from its registry tags, else the
documented defaults). The API's explicit `?version=` asks the same method, so an explicit call and a variant serving
the same version decide alike.
`Reloader` runs in a background thread: every `reload_interval_s` it reads the aliases, loads and warms any
new version *off the scoring thread*, and leaves the new `Serving` in a slot that the transport picks up
between two batches. It also re-reads the served versions' operating points, so re-tagging a version (a promotion
step setting its thresholds) changes its decisions between two batches, like a model swap. A version that fails to
load, or whose threshold tags cannot be read, is counted (`model_reload_failures`) and skipped until its alias moves
again; the variant keeps serving its previous version and thresholds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from scorer.engine import Serving, Variant
from scorer.metrics import ScorerMetrics
from scorer.models import LoadedModel, ModelCache, ModelLoadError
from scorer.routing import Router
from scorer.settings import ScorerSettings
from streamscore.errors import StreamscoreError
from streamscore.registry import ModelIntegrityError, Registry
from streamscore.thresholds import Thresholds, ThresholdTagError

logger = logging.getLogger(__name__)


class NoModelError(StreamscoreError):
    """No live variant has a loadable version: the scorer cannot start."""

    http_status = 503

    def __init__(self, problem: str) -> None:
        super().__init__(f"nothing to serve: {problem}")


def configured_variants(settings: ScorerSettings) -> tuple[Variant, ...]:
    return tuple(Variant(v.name, v.alias, v.weight) for v in settings.variants) + tuple(
        Variant(s.name, s.alias, s.share, shadow=True) for s in settings.shadows
    )


class ServingBuilder:
    def __init__(self, settings: ScorerSettings, registry: Registry, cache: ModelCache) -> None:
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.variants = configured_variants(settings)
        self.override = settings.override_thresholds()

    def thresholds(self, version: str) -> Thresholds:
        """What `version` decides with: the override when set, else its operating point as the registry's tags say
        now (ThresholdTagError when they cannot be read: not served with guessed thresholds)."""
        return self.override if self.override is not None else self.registry.thresholds(version)

    def build(
        self,
        aliases: Mapping[str, str],
        *,
        previous: Serving | None = None,
        on_failure: Callable[[Variant, str, Exception], None] | None = None,
    ) -> Serving:
        """A Serving for `aliases` (alias → version). A variant whose alias is unset is left out; one whose
        new version fails to load keeps `previous`'s model (or is left out at start, via `on_failure`)."""
        models: dict[str, LoadedModel] = {}
        thresholds: dict[str, Thresholds] = {}
        for variant in self.variants:
            version = aliases.get(variant.alias)
            if version is None:
                logger.warning("variant %s: alias %r has no version; not serving it", variant.name, variant.alias)
                continue
            try:
                model = self.cache.get(version)
                thresholds[variant.name] = self.thresholds(version)
                models[variant.name] = model
            except (ModelLoadError, ModelIntegrityError, ThresholdTagError, OSError) as exc:
                if on_failure is not None:
                    on_failure(variant, version, exc)
                old = previous.models.get(variant.name) if previous else None
                if previous is not None and old is not None:
                    models[variant.name] = old
                    thresholds[variant.name] = previous.thresholds_of(variant.name)
        live = [v for v in self.variants if not v.shadow and v.name in models]
        if not live:
            raise NoModelError(
                f"none of the live variants {[v.alias for v in self.variants if not v.shadow]} resolves to a "
                f"loadable version of {self.registry.name!r} (aliases now: {dict(aliases) or 'none'}); "
                "train and register one with `streamscore train`"
            )
        shadows = [v for v in self.variants if v.shadow and v.name in models]
        router = Router(
            self.settings.experiment_salt,
            [(v.name, v.weight) for v in live],
            [(v.name, v.weight) for v in shadows],
        )
        self.cache.retain({m.version: m for m in models.values()})
        return Serving(
            experiment_id=self.settings.experiment_id,
            router=router,
            variants=tuple(live + shadows),
            models=models,
            thresholds={name: t for name, t in thresholds.items() if name in models},
        )


class Reloader:
    """Watches the aliases; prepares a new Serving when one moves. The transport calls `take()` between batches.

    It also keeps what it last learnt from the registry (`registry_aliases`, `registry_age_s()`,
    `registry_error`), so that a readiness probe answers from that state instead of asking MLflow itself."""

    def __init__(
        self,
        builder: ServingBuilder,
        current: Serving,
        metrics: ScorerMetrics,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.builder = builder
        self.metrics = metrics
        metrics.declare_variants(v.name for v in builder.variants)
        self.interval_s = interval_s
        self._current = current
        self._aliases = {v.alias: m.version for v in current.variants for m in [current.models[v.name]]}
        self._failed: dict[str, str] = {}
        """variant → version that failed to load (not retried until the alias moves elsewhere)."""
        self._bad_tags: dict[str, str] = {}
        """variant → served version whose re-tagged operating point cannot be read (its thresholds stay)."""
        self._pending: Serving | None = None
        self._clock = clock
        self.registry_aliases: dict[str, str] = dict(self._aliases)
        """The registry's aliases when last read (alias → version); at start, those of the Serving given."""
        self.registry_error: str | None = None
        """Why the last read of the registry failed; None once one succeeds."""
        self._read_at = clock()  # the Serving given was built from aliases read just before
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-reloader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def take(self) -> Serving | None:
        """The new Serving prepared since the last call, if any (called by the scoring thread)."""
        if self._pending is None:  # the usual answer, without the lock (an attribute read is atomic; a Serving
            return None  # prepared just now is taken by the next call)
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._current = pending
        return pending

    def registry_age_s(self) -> float:
        """Seconds since the registry last answered this watcher (at start: since the watcher was made)."""
        return self._clock() - self._read_at

    def check(self) -> bool:
        """One look at the registry; True when a new Serving was prepared."""
        try:
            aliases = self.builder.registry.aliases()
        except StreamscoreError as exc:
            self.registry_error = str(exc)
            logger.warning("hot reload: cannot read the registry: %s", exc)
            return False
        self.registry_aliases, self.registry_error, self._read_at = dict(aliases), None, self._clock()
        wanted = {v.alias: aliases.get(v.alias) for v in self.builder.variants}
        if wanted == {alias: self._aliases.get(alias) for alias in wanted}:
            return self._check_thresholds()
        failures: list[str] = []

        def on_failure(variant: Variant, version: str, exc: Exception) -> None:
            if self._failed.get(variant.name) != version:
                self.metrics.model_reload_failures.labels(variant=variant.name).inc()
                logger.error(
                    "hot reload: variant %s version %s failed to load, the previous version keeps serving: %s",
                    variant.name,
                    version,
                    exc,
                )
            self._failed[variant.name] = version
            failures.append(variant.name)

        # Do not retry a version that already failed: serve the old one quietly until the alias moves again.
        effective = dict(aliases)
        for variant in self.builder.variants:
            if self._failed.get(variant.name) is not None and aliases.get(variant.alias) == self._failed[variant.name]:
                old = self._current.models.get(variant.name)
                if old is not None:
                    effective[variant.alias] = old.version
        try:
            serving = self.builder.build(effective, previous=self._current, on_failure=on_failure)
        except StreamscoreError as exc:
            logger.error("hot reload: keeping the current models: %s", exc)
            return False
        self._aliases = {alias: aliases.get(alias) for alias in wanted}  # type: ignore[misc]
        for variant in self.builder.variants:
            if variant.name not in failures and aliases.get(variant.alias) != self._failed.get(variant.name):
                self._failed.pop(variant.name, None)
        if serving.versions() == self._current.versions() and serving.thresholds == self._current.thresholds:
            return False
        self._prepare(serving)
        logger.info("hot reload: new versions prepared %s (was %s)", serving.versions(), self._current.versions())
        return True

    def _prepare(self, serving: Serving) -> None:
        with self._lock:
            self._pending = serving

    def _check_thresholds(self) -> bool:
        """With the aliases where they were: whether a served version's operating point was re-tagged; if so, the same
        models with the new thresholds are prepared. An unreadable tag keeps the variant's current thresholds."""
        if self.builder.override is not None:
            return False
        current = self._pending or self._current
        fresh: dict[str, Thresholds] = {}
        for name, model in current.models.items():
            try:
                fresh[name] = self.builder.thresholds(model.version)
                self._bad_tags.pop(name, None)
            except ThresholdTagError as exc:
                if self._bad_tags.get(name) != model.version:  # counted and logged once per version
                    self.metrics.model_reload_failures.labels(variant=name).inc()
                    logger.error(
                        "hot reload: variant %s keeps its thresholds: version %s: %s", name, model.version, exc
                    )
                self._bad_tags[name] = model.version
                fresh[name] = current.thresholds_of(name)
            except Exception as exc:  # noqa: BLE001 - MLflow raises many types for an unreachable store
                logger.warning("hot reload: cannot read the operating point of version %s: %s", model.version, exc)
                return False
        if fresh == current.thresholds:
            return False
        self._prepare(replace(current, thresholds=fresh))
        logger.info(
            "hot reload: operating points changed %s (was %s)",
            {n: (t.review, t.decline) for n, t in fresh.items()},
            {n: (t.review, t.decline) for n, t in current.thresholds.items()},
        )
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watcher must survive anything; the scorer keeps its models
                logger.exception("hot reload: unexpected error")
