"""The local default stack: a real single-node Apache Kafka (KRaft) from the official jars and a real
redis-server, started and stopped by process id. No Docker engine needed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamscore.infra.stack import LocalStack, StackStatus, UpReport

__all__ = ["LocalStack", "StackStatus", "UpReport"]


def __getattr__(name: str) -> Any:
    # The stack (and the Redis and Kafka clients it imports) loads on first use: `streamscore.infra.settings`, which
    # every settings class reaches through the project root, must not cost a CLI's `--help` the Redis client.
    if name in __all__:
        from streamscore.infra import stack

        return getattr(stack, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
