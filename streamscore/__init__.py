"""streamscore's shared layer: event contracts, the topic registry, settings blocks, Kafka plumbing,
errors, logging and the local infrastructure kit. It imports nothing from the services."""

# Importing feast sets PROMETHEUS_MULTIPROC_DIR, which switches prometheus_client into multiprocess mode
# for every metric created after prometheus_client is first imported: values then live in shared mmap
# files keyed by metric name, so two registries in one process add up. Importing prometheus_client here,
# before any service can import feast, keeps our metrics plain in-process values.
# A process started by one that imported feast inherits both variables (pointing at feast's temporary
# `feast_metrics_*` folder): they are dropped before prometheus_client reads them, for the same reason.
# Only while prometheus_client is not loaded yet: once it chose multiprocess mode it needs the variable.
# Every service package imports this package first, so in practice it is not loaded yet.
import os as _os
import sys as _sys
from pathlib import Path as _Path

if "prometheus_client" not in _sys.modules:
    for _name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
        if _Path(_os.environ.get(_name, "")).name.startswith("feast_metrics_"):
            del _os.environ[_name]

import prometheus_client.values  # noqa: F401

__version__ = "0.1.0"
