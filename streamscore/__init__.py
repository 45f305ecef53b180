"""streamscore's shared layer: event contracts, the topic registry, settings blocks, Kafka plumbing,
errors, logging and the local infrastructure kit. It imports nothing from the services."""

# Importing feast sets PROMETHEUS_MULTIPROC_DIR, which switches prometheus_client into multiprocess mode
# for every metric created after prometheus_client is first imported: values then live in shared mmap
# files keyed by metric name, so two registries in one process add up. Importing prometheus_client here,
# before any service can import feast, keeps our metrics plain in-process values.
import prometheus_client.values  # noqa: F401

__version__ = "0.1.0"
