"""The local default stack: a real single-node Apache Kafka (KRaft) from the official jars and a real
redis-server, started and stopped by process id. No Docker engine needed."""

from streamscore.infra.stack import LocalStack, StackStatus, UpReport

__all__ = ["LocalStack", "StackStatus", "UpReport"]
