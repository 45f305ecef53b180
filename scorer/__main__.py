"""`python -m scorer`: the stream scorer with settings from the environment (`SCORER_…`, `KAFKA_…`,
`TOPICS_…`, `FEAST_…`, `REDIS_…`, `REGISTRY_…`, `LOG_LEVEL`); `streamscore score` does the same."""

from __future__ import annotations

import sys

from scorer.service import run
from streamscore.logs import configure


def main() -> None:
    configure()
    sys.exit(run())


if __name__ == "__main__":
    main()
