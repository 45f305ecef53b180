"""Where the stream processors' CPU goes, step by step, like `bench._stages` does for the scorer: the pure functions
the feature processor's agent and the monitor's agent call per record, called in the same order on realistic
records, each timed with the thread's CPU clock (`time.thread_time`: other processes do not inflate it).

What is not here is Faust's and aiokafka's own work (fetching, the stream iterator, acks, the table's changelog
producer, offset commits): it is the rest of the process's CPU per event that the pipeline benchmark measures in
its drain phase (`rest` in its report).

`python -m bench._processor_stages --out FILE --scores-topic T ...` runs in a process of its own, configured from the
environment like the services (`FEAST_…`, `REDIS_…`, `KAFKA_…`, `REGISTRY_…`), so its heap and its Redis are the
services'. The monitor's steps read the scores the scorer wrote during the benchmark (`--scores-topic`) and the
labels the benchmark generated for them (same seed)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench._data import Record, transactions
from bench._probe import read_topic
from streamscore.settings import KafkaSettings

PUSH_BATCH = 300
"""Accounts per push to the online store: what the feature processor's batches hold under a backlog (they close on
their delay, not their size; docs/stream-processors.md)."""
PUSH_STEP = f"push to the online store (the processor's sink, {PUSH_BATCH} accounts a batch)"
CHECKPOINT_EVERY = 2_000
"""Records between two monitor checkpoints of one partition (its default 2 s at ~1 000 records/s)."""


class Stopwatch:
    """CPU seconds of this thread per step, and wall seconds where a step waits for a server."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu[step] = self.cpu.get(step, 0.0) + time.thread_time() - cpu
            self.wall[step] = self.wall.get(step, 0.0) + time.perf_counter() - wall

    def per_event(self, events: int) -> dict[str, float]:
        out = {step: round(seconds / events * 1e6, 2) for step, seconds in self.cpu.items()}
        for step, seconds in self.wall.items():
            if step.startswith("push"):
                out["push: wall time (waits for Redis)"] = round(seconds / events * 1e6, 2)
        return out


def feature_steps(records: list[Record], push: Callable[[list[tuple[str, Any]]], None] | None) -> dict[str, float]:
    """CPU µs per event of each step of the feature processor's per-record path (stream_processors.accounts):
    decode → fold → the table value's JSON (the changelog record) → the push to the online store, one push per
    `PUSH_BATCH` distinct accounts (one row per account, last wins, like its batcher)."""
    from stream_processors.accounts.agents import decode, fold

    try:
        from feature_repo.store import snapshot_problem

        problem: Callable[[Any], str | None] = snapshot_problem
    except ImportError:  # the processor's check moved: the fold without it
        problem = lambda _snapshot: None  # noqa: E731

    clock = Stopwatch()
    table: dict[str, dict[str, object]] = {}
    pending: dict[str, Any] = {}
    for key, value, headers, _ in records:
        with clock("decode (contract → TransactionFacts)"):
            facts = decode(key, value, headers, received_s=time.time())
        with clock("fold (state from dict, apply, snapshot, check, as_dict)"):
            folded = fold(table.get(facts.account_id), facts, problem)
        if folded.state is not None:
            with clock("table value → changelog JSON"):
                json.dumps(folded.state).encode()
            table[facts.account_id] = folded.state
        if folded.snapshot is not None:
            pending[facts.account_id] = folded.snapshot
        if push is not None and len(pending) >= PUSH_BATCH:
            rows = list(pending.items())
            pending.clear()
            with clock(PUSH_STEP):
                push(rows)
    if push is not None and pending:
        with clock(PUSH_STEP):
            push(list(pending.items()))
    return clock.per_event(len(records))


def monitor_steps(scores: list[bytes], labels: list[bytes], reference: dict[str, Any]) -> dict[str, float]:
    """CPU µs per record of each step of the monitor's per-record path (monitor.agents → monitor.partition): decode
    (contract), `PartitionState.on_score` / `on_label` (units, drift windows, A/B joins), and every
    `CHECKPOINT_EVERY` records a checkpoint (`PartitionState.checkpoint`) and its records' JSON (the changelog).
    One partition state holds every record here (the worker keeps one per partition: the same work per record)."""
    from monitor.partition import Clocks, PartitionState, Policy
    from monitor.references import ReferenceBook
    from monitor.settings import MonitorSettings
    from streamscore.contracts import Label, Score, parse_event

    stats = MonitorSettings()
    book = ReferenceBook(lambda _version: reference)
    state = PartitionState(0, stats, Policy(partitions=1), book)
    clock = Stopwatch()
    not_after = time.time() + 3600.0
    # Scores and labels interleaved as the worker meets them: both topics are read side by side.
    stream: list[tuple[str, bytes]] = []
    for i in range(max(len(scores), len(labels))):
        if i < len(scores):
            stream.append(("scores", scores[i]))
        if i < len(labels):
            stream.append(("labels", labels[i]))
    for offset, (kind, value) in enumerate(stream):
        if kind == "labels":
            with clock("decode Label (contract)"):
                label = parse_event(Label, value, not_after_s=not_after)
            with clock("on_label (join with its unit)"):
                state.on_label(label, offset)
        else:
            with clock("decode Score (contract, with its features)"):
                score = parse_event(Score, value, not_after_s=not_after)
            if book.needs(score.model_version):
                book.load(score.model_version)
            with clock("on_score (unit, drift window)"):
                state.on_score(score, "scores", offset, time.time())
        if (offset + 1) % CHECKPOINT_EVERY == 0 or offset == len(stream) - 1:
            with clock("checkpoint (records to write)"):
                written = state.checkpoint(Clocks(now=time.time(), scores_caught_up=False, labels_caught_up=False))
            with clock("checkpoint records → changelog JSON"):
                for key, body in written:
                    json.dumps(key)
                    if body is not None:
                        json.dumps(body)
    return clock.per_event(len(stream))


def open_sink() -> Callable[[list[tuple[str, Any]]], None]:
    """The feature processor's own sink, opened as its worker opens it (`FeastSink.open` with its FEATURES_PUSH_WRITER:
    the direct Redis writer by default, Feast's push path with `feast`), so the step measures what the service does."""
    from feature_repo.settings import FeastSettings
    from stream_processors.accounts.pushing import FeastSink
    from stream_processors.settings import StreamProcessorSettings

    writer = getattr(StreamProcessorSettings(), "push_writer", None)
    sink = FeastSink.open(FeastSettings(), writer) if writer is not None else FeastSink.open(FeastSettings())
    return sink.push


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._processor_stages")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--merchants", type=int, required=True)
    parser.add_argument("--scores-topic", default="", help="the scores the scorer wrote (the monitor's steps)")
    parser.add_argument("--reference", type=Path, default=None, help="reference.json of the champion")
    parser.add_argument("--no-push", action="store_true", help="leave out the push to the online store")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    labels: list[Record] = []
    records = transactions(
        args.seed,
        args.events,
        datetime.now(UTC) - timedelta(seconds=args.events / 200),
        200.0,
        accounts=args.accounts,
        merchants=args.merchants,
        labels=labels,
    )
    push: Callable[[list[tuple[str, Any]]], None] | None = None
    if not args.no_push:
        push = open_sink()
    feature_steps(records[:1000], None)  # warm-up: imports, caches
    results["feature processor"] = feature_steps(records, push)
    if args.scores_topic and args.reference is not None:
        read = read_topic(KafkaSettings(), args.scores_topic, args.events, keep_values=True, timeout_s=60.0)
        reference = json.loads(args.reference.read_text())
        results["monitor"] = monitor_steps(read.values, [value for _, value, _, _ in labels], reference)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
