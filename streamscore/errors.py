"""One root error with `retryable` and `http_status`; subclasses build their message from arguments.

A message is one line that says what is wrong and what to do about it (the CLI prints it as `error: <message>`);
longer context, such as the last lines of a log, goes to `details`, which `streamscore --debug` shows.
"""

from __future__ import annotations

from pathlib import Path

LOCAL_KAFKA = "127.0.0.1:9092"
"""Where the local stack's broker listens with the default settings (`streamscore infra up`)."""
LOCAL_REDIS = "127.0.0.1:6379"
"""Where the local stack's Redis listens with the default settings."""


class StreamscoreError(Exception):
    """Root of every error streamscore raises on purpose."""

    retryable: bool = False
    http_status: int = 500

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        """More lines for whoever digs (a log's tail); not part of the one-line message."""


def start_hint(address: str, local: str, variables: str) -> str:
    """What to do about a service that does not answer at `address`: start the local stack when the address is the
    local stack's default (`local`), else check the address, which is someone else's service or a typo."""
    hosts = {local, local.replace("127.0.0.1", "localhost")}
    if address.strip() in hosts:
        return "Start it with `streamscore infra up` (or `make up`)"
    return f"Check that it runs and is reachable there, or fix {variables}"


class ConfigError(StreamscoreError):
    """A setting or a combination of settings is invalid; names the variable to fix (and how, when `fix` says)."""

    http_status = 500

    def __init__(self, variable: str, problem: str, fix: str = "") -> None:
        message = f"{variable}: {problem}"
        if fix:
            message = f"{message.rstrip('.')}. {fix.rstrip('.')}."
        super().__init__(message)
        self.variable = variable
        self.problem = problem


class PortInUseError(StreamscoreError):
    """A port a service must listen on is taken by another process; names the setting that moves it."""

    def __init__(self, variable: str, host: str, port: int, holder: str = "") -> None:
        by = f" by {holder}" if holder else " by another process"
        super().__init__(
            f"{variable}: port {port} on {host} is already in use{by}. "
            f"Stop that process, or set {variable} to a free port."
        )
        self.variable = variable
        self.port = port


class MissingToolError(StreamscoreError):
    """A program the local stack needs is not installed: not on PATH, nor in the wheel that can ship it."""

    def __init__(self, tool: str, how_to_install: str, wheel: str | None = None) -> None:
        where = f"on PATH or in the {wheel} wheel" if wheel else "on PATH"
        super().__init__(f"'{tool}' was not found {where}. {how_to_install}")
        self.tool = tool


class InfraError(StreamscoreError):
    """A local service failed to start or stop. The message names its log when there is one; the log's last lines
    (`log_tail`) are the error's details."""

    retryable = True

    def __init__(self, service: str, problem: str, log_tail: str = "", log: Path | str | None = None) -> None:
        message = f"{service}: {problem}"
        if log:
            message += f" (log: {log})"
        details = f"--- last lines of the {service} log ---\n{log_tail.rstrip()}" if log_tail.strip() else ""
        super().__init__(message, details)
        self.service = service


class ChecksumError(InfraError):
    """A downloaded file is not the one its committed list pins; it was not kept."""

    retryable = False

    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(
            "kafka jars",
            f"{url} has SHA-256 {actual}, the list pins {expected}: the file was not kept "
            "(a proxy or mirror altered it, or the list is wrong)",
        )
        self.url = url


class BrokerUnavailableError(StreamscoreError):
    """The Kafka broker did not answer in time."""

    retryable = True
    http_status = 503

    def __init__(self, bootstrap_servers: str, waited_s: float, detail: str = "") -> None:
        message = f"Kafka at {bootstrap_servers} did not answer within {waited_s:.0f} s"
        if detail:
            message += f": {detail}"
        message += f". {start_hint(bootstrap_servers, LOCAL_KAFKA, 'KAFKA_BOOTSTRAP_SERVERS')}."
        super().__init__(message)


class EventError(StreamscoreError):
    """An event is defective; carries the dead-letter reason it maps to."""

    http_status = 422

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DeliveryError(StreamscoreError):
    """Kafka refused or failed to deliver one or more messages."""

    retryable = True
    http_status = 503

    def __init__(self, failed: int, first_error: str) -> None:
        super().__init__(f"{failed} message(s) were not delivered; first error: {first_error}")
        self.failed = failed
