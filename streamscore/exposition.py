"""What every service's `/metrics` exports, set by whatever serves it (the scorer's MetricsServer, the Faust
services' `/metrics` page, the API's route)."""

from __future__ import annotations

from prometheus_client import disable_created_metrics


def prepare_exposition() -> None:
    """No `*_created` series. prometheus_client exports one beside every counter, histogram and summary, per label
    set: a start timestamp that no dashboard or rule reads and Prometheus ingests as one more gauge per series. It is a
    process-wide switch of prometheus_client's (read at each scrape), so calling it again is harmless."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
