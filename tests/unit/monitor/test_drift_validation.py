"""Drift alarms by seeded simulation (30 features shaped like ours, 1 000-row windows, a 2 000-row reference
sample as training stores): false alarms per window within budget with the correction and not without it; a
0.2-standard-deviation shift in one feature caught within two windows. Realistic mixed inputs with a daily rhythm
and float32 references: within budget, and each of three negative controls is not."""

from __future__ import annotations

from monitor.settings import MonitorSettings
from monitor.simulation import realistic_drift, shift_detection, standard_error, stationary_drift

BUDGET = 20  # windows between false alarms → α = 0.05 per window


def settings(correction: str) -> MonitorSettings:
    return MonitorSettings(
        window="events",
        window_events=1000,
        false_alarm_windows=BUDGET,
        correction=correction,
    )


def test_stationary_windows_alarm_within_the_budget_only_with_the_correction() -> None:
    bh, bonferroni = stationary_drift(
        [settings("bh"), settings("bonferroni")], references=100, windows_per_reference=4, train_rows=20_000, seed=31
    )
    bound = 0.05 + 2 * standard_error(0.05, bh.windows)
    assert bh.any_alarm_corrected <= bound
    assert bonferroni.any_alarm_corrected <= bound
    # Negative control: each of the 30 series tested at 0.05 on its own alarms in most windows.
    assert bh.any_alarm_uncorrected > 0.5


def test_a_small_shift_in_one_of_30_features_is_caught_within_two_windows() -> None:
    bh, bonferroni = shift_detection([settings("bh"), settings("bonferroni")], runs=200, seed=32)
    assert bh.caught_within[1] >= 0.95
    assert bonferroni.caught_within[1] >= 0.95


def test_realistic_inputs_with_a_daily_rhythm_alarm_within_the_budget_and_each_control_does_not() -> None:
    """Mixed inputs like ours (counts with 70–95 % zeros, log1p of a count, a rate k/m, flags at 0.4 %, 2 %, 30 %
    and 95 %, heavy tails, the hour as sine and cosine; several follow a daily rhythm), computed in float64 while
    the reference holds float32, a 2 000-row reference sample, windows of 100, 1 000 and 10 000 rows over 1 or 4
    hours. Nothing changes, so every alarm is false: within the budget at the default α (0.01) and at 0.05. Each
    negative control changes one thing and breaks the budget: the flags tested one-sample (the earlier test), the
    tied inputs compared unrounded, the reference not mixed to the window's hours."""
    default, loose = realistic_drift(
        [MonitorSettings(window="events"), MonitorSettings(window="events", false_alarm_windows=BUDGET)],
        references=8,
        windows_per_reference=6,
        seed=33,
    )
    for run, alpha in ((default, 0.01), (loose, 0.05)):
        bound = alpha + 2 * standard_error(alpha, run.windows)
        assert run.production <= bound, (alpha, run)
        assert all(rate <= bound for rate in run.by_rows.values()), (alpha, run.by_rows)
        assert run.one_sample > bound
        assert run.unrounded > bound
        assert run.no_mix > bound
