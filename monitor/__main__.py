"""`python -m monitor`: run the monitor's Faust worker with settings from the environment (`MONITOR_…`, `KAFKA_…`,
`TOPICS_…`, `REGISTRY_…`, `LOG_LEVEL`); `streamscore monitor` does the same."""

from __future__ import annotations

import logging
import sys

from monitor.app import run
from streamscore.failures import exit_on_failure
from streamscore.logs import configure


def main() -> None:
    with exit_on_failure():  # a failure is one log line and an exit code (2: a setting, 3: infrastructure)
        configure()
        sys.exit(run(loglevel=logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()))


if __name__ == "__main__":
    main()
