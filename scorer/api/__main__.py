"""`python -m scorer.api`: the API under uvicorn with settings from the environment (`API_…`, `SCORER_…`,
`FEAST_…`, `REDIS_…`, `REGISTRY_…`, `KAFKA_…`); `streamscore api` does the same with a friendlier start."""

from __future__ import annotations

from scorer.api.server import serve
from scorer.api.settings import ApiSettings
from streamscore.failures import exit_on_failure
from streamscore.logs import configure


def main() -> None:
    with exit_on_failure():  # a failure is one log line and an exit code (2: a setting, 3: infrastructure)
        configure()
        serve(ApiSettings())


if __name__ == "__main__":
    main()
