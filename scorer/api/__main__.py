"""`python -m scorer.api`: the API under uvicorn with settings from the environment (`API_…`, `SCORER_…`,
`FEAST_…`, `REDIS_…`, `REGISTRY_…`, `KAFKA_…`); `streamscore api` does the same with a friendlier start."""

from __future__ import annotations

from scorer.api.server import serve
from scorer.api.settings import ApiSettings
from streamscore.logs import configure


def main() -> None:
    configure()
    settings = ApiSettings()
    serve(settings)


if __name__ == "__main__":
    main()
