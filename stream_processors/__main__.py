"""`python -m stream_processors`: run the feature processor's Faust worker with settings from the
environment (`FEATURES_…`, `KAFKA_…`, `TOPICS_…`, `FEAST_…`, `LOG_LEVEL`); `streamscore features stream`
does the same."""

from __future__ import annotations

import logging

from stream_processors.app import create_app, run_worker
from streamscore.failures import exit_on_failure
from streamscore.logs import configure


def main() -> None:
    with exit_on_failure():  # a failure is one log line and an exit code (2: a setting, 3: infrastructure)
        configure()
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        run_worker(create_app(), loglevel=level)


if __name__ == "__main__":
    main()
