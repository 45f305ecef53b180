"""Monitor settings: environment prefix, validation with the variable to fix, derived levels."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from monitor.settings import CATEGORICAL_FEATURES, MonitorSettings
from streamscore.features import FEATURE_NAMES


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = MonitorSettings()
    assert defaults.drift_alpha == 0.01
    assert defaults.srm_alpha == 0.001
    assert set(CATEGORICAL_FEATURES) <= set(FEATURE_NAMES)
    monkeypatch.setenv("MONITOR_WINDOW", "events")
    monkeypatch.setenv("MONITOR_WINDOW_EVENTS", "5000")
    monkeypatch.setenv("MONITOR_CORRECTION", "bonferroni")
    monkeypatch.setenv("MONITOR_EXPECTED_SPLIT", '{"champion": 95, "challenger": 5}')
    monkeypatch.setenv("MONITOR_MSPRT_TAU", "0.01")
    s = MonitorSettings()
    assert (s.window, s.window_events, s.correction, s.msprt_tau) == ("events", 5000, "bonferroni", 0.01)
    assert s.expected_split == {"champion": 95.0, "challenger": 5.0}


def test_invalid_settings_name_the_variable() -> None:
    with pytest.raises(ValidationError, match="MONITOR_EXPECTED_SPLIT"):
        MonitorSettings(expected_split={"champion": 0.0})
    with pytest.raises(ValidationError, match="MONITOR_EXPECTED_SPLIT"):
        MonitorSettings(expected_split={"champion": -1.0, "challenger": 2.0})
    with pytest.raises(ValidationError):
        MonitorSettings(correction="holm")
    with pytest.raises(ValidationError):
        MonitorSettings(unknown_field=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        MonitorSettings(false_alarm_windows=0.5)


def test_every_field_is_documented() -> None:
    assert all(field.description for field in MonitorSettings.model_fields.values())
