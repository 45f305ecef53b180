"""The processes the pipeline benchmark measures beside the scorer, each a child process so its CPU time is
its own: `python -m bench._workers passthrough|naive|load ...`.

- passthrough: consume → produce the same records to another topic, no work; batches close like the
  scorer's (`consume(n)` until the batch is full or its delay has passed). `--mode eos` commits every batch
  in one Kafka transaction with its offsets, as the scorer does; `--mode plain` uses the idempotent
  producer and commits offsets asynchronously, with no delivery guarantee: the raw ceiling.
- naive: the per-event scorer everyone writes first: one `poll`, one decode, one Feast SDK online read for
  that one entity, one ONNX Runtime run, one Score, one `produce` per event (no flush per event; offsets
  auto-committed).
- load: produce pre-built transactions at a steady rate, stamping each record with the wall-clock time
  it was produced; after a warm-up at the same rate (not measured), writes
  `event_id<TAB>timestamp_ms<TAB>account_id<TAB>event_time_us` per measured record to a file at the end.

Each prints a progress line per second on stdout (the benchmark keeps it in a log file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from streamscore.contracts import Headers
from streamscore.kafka import consumer_config, producer_config
from streamscore.settings import KafkaSettings


def _say(text: str) -> None:
    sys.stdout.write(f"{time.strftime('%H:%M:%S')} {text}\n")
    sys.stdout.flush()


def _produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    headers: Headers | dict[str, str | bytes | None] | None,
    timestamp: int = 0,
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, timestamp=timestamp)
            return
        except BufferError:
            producer.poll(0.05)


def _collect(consumer: Consumer, size: int, delay_s: float) -> list[Message]:
    """Up to `size` records; the batch closes `delay_s` after its first record (the scorer's rule)."""
    batch: list[Message] = []
    opened = 0.0
    while len(batch) < size:
        if batch:
            remaining = opened + delay_s - time.monotonic()
            if remaining <= 0:
                break
            timeout = remaining
        else:
            timeout = 0.1
        messages = consumer.consume(size - len(batch), timeout)
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    _say(f"consumer error: {error}")
                continue
            if not batch:
                opened = time.monotonic()
            batch.append(m)
        if not batch and not messages:
            break
    return batch


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    highest: dict[tuple[str, int], int] = {}
    for m in batch:
        key = (m.topic() or "", m.partition() or 0)
        highest[key] = max(highest.get(key, -1), m.offset() or 0)
    return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]


def passthrough(args: argparse.Namespace) -> int:
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap)
    eos = args.mode == "eos"
    consumer = Consumer(
        {
            **consumer_config(kafka, args.group, "bench-passthrough"),
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": max(1, min(100, int(args.delay_ms))),
            "queued.max.messages.kbytes": 65536,
        }
    )
    producer = Producer(
        producer_config(kafka, "bench-passthrough", transactional_id=f"{args.group}.tx" if eos else None, linger_ms=2)
    )
    if eos:
        producer.init_transactions(30.0)
    consumer.subscribe([args.source])
    copied = 0
    next_report = time.monotonic() + 1.0
    while copied < args.count:
        batch = _collect(consumer, args.batch, args.delay_ms / 1000.0)
        if not batch:
            continue
        if eos:
            producer.begin_transaction()
        for m in batch:
            # A new CreateTime (timestamp 0 = now): the output's timestamps say when it was produced.
            _produce(producer, args.target, m.value(), m.key(), m.headers())
        producer.poll(0)
        offsets = _next_offsets(batch)
        if eos:
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30.0)
            producer.commit_transaction(30.0)
        else:
            consumer.commit(offsets=offsets, asynchronous=True)
        copied += len(batch)
        if time.monotonic() >= next_report:
            _say(f"passthrough {args.mode}: {copied} copied")
            next_report += 1.0
    producer.flush(60.0)
    consumer.close()
    _say(f"passthrough {args.mode}: done, {copied} copied")
    return 0


def naive(args: argparse.Namespace) -> int:
    # Imported here: Feast takes seconds to import and only this worker needs it.
    from feature_repo.settings import FeastSettings
    from feature_repo.store import open_store, read_online
    from scorer.engine import feature_status
    from streamscore.contracts import Score, decode_transaction, headers_for
    from streamscore.features import TransactionFacts, transaction_features
    from streamscore.thresholds import DEFAULT_THRESHOLDS

    kafka = KafkaSettings(bootstrap_servers=args.bootstrap)
    store = open_store(FeastSettings())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        Path(args.model).read_bytes(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    consumer = Consumer(consumer_config(kafka, args.group, "bench-naive", enable_auto_commit=True))
    producer = Producer(producer_config(kafka, "bench-naive"))
    consumer.subscribe([args.source])
    # Warm-up outside the measurement: Feast's registry load and ORT's first run.
    read_online(store, [("warm-up", "warm-up")])
    session.run(["score"], {"features": np.zeros((1, 24), dtype=np.float32)})
    thresholds = DEFAULT_THRESHOLDS  # the bench's model is registered without an operating point
    _say("naive: ready")
    done = 0
    next_report = time.monotonic() + 1.0
    while done < args.count:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            continue
        tx = decode_transaction(message.key(), message.value(), message.headers())
        facts = TransactionFacts.of(tx)
        ((realtime, profile, merchant),) = read_online(store, [(tx.account_id, tx.merchant_id)], as_of=tx.event_time)
        row = transaction_features(facts, realtime, profile, merchant)
        x = np.asarray([row.values], dtype=np.float32)
        value = float(session.run(["score"], {"features": x})[0].reshape(-1)[0])
        scored_at = datetime.now(UTC)
        score = Score(
            event_id=tx.event_id,
            account_id=tx.account_id,
            score=value,
            decision=thresholds.decide(value),
            model_name=args.model_name,
            model_version="1",
            variant="champion",
            experiment_id="exp-1",
            feature_status=feature_status((realtime, profile, merchant), "fraud_v1"),
            amount=tx.amount,
            currency=tx.currency,
            event_time=tx.event_time,
            scored_time=scored_at,
            latency_ms=max(scored_at.timestamp() - message.timestamp()[1] / 1000.0, 0.0) * 1000.0,
            features=row.as_dict(),
            review_threshold=thresholds.review,
            decline_threshold=thresholds.decline,
            thresholds=thresholds.source,
        )
        _produce(producer, args.target, score.to_json(), tx.account_id.encode(), list(headers_for(score)))
        producer.poll(0)
        done += 1
        if time.monotonic() >= next_report:
            _say(f"naive: {done} scored")
            next_report += 1.0
    producer.flush(60.0)
    consumer.close()
    _say(f"naive: done, {done} scored")
    return 0


def load(args: argparse.Namespace) -> int:
    from bench._data import transactions

    kafka = KafkaSettings(bootstrap_servers=args.bootstrap)
    warmup = int(args.rate * args.warmup_seconds)
    total = warmup + int(args.rate * args.seconds)
    started = time.monotonic()
    records = transactions(
        args.seed,
        total,
        datetime.now(UTC) + timedelta(seconds=5),
        args.rate,
        accounts=args.accounts,
        merchants=args.merchants,
    )
    _say(f"load: {total} transactions built in {time.monotonic() - started:.1f}s")
    producer = Producer(producer_config(kafka, "bench-load", linger_ms=args.linger_ms))
    # The idempotent producer's first send waits for its producer id: not part of anyone's latency.
    producer.list_topics(args.topic, timeout=30.0)
    stamps = np.zeros(total, dtype=np.int64)
    tick = 0.002
    per_tick = args.rate * tick
    sent = 0
    begin = time.monotonic()
    next_report = begin + 1.0
    n = 0
    while sent < total:
        n += 1
        due = min(total, int(n * per_tick))
        wake = begin + n * tick
        pause = wake - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        while sent < due:
            key, value, headers, _ = records[sent]
            now_ms = int(time.time() * 1000)
            stamps[sent] = now_ms
            _produce(producer, args.topic, value, key, headers, now_ms)
            sent += 1
        producer.poll(0)
        if time.monotonic() >= next_report:
            _say(f"load: {sent} produced, {sent / (time.monotonic() - begin):.0f}/s")
            next_report += 1.0
    elapsed = time.monotonic() - begin
    left = producer.flush(60.0)
    # The warm-up's records are scored like the others but left out of the file: they are not measured.
    with Path(args.stamps).open("w") as out:
        for (key, value, _, event_id), stamp in zip(records[warmup:], stamps[warmup:].tolist(), strict=True):
            # The account and event time let the feature freshness probe tell which snapshot holds the event.
            event_us = round(datetime.fromisoformat(json.loads(value)["event_time"]).timestamp() * 1e6)
            out.write(f"{event_id}\t{stamp}\t{key.decode()}\t{event_us}\n")
    _say(f"load: done, {sent} produced in {elapsed:.2f}s ({sent / elapsed:.0f}/s), {left} undelivered")
    return 0 if left == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._workers")
    sub = parser.add_subparsers(dest="worker", required=True)
    p = sub.add_parser("passthrough")
    p.add_argument("--mode", choices=("eos", "plain"), required=True)
    n = sub.add_parser("naive")
    n.add_argument("--model", required=True)
    n.add_argument("--model-name", default="fraud-detector")
    for each in (p, n):
        each.add_argument("--bootstrap", required=True)
        each.add_argument("--source", required=True)
        each.add_argument("--target", required=True)
        each.add_argument("--group", required=True)
        each.add_argument("--count", type=int, required=True)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--delay-ms", type=float, default=10.0)
    g = sub.add_parser("load")
    g.add_argument("--bootstrap", required=True)
    g.add_argument("--topic", required=True)
    g.add_argument("--rate", type=float, required=True)
    g.add_argument("--seconds", type=float, required=True)
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--accounts", type=int, required=True)
    g.add_argument("--merchants", type=int, required=True)
    g.add_argument("--linger-ms", type=int, default=1)
    g.add_argument("--warmup-seconds", type=float, default=3.0)
    g.add_argument("--stamps", required=True)
    args = parser.parse_args(argv)
    worker = {"passthrough": passthrough, "naive": naive, "load": load}[args.worker]
    return worker(args)


if __name__ == "__main__":
    sys.exit(main())
