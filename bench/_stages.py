"""Where the scorer's CPU goes, stage by stage: the functions its Kafka loop and its engine call, called in
the same order on the same batches, each timed with the thread's CPU clock (`time.thread_time`, so other
processes on the machine do not inflate it). Kafka's own work (fetching, producing, transactions, in
librdkafka's threads) is not here: it is the rest of the process's CPU per event measured by the pipeline
benchmark.

`python -m bench._stages --out FILE ...` runs in a process of its own, configured from the environment like
the scorer (`SCORER_…`, `FEAST_…`, `REGISTRY_…`), so its heap — and so its garbage collector's work — looks like
the scorer's, not like the benchmark's (which holds the whole backlog). One measurement per batch size, and
one with `gc.freeze()` after start-up, to show what the cyclic collector costs.

The separate stages run one inference for the whole batch (the champion's); `engine.score` routes to both
variants, hence its own line as a check."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bench._data import Record, transactions
from feature_repo.layout import MERCHANT_VIEW, SERVICES
from scorer.engine import Request, ScoringEngine, feature_status
from scorer.features import make_feature_client
from scorer.service import load_serving
from scorer.settings import ScorerSettings
from streamscore.contracts import Header, Score, decode_transaction, header_value, headers_for
from streamscore.features import TransactionFacts, transaction_features

ENGINE_CHECK = "check: engine.score as a whole"


class Stopwatch:
    """CPU seconds of this thread per stage."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.thread_time()
        try:
            yield
        finally:
            self.totals[stage] = self.totals.get(stage, 0.0) + time.thread_time() - started


def stage_costs(
    settings: ScorerSettings, engine: ScoringEngine, records: list[Record], batch_size: int, rounds: int = 3
) -> dict[str, float]:
    """CPU µs per event of each stage, over `rounds` passes through `records` in batches of `batch_size`.
    `engine.score` (whole) is timed separately, as a check that the stages in between add up."""
    serving = engine.serving
    features = engine.features
    clock = Stopwatch()
    events = 0
    for _ in range(rounds):
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            events += len(chunk)
            arrived = time.time()
            with clock("decode + validate (pydantic)"):
                requests = []
                for key, value, headers, _ in chunk:
                    tx = decode_transaction(key, value, headers, max_bytes=settings.max_message_bytes)
                    trace = header_value(headers, Header.TRACEPARENT)
                    requests.append(Request(tx, arrived, trace.decode() if trace else None))
            with clock("TransactionFacts.of"):
                facts = [TransactionFacts.of(q.tx) for q in requests]
            with clock("feature read (Redis, one round trip)"):
                rows = features.read([(f.account_id, f.merchant_id) for f in facts], [f.event_ts for f in facts])
            with clock("routing"):
                routes = [serving.router.route(f.account_id) for f in facts]
            model = serving.models[routes[0].live]
            thresholds = serving.thresholds_of(routes[0].live)
            use_merchant = MERCHANT_VIEW in SERVICES[model.feature_service]
            with clock("transaction_features"):
                feature_rows = [
                    transaction_features(f, r[0], r[1], r[2] if use_merchant else None)
                    for f, r in zip(facts, rows, strict=True)
                ]
            with clock("inference (ONNX Runtime, one run)"):
                scores = model.predict(np.asarray([r.values for r in feature_rows], dtype=np.float32))
            scored_at = datetime.now(UTC)
            with clock("Score objects (pydantic)"):
                built = []
                for q, value, fr, row in zip(requests, scores.tolist(), feature_rows, rows, strict=True):
                    built.append(
                        Score(
                            event_id=q.tx.event_id,
                            account_id=q.tx.account_id,
                            score=value,
                            decision=thresholds.decide(value),
                            model_name=model.name,
                            model_version=model.version,
                            variant=routes[0].live,
                            experiment_id=serving.experiment_id,
                            feature_status=feature_status(row, model.feature_service),
                            amount=q.tx.amount,
                            currency=q.tx.currency,
                            event_time=q.tx.event_time,
                            scored_time=scored_at,
                            latency_ms=0.0,
                            source="stream",
                            features=fr.as_dict() if settings.attach_features else None,
                            review_threshold=thresholds.review,
                            decline_threshold=thresholds.decline,
                            thresholds=thresholds.source,
                        )
                    )
            with clock("Score JSON + headers"):
                for score in built:
                    score.to_json()
                    headers_for(score, None, model_version=score.model_version)
            with clock(ENGINE_CHECK):
                engine.score(requests)
    return {stage: round(seconds / events * 1e6, 2) for stage, seconds in clock.totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._stages")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 4096, 1024])
    parser.add_argument("--events", type=int, default=16_384)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--merchants", type=int, required=True)
    args = parser.parse_args(argv)
    settings = ScorerSettings()
    records = transactions(
        args.seed,
        args.events,
        datetime.now(UTC) - timedelta(seconds=args.events / 200),
        200.0,
        accounts=args.accounts,
        merchants=args.merchants,
    )
    _, serving = load_serving(settings)
    features = make_feature_client(settings.feature_client, settings.feast)
    engine = ScoringEngine(serving, features, attach_features=settings.attach_features)
    results: dict[str, dict[str, float]] = {}
    try:
        stage_costs(settings, engine, records[:1024], 256, rounds=1)  # warm-up: caches, memos, first runs
        for size in args.batches:
            results[f"batch {size}"] = stage_costs(settings, engine, records, size)
        gc.freeze()  # everything allocated so far (modules, models, clients) leaves the collector's generations
        results["batch 1024, gc.freeze() after start-up"] = stage_costs(settings, engine, records, 1024)
    finally:
        features.close()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
