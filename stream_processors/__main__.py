"""`python -m stream_processors`: run the feature processor's Faust worker with settings from the
environment (`FEATURES_…`, `KAFKA_…`, `TOPICS_…`, `FEAST_…`, `LOG_LEVEL`); `streamscore features stream`
does the same."""

from __future__ import annotations

import logging

from stream_processors.app import create_app, run_worker
from streamscore.logs import configure


def main() -> None:
    configure()
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    run_worker(create_app(), loglevel=level)


if __name__ == "__main__":
    main()
