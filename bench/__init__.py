"""Benchmarks of the pipeline on the local stack (`make bench`); speed is measured here, never asserted in tests.

`python -m bench.pipeline` runs the whole comparison — Kafka passthrough, naive per-event scorer, the stream
scorer with exactly-once — and writes its figures to `bench/results/`; docs/benchmarks.md explains them.
"""
