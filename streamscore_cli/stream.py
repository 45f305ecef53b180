"""`streamscore features stream`: run the feature processor (a Faust worker) in the foreground.

Transactions → per-account state (Faust table) → batched pushes to the Feast online store. The work happens
in `stream_processors`; this module only wires settings and options to it. Stop it with Ctrl-C or SIGTERM
(graceful: queued snapshots are pushed, offsets committed).
"""

from __future__ import annotations

from typing import Any

import typer

from stream_processors.settings import StreamProcessorSettings
from streamscore.failures import env_name
from streamscore.ports import ensure_free
from streamscore_cli.console import console, friendly_errors, load_settings


def _settings(overrides: dict[str, Any]) -> StreamProcessorSettings:
    """The settings from the environment and the options; a bad value names the variable to fix."""
    return load_settings(StreamProcessorSettings, overrides)


def stream(
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Accounts per push to the online store. [FEATURES_PUSH_BATCH_SIZE]"
    ),
    max_delay_ms: int | None = typer.Option(
        None, "--max-delay-ms", help="A queued snapshot is pushed after at most this long. [FEATURES_PUSH_MAX_DELAY_MS]"
    ),
    port: int | None = typer.Option(None, "--port", help="HTTP port of /metrics and /healthz. [FEATURES_METRICS_PORT]"),
    app_id: str | None = typer.Option(None, "--app-id", help="Faust app id = consumer group. [FEATURES_APP_ID]"),
    loglevel: str = typer.Option("info", "--loglevel", help="Log level of the worker: debug, info, warning, error."),
) -> None:
    """Run the feature processor: transactions → per-account real-time features → Feast online store."""
    from stream_processors.app import create_app, run_worker  # Faust: not for `--help`

    with friendly_errors():
        settings = _settings(
            {
                "push_batch_size": batch_size,
                "push_max_delay_ms": max_delay_ms,
                "metrics_port": port,
                "app_id": app_id,
            }
        )
        ensure_free(settings.metrics_port, env_name(StreamProcessorSettings, "metrics_port"), settings.metrics_bind)
        processor = create_app(settings)
    console.print(
        f"[green]✓[/] feature processor [bold]{settings.faust_id}[/] reading "
        f"{settings.topics.registry().transactions.name} from {settings.kafka.bootstrap_servers}, pushing to Feast "
        f"project {settings.feast.project} (batches of {settings.push_batch_size}, at most "
        f"{settings.push_max_delay_ms} ms); metrics and health on :{settings.metrics_port} (/metrics, /healthz)"
    )
    run_worker(processor, loglevel=loglevel.lower())
