"""`streamscore`: the umbrella CLI. It wires the services together and holds no logic of its own."""

from __future__ import annotations

import typer

from streamscore import __version__
from streamscore.logs import configure
from streamscore_cli import api, config, demo, dlq, features, infra, lag, produce, schemas, score, stream, train
from streamscore_cli import monitor as monitor_cli

app = typer.Typer(
    help="streamscore — real-time fraud scoring on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(infra.app, name="infra")
app.add_typer(schemas.app, name="schemas")
app.add_typer(config.app, name="config")
features.app.command("stream")(stream.stream)
app.add_typer(features.app, name="features")
app.command()(produce.produce)
app.command()(demo.demo)
app.command()(train.train)
app.command()(score.score)
app.command()(api.api)
app.command("api-key")(api.api_key)
app.command()(lag.lag)
app.add_typer(dlq.app, name="dlq")
app.command()(monitor_cli.monitor)
app.command()(monitor_cli.report)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def root(
    log_level: str = typer.Option("WARNING", envvar="LOG_LEVEL", help="Logging level of the services' loggers."),
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    configure(log_level)


def main() -> None:
    app()
