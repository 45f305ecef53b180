"""The Faust services through a broker SIGKILL + restart and a broker SIGSTOP of 25 s, with traffic flowing: a
private broker and Redis per test (the session's broker stays up for the other tests), the service as a subprocess
(`python -m stream_processors`, `python -m monitor`).

What must hold (issue 12, points 3 and 4): while the broker is gone, `/readyz` (and `/healthz`) answer 503 while
`/livez` answers 200 (the loop turns, the worker waits) and the lag gauges stay published; after the restart the
service catches up by itself, or exits non-zero within its bound (then it is started again, as its supervisor
would) — either way every event is reflected in the end: the online features equal the offline replay, the monitor
counts every score once; and `/readyz` answers 200 again.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from feature_repo.settings import FeastSettings
from feature_repo.store import apply, open_store
from producers.client import EventProducer
from streamscore.contracts import Label, Score, Transaction
from streamscore.infra import LocalStack
from streamscore.kafka import ensure_topics, partition_for
from streamscore.topics import TopicRegistry
from tests.integration.conftest import stack_settings
from tests.integration.test_feature_stream import expected_online, online, transaction, worker_env
from tests.integration.test_monitor import (  # noqa: F401 - registry_uri and synthetic_reference are fixtures
    Results,
    Sender,
    every_partition,
    monitor_env,
    registry_uri,
    synthetic_reference,
    timeline_start,
)
from tests.support.monitoring import label_event, score_event
from tests.support.scoring import changelog_image, free_port
from tests.support.workers import WorkerProcess, worker_process

READY_TIMEOUT_S = 180.0
OUTAGE_S = 8.0
"""How long the broker stays dead before `up()` starts it again (its own start adds 10–30 s here)."""
PAUSE_S = 25.0
"""How long the broker stays stopped (SIGSTOP) before SIGCONT: longer than the monitor's 10 s session timeout."""
FAULTS = ["kill", "stop"]
RECOVER_TIMEOUT_S = 240.0
HEALTH = {
    # Short bounds so the test sees every state; the watchdog's bound exceeds the outage, so recovering by itself
    # is what is expected, and exiting non-zero is accepted (the point of the bound).
    "LAG_INTERVAL_S": "1",
    "READY_COMMIT_AGE_S": "5",
    "STALL_EXIT_S": "60",
    "LOOP_STALL_S": "30",
}


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(stack_settings(tmp_path / "stack"))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def answer(worker: WorkerProcess, path: str) -> tuple[int | None, dict[str, Any]]:
    try:
        status, body = worker.get(path)
    except OSError:
        return None, {}
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


class Supervised:
    """The worker under its supervisor's rule: one that exits non-zero is started again (and the exit recorded); one
    that exits 0 fails the test."""

    def __init__(self, start: Callable[[], WorkerProcess]) -> None:
        self.start = start
        self.current = start()
        self.exits: list[int] = []

    def check(self) -> None:
        code = self.current.process.poll()
        if code is None:
            return
        assert code != 0, f"the worker exited with 0:\n{self.current.tail()}"
        print(f"the worker exited with {code}; starting it again")
        self.exits.append(code)
        self.current = self.start()

    def wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            self.check()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{self.current.tail()}")
            time.sleep(0.5)

    def outcome(self, ready_after_s: float) -> str:
        if self.exits:
            return f"exited {self.exits} (restarted), ready {ready_after_s:.0f} s after the broker came back"
        return f"recovered by itself, ready {ready_after_s:.0f} s after the broker came back"


def through_outage(stack: LocalStack, supervised: Supervised, lag_metric: str, fault: str) -> str:
    """SIGKILL (`fault="kill"`) or SIGSTOP (`"stop"`) the broker; see readiness fail while liveness holds and the lag
    gauges stay; start (SIGCONT) the broker again; wait until the worker is ready again, restarting it when it exits
    non-zero (its watchdog's way out). Returns what happened."""
    worker = supervised.current
    # The gauges must be there before they can stay: the lag poller's first read may take seconds on a loaded machine.
    supervised.wait(lambda: bool(worker.metrics(lag_metric)), 60.0, "the lag gauges published before the fault")
    began = time.monotonic()
    stack.signal("kafka", signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        worker.check_alive()
        ready, body = answer(worker, "/readyz")
        live, _ = answer(worker, "/livez")
        if ready == 503 and live == 200:
            healthz, _ = answer(worker, "/healthz")
            seen = {"reasons": body.get("reasons"), "healthz": healthz, "lag": worker.metrics(lag_metric)}
            break
        time.sleep(0.2)
    assert seen, f"/readyz never answered 503 with /livez 200 while the broker was gone:\n{worker.tail()}"
    assert seen["healthz"] == 503, "/healthz answers as readiness"
    assert seen["lag"], "the lag gauges stay published while the broker is gone"
    print(f"broker gone: /readyz 503 {seen['reasons']}")
    if fault == "kill":
        time.sleep(OUTAGE_S)
        stack.up()
    else:
        time.sleep(max(PAUSE_S - (time.monotonic() - began), 0.0))
        stack.signal("kafka", signal.SIGCONT)
    back = time.monotonic()
    supervised.wait(lambda: answer(supervised.current, "/readyz")[0] == 200, RECOVER_TIMEOUT_S, "ready again")
    return supervised.outcome(time.monotonic() - back)


class Traffic:
    """Sends events from a thread until stopped (librdkafka buffers and retries them while the broker is gone)."""

    def __init__(self, send: Callable[[int], None], per_second: float) -> None:
        self.send = send
        self.interval = 1.0 / per_second
        self.sent = 0
        self.error: BaseException | None = None
        """What stopped the thread early (a send that raised): a test checks it, the thread itself only dies."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.send(self.sent)
                self.sent += 1
                self._stop.wait(self.interval)
        except BaseException as exc:
            self.error = exc
            raise

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


# --- the feature processor ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_the_feature_processor_survives_a_broker_kill_or_pause(
    private_stack: LocalStack, tmp_path: Path, fault: str
) -> None:
    kafka, redis = private_stack.settings.kafka_settings(), private_stack.settings.redis_settings()
    topics = TopicRegistry.build(prefix=f"t.fr.{uuid.uuid4().hex[:6]}.", partitions=6)
    ensure_topics(kafka, topics.all())
    feast = FeastSettings(
        project=f"t_{uuid.uuid4().hex[:12]}",
        data_dir=tmp_path / "features",
        registry_path=tmp_path / "feast" / "registry.db",
        online_store="redis",
        redis=redis,
    )
    store = open_store(feast)
    apply(store, feast.data_dir)
    port = free_port()
    env = worker_env(kafka, redis, topics, feast, f"features-{uuid.uuid4().hex[:8]}", port)
    env.update({f"FEATURES_{k}": v for k, v in HEALTH.items()})
    log = tmp_path / "worker.log"

    def ready(health: dict[str, Any]) -> bool:
        return health.get("status") == 200

    now = datetime.now(UTC).replace(microsecond=0)
    events: list[Transaction] = []
    from tests.integration.test_scale_out import Timeline  # here: test_scale_out imports this module

    sent_at: list[float] = []
    """When each event was sent, on `timeline` (a failure's post-mortem)."""
    timeline = Timeline(topics.transactions.name)

    with EventProducer(kafka, topics, client_id="test-restarts", linger_ms=5) as producer:

        def send(i: int) -> None:
            event = transaction(f"rs-{i}", f"acc-rs-{i % 60}", now - timedelta(seconds=3600 - i * 0.5), 10.0 + i % 7)
            events.append(event)
            sent_at.append(timeline.now())
            producer.send_transaction(event)
            producer.poll(0)

        with ExitStack() as workers:

            def start() -> WorkerProcess:
                return workers.enter_context(
                    worker_process("stream_processors", env, log, port, ready, READY_TIMEOUT_S)
                )

            supervised = Supervised(start)
            with Traffic(send, per_second=100):
                time.sleep(3.0)
                what = through_outage(private_stack, supervised, "streamscore_features_consumer_lag_offsets", fault)
                time.sleep(3.0)
            producer.flush(120)
            expected = expected_online(events)
            accounts = sorted(expected)
            try:
                supervised.wait(
                    lambda: online(store, accounts) == expected,
                    RECOVER_TIMEOUT_S,
                    f"the features of every event ({what})",
                )
            except pytest.fail.Exception:
                print(features_postmortem(kafka, topics, env, store, accounts, expected, events, sent_at, timeline))
                raise

            def caught_up() -> bool:
                lag = supervised.current.metrics("streamscore_features_consumer_group_lag_offsets")
                return bool(lag) and sum(lag.values()) == 0

            try:
                supervised.wait(caught_up, 60.0, "the group's lag gauge at 0")
            except pytest.fail.Exception:
                worker = supervised.current
                for name in ("consumer_lag_offsets", "events_refused", "acks_refused", "pending_events"):
                    print(name, worker.metrics(f"streamscore_features_{name}"))
                raise
            supervised.wait(lambda: answer(supervised.current, "/readyz")[0] == 200, 60.0, "ready at the end")
    print(f"feature processor, broker {fault}: {what}; {len(events)} events, {len(accounts)} accounts as replayed")


def features_postmortem(
    kafka: Any,
    topics: TopicRegistry,
    env: dict[str, str],
    store: Any,
    accounts: list[str],
    expected: dict[str, Any],
    events: list[Transaction],
    sent_at: list[float],
    timeline: Any,
) -> str:
    """What a failed wait for the features leaves to explain: the accounts that differ, each with the story of its
    value, its events and the changelog's records (test_scale_out's dump)."""
    from tests.integration.test_scale_out import features_dump  # here: test_scale_out imports this module

    got = online(store, accounts)
    wrong = [a for a in accounts if got[a] != expected[a]]
    changelog = f"{env['TOPICS_PREFIX']}{env['FEATURES_APP_ID']}-account-state-changelog"
    name = topics.transactions.name
    return f"{len(wrong)} accounts differ\n" + features_dump(
        kafka, name, changelog, wrong[:5], got, expected, events, sent_at, timeline
    )


# --- the monitor ----------------------------------------------------------------------------------------------------


def state_audit(kafka: Any, changelog: str, sent: dict[int, Counter[str]]) -> str:
    """What the monitor's state changelog holds per partition, for a failure message: the score events sent, the
    units stored (variant entries of experiment exp-1) and the stored A/B counts (`seq`, `cutoff`), so a mismatch
    shows whether a partition lost or double-counted units."""
    latest = changelog_image(kafka, changelog)
    lines = []
    for p in sorted(sent):
        stored: Counter[str] = Counter()
        for key, value in latest.items():
            if key.startswith(f"{p}/u/") and value is not None:
                stored.update(v for v, e in value["v"].items() if e[4] == "exp-1")
        ab = latest.get(f"{p}/ab/exp-1") or {}
        counts = {v: c.get("units") for v, c in (ab.get("counts") or {}).items()}
        meta = latest.get(f"{p}/meta") or {}
        lines.append(
            f"partition {p}: sent {dict(sent[p])}, units stored {dict(stored)}, counted {counts} "
            f"(seq {ab.get('seq')}, cutoff {ab.get('cutoff')}; meta seq {meta.get('seq')}, "
            f"label clock {meta.get('label_clock')})"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("fault", FAULTS)
def test_the_monitor_survives_a_broker_kill_or_pause(
    private_stack: LocalStack,
    registry_uri: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    fault: str,
) -> None:
    kafka = private_stack.settings.kafka_settings()
    prefix = f"t.mr.{uuid.uuid4().hex[:6]}."
    topics = TopicRegistry.build(prefix=prefix, partitions=6)
    ensure_topics(kafka, topics.all())
    env = monitor_env(
        kafka,
        topics,
        registry_uri,
        tmp_path,
        MONITOR_WINDOW_SECONDS="10",
        MONITOR_LABEL_MATURITY_S="5",
        MONITOR_EXPECTED_SPLIT='{"champion": 0.5, "challenger": 0.5}',
        **{f"MONITOR_{k}": v for k, v in HEALTH.items()},
    )
    port = int(env["MONITOR_METRICS_PORT"])
    log = tmp_path / "monitor.log"

    def ready(health: dict[str, Any]) -> bool:
        return health.get("status") == 200

    t0 = timeline_start(10.0)
    sender = Sender(kafka, topics)
    lock = threading.Lock()
    expected = {"champion": 0, "challenger": 0}
    per_partition: dict[int, Counter[str]] = {p: Counter() for p in range(6)}

    def send(i: int) -> None:
        variant = "champion" if i % 2 == 0 else "challenger"
        account = f"acct-{i % 300}"
        at = t0 + i * 0.01
        events: list[Score | Label] = [
            score_event(f"m{i}", account, at, 0.1, variant=variant),
            label_event(f"m{i}", account, at, i % 10 == 0, 1.0),
        ]
        with lock:
            for event in events:
                sender.send(event)
            expected[variant] += 1
            per_partition[partition_for(account.encode(), 6)][variant] += 1

    with ExitStack() as workers:

        def start() -> WorkerProcess:
            return workers.enter_context(worker_process("monitor", env, log, port, ready, READY_TIMEOUT_S))

        supervised = Supervised(start)
        with Traffic(send, per_second=100) as traffic:
            time.sleep(3.0)
            what = through_outage(private_stack, supervised, "streamscore_monitor_consumer_lag_offsets", fault)
            time.sleep(3.0)
        sent = traffic.sent
        # Ticks on every partition, far ahead: every unit matures and the A/B counts are published.
        end = t0 + sent * 0.01
        for account in every_partition("tick"):
            sender.send(score_event(f"tick-{account}", account, end + 100.0, 0.1, experiment="ticks"))
            sender.send(label_event(f"tick-{account}", account, end + 100.0, False, 100.0))
        sender.flush()

        results = Results(kafka, topics)

        looked: list[dict[str, int]] = []

        def counted() -> bool:
            results.reader.poll_for(0.5)
            latest = {a.experiment_id: a for a in results.ab()}
            look = latest.get("exp-1")
            if look is not None:
                looked[:] = [{v.variant: v.units for v in look.variants}]
            return bool(looked) and looked[0] == expected

        try:
            supervised.wait(counted, RECOVER_TIMEOUT_S, f"every score counted once ({what})")
        except pytest.fail.Exception:
            changelog = f"{prefix}{env['MONITOR_APP_ID']}-monitor-state-changelog"
            print(f"sent {expected} ({sender.resent} again), the last look counted {looked}; exits {supervised.exits}")
            print(state_audit(kafka, changelog, per_partition))
            raise
        supervised.wait(lambda: answer(supervised.current, "/readyz")[0] == 200, 60.0, "ready at the end")
    print(f"monitor, broker {fault}: {what}; {sent} scores and labels ({sender.resent} sent again), each counted once")
