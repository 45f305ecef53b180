"""`streamscore demo` (and `make demo`): the whole pipeline on the local stack, then a summary read from Kafka.

Steps: local stack up → history backfill → offline features (batch) → Feast apply → materialize the online
store → train and register the champion (`v1`) and the challenger (`v1_lite`) → start the feature processor,
the scorer, the API and the monitor under a supervisor that restarts one that exits, wait for their `/healthz`
→ live traffic with a small share of defective records (and drift, with `--drift`) → wait until every record
has an outcome and the monitor has judged the traffic's drift windows and counted its matured transactions →
summary (events, scores per variant and version, shadow scores, dead letters by reason, latency, lag, service
restarts, then the monitor's drift and A/B tables as `streamscore report` prints them) → stop what was started
unless `--keep` (then the supervisor goes on restarting a service that exits).

Everything lives in one data folder (`--data-dir`, default `data/demo`), apart from the project's own
`data/history`, `data/features`, `data/mlflow`: history, offline sources, Feast registry, MLflow store and
the services' logs. Steps whose outputs are there are skipped (say so), `--fresh` redoes everything. The work
is done by the services' own functions; this module only wires them and reports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import typer
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from feature_repo.layout import ACCOUNT_STATE_FILE, MERCHANT_FILE, PROFILE_FILE, REALTIME_FILE
from feature_repo.settings import FeastSettings
from monitor.app_settings import MonitorAppSettings
from monitor.operating import OperatingPointView
from producers.client import EventProducer
from producers.drift import DriftSpec
from producers.settings import ProducerSettings
from scorer.api.security import digest, new_key
from streamscore.errors import StreamscoreError
from streamscore.failures import describe
from streamscore.infra.settings import PROJECT_ROOT
from streamscore.kafka import admin_client, consumer_config, delete_topics
from streamscore.lag import GroupLag, LagReader
from streamscore.registry import CHALLENGER, CHAMPION, Registry, RegistrySettings
from streamscore.settings import KafkaSettings, TopicSettings
from streamscore.topics import TopicRegistry
from streamscore_cli.console import friendly_errors
from streamscore_cli.demo_defects import DefectInjector
from streamscore_cli.demo_processes import DemoStepError, Readiness, Services, ServiceSpec
from streamscore_cli.demo_summary import (
    Check,
    Expectation,
    OutputTally,
    caught_up,
    dead_letters_table,
    expectation_checks,
    expectations_table,
    latency_percentiles,
    metric_sum,
    scores_table,
    seen_by_variant,
)
from streamscore_cli.monitor import read_operating_points
from streamscore_cli.monitor import show as show_monitor
from streamscore_cli.produce import HISTORY_RATE, make_generator, stop_on_signal
from streamscore_cli.score import settings_from as scorer_settings
from streamscore_cli.stream import _settings as processor_settings

if TYPE_CHECKING:  # torch, onnx, mlflow, feast, pandas, pyarrow, scipy and numpy take seconds to import: only the
    # steps that need them do, so that `streamscore --help` does not pay for them
    from monitor.drift import DriftRecord
    from monitor.reader import Results
    from producers.live import LiveProgress, LiveSummary
    from training.model import EpochReport

DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "demo"
LABEL_DELAY_S = 1800.0
"""Simulated seconds from a transaction to its label: 30 minutes, so that labels mature within a minute's demo."""
HISTORY_LEAD = timedelta(hours=36)
"""A new history ends this long before now (or the live traffic's simulated span, if longer): the live traffic plays
the world's following hours faster than real time and must never pass the wall clock, and room for a few runs lets a
rerun continue where the last one stopped without regenerating everything."""
LIVE_START_HOUR = 12
"""The UTC hour of the world at which a new history ends and the live traffic starts. Not the wall clock's hour
minus the lead: the live traffic plays a few simulated hours, and which hours depends on when the demo runs — a run at
13:00 UTC played the world's 01:00–06:00, a thousand night transactions with a different fraud and decline mix than
the test split the models' operating points are measured on, so the printed decline rates and precisions were
judged against hours they do not describe. Midday starts the live traffic in the world's busy hours every run (the
expectations themselves are not yet conditioned on the hours played)."""
SIMULATED_HORIZON = timedelta(days=2) - timedelta(hours=1)
"""Live traffic stays within this of the history's end: the batch views (profiles, merchant risk) are written once,
from the history, and their 2-day TTL would expire behind a longer live run."""
CHALLENGER_EPOCHS = 20
"""`v1_lite` trains 8 epochs on the 30-day history; the demo's 7 days give 4x fewer steps per epoch, and with 8
epochs it misses the gate's champion tolerance (PR-AUC 0.970 vs 0.991). 20 epochs: 0.980, inside it."""
WARMUP_DAYS = 30.0
"""Days of history before the days the models train on: the account profile and merchant risk views aggregate 30
days, and rows whose windows are not full yet look like nothing the scorer serves (training.dataset.build_dataset)."""
FEATURE_FRESHNESS_S = 0.25
"""How late, on the wall clock, the scorer may read an account's real-time snapshot (the processor pushes at least
every 200 ms, FEATURES_PUSH_MAX_DELAY_MS). At the demo's speed that is minutes of the world (0.25 s x 750 = 190 s): a
card-testing burst's earlier charges are not in the snapshot yet. The demo trains its models on features that late
(TRAIN_FEATURE_LAG_S = this x speed, uniform per row), so the test split predicts what live scoring sees; at speed 1
the lag is a quarter of a second and training uses none (docs/models.md)."""
CHALLENGER_TOLERANCE = 0.1
"""The gate's champion tolerance for the demo's challenger: the lite model is measurably weaker on the test split
(PR-AUC about 0.05 below the champion's, docs/models.md) and the demo's A/B test is there to show it on live traffic;
the default tolerance (0.02) would keep it out of the experiment."""
DEFAULT_SHADOWS = '[{"name":"shadow","alias":"challenger","share":0.25}]'
"""The demo's shadow variant when SCORER_SHADOWS is not set: the challenger also scores a quarter of all traffic."""
API_PORT = 8080
"""Where the demo's API listens (`streamscore api`'s default port) unless API_PORT is set."""
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
MONITOR_WINDOW_S = 3600.0
"""The demo's drift windows, in simulated time: an hour, the monitor's default (a minute at 300/s plays ~12)."""
MONITOR_LATENESS_S = 1800.0
"""Simulated seconds a window waits for late scores: at ~750x, 2.4 s of wall-clock jitter in the scorer's latency."""
DEMO_MONITOR_ID = "streamscore-demo-monitor-"
"""Each demo's monitor is a new Faust app (this prefix and the run's time: its own group and state topics) that
starts at the end of the topics, so it judges the demo's traffic, not what earlier runs and benchmarks left there;
the state topics of earlier demos' monitors are deleted when the next demo starts its own."""
DEMO_FEATURES_ID = "streamscore-demo-features-"
"""The feature processor's Faust app for a history: this prefix and the history's identity. A new history is a new
world timeline, so its processor starts a new table seeded from the history's final account states
(FEATURES_SEED_PATH) and reads only the traffic that follows (latest); the state topics of processors of earlier
histories are deleted. Runs on the same history continue the same table, as the world continues."""
MONITOR_TAIL = 20_000
"""Records read back from the end of each monitor topic partition for the summary."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def history(self) -> Path:
        return self.root / "history"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def feast_registry(self) -> Path:
        return self.root / "feast" / "registry.db"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def processes(self) -> Path:
        return self.root / "processes.json"

    @property
    def faust(self) -> Path:
        """The Faust workers' local state folders (one per app id), not the working directory."""
        return self.root / "faust"

    @property
    def summary(self) -> Path:
        """The last run's figures (JSON): drift windows and alarms, expected next to seen, A/B verdicts."""
        return self.root / "summary.json"

    @property
    def clock(self) -> Path:
        """Where the last run's live traffic stopped on the simulated clock (the next run continues from there);
        kept with the history it continues."""
        return self.history / "live-clock.json"

    def generated(self) -> list[Path]:
        """What `--fresh` removes: every output of the steps (not the logs)."""
        return [self.history, self.features, self.feast_registry.parent, self.mlflow]


@dataclass
class StepLog:
    """Prints each step's outcome and keeps its duration for the closing table."""

    out: Console
    rows: list[tuple[str, str, float | None]] = field(default_factory=list)

    def done(self, step: str, detail: str, seconds: float) -> None:
        self.rows.append((step, detail, seconds))
        self.out.print(f"[green]✓[/] [bold]{step}[/] · {detail} [dim]({seconds:.1f} s)[/]", highlight=False)

    def warned(self, step: str, detail: str, seconds: float) -> None:
        self.rows.append((step, detail, seconds))
        self.out.print(f"[yellow]![/] [bold]{step}[/] · {detail} [dim]({seconds:.1f} s)[/]", highlight=False)

    def skipped(self, step: str, why: str) -> None:
        self.rows.append((step, f"skipped: {why}", None))
        self.out.print(f"[cyan]↷[/] [bold]{step}[/] skipped · {why}", highlight=False)


def _bar(out: Console, *extra: TextColumn) -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra,
        console=out,
        transient=True,
    )


@contextmanager
def _quiet(sink: IO[str]) -> Iterator[None]:
    """What libraries print during an in-process step (Feast's materialize lines, MLflow's notices, warnings) goes
    to the demo's log. The demo's own console writes to the terminal it was created on, so progress still shows."""
    with redirect_stdout(sink), redirect_stderr(sink):
        yield


def _log_to_file(path: Path) -> IO[str]:
    """The demo's log: INFO lines of the in-process steps go there (the terminal keeps its level), and so does
    what libraries print during those steps (see `_quiet`). Open for the rest of the process: a library's log
    handler created during a step keeps writing to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = path.open("a", buffering=1, encoding="utf-8")
    sink.write(f"\n===== streamscore demo {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC =====\n")
    root = logging.getLogger()
    for existing in root.handlers:
        if existing.level < root.level:
            existing.setLevel(root.level)
    handler = logging.StreamHandler(sink)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))
    return sink


def _of_traffic(records: list[DriftRecord], traffic: Traffic) -> list[DriftRecord]:
    """The drift windows of this traffic's simulated span: the topic also holds windows of earlier runs, whose
    worlds may have played later simulated hours."""
    return [r for r in records if traffic.simulated_start < r.window_end and r.window_start < traffic.simulated_end]


def _window_boundary(when: datetime) -> datetime:
    """The first drift window boundary at or after `when`: a run starts on one (see whole_windows)."""
    seconds = math.ceil(when.timestamp() / MONITOR_WINDOW_S - 1e-9) * MONITOR_WINDOW_S
    return datetime.fromtimestamp(seconds, tz=UTC)


def whole_windows(duration: float, speed: float) -> float:
    """The traffic's duration rounded up to whole drift windows of simulated time. A window the traffic fills only
    in part holds only part of its hours' times of day, and the monitor compares it with the whole hours'
    reference (docs/monitor.md): the hour of day itself would look drifted."""
    windows = math.ceil(duration * speed / MONITOR_WINDOW_S - 1e-9)
    return max(windows, 1) * MONITOR_WINDOW_S / speed


def run_figures(
    traffic: Traffic,
    tally: OutputTally,
    checks: list[Check],
    expected: dict[str, Expectation | None],
    monitor: Results | None,
) -> dict[str, Any]:
    """The run's figures as plain data: what the summary prints, for tests and scripts."""
    windows: dict[int, list[str]] = {}
    values: dict[int, int] = {}
    for record in monitor.drift if monitor is not None else []:
        windows.setdefault(record.window, [])
        values[record.window] = max(values.get(record.window, 0), record.events)
        if record.drifted:
            windows[record.window].append(record.feature)
    versions = dict(tally.live.keys())
    comparisons = []
    looks = sorted(monitor.ab, key=lambda look: look.at) if monitor is not None else []
    for comparison in looks[-1].comparisons if looks else []:
        ours, theirs = (
            expected.get(versions.get(comparison.variant, "")),
            expected.get(versions.get(comparison.baseline, "")),
        )
        comparisons.append(
            {
                "variant": comparison.variant,
                "baseline": comparison.baseline,
                "difference": comparison.difference,
                "ci": [comparison.ci_low, comparison.ci_high],
                "verdict": comparison.verdict,
                "expected_difference": None
                if ours is None or theirs is None
                else ours.caught_share - theirs.caught_share,
            }
        )
    percentiles = latency_percentiles(tally.all_latencies())
    return {
        "transactions": traffic.summary.events,
        "frauds": traffic.summary.frauds,
        "scored": len(tally.live_event_ids),
        "duplicates": tally.duplicates,
        "dead_letters": tally.dead_lettered,
        "defects": traffic.defects,
        "simulated": [traffic.simulated_start.isoformat(), traffic.simulated_end.isoformat()],
        "latency_ms": None if percentiles is None else {"p50": percentiles[0], "p99": percentiles[1]},
        "drift": {
            "windows": len(windows),
            "windows_with_alarm": sum(bool(drifted) for drifted in windows.values()),
            "drifted": {str(window): drifted for window, drifted in sorted(windows.items())},
            "values": {str(window): count for window, count in sorted(values.items())},
        },
        "checks": [c.as_dict() for c in checks],
        "ab": comparisons,
    }


def _history_end_at_hour(latest: datetime, hour: int) -> datetime:
    """The last instant at or before `latest` that is `hour`:00 UTC (up to a day earlier)."""
    end = latest.replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=(end.hour - hour) % 24)


def _history_end(last_event: datetime) -> datetime:
    """The end a history was written with: the hour after its last event (histories end on the hour)."""
    return last_event.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def history_span(history: Path) -> tuple[datetime, datetime, int] | None:
    """First and last event time and the number of transactions of a history; None without a complete one."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from producers.history import LABELS_FILE, TRANSACTIONS_FILE

    if not ((history / TRANSACTIONS_FILE).is_file() and (history / LABELS_FILE).is_file()):
        return None
    times = pq.read_table(history / TRANSACTIONS_FILE, columns=["event_time"]).column("event_time")
    bounds = pc.min_max(times)
    first, last = bounds["min"].as_py(), bounds["max"].as_py()
    if not (isinstance(first, datetime) and isinstance(last, datetime)):
        return None
    return first, last, len(times)


def _features_current(paths: DemoPaths) -> bool:
    from producers.history import TRANSACTIONS_FILE

    files = [paths.features / name for name in (REALTIME_FILE, PROFILE_FILE, MERCHANT_FILE, ACCOUNT_STATE_FILE)]
    history = paths.history / TRANSACTIONS_FILE
    return all(f.is_file() for f in files) and min(f.stat().st_mtime for f in files) >= history.stat().st_mtime


def _recovered(health: dict[str, Any]) -> str | None:
    """The feature processor is ready once its table is rebuilt from the changelog (memory store: at every start,
    one changelog record per event since the topic was last compacted)."""
    return None if health.get("recovered") else "rebuilding its state table from the changelog"


def _scoring(health: dict[str, Any]) -> str | None:
    return None if health.get("status") == "ok" else f"status {health.get('status')}"


def _monitoring(health: dict[str, Any]) -> str | None:
    if health.get("ready") and health.get("recovered") and not health.get("rebalancing"):
        return None
    return "recovering its tables" if not health.get("recovered") else "rebuilding its partitions' states"


class _TrainBar:
    """training.pipeline's progress protocol drawn as one bar: stage while joining, epochs while fitting."""

    def __init__(self, progress: Progress, label: str, epochs: int) -> None:
        self.progress = progress
        self.label = label
        self.task: TaskID = progress.add_task(label, total=epochs, info="")

    def on_stage(self, stage: str) -> None:
        self.progress.update(self.task, info=stage)

    def on_epoch(self, report: EpochReport) -> None:
        info = f"epoch {report.epoch} · val PR-AUC {report.val_pr_auc:.4f}"
        self.progress.update(self.task, completed=report.epoch, total=report.epochs, info=info)


class OutputReader:
    """read_committed reader of the scorer's outputs from the offsets they had before the traffic started."""

    def __init__(self, kafka: KafkaSettings, topics: TopicRegistry, tally: OutputTally) -> None:
        self.tally = tally
        self.scores, self.shadow, self.dlq = topics.scores.name, topics.scores_shadow.name, topics.dlq.name
        # A throw-away group that never commits: the reader assigns its partitions itself.
        config = consumer_config(kafka, f"streamscore-demo-reader-{uuid.uuid4().hex[:8]}", "demo-reader")
        self._consumer = Consumer(config)
        metadata = self._consumer.list_topics(timeout=10.0)
        starts = []
        for topic in (self.scores, self.shadow, self.dlq):
            for partition in metadata.topics[topic].partitions:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10.0)
                starts.append(TopicPartition(topic, partition, high))
        self._consumer.assign(starts)

    def poll(self, timeout_s: float = 0.2) -> int:
        messages = self._consumer.consume(5000, timeout_s)
        for msg in messages:
            if msg.error() is not None:
                continue
            topic = msg.topic()
            if topic == self.dlq:
                self.tally.add_dead_letter(msg.headers())
            else:
                self.tally.add_score(msg.value(), shadow=topic == self.shadow)
        return len(messages)

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Traffic:
    summary: LiveSummary
    injected: dict[str, int]
    defects: int
    undelivered_defects: int
    started_at: datetime
    ended_at: datetime
    """Wall clock."""
    simulated_start: datetime
    simulated_end: datetime
    """The simulated clock: the event times the traffic covered."""


class Demo:
    """One run of the pipeline; each method is a step."""

    def __init__(
        self,
        paths: DemoPaths,
        out: Console,
        *,
        fresh: bool,
        keep: bool,
        join: str | None,
        label_delay: float = LABEL_DELAY_S,
        speed: float = 1.0,
    ) -> None:
        from streamscore.infra import LocalStack  # the Redis client: not for `--help`

        self.paths = paths
        self.label_delay = label_delay
        self.speed = speed
        self.run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        self.out = out
        self.fresh = fresh
        self.keep = keep
        self.join = join
        self.steps = StepLog(out)
        self.stack = LocalStack()
        self.topics = TopicSettings().registry()
        self.kafka = self.stack.settings.kafka_settings()
        self.redis = self.stack.settings.redis_settings()
        self.feast = FeastSettings(data_dir=paths.features, registry_path=paths.feast_registry, redis=self.redis)
        self.registry_settings = RegistrySettings(tracking_uri=paths.tracking_uri, cache_dir=paths.mlflow / "cache")
        self.services = Services(paths.processes, paths.logs)
        self.log_file = paths.logs / "demo.log"
        self.sink = _log_to_file(self.log_file)
        self.stack_started: list[str] = []
        """What this demo's `up` started: the only parts of the local stack it stops."""
        self.stack_before: list[str] | None = None
        """What of the local stack ran before the demo (None: not looked at yet, the demo failed before)."""
        self.tally = OutputTally(since_ms=0)
        self.reader: OutputReader | None = None
        self.stop = threading.Event()
        self.multiproc_inherited = MULTIPROC_VARIABLE in os.environ
        self.features_late = False
        features = processor_settings({})
        self.features_spec = ServiceSpec(
            "feature-processor", "stream_processors", features.metrics_port, "FEATURES_METRICS_PORT"
        )
        scorer = scorer_settings({})
        self.scorer_spec = ServiceSpec("scorer", "scorer", scorer.metrics_port, "SCORER_METRICS_PORT")
        # The investigators' API over the same engine, with a key made for this run (only its digest is passed).
        self.api_key = new_key()
        self.api_spec = ServiceSpec("api", "scorer.api", int(os.environ.get("API_PORT", API_PORT)), "API_PORT")
        self.scorer_group = scorer.group
        self.live_variants = [(v.name, v.alias, v.weight) for v in scorer.variants]
        self.aliases: dict[str, str] = {}
        monitor = MonitorAppSettings()
        self.monitor_spec = ServiceSpec("monitor", "monitor", monitor.metrics_port, "MONITOR_METRICS_PORT")
        self._lag_reader: LagReader | None = None
        self.checks: list[Check] = []
        self.operating_points: list[OperatingPointView] | None = None

    @contextmanager
    def step(self, name: str, log_path: Path | None = None) -> Iterator[None]:
        """An in-process step: libraries' output to the demo's log, and an unexpected exception turned into a
        DemoStepError naming the step and the log to read."""
        where = log_path or self.log_file
        try:
            with _quiet(self.sink):
                yield
        except (DemoStepError, KeyboardInterrupt):
            raise
        except Exception as exc:
            # The traceback goes to the demo's log only (INFO: the terminal shows warnings and up); the terminal gets
            # the one-line error, and `streamscore --debug demo` the traceback too.
            log.info("step %s failed", name, exc_info=True)
            failure = describe(exc)
            error = DemoStepError(name, failure.line, where)
            error.details = failure.details
            raise error from exc

    @property
    def lag_reader(self) -> LagReader:
        """Created once the broker is up (its admin client connects at once)."""
        if self._lag_reader is None:
            self._lag_reader = LagReader(self.kafka)
        return self._lag_reader

    # --- set-up --------------------------------------------------------------------------------------------

    def clean(self) -> None:
        if self.fresh:
            removed = [p for p in self.paths.generated() if p.exists()]
            for path in removed:
                shutil.rmtree(path)
            self.out.print(
                f"[yellow]--fresh[/]: removed {', '.join(str(p) for p in removed) or 'nothing (no earlier run)'}",
                highlight=False,
            )
        leftovers = self.services.stop_leftovers()
        if leftovers:
            names = ", ".join(f"{r.name} (pid {r.pid})" for r in leftovers)
            self.out.print(f"stopped what an earlier `demo --keep` left running: {names}", highlight=False)

    def stack_up(self) -> None:
        started = time.monotonic()
        # What ran before, from the stack's own records: only that may be said to have been running. A failed `up`
        # stops what it started itself, so after one the demo has nothing of the stack to stop.
        self.stack_before = [name for name in ("kafka", "redis") if self.stack.record(name) is not None]
        with (
            self.out.status("starting the local stack") as status,
            self.step("local stack", self.stack.settings.data_dir),
        ):
            report = self.stack.up(self.topics, on_step=lambda m: status.update(m))
        self.stack_started = report.started
        what = "started" if report.started else "already running"
        self.steps.done(
            "local stack",
            f"{what}: Kafka {self.kafka.bootstrap_servers}, Redis 127.0.0.1:{self.redis.port}, "
            f"{len(self.topics.all())} topics",
            time.monotonic() - started,
        )

    def history(self, days: float, span: timedelta) -> datetime:
        """The history the live traffic continues; returns where the live traffic starts on the simulated clock: the
        history's end, or where the previous run's traffic stopped. A history is regenerated when the next `span` of
        simulated time from there would pass the wall clock or leave the batch views' reach (SIMULATED_HORIZON)."""
        span_info = history_span(self.paths.history)
        now = datetime.now(UTC)
        if span_info is not None:
            first, last, rows = span_info
            end = _history_end(last)
            start = _window_boundary(max(end, self.live_clock() or end))
            if start + span > now:
                self.out.print(
                    f"the live traffic would continue from {start:%Y-%m-%d %H:%M} UTC and pass the wall clock within "
                    f"its {span.total_seconds() / 3600:.1f} simulated hours: regenerating the history"
                )
            elif start + span > end + SIMULATED_HORIZON:
                self.out.print(
                    f"earlier runs played the history's world on to {start:%Y-%m-%d %H:%M} UTC, too far from its end "
                    f"({end:%Y-%m-%d %H:%M} UTC) for the daily batch views: regenerating the history"
                )
            elif abs((last - first) - timedelta(days=days)) > timedelta(days=1):
                self.out.print(f"the history covers {(last - first).days + 1} days, not {days:g}: regenerating")
            else:
                where = f"{first:%Y-%m-%d} → {last:%Y-%m-%d %H:%M} UTC in {self.paths.history}"
                then = f"live traffic continues from {start:%Y-%m-%d %H:%M} UTC"
                self.steps.skipped("history", f"{rows:,} transactions {where}; {then}")
                return start
        from producers.history import write_history

        self.paths.clock.unlink(missing_ok=True)
        settings = ProducerSettings()
        generator = make_generator(settings, None, rhythm=True)
        expected = int(days * 86400 * HISTORY_RATE)
        end = _history_end_at_hour(now - max(span, HISTORY_LEAD), LIVE_START_HOUR)
        started = time.monotonic()
        with _bar(self.out) as progress, self.step("history"):
            task = progress.add_task(f"history: {days:g} days", total=expected)
            summary = write_history(
                generator,
                days,
                self.paths.history,
                end=end,
                rate_per_s=HISTORY_RATE,
                label_delay=timedelta(seconds=self.label_delay),
                progress=lambda n: progress.update(task, completed=n),
            )
        self.steps.done(
            "history",
            f"{summary.events:,} transactions ({summary.frauds:,} fraud) {summary.start:%Y-%m-%d %H:%M} → "
            f"{summary.end:%Y-%m-%d %H:%M} UTC → {self.paths.history}",
            time.monotonic() - started,
        )
        return end

    def live_clock(self) -> datetime | None:
        """Where the previous run's live traffic stopped on the simulated clock; None without one."""
        try:
            return datetime.fromisoformat(json.loads(self.paths.clock.read_text())["live_until"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def offline_features(self) -> None:
        from feature_repo.batch import build_batch_sources

        if _features_current(self.paths):
            self.steps.skipped("offline features", f"built from this history, in {self.paths.features}")
            return
        started = time.monotonic()
        with _bar(self.out) as progress, self.step("offline features"):
            task = progress.add_task("offline features", total=1)

            def on_progress(step: str, done: int, total: int) -> None:
                progress.update(task, description=f"offline features: {step}", completed=done, total=total)

            summary = build_batch_sources(self.paths.history, self.paths.features, on_progress)
        self.steps.done(
            "offline features",
            f"{summary.realtime_rows:,} real-time, {summary.profile_rows:,} profile, {summary.merchant_rows:,} "
            f"merchant rows → {self.paths.features}",
            time.monotonic() - started,
        )

    def online_store(self) -> None:
        """Apply the Feast definitions, then materialize the batch views and bootstrap the real-time view. Always
        run: the local Redis keeps nothing across restarts."""
        started = time.monotonic()
        with self.out.status("Feast: opening the feature store (importing Feast)") as status:
            with self.step("features apply"):
                from feature_repo.batch import batch_range
                from feature_repo.store import BATCH_VIEWS, apply, materialize, open_store

                store = open_store(self.feast)
                status.update("Feast: applying the definitions")
                apply(store, self.paths.features)
            self.steps.done("features apply", f"registry {self.paths.feast_registry}", time.monotonic() - started)
            started = time.monotonic()
            with self.step("features materialize"):
                first, last = batch_range(self.paths.features)
                views = [*BATCH_VIEWS, "account_realtime"]
                for view in views:
                    status.update(f"Feast: materializing {view} into Redis 127.0.0.1:{self.redis.port}")
                    materialize(store, first, last, views=[view])
        self.steps.done(
            "features materialize",
            f"{', '.join(views)} → Redis ({first:%Y-%m-%d} → {last:%Y-%m-%d %H:%M} UTC)",
            time.monotonic() - started,
        )

    def models(self) -> None:
        started = time.monotonic()
        with self.out.status("reading the model registry (importing MLflow)"), self.step("model registry"):
            aliases = Registry(self.registry_settings).aliases()
        found = ", ".join(f"{alias} v{version}" for alias, version in sorted(aliases.items())) or "no aliases yet"
        self.steps.done("model registry", f"{self.registry_settings.tracking_uri}: {found}", time.monotonic() - started)
        for alias, preset in ((CHAMPION, "v1"), (CHALLENGER, "v1_lite")):
            if alias in aliases:
                self.steps.skipped(f"train {alias}", f"version {aliases[alias]} is registered as {alias}")
                continue
            self.train(alias, preset)
        with self.step("model registry"):
            self.aliases = Registry(self.registry_settings).aliases()

    def train(self, alias: str, preset: str) -> None:
        from training.dataset import build_dataset
        from training.pipeline import train
        from training.settings import preset_settings

        settings = preset_settings(
            preset,
            history_dir=self.paths.history,
            feature_join=self.join,
            mlflow_tracking_uri=self.paths.tracking_uri,
            mlflow_artifact_dir=self.paths.mlflow / "artifacts",
            epochs=CHALLENGER_EPOCHS if preset == "v1_lite" else None,
            champion_tolerance=CHALLENGER_TOLERANCE if preset == "v1_lite" else None,
            warmup_days=WARMUP_DAYS,
            feature_lag_s=FEATURE_FRESHNESS_S * self.speed,
        )
        started = time.monotonic()
        step = f"train {alias}"
        with _bar(self.out, TextColumn("{task.fields[info]}")) as progress, self.step(step):
            bar = _TrainBar(progress, f"{step} ({preset}, {settings.architecture()})", settings.epochs)
            data = build_dataset(
                settings.history_dir,
                settings.feature_service,
                join=settings.feature_join,
                validation_fraction=settings.validation_fraction,
                test_fraction=settings.test_fraction,
                feast_settings=self.feast,
                on_stage=bar.on_stage,
                warmup_days=settings.warmup_days,
                feature_lag_s=settings.feature_lag_s,
                seed=settings.seed,
            )
            result = train(settings, bar, data=data)
        registration = result.registration
        detail = (
            f"{preset} {settings.architecture()} on {settings.feature_service} ({settings.feature_join} join): "
            f"test PR-AUC {result.test.pr_auc:.4f}, ROC-AUC {result.test.roc_auc:.4f}, {result.epochs_run} epochs "
            f"→ version {registration.version}, {', '.join(registration.aliases) or 'no alias'}"
        )
        if registration.gate_passed:
            self.steps.done(step, detail, time.monotonic() - started)
            return
        reasons = "; ".join(registration.reasons)
        if alias == CHAMPION:
            raise DemoStepError(step, f"the evaluation gate refused version {registration.version}: {reasons}")
        self.out.print(
            f"[yellow]![/] [bold]{step}[/]: the gate refused version {registration.version} ({escape(reasons)}); "
            "the scorer serves the champion alone",
            highlight=False,
        )

    # --- services --------------------------------------------------------------------------------------------

    def service_env(self) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "REDIS_HOST": self.redis.host,
            "REDIS_PORT": str(self.redis.port),
            "FEAST_DATA_DIR": str(self.paths.features),
            "FEAST_REGISTRY_PATH": str(self.paths.feast_registry),
            "REGISTRY_TRACKING_URI": self.paths.tracking_uri,
            "REGISTRY_CACHE_DIR": str(self.paths.mlflow / "cache"),
            "LOG_LEVEL": os.environ.get("DEMO_SERVICE_LOG_LEVEL", "INFO"),
            "PYTHONUNBUFFERED": "1",
        }
        if "SCORER_SHADOWS" not in os.environ:
            env["SCORER_SHADOWS"] = DEFAULT_SHADOWS
        env["API_KEYS"] = json.dumps([{"name": "demo", "sha256": digest(self.api_key)}])
        env["API_PORT"] = str(self.api_spec.port)
        env.update({k: v for k, v in self.monitor_env().items() if k not in os.environ})
        env.update({k: v for k, v in self.features_env().items() if k not in os.environ})
        return env

    def features_env(self) -> dict[str, str]:
        """The feature processor continues the history's world: its own table for this history, seeded from the
        history's final account states, reading only the traffic that follows (DEMO_FEATURES_ID)."""
        return {
            "FEATURES_APP_ID": self.features_app_id(),
            "FEATURES_STATE_DIR": str(self.paths.faust / self.features_app_id()),
            "FEATURES_SEED_PATH": str(self.paths.features / ACCOUNT_STATE_FILE),
            "FEATURES_AUTO_OFFSET_RESET": "latest",
            # Publish after scoring: no event is scored with its own snapshot (stream_processors/accounts/scored.py);
            # then pushing sooner is safe, and at 750x every 10 ms is 7.5 s of the world.
            "FEATURES_PUBLISH_AFTER_GROUP": self.scorer_group,
            "FEATURES_PUSH_MAX_DELAY_MS": "50",
        }

    def monitor_env(self) -> dict[str, str]:
        """The monitor's settings for the demo's simulated clock: hour windows, its speed, labels maturing once every
        reported fraud's label can have come (twice the delay), frequent looks; the expected split is the scorer's,
        without a variant whose alias has no version (the scorer drops it)."""
        from producers.generator import REPORT_DELAY_FACTOR

        split = {name: weight for name, alias, weight in self.live_variants if alias in self.aliases}
        return {
            "MONITOR_APP_ID": DEMO_MONITOR_ID + self.run_id,
            "MONITOR_STATE_DIR": str(self.paths.faust / (DEMO_MONITOR_ID + self.run_id)),
            "MONITOR_AUTO_OFFSET_RESET": "latest",
            "MONITOR_WINDOW_SECONDS": f"{MONITOR_WINDOW_S:g}",
            "MONITOR_CLOCK_SPEED": f"{self.speed:g}",
            "MONITOR_ALLOWED_LATENESS_S": f"{MONITOR_LATENESS_S:g}",
            "MONITOR_LABEL_MATURITY_S": f"{REPORT_DELAY_FACTOR[1] * self.label_delay + 60.0:g}",
            "MONITOR_UNIT_RETENTION_S": f"{MONITOR_WINDOW_S:g}",
            "MONITOR_LOOK_INTERVAL_S": "5",
            "MONITOR_CHECKPOINT_INTERVAL_S": "1",
            "MONITOR_EXPECTED_SPLIT": json.dumps(split or {"champion": 1.0}),
        }

    def start_services(self, timeout_s: float) -> None:
        """Start the feature processor, the scorer, the API and the monitor side by side, wait for their `/healthz`,
        then for the scorer to have caught up with what earlier runs left unscored."""
        if not self.multiproc_inherited:
            # Importing Feast (materialize) set PROMETHEUS_MULTIPROC_DIR in this process; a child inheriting it
            # would run prometheus_client in multiprocess mode (see streamscore/__init__.py).
            os.environ.pop(MULTIPROC_VARIABLE, None)
        env = self.service_env()
        checks: list[tuple[ServiceSpec, Readiness]] = [
            (self.features_spec, _recovered),
            (self.scorer_spec, _scoring),
            (self.api_spec, _scoring),
            (self.monitor_spec, _monitoring),
        ]
        what = {
            self.features_spec.name: "table recovered",
            self.scorer_spec.name: "models loaded, loop running",
            self.api_spec.name: "models loaded, Redis and registry reachable",
            self.monitor_spec.name: "tables recovered, partitions' states rebuilt",
        }
        self.services.ensure_free([spec for spec, _ in checks])
        self.drop_earlier_monitors()
        self.drop_earlier_feature_processors()
        records = self.services.start([spec for spec, _ in checks], env)
        pids = ", ".join(f"{name} pid {record.pid}" for name, record in records.items())
        with self.out.status(f"starting {pids}; waiting for /healthz") as status:

            def on_wait(message: str) -> None:
                status.update(escape(message))

            started = self.services.wait_healthy(
                checks, timeout_s, healthy_is_enough={self.features_spec.name}, on_wait=on_wait
            )
        for name, (seconds, ready) in started.items():
            record = records[name]
            if ready:
                self.steps.done(name, f"pid {record.pid}, /healthz ok ({what[name]}), log {record.log}", seconds)
            else:
                self.features_late = True
                self.steps.warned(
                    name,
                    f"pid {record.pid}, /healthz ok but still rebuilding its table after {seconds:.0f} s: traffic "
                    f"starts anyway, its features catch up later; log {record.log}",
                    seconds,
                )
        self.print_api()
        self.catch_up(timeout_s)
        self.features_restored(timeout_s)

    def features_app_id(self) -> str:
        """The feature processor's app for the current history (DEMO_FEATURES_ID)."""
        from producers.history import TRANSACTIONS_FILE

        written = (self.paths.history / TRANSACTIONS_FILE).stat().st_mtime_ns
        return f"{DEMO_FEATURES_ID}{written // 1_000_000}"

    def drop_earlier_feature_processors(self) -> None:
        """Delete the state topics of the feature processors of earlier histories (DEMO_FEATURES_ID)."""
        prefix = TopicSettings().prefix + DEMO_FEATURES_ID
        current = TopicSettings().prefix + self.features_app_id()
        names = [
            name
            for name in admin_client(self.kafka).list_topics(timeout=10.0).topics
            if name.startswith(prefix) and not name.startswith(current + "-")
        ]
        if names:
            delete_topics(self.kafka, names)
            log.info("deleted %d state topics of feature processors of earlier histories: %s", len(names), names)

    def drop_earlier_monitors(self) -> None:
        """Delete the state topics of earlier demos' monitors (DEMO_MONITOR_ID)."""
        prefix = TopicSettings().prefix + DEMO_MONITOR_ID
        with self.step("monitor"):
            names = [
                name for name in admin_client(self.kafka).list_topics(timeout=10.0).topics if name.startswith(prefix)
            ]
            if names:
                delete_topics(self.kafka, names)
                log.info("deleted %d state topics of earlier demo monitors: %s", len(names), names)

    def print_api(self) -> None:
        url = self.api_spec.base_url
        body = json.dumps(
            {
                "event_id": "investigator-1",
                "account_id": "acct-00042",
                "merchant_id": "m-0001",
                "merchant_category": "5411",
                "amount": 249.9,
                "currency": "EUR",
                "country": "DE",
                "channel": "ecommerce",
                "device_id": "dev-new",
                "event_time": "2026-11-24T12:00:00Z",
            }
        )
        self.out.print(
            f"[green]✓[/] API at [bold]{url}[/] (docs {url}/docs, investigator page {url}/demo, key for this run: "
            f"{self.api_key})\n  curl -s -X POST {url}/v1/score -H 'X-API-Key: {self.api_key}' "
            f"-H 'content-type: application/json' -d '{body}'",
            highlight=False,
            soft_wrap=True,
        )

    def catch_up(self, timeout_s: float) -> None:
        """Wait until the scorer group has consumed what earlier runs left unscored, so the traffic's latency is
        the pipeline's, not a backlog's."""
        started = time.monotonic()
        partitions = self.topics.transactions.partitions
        topic = self.topics.transactions.name
        report: GroupLag | None = None
        with self.out.status(f"scorer: reading the lag of group {self.scorer_group}") as status:
            while time.monotonic() - started < timeout_s:
                report = self.lag_reader.read(self.scorer_group, [topic])
                if caught_up(report, topic, partitions):
                    self.steps.done("scorer caught up", f"group {self.scorer_group} lag 0", time.monotonic() - started)
                    return
                status.update(f"scorer: group {self.scorer_group} {report.state}, lag {report.total_lag:,} records")
                time.sleep(0.5)
        lag = "unknown" if report is None else f"{report.total_lag:,} records"
        self.out.print(
            f"[yellow]![/] the scorer still lags ({lag}) after {timeout_s:.0f} s: latency includes the backlog",
            highlight=False,
        )

    def features_restored(self, timeout_s: float) -> None:
        """Wait until the feature processor has pushed its table's snapshots into the online store (its partition
        marks, stream_processors/accounts/restore.py). The demo's Redis starts empty and is loaded with the
        history's snapshots; on a run that continues the world, the accounts of earlier runs are newer in the
        processor's table, and traffic scored before the re-push would see them as idle since the history."""
        import redis

        from feature_repo.store import OnlineMarks, partition_mark  # imports Feast: seconds

        marks = OnlineMarks(
            redis.Redis(host=self.redis.host, port=self.redis.port, socket_timeout=5.0), self.feast.project
        )
        names = [partition_mark(p) for p in range(self.topics.transactions.partitions)]
        started = time.monotonic()
        with self.out.status("feature processor: pushing its accounts' snapshots into the online store"):
            while (missing := marks.missing(names)) and time.monotonic() - started < timeout_s:
                time.sleep(0.5)
        if missing:
            self.out.print(
                f"[yellow]![/] the feature processor has not pushed its snapshots of {len(missing)} partition(s) after "
                f"{timeout_s:.0f} s: the first scores may see accounts as idle",
                highlight=False,
            )
            return
        self.steps.done(
            "features restored", "the processor's snapshots are in the online store", time.monotonic() - started
        )

    # --- traffic and outputs -----------------------------------------------------------------------------------

    def traffic(
        self, duration: float, rate: float, start: datetime, defect_share: float, drift: str | None = None
    ) -> Traffic:
        """Play the world on from `start` (simulated clock) at the demo's speed for `duration` wall seconds."""
        from producers.live import LiveProgress, LiveRun, run_live

        settings = ProducerSettings(rate=rate, label_delay_s=self.label_delay, kafka=self.kafka)
        generator = make_generator(settings, drift, rhythm=True)
        producer = EventProducer(self.kafka, self.topics, client_id="demo-producer", linger_ms=settings.linger_ms)
        injector = DefectInjector(self.kafka, self.topics.transactions.name, defect_share)
        started_at = datetime.now(UTC)
        self.tally = OutputTally(
            since_ms=int(started_at.timestamp() * 1000) - 1, events_since_ms=int(start.timestamp() * 1000) - 1
        )
        reader = self.reader = OutputReader(self.kafka, self.topics, self.tally)
        stop = self.stop = stop_on_signal()
        latest: list[LiveProgress] = [LiveProgress(0, 0, 0, 0.0)]

        def on_progress(p: LiveProgress) -> None:
            injector.top_up(p.events)
            latest.append(p)

        result: list[LiveSummary] = []
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                run = LiveRun(
                    duration_s=duration,
                    rate=rate,
                    label_delay_s=self.label_delay,
                    start=start,
                    speed=self.speed,
                    keep_labels=True,
                )
                result.append(run_live(generator, producer, run, on_progress=on_progress, should_stop=stop.is_set))
                injector.top_up(result[0].events)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failure.append(exc)

        worker = threading.Thread(target=produce, name="demo-traffic", daemon=True)
        begun = time.monotonic()
        worker.start()
        with _bar(self.out, TextColumn("{task.fields[info]}")) as progress:
            task = progress.add_task(
                f"live traffic: {rate:g}/s for {duration:g} s (the world from {start:%H:%M} UTC, {self.speed:,.0f}x)",
                total=duration,
                info="",
            )
            while worker.is_alive():
                reader.poll(0.25)
                p = latest[-1]
                progress.update(
                    task,
                    completed=min(time.monotonic() - begun, duration),
                    info=f"{p.events:,} tx · {injector.total:,} defective · {self.tally.live_scores:,} scored · "
                    f"{self.tally.dead_lettered:,} dead letters · {p.labels:,} labels",
                )
        if failure:
            raise DemoStepError("live traffic", f"{type(failure[0]).__name__}: {failure[0]}", self.log_file)
        undelivered = injector.flush()
        summary = result[0]
        # The planned end (whole drift windows, see whole_windows), so the next run starts on a window boundary too.
        simulated_end = start + timedelta(seconds=min(summary.send_elapsed_s, duration) * self.speed)
        self.paths.clock.write_text(json.dumps({"live_until": simulated_end.isoformat()}))
        self.steps.done(
            "live traffic",
            f"{summary.events:,} transactions at {summary.events_per_s:,.0f}/s, {injector.total:,} defective, "
            f"{summary.labels_sent:,} labels",
            time.monotonic() - begun,
        )
        return Traffic(
            summary,
            dict(injector.sent),
            injector.total,
            undelivered,
            started_at,
            datetime.now(UTC),
            start,
            simulated_end,
        )

    def drain(self, traffic: Traffic, timeout_s: float) -> bool:
        """Read outputs until every record sent has a score or a dead letter; False on timeout."""
        reader = self.reader
        if reader is None:
            raise RuntimeError("drain() runs after traffic()")
        expected = traffic.summary.delivered - traffic.summary.labels_sent + traffic.defects
        started = time.monotonic()
        with _bar(self.out) as progress:
            task = progress.add_task("waiting for every outcome", total=expected)
            while self.tally.accounted < expected and time.monotonic() - started < timeout_s:
                if self.stop.is_set():
                    break
                reader.poll(0.25)
                progress.update(task, completed=min(self.tally.accounted, expected))
        # A last short read picks up duplicates, should any arrive after the count was reached.
        reader.poll(1.0)
        done = self.tally.accounted >= expected
        detail = f"{self.tally.accounted:,} of {expected:,} records scored or dead-lettered"
        if done:
            self.steps.done("outcomes", detail, time.monotonic() - started)
        else:
            self.out.print(f"[red]✗[/] [bold]outcomes[/]: only {detail} after {timeout_s:.0f} s", highlight=False)
        return done

    def monitor_results(self, traffic: Traffic, timeout_s: float) -> Results | None:
        """Wait until the monitor has judged the drift windows up to the end of the traffic and counted each
        transaction scored live in an A/B look (they count once their label matured), then read its results as
        `streamscore report` does: the windows of this traffic and the latest look per experiment."""
        from monitor.reader import Results, read_latest

        started = time.monotonic()
        expected = len(self.tally.live_event_ids)
        units = 0
        window_end: datetime | None = None
        with self.out.status("monitor: waiting for its drift windows and A/B looks") as status:
            while True:
                try:
                    results = read_latest(self.kafka, self.topics, windows=1000, tail=MONITOR_TAIL, timeout_s=10.0)
                except StreamscoreError as exc:
                    self.out.print(f"[yellow]![/] monitor results not readable: {escape(exc.message)}", highlight=False)
                    return None
                units = self.live_units(results, traffic.started_at)
                window_end = max((r.window_end for r in _of_traffic(results.drift, traffic)), default=None)
                judged = window_end is not None and window_end >= traffic.simulated_end
                counted = units >= expected
                waited = time.monotonic() - started
                if (judged and counted) or waited > timeout_s or self.stop.is_set():
                    break
                windows = "no window judged yet" if window_end is None else f"judged up to {window_end:%H:%M:%S} UTC"
                status.update(
                    f"monitor: drift windows {windows}; {units:,} of {expected:,} transactions counted in "
                    f"the A/B looks · {waited:.0f} s"
                )
                time.sleep(2.0)
        ours = _of_traffic(results.drift, traffic)
        detail = (
            f"{len({r.window for r in ours})} drift window(s) of this traffic judged, "
            f"{units:,} of {expected:,} scored transactions counted in the A/B looks"
        )
        if judged and counted:
            self.steps.done("monitor", detail, time.monotonic() - started)
        else:
            self.steps.warned("monitor", f"after {timeout_s:.0f} s: {detail}", time.monotonic() - started)
        return Results(
            drift=ours,
            ab=[look for look in results.ab if look.at >= traffic.started_at],
            windows_seen=results.windows_seen,
            looks_seen=results.looks_seen,
            unreadable=results.unreadable,
        )

    def live_units(self, results: Results, since: datetime) -> int:
        """Matured transactions of the live variants in the latest looks published since `since` (this demo's
        monitor starts afresh, see DEMO_MONITOR_ID; earlier monitors' looks are older)."""
        live = {name for name, _, _ in self.live_variants}
        return sum(v.units for look in results.ab if look.at >= since for v in look.variants if v.variant in live)

    def judge(self, traffic: Traffic, monitor: Results | None) -> None:
        """Set what the summary judges the run by, while the stack still runs: each live variant's decisions against
        its version's test split (registry tags), each variant's operating point (`streamscore report`'s), and the
        run's figures as JSON (DemoPaths.summary) for tests and scripts."""
        registry = Registry(self.registry_settings)
        expected: dict[str, Expectation | None] = {}
        for _, version in self.tally.live:
            try:
                expected[version] = Expectation.from_tags(registry.tags(version))
            except StreamscoreError as exc:
                self.out.print(f"[yellow]![/] version {version}'s figures not readable: {escape(exc.message)}")
        seen = seen_by_variant(self.tally.decisions, traffic.summary.labels)
        self.checks = expectation_checks(seen, expected)
        try:
            self.operating_points = read_operating_points(self.kafka, self.topics, registry)
        except StreamscoreError as exc:
            self.out.print(f"[yellow]![/] operating points not readable: {escape(exc.message)}", highlight=False)
        self.paths.summary.write_text(json.dumps(run_figures(traffic, self.tally, self.checks, expected, monitor)))

    def lag(self) -> tuple[GroupLag | None, dict[str, float | None]]:
        """The scorer group's lag (streamscore.lag), plus the feature processor's counts from its /metrics."""
        try:
            report: GroupLag | None = self.lag_reader.read(self.scorer_group, [self.topics.transactions.name])
        except StreamscoreError as exc:
            self.out.print(f"[yellow]![/] scorer lag not available: {escape(exc.message)}", highlight=False)
            report = None
        features = self.services.metrics(self.features_spec) or ""
        figures = {
            "features_processed": metric_sum(features, "streamscore_features_events_processed_total"),
            "features_skipped": metric_sum(features, "streamscore_features_events_skipped_total"),
        }
        return report, figures

    # --- tear-down -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self._lag_reader is not None:
            self._lag_reader.close()

    def stop_everything(self) -> None:
        if self.keep:
            return
        running = self.services.running()
        if running:
            with self.out.status(f"stopping {', '.join(running)} (SIGTERM, then wait)"):
                self.services.stop_all()
            self.out.print(f"stopped {', '.join(f'{n} (pid {r.pid})' for n, r in running.items())}", highlight=False)
        if self.stack_started:
            with self.out.status("stopping the local stack"):
                stopped = self.stack.down(only=self.stack_started)
            self.out.print(f"stopped the local stack's {' and '.join(stopped) or 'nothing'} (the demo started it)")
        if self.stack_before:
            keeps, it = ("keeps", "it") if len(self.stack_before) == 1 else ("keep", "them")
            self.out.print(
                f"the local stack's {' and '.join(self.stack_before)} ran before the demo and {keeps} running "
                f"([bold]streamscore infra down[/] stops {it})"
            )

    def print_kept(self) -> None:
        running = self.services.running()
        restarts = self.services.restarts()
        lines = [
            f"  {name}: pid {r.pid} · http://127.0.0.1:{r.port}/metrics · /healthz · log {r.log}"
            + (f" · restarted {restarts[name]}×" if restarts.get(name) else "")
            for name, r in running.items()
        ]
        self.out.print("[bold]--keep[/]: still running", highlight=False)
        for line in lines:
            self.out.print(line, highlight=False)
        self.out.print(
            f"  local stack: Kafka {self.kafka.bootstrap_servers}, Redis 127.0.0.1:{self.redis.port}", highlight=False
        )
        supervisor = self.services.supervisor
        if supervisor is None:
            return
        self.out.print(
            f"  supervisor: pid {supervisor.pid}, restarts a service that exits (backoff up to "
            f"{self.services.policy.max_s:.0f} s) · log {supervisor.log} · restart counts "
            f"{self.services.status_path}",
            highlight=False,
        )
        self.out.print(
            f"stop them with [bold]kill {supervisor.pid}[/] (the supervisor stops the services; killing a service "
            "only restarts it), or the next [bold]streamscore demo[/]; then [bold]streamscore infra down[/]",
            highlight=False,
        )

    # --- summary ---------------------------------------------------------------------------------------------------

    def summary(
        self, traffic: Traffic, lag: GroupLag | None, figures: dict[str, float | None], monitor: Results | None
    ) -> None:
        tally = self.tally
        s = traffic.summary
        valid = s.delivered - s.labels_sent
        events = Table(title="events", show_header=False)
        events.add_row("transactions produced", f"{s.events:,} ({s.frauds:,} fraud, {s.frauds / max(s.events, 1):.2%})")
        events.add_row("defective records produced", f"{traffic.defects:,}")
        events.add_row("labels produced", f"{s.labels_sent:,}")
        events.add_row("send rate", f"{s.events_per_s:,.0f} transactions/s")
        events.add_row("scored live (distinct transactions)", f"{len(tally.live_event_ids):,} of {valid:,}")
        events.add_row("duplicate live scores", f"{tally.duplicates:,}")
        events.add_row("shadow scores", f"{tally.shadow_scores:,}")
        events.add_row("dead letters", f"{tally.dead_lettered:,} of {traffic.defects:,} defective")
        if tally.earlier:
            events.add_row("[dim]outputs of earlier traffic (ignored)[/]", f"{tally.earlier:,}")
        if tally.unreadable:
            events.add_row("[yellow]unreadable outputs[/]", f"{tally.unreadable:,}")
        percentiles = latency_percentiles(tally.all_latencies())
        if percentiles is not None:
            events.add_row("latency p50 / p99 (live scores)", f"{percentiles[0]:,.1f} ms / {percentiles[1]:,.1f} ms")
        if lag is None:
            events.add_row("scorer lag", "unknown")
        else:
            events.add_row(
                "scorer lag",
                f"{lag.total_lag:,} records, {lag.max_lag_seconds:.1f} s (group {lag.group}, {lag.state}, "
                f"{lag.members} member{'s' if lag.members != 1 else ''})",
            )
        restarts = {name: count for name, count in self.services.restarts().items() if count}
        if restarts:
            events.add_row(
                "[yellow]service restarts[/]", ", ".join(f"{name} {count}×" for name, count in restarts.items())
            )
        processed, skipped = figures.get("features_processed"), figures.get("features_skipped")
        if processed is not None:
            late = " (started before its table was rebuilt)" if self.features_late else ""
            events.add_row("feature processor", f"{processed:,.0f} folded, {skipped or 0:,.0f} skipped{late}")
        self.out.print(events)
        self.out.print(scores_table(tally.live, "scores (live) by variant and model version"))
        if tally.shadow:
            self.out.print(
                scores_table(tally.shadow, "shadow scores (scores.shadow), share of all transactions", valid)
            )
        self.out.print(dead_letters_table(tally, traffic.injected))
        if self.checks:
            self.out.print(expectations_table(self.checks))
        if monitor is not None:
            self.out.print("[bold]monitor[/] (what `streamscore report` prints)", highlight=False)
            show_monitor(self.out, monitor, self.topics, MONITOR_TAIL, self.operating_points)
        self.out.print(f"[dim]figures of this run: {self.paths.summary}[/]", highlight=False)
        durations = Table(title="steps", show_header=False)
        for step, _, seconds in self.steps.rows:
            durations.add_row(step, "skipped" if seconds is None else f"{seconds:.1f} s")
        self.out.print(durations)


def demo(
    duration: float = typer.Option(60.0, min=1.0, help="Seconds of live traffic."),
    rate: float = typer.Option(300.0, min=1.0, help="Transactions per second."),
    defects: float = typer.Option(
        0.005, min=0.0, max=0.4, help="Share of deliberately defective records (dead letters)."
    ),
    label_delay: float = typer.Option(
        LABEL_DELAY_S,
        min=0.0,
        help="Simulated seconds until a transaction's label is produced (a reported fraud's up to twice as late).",
    ),
    history_days: float = typer.Option(
        7.0, min=1.0, help="Days of history to train on (after a 30-day warm-up that only feeds their features)."
    ),
    join: str | None = typer.Option(
        None, help="Training's feature join: feast (historical retrieval) or local (in process). [TRAIN_FEATURE_JOIN]"
    ),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, help="Folder of everything the demo writes."),
    fresh: bool = typer.Option(False, "--fresh", help="Redo every step (history, features, models)."),
    keep: bool = typer.Option(
        False,
        "--keep",
        help="Leave the services (with their supervisor, which restarts one that exits) and the local stack running.",
    ),
    start_timeout: float = typer.Option(
        120.0,
        help="Seconds the services may take to become ready; the feature processor may then still be rebuilding "
        "its table (traffic starts anyway).",
    ),
    drain_timeout: float = typer.Option(120.0, help="Seconds to wait for the outcome of every record."),
    drift: str | None = typer.Option(
        None,
        "--drift",
        help="Drift injected into the live traffic, e.g. after=9000,amount_scale=2.5 (as `streamscore produce`).",
    ),
    monitor_timeout: float = typer.Option(
        120.0, help="Seconds to wait for the monitor to judge the traffic's windows and count its transactions."
    ),
) -> None:
    """The whole pipeline on the local stack: history, features, two models, services, live traffic, a summary."""
    if join not in (None, "local", "feast"):
        raise typer.BadParameter("choose feast or local", param_hint="--join")
    if drift is not None:
        try:
            DriftSpec.parse(drift)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--drift") from None
    begun = time.monotonic()
    paths = DemoPaths(data_dir.resolve())
    out = Console(file=sys.stdout)  # the terminal of this call, whatever a step redirects
    with friendly_errors():
        # One world, one clock: the live traffic plays the history's world on at the speed that keeps every account's
        # rate what it was in the history (docs/producers.md).
        speed = rate / HISTORY_RATE
        duration = whole_windows(duration, speed)
        run = Demo(paths, out, fresh=fresh, keep=keep, join=join, label_delay=label_delay, speed=speed)
        out.print(f"[bold]streamscore demo[/] · data in {paths.root} · logs in {paths.logs}", highlight=False)
        try:
            run.clean()
            run.stack_up()
            start = run.history(WARMUP_DAYS + history_days, timedelta(seconds=duration * speed))
            run.offline_features()
            run.online_store()
            run.models()
            run.start_services(start_timeout)
            traffic = run.traffic(duration, rate, start, defects, drift)
            drained = run.drain(traffic, drain_timeout)
            monitor = run.monitor_results(traffic, monitor_timeout)
            lag, figures = run.lag()
            run.judge(traffic, monitor)
        except BaseException:
            run.close()
            run.stop_everything()
            if keep:
                run.print_kept()
            raise
        run.close()
        run.stop_everything()
        ok = drained and run.tally.duplicates == 0 and traffic.undelivered_defects == 0
        run.summary(traffic, lag, figures, monitor)
        if keep:
            run.print_kept()
        out.print(f"total {time.monotonic() - begun:.0f} s", highlight=False)
    if run.stop.is_set():
        out.print("[yellow]interrupted[/]: the traffic was cut short")
        raise typer.Exit(130)
    if not ok:
        raise typer.Exit(1)
