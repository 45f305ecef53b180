"""Presets give two different models; options beat the environment, which beats the preset."""

from __future__ import annotations

import pydantic
import pytest

from streamscore.errors import ConfigError
from training.settings import PRESETS, TrainingSettings, preset_settings


def test_the_two_presets_are_different_models() -> None:
    v1, lite = preset_settings("v1"), preset_settings("v1_lite")
    assert (v1.architecture(), v1.feature_service) == ("mlp-64-32", "fraud_v1")
    assert (lite.architecture(), lite.feature_service) == ("mlp-32", "fraud_v1_lite")
    assert lite.epochs < v1.epochs
    assert set(PRESETS) == {"v1", "v1_lite"}


def test_precedence_options_environment_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIN_EPOCHS", "3")
    monkeypatch.setenv("TRAIN_HIDDEN_SIZES", "[16,8]")
    settings = preset_settings("v1_lite")
    assert (settings.epochs, settings.hidden_sizes, settings.feature_service) == (3, (16, 8), "fraud_v1_lite")
    assert preset_settings("v1_lite", epochs=5, seed=None).epochs == 5


def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--config: unknown preset 'v2'"):
        preset_settings("v2")
    with pytest.raises(pydantic.ValidationError, match="TRAIN_HIDDEN_SIZES"):
        TrainingSettings(hidden_sizes=(64, 0))
    with pytest.raises(pydantic.ValidationError, match="TRAIN_TEST_FRACTION"):
        TrainingSettings(validation_fraction=0.4, test_fraction=0.45)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        TrainingSettings(learning_rate=0.1)  # type: ignore[call-arg]
    monkeypatch.setenv("TRAIN_DEVICE", "tpu")
    with pytest.raises(pydantic.ValidationError):
        TrainingSettings()


def test_every_field_is_documented() -> None:
    for name, field in TrainingSettings.model_fields.items():
        assert field.description, f"TrainingSettings.{name} has no docstring"
