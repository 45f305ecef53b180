"""Settings of the monitor's statistics (`MONITOR_…`): drift windows, the false-alarm budget, the A/B test.

The Faust application adds its Kafka and Faust fields next to these; the statistics read only this block.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CATEGORICAL_FEATURES: tuple[str, ...] = (
    "new_device",
    "new_country",
    "foreign_country",
    "no_device",
    "channel_pos",
    "channel_ecommerce",
    "channel_contactless",
)
"""The 0/1 flags and channel one-hots of `streamscore.features.FEATURE_NAMES`: tested with χ², not KS."""

Metric = Literal["fraud_caught", "fraud_missed", "false_decline", "decline"]


class MonitorSettings(BaseSettings):
    """The monitor (`streamscore monitor`): drift of the model inputs and scores in tumbling windows, and
    always-valid A/B statistics between variants."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_", extra="forbid", use_attribute_docstrings=True)

    window: Literal["time", "events"] = "time"
    """Drift windows by event time (MONITOR_WINDOW_SECONDS) or by event count (MONITOR_WINDOW_EVENTS)."""
    window_seconds: float = Field(default=3600.0, gt=0)
    """Time windows: window k holds the events with k·size ≤ event time (seconds since the epoch) < (k+1)·size,
    wherever they were consumed, so per-partition states merge into exactly the one-pass result."""
    window_events: int = Field(default=10_000, ge=1)
    """Count windows: the caller numbers the events 0, 1, … and event i falls in window i // size."""
    min_window_events: int = Field(default=100, ge=1)
    """A series (feature or score) with fewer values in a window is reported but not tested."""
    psi_threshold: float = Field(default=0.2, gt=0)
    """PSI at or above this is a shift big enough to act on (0.1: small, 0.2: large by the usual rule of thumb).
    It grades a shift; whether a shift is real is the test's p-value."""
    psi_epsilon: float = Field(default=1e-4, gt=0, lt=0.01)
    """Bin shares are floored at this before PSI's logarithm, so an empty bin gives a finite PSI."""
    false_alarm_windows: float = Field(default=100.0, ge=1.0)
    """False-alarm budget: with no drift anywhere, one window in this many (on average) raises an alarm. The
    per-window family-wise level is its inverse (100 → α = 0.01 shared by all series of a window)."""
    correction: Literal["bh", "bonferroni"] = "bh"
    """Multiple-testing control across the series of a window: bh (Benjamini–Hochberg, more power when several
    inputs drift together) or bonferroni (family-wise error under any mix of drifting and stable inputs).
    Both keep the budget above when nothing drifts."""
    categorical_features: list[str] = Field(default_factory=lambda: list(CATEGORICAL_FEATURES))
    """Features tested with χ² on their categories (the rest with the two-sample KS test)."""
    ab_metric: Metric = "fraud_caught"
    """Primary A/B metric, one yes/no per matured transaction: fraud_caught (fraud and declined; higher is
    better), fraud_missed (fraud and not declined), false_decline (legitimate and declined) or decline (lower is
    better for the last three)."""
    ab_alpha: float = Field(default=0.05, gt=0, lt=1)
    """Level of each challenger-vs-champion comparison: the chance of ever declaring a difference that is not
    there, however often the result is looked at."""
    msprt_tau: float = Field(default=0.004, gt=0, lt=1)
    """Standard deviation of the mSPRT's normal mixture over the difference in the primary metric's rate
    (0.004 = 0.4 percentage points): about the smallest difference worth detecting. Chosen by simulation for a
    2 % base rate (docs/monitor.md)."""
    ab_min_units: int = Field(default=100, ge=1)
    """The sequential test looks only once each variant of a comparison has this many matured units."""
    srm_alpha: float = Field(default=0.001, gt=0, lt=1)
    """Sample-ratio-mismatch alarm: χ² p-value of the live variants' unit counts against the expected split
    below this."""
    label_maturity_s: float = Field(default=60.0, ge=0)
    """A transaction counts in the A/B statistics once this many seconds have passed since its event time, so
    its label has had time to arrive (local generator: labels after 30 s; card chargebacks: 60–120 days)."""
    expected_split: dict[str, float] = Field(default_factory=lambda: {"champion": 0.9, "challenger": 0.1})
    """Live variants and their configured weights (as SCORER_VARIANTS): the sample-ratio check's expectation."""
    champion: str = "champion"
    """The variant every other variant is compared with."""

    @model_validator(mode="after")
    def _valid_split(self) -> MonitorSettings:
        if not self.expected_split or any(w < 0 for w in self.expected_split.values()):
            raise ValueError("MONITOR_EXPECTED_SPLIT must map at least one variant to a weight ≥ 0")
        if sum(self.expected_split.values()) <= 0:
            raise ValueError("MONITOR_EXPECTED_SPLIT weights must sum to more than 0")
        return self

    @property
    def drift_alpha(self) -> float:
        """Family-wise level of one window: the inverse of the false-alarm budget."""
        return 1.0 / self.false_alarm_windows
