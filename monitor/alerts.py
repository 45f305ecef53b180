"""`monitor.alerts` records: what an operator is paged for, in plain words. Pure: records in, alerts out.

- **drift**: a series of a closed window drifted (its p-value under the window's multiple-testing threshold);
  critical when the shift is also large (PSI at or above its threshold), a warning otherwise.
- **ab_verdict**: a comparison's always-valid verdict became "better" or "worse" (once per change, not at every
  look).
- **sample_ratio_mismatch**: the experiment's traffic split stopped matching the configuration (once when the
  alarm starts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from monitor.ab import ABRecord, Verdict
from monitor.drift import DriftRecord
from monitor.report import METRIC_WORDS

AlertKind = Literal["drift", "ab_verdict", "sample_ratio_mismatch"]
Severity = Literal["warning", "critical"]


class Alert(BaseModel):
    """One alert: the value the monitor publishes to `monitor.alerts` (key: the series or the experiment id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    kind: AlertKind
    key: str = Field(description="The drifted series (feature or score:<variant>@<version>) or the experiment id")
    at: datetime = Field(description="The monitor's clock when it raised the alert")
    severity: Severity
    message: str = Field(description="What happened and what to do, in plain words")
    window: int | None = Field(default=None, description="drift: the window's index")
    window_start: datetime | None = None
    window_end: datetime | None = None
    experiment_id: str | None = None
    variant: str | None = Field(default=None, description="ab_verdict: the variant compared with the champion")
    p_value: float | None = None
    value: float | None = Field(default=None, description="drift: PSI; ab_verdict: difference in the metric's rate")


def drift_alerts(records: Iterable[DriftRecord], at: datetime) -> list[Alert]:
    """One alert per drifted series of a closed window."""
    alerts = []
    for r in records:
        if not r.drifted:
            continue
        large = r.psi_exceeded
        todo = "check where this input comes from; retrain if it stays" if large else "keep watching"
        alerts.append(
            Alert(
                kind="drift",
                key=r.feature,
                at=at,
                severity="critical" if large else "warning",
                message=(
                    f"{r.feature} no longer looks like the training data in window {r.window} "
                    f"({r.window_start:%Y-%m-%d %H:%M:%S} – {r.window_end:%H:%M:%S} UTC): {r.test} p = {r.p_value:.2g} "
                    f"≤ {r.threshold:.2g}, PSI {r.psi:.3f} ({'large' if large else 'small'}); {todo}."
                ),
                window=r.window,
                window_start=r.window_start,
                window_end=r.window_end,
                p_value=r.p_value,
                value=r.psi,
            )
        )
    return alerts


def ab_alerts(
    record: ABRecord, verdicts: Mapping[str, Verdict], srm_alarm: bool
) -> tuple[list[Alert], dict[str, Verdict], bool]:
    """Alerts for what changed since the previous look (`verdicts`: the last verdict per variant, `srm_alarm`:
    whether the split alarm was on), and the new memory of both."""
    alerts = []
    now: dict[str, Verdict] = dict(verdicts)
    words = METRIC_WORDS[record.metric]
    for c in record.comparisons:
        before = verdicts.get(c.variant, "inconclusive")
        now[c.variant] = c.verdict
        if c.verdict == before or c.verdict == "inconclusive":
            continue
        todo = f"consider promoting {c.variant}" if c.verdict == "better" else f"stop sending traffic to {c.variant}"
        alerts.append(
            Alert(
                kind="ab_verdict",
                key=record.experiment_id,
                at=record.at,
                severity="warning" if c.verdict == "better" else "critical",
                message=(
                    f"experiment {record.experiment_id}: {c.variant} is {c.verdict} than {c.baseline} on {words} "
                    f"({1000 * c.difference:+.2f} per 1 000, always-valid {100 * (1 - c.alpha):g} % interval "
                    f"{1000 * c.ci_low:+.2f} to {1000 * c.ci_high:+.2f}, p = {c.p_value:.2g}); {todo}."
                ),
                experiment_id=record.experiment_id,
                variant=c.variant,
                p_value=c.p_value,
                value=c.difference,
            )
        )
    s = record.srm
    if s.alarm and not srm_alarm:
        observed = sum(s.observed.values())
        split = ", ".join(
            f"{name} {100 * share:.1f} % expected / {100 * s.observed.get(name, 0) / max(observed, 1):.1f} % seen"
            for name, share in s.expected_share.items()
        )
        extra = f"; variants outside the split: {', '.join(s.unexpected)}" if s.unexpected else ""
        alerts.append(
            Alert(
                kind="sample_ratio_mismatch",
                key=record.experiment_id,
                at=record.at,
                severity="critical",
                message=(
                    f"experiment {record.experiment_id}: the traffic split is off ({split}; p = {s.p_value:.2g}"
                    f"{extra}); units are lost or duplicated on one side — no comparison can be trusted until the "
                    "cause is found."
                ),
                experiment_id=record.experiment_id,
                p_value=s.p_value,
            )
        )
    return alerts, now, s.alarm
