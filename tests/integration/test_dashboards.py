"""The dashboards and the alert rules against reality (issue 15, point 3): a real Prometheus (Debian's
`prometheus`, on loopback) scrapes the real services — the scorer, the feature processor, the monitor and the API
as subprocesses on the session's broker and Redis — and evaluates the committed alert rules, while transactions,
labels and API requests flow. Then every query of every panel of deploy/grafana/dashboards/*.json is evaluated
through Prometheus' HTTP API, with Grafana's interval variables set as a dashboard would, and must return series
with sensible values; every alert rule must be loaded and evaluated without error, and every series it selects must
exist.

What the traffic holds, so that every panel has something to show: valid transactions (now, in event time) with a
label each, a few defective ones (dead letters), an alias moved to a new version (a hot reload) and then to a
tampered one (a reload failure), the online store emptied once (a restore), and on the API scores plus one request
of each refusal (401, 413, 422, 429 until a few, a tampered version: 503) and a request whose head never arrives (a read
timeout). The monitor runs with 5-second windows on the wall clock and 2-second label maturity, so drift windows
close and A/B looks come within the test.

Panels that read kafka_exporter's metrics are left out, by the note their description carries
(`deploy.grafana.dashboards.KAFKA_EXPORTER_NOTE`): no kafka_exporter can be had on these machines (it is no Debian
package, and the Go module proxy here refuses github.com/danielqsj/kafka_exporter). The test prints them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import yaml
from confluent_kafka import Producer

from deploy.grafana import dashboards
from feature_repo.settings import FeastSettings
from feature_repo.store import apply, open_store
from scorer.api.security import digest
from streamscore.contracts import Label, Transaction, headers_for
from streamscore.features import FEATURE_NAMES, TransactionFacts, transaction_features
from streamscore.kafka import producer_config
from streamscore.settings import KafkaSettings, RedisSettings
from streamscore.topics import TopicRegistry
from tests.integration.test_feature_stream import feature_worker, worker_env
from tests.integration.test_monitor import CHAMPION_MODEL, monitor_env, monitor_worker, set_alias, with_reference
from tests.support.models import expected_scores, linear_weights, logistic_onnx, register
from tests.support.monitoring import reference_document
from tests.support.scoring import DEFECT_KINDS, MODEL, ScorerProcess, defective, free_port, make_scorer_env, valid
from tests.support.workers import PROJECT_ROOT, WorkerProcess, worker_process
from tests.unit.deploy.test_metric_names import parse

PROMETHEUS_DIR = PROJECT_ROOT / "deploy" / "prometheus"
SCRAPE_INTERVAL = "1s"
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "5m"}
"""What Grafana would put in a query for these variables with this scrape interval (its $__rate_interval is at
least four scrape intervals; 15 s holds enough samples to be steady at 1 s)."""
TX_PER_S = 40.0
API_PER_S = 8.0
DEFECT_EVERY = 97
"""Every 97th transaction is defective (a dead letter), cycling through the defect kinds."""
ACCOUNTS = 300
STEADY_AFTER_S = 25.0
"""From the first transaction: when the 15-second rate windows hold steady traffic only."""
EVENTS = (
    "streamscore_features_online_store_restores_total > 0",
    'streamscore_scorer_model_reload_failures_total{variant="shadow"} > 0',
)
"""What the test makes happen, seen by Prometheus, before the panels are judged."""
SETTLE_TIMEOUT_S = 90.0
"""From the first transaction: how long every panel may take to show data (windows to close, looks to come)."""
READY_TIMEOUT_S = 120.0
API_KEY, BURST_KEY = "dash-" + uuid.uuid4().hex, "burst-" + uuid.uuid4().hex


# --- the transactions ---------------------------------------------------------------------------------------------


def transaction(i: int) -> Transaction:
    """The i-th valid transaction, dated now: the monitor's windows and label maturity follow the wall clock."""
    return valid(i, accounts=ACCOUNTS).model_copy(update={"event_time": datetime.now(UTC)})


def model_inputs(count: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """What the scorer computes for such transactions without online features (a reference to measure drift
    against: whether inputs drift is not this test's question)."""
    rows = [transaction_features(TransactionFacts.of(transaction(i)), None, None, None).values for i in range(count)]
    return np.asarray(rows, dtype=np.float64)


@dataclass
class Traffic:
    """Transactions (and their labels) to the scorer, and API requests, in two threads until `stop()`."""

    kafka: KafkaSettings
    topics: TopicRegistry
    api_url: str
    tampered: str
    """A registered version whose file does not match its recorded checksum (the API answers 503 for it)."""
    produced: int = 0
    defects: int = 0
    answers: dict[tuple[str, int], int] = field(default_factory=dict)
    """(route, status) → how many the client got."""
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._guard(self._transactions), daemon=True),
            threading.Thread(target=self._guard(self._requests), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def halt(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def stop(self) -> None:
        self.halt()
        assert not self.errors, self.errors

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception as exc:  # noqa: BLE001 — reported by stop(), in the test's thread
                self.errors.append(f"{target.__name__}: {type(exc).__name__}: {exc}")

        return run

    def _transactions(self) -> None:
        producer = Producer(producer_config(self.kafka, f"test-dash-{uuid.uuid4().hex[:6]}", linger_ms=5))
        rng = np.random.default_rng(15)
        started = time.monotonic()
        i = 0
        while not self._stop.is_set():
            wait = started + i / TX_PER_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if i % DEFECT_EVERY == DEFECT_EVERY // 2:
                record = defective(i, DEFECT_KINDS[(i // DEFECT_EVERY) % len(DEFECT_KINDS)])
                producer.produce(self.topics.transactions.name, record.value, record.key, headers=record.headers)
                self.defects += 1
            else:
                tx = transaction(i)
                producer.produce(
                    self.topics.transactions.name, tx.to_json(), tx.account_id.encode(), headers=headers_for(tx)
                )
                label = Label(
                    event_id=tx.event_id,
                    account_id=tx.account_id,
                    is_fraud=bool(rng.random() < 0.1),
                    event_time=tx.event_time,
                    labeled_at=tx.event_time + timedelta(seconds=1),
                )
                producer.produce(
                    self.topics.labels.name, label.to_json(), label.account_id.encode(), headers=headers_for(label)
                )
            self.produced += 1
            producer.poll(0)
            i += 1
        assert producer.flush(60) == 0

    def _requests(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=30) as client:
            self._refusals(client)
            started = time.monotonic()
            n = 0
            while not self._stop.is_set():
                wait = started + n / API_PER_S - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                tx = transaction(1_000_000 + n)
                self._count("/v1/score", client.post("/v1/score", content=tx.to_json(), headers=self._headers()))
                n += 1

    def _headers(self, key: str = API_KEY) -> dict[str, str]:
        return {"X-API-Key": key, "content-type": "application/json"}

    def _count(self, route: str, response: httpx.Response) -> None:
        key = (route, response.status_code)
        self.answers[key] = self.answers.get(key, 0) + 1

    def _refusals(self, client: httpx.Client) -> None:
        """One of each refusal the API dashboard shows, and a read timeout."""
        body = transaction(2_000_000).to_json()
        score = "/v1/score"
        self._count(score, client.post(score, content=body, headers={"content-type": "application/json"}))
        self._count(score, client.post(score, content=b"not json", headers=self._headers()))
        self._count(score, client.post(score, content=b" " * (300 * 1024) + body, headers=self._headers()))
        self._count(score, client.post(f"{score}?version={self.tampered}", content=body, headers=self._headers()))
        for _ in range(2000):  # faster than API_RATE_PER_S, until API_BURST is spent and a few are refused with 429
            self._count("/v1/models", client.get("/v1/models", headers=self._headers(BURST_KEY)))
            if self.answers.get(("/v1/models", 429), 0) >= 5:
                break
        # A request whose head never arrives: closed after API_HEADER_TIMEOUT_S.
        host, port = urllib.parse.urlsplit(self.api_url).netloc.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: api\r\n")
            sock.recv(4096)  # the 408 and the close, after the timeout


# --- Prometheus ---------------------------------------------------------------------------------------------------


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail(
            "the Prometheus server is not installed: `apt-get install prometheus` (Debian's package, which also "
            "ships promtool; .ci/run installs it)"
        )
    return found


def scrape_config(targets: dict[str, int], prometheus_port: int) -> tuple[dict[str, Any], list[str]]:
    """deploy/prometheus/prometheus.yml with its jobs pointed at the test's services on loopback (the same job names,
    which the rules select on), a 1-second scrape and evaluation, the committed rule files. Returns the config and
    the committed jobs left out (those with no target here)."""
    committed = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs, left_out = [], []
    for job in committed["scrape_configs"]:
        name = job["job_name"]
        port = prometheus_port if name == "prometheus" else targets.get(name)
        if port is None:
            left_out.append(name)
            continue
        kept = {k: v for k, v in job.items() if k not in {"dns_sd_configs", "static_configs"}}
        jobs.append({**kept, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]})
    assert {job["job_name"] for job in jobs} >= set(targets), "a service has no job in prometheus.yml"
    rule_files = [str((PROMETHEUS_DIR / pattern).resolve()) for pattern in committed["rule_files"]]
    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": rule_files,
        "scrape_configs": jobs,
    }
    return config, left_out


class PrometheusError(Exception):
    """Prometheus refused a request (a query it cannot parse or evaluate): its own message."""


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{params}: {exc.code} {exc.read().decode(errors='replace')}") from exc
        if answer["status"] != "success":
            raise PrometheusError(f"{params}: {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: its series (a scalar answer as one series without labels)."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result


@contextmanager
def prometheus(tmp: Path, targets: dict[str, int]) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port with its storage in `tmp`, stopped (by its pid) when the block ends."""
    port = free_port()
    config, left_out = scrape_config(targets, port)
    print(f"Prometheus scrapes {sorted(targets)}; left out of the committed config: {left_out}")
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        server = Prometheus(port)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"prometheus exited with {process.returncode}:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready after 30 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --- the dashboards' queries --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    board: str
    panel: str
    unit: str
    ref: str
    expr: str
    """With Grafana's variables replaced (GRAFANA_VARIABLES)."""

    @property
    def name(self) -> str:
        return f"{self.board}: {self.panel!r} ({self.ref})"


def with_variables(expr: str, where: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"{where}: a variable this test does not know: {expr!r} (add it to GRAFANA_VARIABLES)"
    return expr


def panel_queries() -> tuple[list[PanelQuery], list[str]]:
    """Every query of every panel of the committed dashboards, and the panels left out (kafka_exporter's)."""
    queries, left_out = [], []
    paths = sorted(dashboards.OUTPUT_DIR.glob("*.json"))
    assert [p.name for p in paths] == ["api.json", "monitor.json", "pipeline.json"]
    for path in paths:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            title = f"{path.stem}: {panel['title']!r}"
            exprs = [target["expr"] for target in panel["targets"]]
            reads_kafka_exporter = any("kafka_" in expr for expr in exprs)
            if dashboards.KAFKA_EXPORTER_NOTE in panel["description"]:
                assert all("kafka_" in e and "streamscore_" not in e for e in exprs), f"{title} reads more"
                left_out.append(title)
                continue
            assert not reads_kafka_exporter, f"{title} reads kafka_exporter's metrics without saying so"
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
            for target in panel["targets"]:
                expr = with_variables(target["expr"], title)
                queries.append(PanelQuery(path.stem, panel["title"], unit, target["refId"], expr))
    return queries, left_out


def panel_query(server: Prometheus, query: PanelQuery) -> list[dict[str, Any]]:
    try:
        return server.query(query.expr)
    except PrometheusError as exc:
        pytest.fail(f"{query.name}: Prometheus refuses its query: {exc}")


def values(series: list[dict[str, Any]]) -> list[float]:
    return [float(s["value"][1]) for s in series]


_QUANTILE = re.compile(
    r"histogram_quantile\([0-9.]+, sum by \(([^)]*)\) \(rate\(([A-Za-z_:][\w:]*)_bucket(\{[^}]*\})?(\[[^\]]+\])\)\)\)"
)


def events_behind(expr: str) -> str | None:
    """The count of observations behind each series of a quantile or a ratio of increases, by the same labels: where
    it is 0 (a route without requests in the window, a restore step that never ran), the honest answer is NaN — no
    latency without a request — and Grafana leaves a gap. None for other expressions, whose NaN is a defect."""
    quantile = _QUANTILE.search(expr)
    if quantile is not None:
        labels, histogram, selector, window = quantile.groups()
        grouping = ", ".join(label for label in labels.split(", ") if label != "le")
        by = f" by ({grouping})" if grouping else ""
        return f"sum{by} (rate({histogram}_count{selector or ''}{window}))"
    if " / " in expr and expr.count("increase(") == 2:
        return expr.rsplit(" / ", 1)[1]
    return None


def check_by_unit(query: PanelQuery, series: list[dict[str, Any]], server: Prometheus) -> list[str]:
    """What every panel's numbers must be, by its unit: finite (NaN only where no event is behind the series, see
    `events_behind`); rates, durations, counts and shares never negative, shares at most 1."""
    problems = []
    behind = events_behind(query.expr)
    idle = (
        {json.dumps(s["metric"], sort_keys=True) for s in server.query(behind) if float(s["value"][1]) == 0}
        if behind
        else set()
    )
    for s in series:
        v = float(s["value"][1])
        labels = s["metric"]
        if math.isnan(v) and json.dumps(labels, sort_keys=True) in idle:
            continue
        if not math.isfinite(v):
            problems.append(f"{labels} = {v}" + ("" if behind is None else f" with events behind it ({behind})"))
        elif query.unit == "none":
            continue
        elif v < 0:
            problems.append(f"{labels} = {v} < 0")
        elif query.unit == "percentunit" and v > 1.0:
            problems.append(f"{labels} = {v} > 1")
    if series and all(math.isnan(float(s["value"][1])) for s in series):
        problems.append("every series is NaN: nothing behind the panel")
    return problems


Check = Callable[[list[dict[str, Any]]], None]


def between(low: float, high: float) -> Check:
    def check(series: list[dict[str, Any]]) -> None:
        assert all(low <= v <= high for v in values(series)), f"outside [{low}, {high}]: {values(series)}"

    return check


def one_of(*allowed: float) -> Check:
    def check(series: list[dict[str, Any]]) -> None:
        assert set(values(series)) <= set(allowed), f"not in {allowed}: {values(series)}"

    return check


def positive(series: list[dict[str, Any]]) -> None:
    assert all(v > 0 for v in values(series)), f"not > 0: {values(series)}"


def near_traffic_rate(series: list[dict[str, Any]]) -> None:
    (rate,) = values(series)
    assert 0.5 * TX_PER_S <= rate <= 1.5 * TX_PER_S, f"{rate:.1f} records/s consumed while {TX_PER_S:g}/s flow"


def within_a_minute_of_now(series: list[dict[str, Any]]) -> None:
    (at_ms,) = values(series)
    assert abs(at_ms / 1000 - time.time()) < 60, f"last window ended at {at_ms / 1000:.0f}, now {time.time():.0f}"


def above_for(label: str, value: str, minimum: float) -> Check:
    """The series with `label`=`value` is there and above `minimum`."""

    def check(series: list[dict[str, Any]]) -> None:
        mine = [float(s["value"][1]) for s in series if s["metric"].get(label) == value]
        assert mine and mine[0] > minimum, f"{label}={value}: {mine} (of {series})"

    return check


def model_table(series: list[dict[str, Any]]) -> None:
    rows = {(s["metric"]["variant"], s["metric"]["kind"]) for s in series}
    assert rows == {("champion", "live"), ("challenger", "live"), ("shadow", "shadow")}, rows
    for s in series:
        assert s["metric"]["model_name"] == MODEL and s["metric"]["model_version"], s["metric"]


def one_instance_per_version(series: list[dict[str, Any]]) -> None:
    assert values(series) == [1.0] * len(series), series


SPECIFIC: dict[tuple[str, str, str], Check] = {
    ("pipeline", "Events in", "A"): near_traffic_rate,
    ("pipeline", "End-to-end p99", "A"): positive,
    ("pipeline", "End-to-end latency", "A"): positive,
    ("pipeline", "End-to-end latency", "B"): positive,
    ("pipeline", "Batch size", "A"): between(1, 1024),
    ("pipeline", "Batch size", "B"): between(1, 1024),
    ("pipeline", "Batch size", "C"): between(1, 1024),
    ("pipeline", "Partitions held per instance", "A"): one_of(6),
    ("pipeline", "Scorer instances: loop and readiness", "A"): one_of(1),
    ("pipeline", "Scorer instances: loop and readiness", "B"): one_of(0, 1),
    ("pipeline", "Seconds since the last commit", "A"): between(0, 30),
    ("pipeline", "Model versions serving", "A"): model_table,
    ("pipeline", "Version per variant", "A"): one_instance_per_version,
    ("pipeline", "Model load time", "A"): positive,
    ("pipeline", "Hot reloads (per 15 min)", "A"): above_for("variant", "shadow", 0.5),
    ("pipeline", "Hot reloads (per 15 min)", "B"): above_for("variant", "shadow", 0.5),
    ("pipeline", "Online store restores (per hour)", "A"): between(0.5, 10),
    ("pipeline", "Online store restores (per hour)", "B"): positive,
    ("pipeline", "Restore duration by step (mean, last hour)", "A"): above_for("step", "snapshots", 0),
    ("pipeline", "Feature freshness", "A"): positive,
    ("pipeline", "Feature freshness", "B"): positive,
    ("pipeline", "Push latency", "A"): positive,
    ("pipeline", "Feature processor readiness", "A"): one_of(0, 1),
    ("monitor", "Inputs drifted", "A"): between(0, len(FEATURE_NAMES) + 3),
    ("monitor", "Last window end", "A"): within_a_minute_of_now,
    ("monitor", "Test p-value per input", "A"): between(0, 1),
    ("monitor", "Drift decision per input", "A"): one_of(0, 1),
    ("monitor", "Verdict per variant", "A"): one_of(-1, 0, 1),
    ("monitor", "Primary metric per variant", "A"): between(0, 1),
    ("monitor", "Always-valid p-value", "A"): between(0, 1),
    ("monitor", "Sample-ratio check p-value", "A"): between(0, 1),
    ("monitor", "Sample-ratio alarm", "A"): one_of(0, 1),
    ("monitor", "Monitor readiness", "A"): one_of(0, 1),
    ("api", "p99 latency of /v1/score", "A"): positive,
    ("api", "Batch size", "A"): between(1, 64),
    ("api", "Batch size", "B"): between(1, 64),
    ("api", "Batch size", "C"): between(1, 64),
}
"""Beyond the unit's rule: what a panel's query must give for this traffic."""


def cross_checks(results: dict[tuple[str, str, str], list[dict[str, Any]]]) -> None:
    """Panels that must agree with each other."""

    def by(key: tuple[str, str, str], label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in results[key]}

    consumed = values(results["pipeline", "Events per second", "A"])[0]
    scored_live = sum(
        float(s["value"][1]) for s in results["pipeline", "Events per second", "B"] if s["metric"]["kind"] == "live"
    )
    assert abs(scored_live - consumed) <= 0.25 * consumed + 2, f"scored {scored_live:.1f}/s, consumed {consumed:.1f}/s"
    for board, panel in (("pipeline", "End-to-end latency"), ("api", "Latency by route")):
        p50, p99 = by((board, panel, "A"), "route"), by((board, panel, "B"), "route")
        idle = {k for k, v in p50.items() if math.isnan(v)}  # no request in the window (check_by_unit's NaN)
        assert p50.keys() == p99.keys() and all(p50[k] <= p99[k] for k in p50.keys() - idle), f"{panel}: {p50} {p99}"
    interval = "Difference from the champion, with its always-valid interval"
    difference, low, high = (
        {
            (s["metric"]["experiment"], s["metric"]["variant"]): float(s["value"][1])
            for s in results["monitor", interval, ref]
        }
        for ref in "ABC"
    )
    assert difference.keys() == low.keys() == high.keys()
    assert all(low[k] <= difference[k] <= high[k] for k in difference), (low, difference, high)


# --- the alert rules ----------------------------------------------------------------------------------------------


def rule_exprs() -> dict[str, str]:
    out = {}
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[rule.get("alert") or rule["record"]] = rule["expr"]
    return out


def selectors(expr: str) -> list[str]:
    """The series selectors of an expression (a metric name with its matchers), found with the rough parser of
    tests/unit/deploy/test_metric_names.py."""
    found = []
    for metric in sorted(parse(expr).metrics):
        for match in re.finditer(rf"(?<![\w:]){re.escape(metric)}(?![\w:])\s*(\{{[^}}]*\}})?", expr):
            found.append(metric + (match.group(1) or ""))
    return sorted(set(found))


QUIET = {"ScorerDown", "ScrapeTargetDown", "FeaturesPushFailing", "ApiServerErrors"}
"""Alerts that must stay inactive in this run: the services are up and scraped, pushes succeed, and the 5xx are one
request in hundreds."""
FIRING = {"ModelReloadFailing": {"variant": "shadow"}}
"""Alerts this run makes fire (no `for`): the shadow's alias moved to a tampered version."""


# --- the test -----------------------------------------------------------------------------------------------------


def api_env(scorer_env: dict[str, str], port: int) -> dict[str, str]:
    keys = [{"name": "dashboards", "sha256": digest(API_KEY)}, {"name": "burst", "sha256": digest(BURST_KEY)}]
    return {
        **os.environ,
        **scorer_env,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_KEYS": json.dumps(keys),
        # As docs/operations.md says for Compose: Prometheus 2.x cannot send the key header.
        "API_METRICS_REQUIRE_KEY": "false",
        "API_DEMO_UI": "false",
        "API_HEADER_TIMEOUT_S": "1",
    }


def wait_until(done: Callable[[], bool], timeout_s: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs()}")
        time.sleep(0.5)


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def empty_online_store(redis_settings: RedisSettings, project: str) -> int:
    """Delete every key of the Feast project (its rows end in the project's name) and its marks: the store as a Redis
    restarted without its data leaves it. Returns the keys deleted."""
    client = redis.Redis(host=redis_settings.host, port=redis_settings.port)
    keys = [*client.scan_iter(match=f"*{project}"), *client.scan_iter(match=f"streamscore:mark:{project}:*")]
    if keys:
        client.delete(*keys)
    return len(keys)


def test_every_panel_and_rule_against_the_running_services(
    tmp_path: Path, kafka: KafkaSettings, redis_settings: RedisSettings, topics: TopicRegistry
) -> None:
    began = time.monotonic()
    queries, left_out = panel_queries()
    print(
        f"{len(queries)} queries of {len({(q.board, q.panel) for q in queries})} panels; left out (kafka_exporter): "
        f"{left_out}"
    )
    assert left_out, "the Kafka row is expected to be left out: see the module's docstring"
    unknown = set(SPECIFIC) - {(q.board, q.panel, q.ref) for q in queries}
    assert not unknown, f"checks of panels the dashboards do not have: {unknown}"

    # Models: champion and challenger one version (an amount model that declines some and reviews some), the shadow
    # another; each with a reference so the monitor measures drift. Later the shadow's alias moves twice.
    scorer = make_scorer_env(tmp_path, kafka, redis_settings, topics)
    uri = scorer.tracking_uri
    x = model_inputs(2000)
    live = register(uri, MODEL, logistic_onnx(*CHAMPION_MODEL))
    with_reference(uri, live, reference(x, CHAMPION_MODEL))
    set_alias(uri, "champion", live)
    set_alias(uri, "challenger", live)
    with_reference(uri, "2", reference(x, linear_weights(2)))
    set_alias(uri, "shadow", "2")
    moved = register(uri, MODEL, logistic_onnx(*linear_weights(4)))
    with_reference(uri, moved, reference(x, linear_weights(4)))
    tampered = register(uri, MODEL, logistic_onnx(*linear_weights(5)), sha256="0" * 64)
    split = {"champion": 0.5, "challenger": 0.5}
    scorer_env = {
        **scorer.env,
        "SCORER_VARIANTS": json.dumps([{"name": n, "alias": n, "weight": w} for n, w in split.items()]),
        "SCORER_SHADOWS": json.dumps([{"name": "shadow", "alias": "shadow", "share": 0.3}]),
        "SCORER_LAG_INTERVAL_S": "1",
        "SCORER_MAX_QUEUE_DELAY_MS": "5",
    }

    feast = FeastSettings(
        project=scorer.env["FEAST_PROJECT"],
        data_dir=Path(scorer.env["FEAST_DATA_DIR"]),
        registry_path=Path(scorer.env["FEAST_REGISTRY_PATH"]),
        online_store="redis",
        redis=redis_settings,
    )
    apply(open_store(feast), feast.data_dir)
    features_port = free_port()
    features_env = {
        **worker_env(kafka, redis_settings, topics, feast, f"dash-features-{uuid.uuid4().hex[:6]}", features_port),
        "FEATURES_LAG_INTERVAL_S": "1",
        "FEATURES_RESTORE_CHECK_INTERVAL_S": "1",
        "FEATURES_RESTORE_VIEWS": "false",  # no offline files here: the real-time snapshots are restored
        "FEATURES_STATE_DIR": str(tmp_path / "features-state"),
    }
    monitor = monitor_env(
        kafka,
        topics,
        uri,
        tmp_path,
        MONITOR_WINDOW_SECONDS="5",
        MONITOR_ALLOWED_LATENESS_S="1",
        MONITOR_MIN_WINDOW_EVENTS="20",
        MONITOR_LABEL_MATURITY_S="2",
        MONITOR_AB_MIN_UNITS="20",
        MONITOR_LAG_INTERVAL_S="1",
        MONITOR_EXPECTED_SPLIT=json.dumps(split),
        MONITOR_MAX_EVENT_AHEAD_S="3600",
        MONITOR_STATE_DIR=str(tmp_path / "monitor-state"),
    )
    api_port = free_port()
    targets = {
        "scorer": scorer.metrics_port,
        "features": features_port,
        "monitor": int(monitor["MONITOR_METRICS_PORT"]),
        "api": api_port,
    }

    process = ScorerProcess(scorer_env, tmp_path / "scorer.log")
    with ExitStack() as stack:
        stack.callback(process.stop)
        server = stack.enter_context(prometheus(tmp_path, targets))
        process.start()
        features = stack.enter_context(feature_worker(features_env, tmp_path / "features.log", features_port))
        watcher = stack.enter_context(monitor_worker(monitor, tmp_path / "monitor.log"))
        api = stack.enter_context(
            worker_process(
                "scorer.api",
                api_env(scorer_env, api_port),
                tmp_path / "api.log",
                api_port,
                lambda health: health.get("status") == "ok",
                READY_TIMEOUT_S,
            )
        )
        workers: list[WorkerProcess] = [features, watcher, api]

        def logs() -> str:
            return (
                "\n".join(f"--- {w.log.name}\n{w.tail()[-3000:]}" for w in workers) + f"\n--- scorer\n{process.tail()}"
            )

        wait_until(lambda: http_status(scorer.metrics_port, "/readyz") == 200, READY_TIMEOUT_S, "the scorer", logs)
        print(f"services ready {time.monotonic() - began:.0f} s into the test")

        traffic = Traffic(kafka, topics, f"http://127.0.0.1:{api_port}", tampered)
        traffic.start()
        stack.callback(traffic.halt)
        flowing = time.monotonic()

        # A hot reload and a failed one (the shadow's alias), and the online store emptied once.
        wait_until(lambda: traffic.produced > 5 * TX_PER_S, 30, "traffic", logs)
        set_alias(uri, "shadow", moved)
        wait_until(
            lambda: server.query('streamscore_scorer_model_swaps_total{variant="shadow"} > 0') != [],
            30,
            "the shadow's swap",
            logs,
        )
        set_alias(uri, "shadow", tampered)
        deleted = empty_online_store(redis_settings, feast.project)
        print(f"online store emptied ({deleted} keys) {time.monotonic() - flowing:.0f} s after the traffic began")

        # Every panel's queries until each returns series (windows close, looks come, rates fill in).
        results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        while True:
            for worker in workers:
                worker.check_alive()
            assert process.alive(), process.tail()
            assert not traffic.errors, traffic.errors
            for q in queries:
                results[q.board, q.panel, q.ref] = panel_query(server, q)
            empty = [q for q in queries if not results[q.board, q.panel, q.ref]]
            if not empty or time.monotonic() - flowing > SETTLE_TIMEOUT_S:
                break
            time.sleep(2)
        settled_s = time.monotonic() - flowing
        assert not empty, "panels whose query returns nothing:\n" + "\n".join(f"  {q.name}: {q.expr}" for q in empty)
        print(f"every panel has data {settled_s:.0f} s after the traffic began")

        # The values, once the rate windows hold only steady traffic and the restore and the failed reload are in.
        wait_until(
            lambda: time.monotonic() - flowing > STEADY_AFTER_S and all(server.query(e) for e in EVENTS),
            SETTLE_TIMEOUT_S,
            f"{EVENTS} in Prometheus",
            logs,
        )
        problems = []
        for q in queries:
            series = panel_query(server, q)
            results[q.board, q.panel, q.ref] = series
            found = check_by_unit(q, series, server)
            check = SPECIFIC.get((q.board, q.panel, q.ref))
            if check is not None:
                try:
                    check(series)
                except AssertionError as exc:
                    found.append(str(exc))
            problems += [f"  {q.name}: {p}\n    {q.expr}" for p in found]
        assert not problems, "panels with values that make no sense:\n" + "\n".join(problems)
        cross_checks(results)

        # The rules: every one loaded and evaluated without error, every series it reads there, some states known.
        exprs = rule_exprs()
        rules = {r["name"]: r for g in server.get("/api/v1/rules")["groups"] for r in g["rules"]}
        assert rules.keys() == exprs.keys()
        for name, rule in rules.items():
            assert rule["health"] == "ok" and not rule.get("lastError"), f"{name}: {rule}"
            assert not rule["lastEvaluation"].startswith("0001"), f"{name} was never evaluated"
        missing = [(name, s) for name, expr in exprs.items() for s in selectors(expr) if not server.query(s)]
        assert not missing, f"series the rules read that no service exports: {missing}"
        for name in QUIET:
            assert rules[name]["state"] == "inactive", f"{name} is {rules[name]['state']}: {rules[name]['alerts']}"
        for name, labels in FIRING.items():
            alerts = [a for a in rules[name]["alerts"] if labels.items() <= a["labels"].items()]
            assert alerts and alerts[0]["state"] == "firing", f"{name}: {rules[name]}"
        states = {name: rule["state"] for name, rule in rules.items() if rule["state"] != "inactive"}

        # Scored ≈ produced, exactly, once the traffic stops and the scorer catches up: Prometheus's counts are the
        # producer's.
        traffic.stop()
        produced, defects = traffic.produced, traffic.defects

        def caught_up() -> bool:
            counted = ("events_in_total", 'scored_total{kind="live"}', "dead_letters_total")
            counts = [server.query(f"sum(streamscore_scorer_{m})") for m in counted]
            return [values(c) for c in counts] == [[produced], [produced - defects], [defects]]

        wait_until(caught_up, 60, f"the scorer's counts in Prometheus to reach {produced} ({defects} defective)", logs)

        def api_answers() -> dict[tuple[str, int], float]:
            series = server.query('sum by (route, status) (streamscore_api_requests_total{route=~"/v1/.*"})')
            return {(s["metric"]["route"], int(s["metric"]["status"])): float(s["value"][1]) for s in series}

        deadline = time.monotonic() + 10  # a scrape or two after the last request
        while api_answers() != traffic.answers and time.monotonic() < deadline:
            time.sleep(0.5)
        assert api_answers() == traffic.answers, "Prometheus's counts of API answers are not the client's"

    print(
        f"{produced} transactions ({defects} defective), API answers {traffic.answers}; alerts not inactive: "
        f"{states}; {len(rules)} rules, {len(queries)} queries checked; test {time.monotonic() - began:.0f} s"
    )


def reference(x: np.ndarray[Any, np.dtype[np.float64]], model: tuple[Any, float]) -> dict[str, Any]:
    weights, bias = model
    return reference_document(x, expected_scores(x.astype(np.float32), weights, bias), seed=5)
