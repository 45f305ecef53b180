"""The monitor end to end: `python -m monitor` against the real broker of the session, reading references from a
private MLflow registry, publishing to monitor.drift / monitor.ab / monitor.alerts.

The statistical tests produce Score and Label events directly (the scorer simulated), on a scripted timeline of
event times: a fixed start a year ahead of the wall clock, so the monitor's clocks follow the events (the wall
clock never overtakes them) and every window and every maturity is decided by the data alone — the results are
the same on every run, however loaded the machine. One test runs the real scorer upstream.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from numpy.typing import NDArray

from monitor.ab import ABRecord
from monitor.alerts import Alert
from monitor.app import merge_topic_ready
from monitor.app_settings import MonitorAppSettings
from monitor.drift import CLOCK_INPUTS, DriftRecord
from monitor.references import score_series
from producers.drift import DriftSpec
from producers.generator import GeneratedEvent, GeneratorConfig, TransactionGenerator
from producers.world import build_world
from streamscore.contracts import DeadLetterReason, Label, Score, headers_for
from streamscore.features import FEATURE_NAMES, TransactionFacts, transaction_features
from streamscore.kafka import admin_client, delete_topics, partition_for, producer_config
from streamscore.registry import mlflow_client
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry
from tests.support.models import expected_scores, linear_weights, logistic_onnx, register
from tests.support.monitoring import draw_features, label_event, model_scores, reference_document, score_event
from tests.support.scoring import (
    CASE,
    DEFECT_KINDS,
    MODEL,
    OutputReader,
    ScorerProcess,
    changelog_image,
    defective,
    free_port,
    make_scorer_env,
)
from tests.support.workers import PROJECT_ROOT, WorkerProcess, worker_process

READY_TIMEOUT_S = 120.0
OWN_PREFIXES = ("KAFKA_", "TOPICS_", "REGISTRY_", "MONITOR_", "SCORER_", "FEAST_", "REDIS_")
PARTITIONS = 6


def timeline_start(window_s: float) -> float:
    """A window-aligned instant a year ahead of the wall clock."""
    return math.ceil((time.time() + 365 * 86400) / window_s) * window_s


# --- registry ---------------------------------------------------------------------------------------------------


def with_reference(tracking_uri: str, version: str, document: dict[str, Any]) -> None:
    """Add reference.json to a registered version's model folder (training writes it there)."""
    client = mlflow_client(tracking_uri)
    run_id = client.get_model_version(MODEL, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference.json"
        path.write_text(json.dumps(document))
        client.log_artifact(str(run_id), str(path), artifact_path="model")


def set_alias(tracking_uri: str, alias: str, version: str) -> None:
    mlflow_client(tracking_uri).set_registered_model_alias(MODEL, alias, version)


@pytest.fixture(scope="module")
def synthetic_reference() -> dict[str, Any]:
    rng = np.random.default_rng(20)
    x = draw_features(rng, 30_000)
    return reference_document(x, model_scores(x), seed=4)


@pytest.fixture
def registry_uri(tmp_path: Path, synthetic_reference: dict[str, Any]) -> str:
    """Version 1 (champion and challenger) with the synthetic reference."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = register(uri, MODEL, logistic_onnx(*linear_weights(1)), alias="champion", artifact_dir=tmp_path / "a")
    set_alias(uri, "challenger", version)
    with_reference(uri, version, synthetic_reference)
    return uri


# --- the monitor subprocess -------------------------------------------------------------------------------------


def monitor_env(
    kafka: KafkaSettings, topics: TopicRegistry, registry_uri: str, tmp: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "TOPICS_PREFIX": topics.transactions.name.removesuffix("transactions"),
            "TOPICS_PARTITIONS": str(PARTITIONS),
            "REGISTRY_TRACKING_URI": registry_uri,
            "REGISTRY_CACHE_DIR": str(tmp / "monitor-cache"),
            "MONITOR_APP_ID": f"it-monitor-{uuid.uuid4().hex[:6]}",
            "MONITOR_STATE_DIR": str(tmp / "monitor-state"),
            "MONITOR_METRICS_PORT": str(free_port()),
            "MONITOR_METRICS_BIND": "127.0.0.1",
            "MONITOR_CHECKPOINT_INTERVAL_S": "0.5",
            "MONITOR_COMMIT_INTERVAL_S": "0.5",
            "MONITOR_PUBLISH_INTERVAL_S": "0.5",
            "MONITOR_LOOK_INTERVAL_S": "1",
            "MONITOR_PROGRESS_INTERVAL_S": "5",
            "MONITOR_ALLOWED_LATENESS_S": "0",
            # The timelines of these tests run a year ahead of the wall clock (timeline_start); the monitor's guard
            # against records from the future (one would close every window) is widened for them.
            "MONITOR_MAX_EVENT_AHEAD_S": str(2 * 365 * 86400),
            "LOG_LEVEL": "INFO",
            **extra,
        }
    )
    return env


@contextmanager
def monitor_worker(env: dict[str, str], log: Path) -> Iterator[WorkerProcess]:
    """`python -m monitor`, ready once its tables are recovered and its partitions' states rebuilt."""

    def ready(health: dict[str, Any]) -> bool:
        return bool(health.get("ready") and health.get("recovered")) and not health.get("rebalancing")

    port = int(env["MONITOR_METRICS_PORT"])
    with worker_process("monitor", env, log, port, ready, READY_TIMEOUT_S) as worker:
        print(f"monitor ready in {worker.started_s:.1f} s")
        yield worker


# --- producing and reading --------------------------------------------------------------------------------------


class Sender:
    """Produces scores and labels as a producing team would: at least once — an event whose delivery failed (a broker
    gone longer than the producer waits) is sent again at `flush`, so every event sent is in the topics."""

    def __init__(self, kafka: KafkaSettings, topics: TopicRegistry) -> None:
        self.producer = Producer(producer_config(kafka, f"test-{uuid.uuid4().hex[:6]}", linger_ms=5))
        self.topics = topics
        self.failed: list[tuple[Score | Label, bool, str]] = []
        self.resent = 0

    def send(self, event: Score | Label, *, shadow: bool = False) -> None:
        if isinstance(event, Label):
            topic = self.topics.labels.name
        else:
            topic = self.topics.scores_shadow.name if shadow else self.topics.scores.name

        def delivered(err: Any, _: Any) -> None:
            if err is not None:
                self.failed.append((event, shadow, str(err)))

        while True:
            try:
                self.producer.produce(
                    topic, event.to_json(), event.account_id.encode(), headers=headers_for(event), on_delivery=delivered
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self) -> None:
        for _ in range(5):
            assert self.producer.flush(60) == 0
            if not self.failed:
                return
            failed, self.failed = self.failed, []
            print(f"{len(failed)} deliveries failed ({failed[0][2]}); sending them again")
            self.resent += len(failed)
            for event, shadow, _ in failed:
                self.send(event, shadow=shadow)
        raise AssertionError(f"deliveries still failing after 5 rounds: {self.failed[0][2]}")


def every_partition(prefix: str) -> list[str]:
    """One account key per partition (to move every partition's clock)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < PARTITIONS:
        key = f"{prefix}-{i}"
        found.setdefault(partition_for(key.encode(), PARTITIONS), key)
        i += 1
    return [found[p] for p in range(PARTITIONS)]


class Results:
    def __init__(self, kafka: KafkaSettings, topics: TopicRegistry) -> None:
        self.topics = topics
        self.reader = OutputReader(
            kafka, [topics.monitor_drift.name, topics.monitor_ab.name, topics.monitor_alerts.name]
        )

    def drift(self) -> list[DriftRecord]:
        return [DriftRecord.model_validate_json(o.value or b"") for o in self.reader.on(self.topics.monitor_drift.name)]

    def ab(self) -> list[ABRecord]:
        return [ABRecord.model_validate_json(o.value or b"") for o in self.reader.on(self.topics.monitor_ab.name)]

    def alerts(self) -> list[Alert]:
        return [Alert.model_validate_json(o.value or b"") for o in self.reader.on(self.topics.monitor_alerts.name)]

    def windows(self) -> dict[int, dict[str, DriftRecord]]:
        out: dict[int, dict[str, DriftRecord]] = {}
        for r in self.drift():
            out.setdefault(r.window, {})[r.feature] = r
        return out

    def wait(self, predicate: Any, timeout: float, what: str, worker: WorkerProcess) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker.check_alive()
            self.reader.poll_for(0.5)
            if predicate(self):
                return
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{worker.tail()}")


# --- a failure's audit ----------------------------------------------------------------------------------------------


def unit_audit(
    kafka: KafkaSettings,
    changelog_topic: str,
    sent: dict[int, Counter[str]],
    experiment: str,
    *,
    sent_ids: dict[int, dict[str, set[str]]] | None = None,
    maturity_s: float | None = None,
) -> str:
    """What the monitor's state changelog holds per partition, for a failure message: the score events sent, the
    units stored (variant entries of `experiment`) and the stored A/B counts (`seq`, `cutoff`), so a mismatch shows
    whether a partition lost or double-counted units. With the event ids sent per partition and variant (`sent_ids`)
    and the label maturity, also which units are missing from the changelog, which stored variants the stored counts
    do not hold (partition.py's rule: written at a checkpoint ≤ seq, matured by the cutoff), and which they hold
    without a label (none had arrived, or it came after the unit was counted)."""
    latest = changelog_image(kafka, changelog_topic)
    lines = []
    for p in sorted(sent):
        stored: Counter[str] = Counter()
        derived: Counter[str] = Counter()
        ab = latest.get(f"{p}/ab/{experiment}") or {}
        ids: dict[str, set[str]] = {}
        uncounted: list[str] = []
        unlabeled: list[str] = []
        for key, value in latest.items():
            if not key.startswith(f"{p}/u/") or value is None:
                continue
            for v, e in value["v"].items():
                if e[4] != experiment:
                    continue
                event_id = key.split("/", 2)[2]
                stored[v] += 1
                ids.setdefault(v, set()).add(event_id)
                counted = bool(ab) and e[5] is not None and e[5] <= ab["seq"]
                counted = counted and maturity_s is not None and value["t"] + maturity_s <= ab["cutoff"]
                derived[v] += counted
                if maturity_s is not None and not counted:
                    uncounted.append(f"{event_id}:{v}(t {value['t']:.3f}, seq {e[5]}, offset {e[3]})")
                label = value.get("l")
                if counted and (label is None or v in label[3]):
                    unlabeled.append(f"{event_id}:{v}({'no label' if label is None else 'label after maturity'})")
        counts = {v: c.get("units") for v, c in (ab.get("counts") or {}).items()}
        meta = latest.get(f"{p}/meta") or {}
        line = (
            f"partition {p}: sent {dict(sent[p])}, units stored {dict(stored)}, counted {counts} "
            f"(seq {ab.get('seq')}, cutoff {ab.get('cutoff')}; meta seq {meta.get('seq')}, "
            f"label clock {meta.get('label_clock')}, processed {meta.get('processed')})"
        )
        if maturity_s is not None:
            line += f"; stored and matured by the cutoff {dict(derived)}"
        if uncounted:
            line += f"; not counted ({len(uncounted)}): {sorted(uncounted)[:10]}"
        if unlabeled:
            line += f"; without their label ({len(unlabeled)}): {sorted(unlabeled)[:10]}"
        for v, want in sorted((sent_ids or {}).get(p, {}).items()):
            missing, extra = sorted(want - ids.get(v, set())), sorted(ids.get(v, set()) - want)
            if missing or extra:
                line += f"; {v}: {len(missing)} not stored {missing[:10]}, {len(extra)} stored not sent {extra[:10]}"
        lines.append(line)
    return "\n".join(lines)


def commit_audit(kafka: KafkaSettings, group: str, topics: TopicRegistry, changelog_topic: str) -> str:
    """Per partition of `scores` and `labels`: the group's committed offset (read first) beside the last offset the
    partition's stored state processed (its meta record in the changelog, read after). A committed offset beyond
    processed + 1 is a record committed whose effect the changelog does not hold: after a crash it is never read
    again."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        committed = {
            code: consumer.committed([TopicPartition(name, p) for p in range(PARTITIONS)], timeout=10)
            for code, name in (("s", topics.scores.name), ("l", topics.labels.name))
        }
    finally:
        consumer.close()
    latest = changelog_image(kafka, changelog_topic)
    lines = []
    for code, tps in committed.items():
        for tp in tps:
            processed = (latest.get(f"{tp.partition}/meta") or {}).get("processed", {}).get(code)
            ahead = processed is not None and tp.offset > processed + 1
            lines.append(
                f"{code} partition {tp.partition}: committed {tp.offset}, state processed {processed}"
                + (" — COMMITTED AHEAD OF THE STORED STATE" if ahead else "")
            )
    return "\n".join(lines)


def merge_audit(kafka: KafkaSettings, changelog_topic: str, experiments: list[str]) -> str:
    """The merge table's latest A/B counts per partition (what the published looks sum) and its last look's total."""
    latest = changelog_image(kafka, changelog_topic)
    lines = []
    for experiment in experiments:
        stored = latest.get(f"ab/{experiment}") or {}
        parts = {
            p: {v: c.get("units") for v, c in part["counts"].items()}
            for p, part in sorted(stored.get("parts", {}).items())
        }
        lines.append(f"merge table {experiment}: last look's units {stored.get('units')}, per partition {parts}")
    return "\n".join(lines)


# --- drift ------------------------------------------------------------------------------------------------------

WINDOW_S = 10.0
PER_WINDOW = 1200


def test_a_shifted_feature_raises_a_drift_alert_within_a_few_windows_and_no_other_feature_does(
    kafka: KafkaSettings, topics: TopicRegistry, registry_uri: str, tmp_path: Path
) -> None:
    """Six windows of 1 200 champion scores with features drawn like the reference; from window 3 on, amount_log is
    shifted by half a standard deviation (the model ignores it, so no score moves)."""
    began = time.monotonic()
    t0 = timeline_start(WINDOW_S)
    first = int(t0 // WINDOW_S)
    env = monitor_env(kafka, topics, registry_uri, tmp_path, MONITOR_WINDOW_SECONDS=str(WINDOW_S),
                      MONITOR_EXPECTED_SPLIT='{"champion": 1.0}')  # fmt: skip
    rng = np.random.default_rng(1)
    sender = Sender(kafka, topics)
    results = Results(kafka, topics)
    with monitor_worker(env, tmp_path / "monitor.log") as worker:
        produced = time.monotonic()
        for w in range(6):
            x = draw_features(rng, PER_WINDOW, shift={"amount_log": 0.5} if w >= 3 else None)
            scores = model_scores(x)
            for i in range(PER_WINDOW):
                at = t0 + w * WINDOW_S + i * (WINDOW_S / PER_WINDOW)
                account = f"acct-{rng.integers(3000)}"
                sender.send(score_event(f"w{w}-{i}", account, at, scores[i], features=x[i]))
        # Scores in a later window move every partition's clock past the six windows: they close.
        for account in every_partition("tick"):
            sender.send(score_event(f"tick-{account}", account, t0 + 10 * WINDOW_S, 0.1))
        sender.flush()
        produced_s = time.monotonic() - produced
        results.wait(lambda r: len(r.windows()) >= 6, 180, "six evaluated windows", worker)
        evaluated_s = time.monotonic() - produced
        results.reader.poll_for(1.0)
        windows = results.windows()
        alerts = results.alerts()
        report = run_report(env)
        records_per_s = worker.metric('streamscore_monitor_records_total{outcome="counted",topic="scores"}')

    assert sorted(windows) == [first + w for w in range(6)]
    names = set(FEATURE_NAMES) | {score_series("champion", "1")}
    for key, records in windows.items():
        assert set(records) == names
        # Every score counted exactly once in its window, across six partitions.
        assert {r.events for r in records.values()} == {PER_WINDOW}, key
    drifted = {(key - first, name) for key, records in windows.items() for name, r in records.items() if r.drifted}
    print(f"drifted (window, series): {sorted(drifted)}")
    assert {name for _, name in drifted} == {"amount_log"}, "only the shifted input"
    assert (3, "amount_log") in drifted, "caught in the first shifted window"
    assert {w for w, _ in drifted} <= {3, 4, 5}
    assert {a.key for a in alerts} == {"amount_log"} and all(a.kind == "drift" for a in alerts)
    assert {a.window for a in alerts} == {first + w for w, _ in drifted}
    shifted = windows[first + 3]["amount_log"]
    print(f"amount_log in window 3: KS {shifted.statistic:.3f}, p {shifted.p_value:.2g}, PSI {shifted.psi:.3f}")
    assert "amount_log" in report and ("Real and large" in report or "Real but small" in report)
    print(
        f"produced {6 * PER_WINDOW:,} scores in {produced_s:.1f} s; six windows evaluated {evaluated_s:.1f} s after "
        f"the first was produced; {records_per_s:,.0f} counted; test {time.monotonic() - began:.1f} s\n{report}"
    )


def run_report(env: dict[str, str]) -> str:
    """`streamscore report` against the test's topics, as an operator would run it."""
    result = subprocess.run(
        [sys.executable, "-c", "from streamscore_cli.main import main; main()", "report", "--windows", "6"],
        cwd=PROJECT_ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- A/B ----------------------------------------------------------------------------------------------------------


EXPERIMENTS = ("exp-same", "exp-worse")


def counted_outcomes(looks: list[ABRecord]) -> dict[str, dict[str, Counter[str]]]:
    """The units, fraud, fraud caught and declines of each variant in each experiment's last look."""
    latest = {a.experiment_id: a for a in looks}
    return {
        x: {
            v.variant: Counter(
                units=v.units,
                fraud=v.fraud,
                fraud_caught=v.fraud_caught,
                declined=round((v.decline_rate or 0.0) * v.units),
                hidden=v.hidden_outcomes,
            )
            for v in latest[x].variants
        }
        for x in EXPERIMENTS
        if x in latest
    }


def test_ab_no_alarm_for_the_same_model_worse_for_a_worse_challenger_and_a_crash_changes_no_count(
    kafka: KafkaSettings, topics: TopicRegistry, registry_uri: str, tmp_path: Path
) -> None:
    """Two experiments on one stream, 50/50 by account. exp-same: both arms behave identically (each fraud pair
    is declined by both or neither). exp-worse: the challenger declines 20 % of the frauds the champion declines
    80 % of. Labels arrive 2 s after the event, units count 5 s after it (simulated time). Halfway the monitor is
    SIGKILLed and restarted; 2 % of scores and labels are sent twice. Every unit must be counted exactly once."""
    began = time.monotonic()
    t0 = timeline_start(WINDOW_S)
    env = monitor_env(
        kafka,
        topics,
        registry_uri,
        tmp_path,
        MONITOR_WINDOW_SECONDS=str(WINDOW_S),
        MONITOR_LABEL_MATURITY_S="5",
        MONITOR_MSPRT_TAU="0.05",
        MONITOR_AB_MIN_UNITS="100",
        MONITOR_EXPECTED_SPLIT='{"champion": 0.5, "challenger": 0.5}',
    )
    rng = np.random.default_rng(2)
    events = 6000
    x = draw_features(rng, events)
    timeline: list[tuple[float, int, Score | Label]] = []
    expected: dict[tuple[str, str], int] = {}
    outcomes: dict[str, dict[str, Counter[str]]] = {x: {} for x in EXPERIMENTS}
    """What each variant's units hold once each is counted with its label."""
    sent: dict[str, dict[int, Counter[str]]] = {x: {p: Counter() for p in range(PARTITIONS)} for x in EXPERIMENTS}
    sent_ids: dict[str, dict[int, dict[str, set[str]]]] = {x: {p: {} for p in range(PARTITIONS)} for x in EXPERIMENTS}
    for i in range(events):
        at = t0 + i * 0.005
        experiment = "exp-same" if i % 4 < 2 else "exp-worse"
        variant = "champion" if i % 2 == 0 else "challenger"
        account = f"{experiment}-{variant}-{i // 4 % 200}"
        fraud = (i // 4) % 10 == 0
        if experiment == "exp-same":
            declined = fraud and (i // 4) % 20 == 0  # both arms of a pair alike
        else:
            declined = fraud and rng.random() < (0.8 if variant == "champion" else 0.2)
        score = score_event(f"e{i}", account, at, 0.9 if declined else 0.1, variant=variant, experiment=experiment,
                            features=x[i])  # fmt: skip
        timeline.append((at + 0.001, len(timeline), score))
        timeline.append((at + 2.0, len(timeline), label_event(f"e{i}", account, at, fraud, 2.0)))
        if rng.random() < 0.02:
            timeline.append((at + 0.5, len(timeline), score))
        if rng.random() < 0.02:
            timeline.append((at + 2.5, len(timeline), label_event(f"e{i}", account, at, fraud, 2.0)))
        expected[(experiment, variant)] = expected.get((experiment, variant), 0) + 1
        outcomes[experiment].setdefault(variant, Counter()).update(
            {"units": 1, "fraud": int(fraud), "fraud_caught": int(fraud and declined), "declined": int(declined)}
        )
        p = partition_for(account.encode(), PARTITIONS)
        sent[experiment][p][variant] += 1
        sent_ids[experiment][p].setdefault(variant, set()).add(f"e{i}")
    end = t0 + events * 0.005
    # Ticks on every partition move the clocks past the last window and maturity.
    for account in every_partition("tick"):
        tick = score_event(f"tick-{account}", account, end + 100.0, 0.1, experiment="ticks")
        timeline.append((end + 100.0, len(timeline), tick))
        timeline.append(
            (end + 200.0, len(timeline), label_event(f"tick-{account}", account, end + 100.0, False, 100.0))
        )
    timeline.sort(key=lambda item: (item[0], item[1]))
    half = len(timeline) // 2

    sender = Sender(kafka, topics)
    results = Results(kafka, topics)
    log = tmp_path / "monitor.log"
    with monitor_worker(env, log) as worker:
        for _, _, event in timeline[:half]:
            sender.send(event)
        sender.flush()
        # SIGKILL in the middle of the first half: records processed but not yet checkpointed or committed.
        deadline = time.monotonic() + 60
        consumed_at_kill = 0.0
        while consumed_at_kill < half / 2 and time.monotonic() < deadline:
            try:
                consumed_at_kill = worker.metric("streamscore_monitor_records_total")
            except OSError:  # a scrape slower than its 2 s timeout on a loaded machine: ask again
                continue
            time.sleep(0.05)
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(10)
    prefix = env["TOPICS_PREFIX"] + env["MONITOR_APP_ID"]
    print(f"right after the kill:\n{commit_audit(kafka, prefix, topics, f'{prefix}-monitor-state-changelog')}")
    killed_at = time.monotonic()
    with monitor_worker(env, log) as worker:
        restarted_s = time.monotonic() - killed_at
        for _, _, event in timeline[half:]:
            sender.send(event)
        sender.flush()

        def settled(r: Results) -> bool:
            latest = {a.experiment_id: a for a in r.ab()}
            return all(
                {v.variant: v.units for v in latest[x].variants} == {v: n for (e, v), n in expected.items() if e == x}
                for x in EXPERIMENTS
                if x in latest
            ) and set(EXPERIMENTS) <= set(latest)

        def audit() -> None:
            print(
                f"expected {outcomes}; the last looks counted {counted_outcomes(results.ab())}; killed after "
                f"{consumed_at_kill:.0f} of {half} records; restart ready {restarted_s:.1f} s after the kill; "
                f"{sender.resent} sent again"
            )
            states = f"{prefix}-monitor-state-changelog"
            for name in EXPERIMENTS:
                print(unit_audit(kafka, states, sent[name], name, sent_ids=sent_ids[name], maturity_s=5.0))
            print(merge_audit(kafka, f"{prefix}-monitor-merge-changelog", list(EXPERIMENTS)))
            try:
                print(f"health {worker.health()}")
            except OSError as exc:
                print(f"health: {exc!r}")

        try:
            results.wait(settled, 180, "every unit counted in both experiments", worker)
        except pytest.fail.Exception:
            audit()
            raise
        # Every unit counted once; each with the label it had by maturity — every label here arrives 3 s before.
        if counted_outcomes(results.ab()) != outcomes:
            audit()
            pytest.fail("every unit counted once, but not every one with its label (see the audit above)")
        results.reader.poll_for(2.0)
        duplicates = worker.metric('streamscore_monitor_records_total{outcome="duplicate"')
        replayed = worker.metric('streamscore_monitor_records_total{outcome="replayed"')

    looks = results.ab()
    latest = {a.experiment_id: a for a in looks}
    same, worse = latest["exp-same"], latest["exp-worse"]
    alerts = results.alerts()
    print(f"looks: {len(looks)}; killed after {consumed_at_kill:.0f} of {half} records; restart ready "
          f"{restarted_s:.1f} s after the kill; duplicates {duplicates:.0f}, "
          f"replayed {replayed:.0f}; test {time.monotonic() - began:.1f} s")  # fmt: skip
    for look in (same, worse):
        c = look.comparisons[0]
        print(f"{look.experiment_id}: diff {1000 * c.difference:+.2f}/1000 [{1000 * c.ci_low:+.2f}, "
              f"{1000 * c.ci_high:+.2f}], p {c.p_value:.3g}, {c.verdict}, looks {c.looks}; "
              f"srm p {look.srm.p_value:.3g}")  # fmt: skip
    assert all(c.verdict == "inconclusive" for a in looks if a.experiment_id == "exp-same" for c in a.comparisons)
    assert worse.comparisons[0].verdict == "worse" and worse.comparisons[0].variant == "challenger"
    assert not any(a.srm.alarm for a in looks)
    assert [(a.kind, a.key, a.variant) for a in alerts if a.kind != "drift"] == [
        ("ab_verdict", "exp-worse", "challenger")
    ]
    assert duplicates > 0, "the re-sent records were recognised"
    # Drift windows were fed by the same scores: each counted once despite the crash and the duplicates.
    windows = results.windows()
    champion_scores = {
        key: r.events for key, recs in windows.items() for name, r in recs.items() if name == "amount_log"
    }
    per_window: dict[int, int] = {}
    for i in range(events):
        if i % 2 == 0:
            key = int((t0 + i * 0.005) // WINDOW_S)
            per_window[key] = per_window.get(key, 0) + 1
    assert champion_scores == per_window


# --- the real scorer upstream -------------------------------------------------------------------------------------

DAY = 86400.0
SPACING_S = 216.0
"""Simulated seconds between two generated transactions: a window of 400 holds exactly one day, so the time of day is
uniform in every window, and 3 200 of them (eight days) fit the scorer's event-time window (CONTRACT_…, widened to 30
days behind for this test)."""
DECLINE_FROM = 60.0
"""The champion declines transactions of this amount and more."""


def amount_model(slope: float, bias: float) -> tuple[NDArray[np.float32], float]:
    """A logistic model of amount_log alone (the other inputs weigh 0)."""
    weights = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    weights[FEATURE_NAMES.index("amount_log")] = slope
    return weights, bias


CHAMPION_MODEL = amount_model(2.0, -2.0 * math.log1p(DECLINE_FROM) + math.log(0.7 / 0.3))
"""score = 0.7 (the scorer's default decline threshold) at DECLINE_FROM, higher above it. The logit stays within
±18 for every amount: onnxruntime's sigmoid clamps there, and a clamped score would differ from the reference's."""
BLIND_MODEL = amount_model(0.5, -16.0)
"""Scores below 1e-5 for every amount: declines nothing, so it catches no fraud."""


def generated(seed: int, count: int, start: datetime, drift: DriftSpec | None = None) -> list[GeneratedEvent]:
    """`count` events of the producer's generator, SPACING_S apart (a window of 400 spans exactly a day)."""
    world = build_world(7, accounts=2000, merchants=200)
    generator = TransactionGenerator(world, GeneratorConfig(seed=seed, rhythm=False, drift=drift))
    return list(itertools.islice(generator.stream(start, 1.0 / SPACING_S), count))


def model_inputs(events: list[GeneratedEvent]) -> NDArray[np.float64]:
    """What the scorer computes for these transactions: its feature store holds nothing for this test's project,
    so every input comes from the transaction itself."""
    rows = [transaction_features(TransactionFacts.of(e.transaction), None, None, None).values for e in events]
    return np.asarray(rows, dtype=np.float64)


def test_through_the_real_scorer_drift_is_caught_the_same_model_is_inconclusive_a_blind_shadow_is_worse(
    tmp_path: Path, kafka: KafkaSettings, redis_settings: RedisSettings, topics: TopicRegistry
) -> None:
    """The producer's generator with its drift injection on (`after=1200,amount_scale=2.5`: legitimate amounts
    grow 2.5x from the 1 200th event) → transactions → the scorer subprocess → scores → the monitor; a label an
    hour (simulated) after each event, fraud clustered by account (~10 % overall). Champion and challenger
    are one registered version (a model that declines amounts of 60 and more), split 50/50: every comparison of
    the two stays inconclusive (at α = 0.001, so a false alarm is a 1-in-1 000 event, not a 1-in-20 one). A 30 %
    shadow is a deliberately worse version that declines nothing: its verdict becomes "worse".

    Drift: the reference is the same generator's undrifted stream (another seed) through the same feature
    function. The drift moves amount_log and, through the generator's own rules, the inputs that depend on the
    amount (the channel mix): the inputs whose values the drift changed are found by comparing with the undrifted
    counterfactual of the same stream, and no other input may raise an alert."""
    began = time.monotonic()
    scorer = make_scorer_env(tmp_path, kafka, redis_settings, topics)
    champion = register(scorer.tracking_uri, MODEL, logistic_onnx(*CHAMPION_MODEL))
    blind = register(scorer.tracking_uri, MODEL, logistic_onnx(*BLIND_MODEL), alias="blind")
    set_alias(scorer.tracking_uri, "champion", champion)
    set_alias(scorer.tracking_uri, "challenger", champion)
    total, per_window = 3200, 400  # 2 400 gave the blind shadow p 0.0024 against alpha 0.001 on this data: more power
    window_s = per_window * SPACING_S
    # In the past, so the scorer accepts every event and the closing ticks (11 days later): twelve days ago, on a
    # window boundary.
    start = datetime.fromtimestamp(math.ceil((time.time() - 12 * DAY) / window_s) * window_s, tz=UTC)
    first = int(start.timestamp() // window_s)
    drift = DriftSpec.parse("after=1200,amount_scale=2.5")
    events = generated(1, total, start, drift)
    x = model_inputs(events)
    expected_windows = Counter(int(e.transaction.event_time.timestamp() // window_s) for e in events)
    undrifted = model_inputs(generated(1, total, start))
    touched = {name for j, name in enumerate(FEATURE_NAMES) if not np.array_equal(x[:, j], undrifted[:, j])}
    assert "amount_log" in touched
    reference = model_inputs(generated(2, 8000, start))
    for version, (weights, bias) in ((champion, CHAMPION_MODEL), (blind, BLIND_MODEL)):
        document = reference_document(reference, expected_scores(reference.astype(np.float32), weights, bias), seed=5)
        with_reference(scorer.tracking_uri, version, document)

    env = monitor_env(
        kafka,
        topics,
        scorer.tracking_uri,
        tmp_path,
        MONITOR_WINDOW_SECONDS=str(window_s),
        # The scorer writes its live and shadow scores to two topics the monitor fetches independently: across
        # them, scores are out of event-time order by up to a batch.
        # Batches of 32 here span at most ~200 transactions of one partition; a window of lateness covers it.
        MONITOR_ALLOWED_LATENESS_S=str(window_s),
        # A simulated week in the past, replayed in seconds: windows close on event time alone.
        MONITOR_WALL_CLOCK="false",
        MONITOR_LABEL_MATURITY_S=str(2 * 3600),
        MONITOR_MSPRT_TAU="0.05",
        MONITOR_AB_ALPHA="0.001",
        MONITOR_EXPECTED_SPLIT='{"champion": 0.5, "challenger": 0.5}',
    )
    process = ScorerProcess(
        {
            **scorer.env,
            "SCORER_VARIANTS": json.dumps(
                [
                    {"name": "champion", "alias": "champion", "weight": 0.5},
                    {"name": "challenger", "alias": "challenger", "weight": 0.5},
                ]
            ),
            "SCORER_SHADOWS": json.dumps([{"name": "shadow", "alias": "blind", "share": 0.3}]),
            "SCORER_MAX_BATCH_SIZE": "32",
            "CONTRACT_EVENT_TIME_MAX_BEHIND_S": str(30 * DAY),
        },
        tmp_path / "scorer.log",
    )
    sender = Producer(producer_config(kafka, "test-tx", linger_ms=5))
    results = Results(kafka, topics)
    # Ticks on every partition, far later, close the last window and mature every unit.
    # (three windows on: the last events may spill into one more window, and a window of lateness follows it)
    later = start + timedelta(seconds=(total + 3 * per_window) * SPACING_S)
    tick = [
        events[0].transaction.model_copy(update={"event_id": f"tick-{k}", "account_id": account, "event_time": later})
        for k, account in enumerate(every_partition("tick"))
    ]
    # Outcomes clustered by account, as real fraud is (bursts on compromised accounts) and as the scorer randomizes
    # (by account): 15 % of accounts are "compromised" with half their transactions fraudulent, the others 3 %
    # (~10 % overall). The A/B test's unit is the account (docs/monitor.md), so this must not raise an alarm.
    rng = np.random.default_rng(4)
    accounts = sorted({e.transaction.account_id for e in events})
    rate = dict(zip(accounts, np.where(rng.random(len(accounts)) < 0.15, 0.5, 0.03).tolist(), strict=True))
    draws = rng.random(total)
    frauds = {
        e.transaction.event_id for e, draw in zip(events, draws, strict=True) if draw < rate[e.transaction.account_id]
    }
    try:
        process.start()
        with monitor_worker(env, tmp_path / "monitor.log") as worker:
            for tx in [e.transaction for e in events] + tick:
                sender.produce(topics.transactions.name, tx.to_json(), tx.account_id.encode(), headers=headers_for(tx))
                label = Label(
                    event_id=tx.event_id,
                    account_id=tx.account_id,
                    is_fraud=tx.event_id in frauds,
                    event_time=tx.event_time,
                    labeled_at=tx.event_time + timedelta(hours=1),
                )
                sender.produce(
                    topics.labels.name, label.to_json(), label.account_id.encode(), headers=headers_for(label)
                )
                sender.poll(0)
            assert sender.flush(60) == 0

            def counted(r: Results) -> bool:
                looks = r.ab()
                return bool(looks) and sum(v.units for v in looks[-1].variants if v.variant != "shadow") >= total

            results.wait(lambda r: len(r.windows()) >= len(expected_windows), 240, "every window", worker)
            results.wait(counted, 180, "every transaction counted", worker)
            shadow_scores = worker.metric('streamscore_monitor_records_total{outcome="counted",topic="shadow"}')
            results.reader.poll_for(2.0)
    finally:
        process.stop()

    windows = results.windows()
    assert sorted(windows)[: len(expected_windows)] == sorted(expected_windows)
    drifted = sorted((key - first, name) for key, recs in windows.items() for name, r in recs.items() if r.drifted)
    # The hour of day is the window's own clock: this reference (seed 2, 8 000 events from the same start) spans other
    # hours than the replayed windows, so hour_sin/hour_cos may differ without any drift (monitor.drift.CLOCK_INPUTS).
    features_drifted = {name for _, name in drifted if not name.startswith("score:") and name not in CLOCK_INPUTS}
    print(f"drifted (window, series): {drifted}; inputs the drift changed: {sorted(touched)}")
    assert (3, "amount_log") in drifted, "caught in the first drifted window"
    assert features_drifted <= touched, "no alert for an input the drift did not change"
    assert all(w >= 3 for w, _ in drifted), "nothing before the drift"
    scored = {name for recs in windows.values() for name in recs if name.startswith("score:")}
    assert scored == {
        score_series("champion", champion),
        score_series("challenger", champion),
        score_series("shadow", blind),
    }
    live_series = (score_series("champion", champion), score_series("challenger", champion))
    for key, n in expected_windows.items():
        live_scores = sum(r.events for name, r in windows[key].items() if name in live_series)
        assert live_scores == n, "every transaction's live score once in its window"
    looks = results.ab()
    live = {v.variant: v.units for v in looks[-1].variants}
    verdicts = {c.variant: c for c in looks[-1].comparisons}
    shown = "; ".join(f"{v} {c.verdict} p {c.p_value:.3g} {1000 * c.difference:+.1f}/1000" for v, c in verdicts.items())
    print(f"units {live}; looks {len(looks)}; last: {shown}; test {time.monotonic() - began:.1f} s")
    assert live["champion"] + live["challenger"] == total
    assert shadow_scores - len(tick) <= live["shadow"] <= shadow_scores, "every shadow score once (ticks not matured)"
    assert all(c.verdict == "inconclusive" for look in looks for c in look.comparisons if c.variant == "challenger")
    assert verdicts["shadow"].verdict == "worse"
    assert not any(look.srm.alarm for look in looks)
    assert [(a.kind, a.variant) for a in results.alerts() if a.kind != "drift"] == [("ab_verdict", "shadow")]


# --- records the monitor cannot read ------------------------------------------------------------------------------


def test_poison_scores_and_labels_are_dead_lettered_with_their_bytes_and_the_stream_goes_on(
    kafka: KafkaSettings, topics: TopicRegistry, registry_uri: str, tmp_path: Path
) -> None:
    """The scorer's poison corpus (every defect kind, as values on `scores`, `scores.shadow` and `labels`), a score
    and a label dated far ahead, then good records: each poison record lands once in `monitor.dlq` with its original
    bytes and a reason of the fixed list, the future ones as event_time_out_of_window, and the good ones count."""
    env = monitor_env(kafka, topics, registry_uri, tmp_path, MONITOR_MAX_EVENT_AHEAD_S="3600")
    producer = Producer(producer_config(kafka, f"test-{uuid.uuid4().hex[:6]}", linger_ms=5))
    poison: dict[str, tuple[str, bytes | None]] = {}
    for topic in (topics.scores.name, topics.scores_shadow.name, topics.labels.name):
        for n, kind in enumerate(DEFECT_KINDS):
            record = defective(n, kind)
            case = f"{topic}:{kind}"
            headers = [(k, v) for k, v in record.headers if k != CASE] + [(CASE, case.encode())]
            producer.produce(topic, record.value, record.key, headers=headers)
            poison[case] = ("", record.value)
    now = time.time()
    future_score = score_event("ev-future", "acc-f", now + 80 * 365 * 86400, 0.3)
    future_label = label_event("ev-future-l", "acc-f", now, False, 3 * 3600.0)
    for case, topic, event in (
        ("future-score", topics.scores.name, future_score),
        ("future-label", topics.labels.name, future_label),
    ):
        value = event.to_json()
        producer.produce(topic, value, event.account_id.encode(), headers=[(CASE, case.encode())])
        poison[case] = ("event_time_out_of_window", value)
    good = [score_event(f"ev-good-{i}", f"acc-{i}", now - 1, 0.2) for i in range(20)]
    assert producer.flush(30) == 0
    reader = OutputReader(kafka, [topics.monitor_dlq.name])
    try:
        with monitor_worker(env, tmp_path / "monitor.log") as worker:
            sender = Sender(kafka, topics)
            for score in good:
                sender.send(score)
            sender.flush()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                worker.check_alive()
                reader.poll_for(0.5)
                counted = worker.metric('streamscore_monitor_records_total{outcome="counted",topic="scores"}')
                if len(reader.on(topics.monitor_dlq.name)) >= len(poison) and counted >= len(good):
                    break
            letters = reader.on(topics.monitor_dlq.name)
            counted = worker.metric('streamscore_monitor_records_total{outcome="counted",topic="scores"}')
    finally:
        reader.close()
    by_case = Counter(o.headers[CASE].decode() for o in letters)
    assert by_case == Counter(dict.fromkeys(poison, 1)), f"each poison record dead-lettered once: {by_case}"
    reasons = {r.value for r in DeadLetterReason}
    for o in letters:
        letter = o.dead_letter()
        expected_reason, original = poison[o.headers[CASE].decode()]
        if letter.truncated:  # an oversize payload: its head, with the whole one's size and SHA-256
            assert original is not None and o.value is not None and original.startswith(o.value)
            assert (letter.payload_size, letter.payload_sha256) == (len(original), hashlib.sha256(original).hexdigest())
        else:
            assert o.value == original, "the original bytes"
        assert letter.error_class.value in reasons and letter.consumer_group.endswith(env["MONITOR_APP_ID"])
        if expected_reason:
            assert letter.error_class.value == expected_reason
    assert counted == len(good), "the stream went on: every good score counted"


def test_the_merge_topic_exists_with_its_partition_before_the_worker_joins_its_group(kafka: KafkaSettings) -> None:
    """A new monitor app created its merge topic a few milliseconds before joining its group; the metadata did not
    list it yet, the assignor ignored it, and the merge agent had no partition for five minutes (no window was ever
    published: a demo run's drift windows went missing). The preflight now creates it and waits for it."""
    settings = MonitorAppSettings(kafka=kafka, app_id=f"merge-ready-{uuid.uuid4().hex[:8]}")
    merge_topic_ready(settings, timeout_s=30.0)
    merge_topic_ready(settings, timeout_s=30.0)  # already there: nothing to do
    metadata = admin_client(kafka).list_topics(topic=settings.merge_topic, timeout=10.0)
    assert len(metadata.topics[settings.merge_topic].partitions) == 1
    delete_topics(kafka, [settings.merge_topic])
