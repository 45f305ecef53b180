"""One root error with `retryable` and `http_status`; subclasses build their message from arguments."""

from __future__ import annotations


class StreamscoreError(Exception):
    """Root of every error streamscore raises on purpose."""

    retryable: bool = False
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(StreamscoreError):
    """A setting or a combination of settings is invalid; names the variable to fix."""

    http_status = 500

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class MissingToolError(StreamscoreError):
    """A program the local stack needs is not installed: not on PATH, nor in the wheel that can ship it."""

    def __init__(self, tool: str, how_to_install: str, wheel: str | None = None) -> None:
        where = f"on PATH or in the {wheel} wheel" if wheel else "on PATH"
        super().__init__(f"'{tool}' was not found {where}. {how_to_install}")
        self.tool = tool


class InfraError(StreamscoreError):
    """A local service failed to start or stop."""

    retryable = True

    def __init__(self, service: str, problem: str, log_tail: str = "") -> None:
        message = f"{service}: {problem}"
        if log_tail:
            message += f"\n--- last lines of the {service} log ---\n{log_tail}"
        super().__init__(message)
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
        message += ". Start it with `streamscore infra up` (or `make up`)."
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
