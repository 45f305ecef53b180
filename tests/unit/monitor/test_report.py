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
