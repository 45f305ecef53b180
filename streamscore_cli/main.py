"""`streamscore`: the umbrella CLI. It wires the services together and holds no logic of its own.

Every failure of every command ends here in one line on stderr, `error: <what>. <what to do>`, and exit code 1
(StreamscoreError, a settings error naming its environment variable, a taken port, a broker or Redis that does not
answer; see streamscore.failures); `streamscore --debug …` adds the traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from streamscore import __version__
from streamscore.logs import configure
from streamscore_cli import api, config, demo, dlq, features, infra, lag, produce, schemas, score, stream, top, train
from streamscore_cli import monitor as monitor_cli
from streamscore_cli.console import TYPER_SIGNALS, options, show_failure


class OneLineErrors(TyperGroup):
    """The root command: whatever a command raises is reported in one line (its traceback with `--debug`)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except TYPER_SIGNALS:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in one line; `--debug` prints the traceback
            show_failure(exc)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=OneLineErrors,
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
app.command()(top.top)
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
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar="STREAMSCORE_DEBUG",
        help="On a failure, print its traceback (and the log lines it carries) before the one-line error.",
    ),
) -> None:
    options.debug = debug
    configure(log_level)


def main() -> None:
    app()
