"""`python -m scorer.api`: the API under uvicorn with settings from the environment (`API_…`, `SCORER_…`,
`FEAST_…`, `REDIS_…`, `REGISTRY_…`, `KAFKA_…`); `streamscore api` does the same with a friendlier start."""

from __future__ import annotations

import uvicorn

from scorer.api.app import create_app
from scorer.api.settings import ApiSettings
from streamscore.logs import configure


def main() -> None:
    configure()
    settings = ApiSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
