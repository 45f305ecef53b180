"""`streamscore api` (the investigators' HTTP API under uvicorn) and `streamscore api-key` (a new key)."""

from __future__ import annotations

import json
import logging

import typer

from scorer.api.settings import ApiSettings
from streamscore.errors import ConfigError
from streamscore.failures import env_name
from streamscore.logs import configure
from streamscore.ports import ensure_free
from streamscore_cli.console import console, friendly_errors, load_settings


def _settings(**overrides: object) -> ApiSettings:
    return load_settings(ApiSettings, overrides)


def api(
    host: str | None = typer.Option(None, "--host", help="Interface to listen on. [API_HOST]"),
    port: int | None = typer.Option(None, "--port", help="HTTP port. [API_PORT]"),
    batching: bool | None = typer.Option(
        None, "--batching/--no-batching", help="Gather concurrent requests into micro-batches. [API_BATCHING]"
    ),
) -> None:
    """Serve the scoring API (same engine, models and features as the stream scorer) with uvicorn."""
    from scorer.api.server import serve

    with friendly_errors():
        settings = _settings(host=host, port=port, batching=batching)
        if not settings.active_keys():
            raise ConfigError("API_KEYS", "no active API key: create one with `streamscore api-key NAME`")
        ensure_free(settings.port, env_name(ApiSettings, "port"), settings.host)  # before saying where it listens
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        configure("INFO")
    console.print(
        f"[green]✓[/] API on http://{settings.host}:{settings.port} — docs at /docs, investigator page at /demo, "
        f"{len(settings.active_keys())} active key(s)"
    )
    serve(settings)


def api_key(name: str = typer.Argument(..., help="A name for the key (who or what uses it).")) -> None:
    """Create an API key: prints the key once, and the entry to add to API_KEYS (only its SHA-256 is stored)."""
    from scorer.api.security import digest, new_key

    key = new_key()
    entry = {"name": name, "sha256": digest(key)}
    console.print(f"key (shown once, give it to {name}): [bold]{key}[/]")
    console.print("add to API_KEYS (a JSON list):")
    print(json.dumps([entry]))
