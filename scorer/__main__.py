"""`python -m scorer`: the stream scorer with settings from the environment (`SCORER_…`, `KAFKA_…`,
`TOPICS_…`, `FEAST_…`, `REDIS_…`, `REGISTRY_…`, `LOG_LEVEL`); `streamscore score` does the same."""

from __future__ import annotations

import sys

from scorer.service import run
from streamscore.failures import exit_on_failure
from streamscore.logs import configure


def main() -> None:
    with exit_on_failure():  # a failure is one log line and an exit code (2: a setting, 3: infrastructure)
        configure()
        sys.exit(run())


if __name__ == "__main__":
    main()
