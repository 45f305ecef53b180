"""Faust's data folder stays out of the working directory (Faust's default, `<app id>-data`, filled the repository
with one empty tree per test run)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from streamscore.faust_apps import faust_app
from streamscore.settings import KafkaSettings


def test_the_faust_data_folder_is_under_the_temporary_folder_not_the_working_directory() -> None:
    app = faust_app("t-datadir-app", KafkaSettings(), client="t", partitions=1, web_port=6099, web_bind="127.0.0.1")
    datadir = Path(app.conf.datadir).resolve()
    assert datadir.is_relative_to(Path(tempfile.gettempdir()).resolve())
    assert not datadir.is_relative_to(Path.cwd().resolve())
    assert "t-datadir-app" in str(datadir)
