"""streamscore's shared layer: event contracts, the topic registry, settings blocks, Kafka plumbing,
errors, logging and the local infrastructure kit. It imports nothing from the services."""

__version__ = "0.1.0"
