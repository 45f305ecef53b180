"""`streamscore score`: run the stream scorer in the foreground (transactions → scores, exactly once).

The work happens in `scorer.service`; this module only maps options onto `SCORER_…` settings. Stop it with
Ctrl-C or SIGTERM (graceful: the current batch commits, the consumer leaves its group).
"""

from __future__ import annotations

import logging
from typing import Any

import typer

from scorer.settings import ScorerSettings
from streamscore.logs import configure
from streamscore_cli.console import friendly_errors, load_settings


def settings_from(overrides: dict[str, Any]) -> ScorerSettings:
    """The settings from the environment and the options; a bad value names the variable to fix."""
    return load_settings(ScorerSettings, overrides)


def score(
    delivery: str | None = typer.Option(None, "--delivery", help="exactly_once or at_least_once. [SCORER_DELIVERY]"),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Records per batch at most. [SCORER_MAX_BATCH_SIZE]"
    ),
    delay_ms: float | None = typer.Option(
        None, "--delay-ms", help="A batch closes this long after its first record. [SCORER_MAX_QUEUE_DELAY_MS]"
    ),
    port: int | None = typer.Option(None, "--port", help="HTTP port of /metrics and /healthz. [SCORER_METRICS_PORT]"),
    instance: str | None = typer.Option(
        None, "--instance", help="Stable instance name (transactional id suffix). [SCORER_INSTANCE_ID]"
    ),
    feature_client: str | None = typer.Option(
        None, "--feature-client", help="redis (direct pipelined reader) or feast (SDK). [SCORER_FEATURE_CLIENT]"
    ),
) -> None:
    """Run the stream scorer: transactions → features → champion/challenger/shadow models → scores + dead letters."""
    from scorer.service import run  # ONNX Runtime, numpy and the feature clients: not for `--help`

    with friendly_errors():
        settings = settings_from(
            {
                "delivery": delivery,
                "max_batch_size": batch_size,
                "max_queue_delay_ms": delay_ms,
                "metrics_port": port,
                "instance_id": instance,
                "feature_client": feature_client,
            }
        )
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        configure("INFO")  # a long-running service shows its progress lines
    raise typer.Exit(run(settings))
