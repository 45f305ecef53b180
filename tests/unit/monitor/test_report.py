"""The plain-words report renders drift and A/B records: what changed, how sure, what to do."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from rich.console import Console

from monitor.ab import ABCounts, ABState, Outcome, look
from monitor.drift import DriftWindow, evaluate
from monitor.report import render, render_ab, render_drift
from monitor.settings import MonitorSettings
from monitor.simulation import synthetic_features, synthetic_reference
from streamscore.contracts import Score


def text(renderable: object) -> str:
    console = Console(record=True, width=250, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_drift_report_says_what_changed_and_what_to_do() -> None:
    rng = np.random.default_rng(41)
    specs = synthetic_features(5)
    reference = synthetic_reference(specs, rng, train_rows=10_000, sample_rows=2_000)
    settings = MonitorSettings(window="time", window_seconds=3600, false_alarm_windows=100)
    window = DriftWindow(reference, 493_000)
    window.add(specs[0].name, specs[0].draw(rng, 2000, shift=1.0))
    for spec in specs[1:4]:
        window.add(spec.name, spec.draw(rng, 2000))
    window.add(specs[4].name, specs[4].draw(rng, 20))
    out = text(render_drift(evaluate(window, settings)))
    assert "1 of 5 inputs and scores changed" in out
    assert "Real and large" in out
    assert "Too few values (20) to test" in out
    assert "1 window out of 100" in out
    assert out.index(specs[0].name) < out.index(specs[1].name), "changed inputs come first"
    assert "No drift windows closed yet." in text(render_drift([]))

    # Several windows: a line each, the latest in detail.
    later = DriftWindow(reference, 493_001)
    for spec in specs:
        later.add(spec.name, spec.draw(rng, 2000))
    both = text(render_drift([*evaluate(window, settings), *evaluate(later, settings)], detailed=1))
    assert "window by window" in both
    assert f"{specs[0].name} (large)" in both, "the shifted input, named in its window's line"
    assert "Window 493001" in both and "Window 493000:" not in both, "only the latest window in detail"


def test_ab_report_gives_a_verdict_in_words() -> None:
    counts = ABCounts()
    for i in range(20_000):
        fraud = i % 50 == 0
        counts.add(Outcome("champion", fraud and i % 100 == 0, fraud, 120.0))
        counts.add(Outcome("challenger", fraud, fraud, 120.0))
    settings = MonitorSettings(expected_split={"champion": 0.5, "challenger": 0.5})
    _, record = look(ABState(), counts, settings, experiment_id="exp-9", at=datetime(2026, 3, 1, tzinfo=UTC))
    out = text(render_ab([record]))
    assert "Experiment exp-9" in out
    assert "challenger is better" in out
    assert "Consider promoting challenger" in out
    assert "Traffic split OK" in out
    assert "fraud caught per 1 000 transactions" in out
    skewed = record.model_copy(update={"srm": record.srm.model_copy(update={"alarm": True, "p_value": 1e-9})})
    out = text(render([], [record, skewed.model_copy(update={"at": datetime(2026, 3, 2, tzinfo=UTC)})]))
    assert "Traffic split is OFF" in out
    assert "don't trust" in out


def test_hidden_outcomes_are_explained_not_shown_as_zero() -> None:
    counts = ABCounts()
    for _ in range(200):
        counts.add(Outcome("champion", True, None, 10.0))
        counts.add(Outcome("challenger", False, False, 10.0))
    settings = MonitorSettings(expected_split={"champion": 0.5, "challenger": 0.5})
    _, record = look(ABState(), counts, settings, experiment_id="exp-1", at=datetime(2026, 3, 1, tzinfo=UTC))
    out = text(render_ab([record]))
    assert "n/a (declined outcomes not seen)" in out
    assert "can't tell" in out


def test_operating_points_are_explained_per_variant_with_the_test_split_and_the_traffic() -> None:
    from monitor.operating import latest_by_variant, operating_points
    from monitor.report import operating_point_words, operating_points_table, test_split_words, traffic_words
    from streamscore.thresholds import threshold_tags
    from tests.support.monitoring import score_event

    def scored(
        variant: str, version: str, at: float, review: float | None, decline: float | None, source: str
    ) -> Score:
        base = score_event(f"{variant}-{at:.0f}", "acct-1", 1.77e9 + at, 0.5, variant=variant, version=version)
        return base.model_copy(update={"review_threshold": review, "decline_threshold": decline, "thresholds": source})

    test_tags = {
        "test_decline_rate": "0.006200",
        "test_decline_precision": "0.610000",
        "test_decline_recall": "0.612345",
        "test_decline_fpr": "0.004987",
        "test_decline_amount_recall": "0.580000",
    }
    tags = {
        "3": {**threshold_tags(0.41, 0.83, "objective"), **test_tags},
        "4": {**threshold_tags(0.2, None, "objective"), **test_tags},
        "1": {},
    }
    latest = latest_by_variant(
        [
            (scored("champion", "2", 1.0, 0.3, 0.7, "default"), False),  # older: replaced by the next one
            (scored("champion", "3", 2.0, 0.41, 0.83, "model"), False),
            (scored("challenger", "4", 2.0, 0.5, 0.9, "override"), False),
            (scored("shadow", "1", 2.0, 0.3, 0.7, "default"), True),
        ]
    )
    views = operating_points(latest, lambda version: tags[version])
    assert [(v.variant, v.version, v.shadow) for v in views] == [
        ("challenger", "4", False),
        ("champion", "3", False),
        ("shadow", "1", True),
    ]
    counts = ABCounts()
    for i in range(2000):
        fraud = i % 40 == 0
        counts.add(Outcome("champion", (fraud and i % 80 == 0) or i == 1, fraud, 50.0))
    _, record = look(ABState(), counts, MonitorSettings(), experiment_id="exp-1", at=datetime(2026, 3, 1, tzinfo=UTC))
    challenger, champion, shadow = views
    assert operating_point_words(champion) == (
        "champion (v3) declines at score ≥ 0.83, reviews from 0.41 — its version's own operating point (chosen by "
        "training on the validation split)."
    )
    assert test_split_words(champion) == (
        "That declines 0.5 % of good customers and stops 61 % of fraud (58 % of the fraud amount); 0.62 % of all "
        "transactions declined, 61 % of them fraud."
    )
    traffic = traffic_words(record.variants[0], record.label_maturity_s)
    assert traffic.startswith("Declined 1.3 % of 2,000 transactions at least")
    assert "0.051 % of good customers declined, 50 % of fraud stopped, 96 % of declines were fraud." in traffic
    # An override says so, and the version's own figures are marked as not what decides now.
    assert "challenger (v4, " not in operating_point_words(challenger)
    assert "declines at score ≥ 0.9, reviews from 0.5 — the scorer's override" in operating_point_words(challenger)
    assert test_split_words(challenger).startswith("Its own point (declines nothing, reviews from 0.2) — not what")
    # A version without an operating point: the defaults, and no test figures.
    assert "the defaults 0.3 / 0.7" in operating_point_words(shadow) and "(v1, shadow)" in operating_point_words(shadow)
    assert test_split_words(shadow).startswith("Not recorded")
    assert traffic_words(None, None).startswith("No matured transactions of this variant")
    out = text(operating_points_table(views, [record]))
    assert "champion v3" in out and "shadow v1 (shadow)" in out and "Operating points" in out
    # Without a registry: the thresholds from the scores alone.
    bare = operating_points(latest, None)
    assert bare[1].own is None and test_split_words(bare[1]).startswith("Not recorded")
    broken = operating_points(latest, lambda version: {"review_threshold": "x", "decline_threshold": "0.9"})
    assert test_split_words(broken[1]).startswith("Unknown: operating point tags")
    assert "operating points are unknown" in text(operating_points_table([]))
