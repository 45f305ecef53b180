"""streamscore's Grafana dashboards as code: Pipeline, Monitor and API.

    python -m deploy.grafana.dashboards          # rewrites deploy/grafana/dashboards/*.json

Grafana loads the JSON through the provisioning files beside it (deploy/grafana/provisioning/). The JSON is
committed so that Grafana needs neither Python nor this module; `tests/unit/deploy/test_grafana.py` fails when it
differs from what this module builds, and `tests/unit/deploy/test_metric_names.py` when a query names a metric that
no service exports.

The panels are plain dicts of Grafana's dashboard JSON model (schemaVersion 41, Grafana 11.6): a handful of helpers
below, no dependency. When written, their output was checked equal, key for key, to what grafana-foundation-sdk
(Grafana's builders generated from its schemas, the 11.6 build) produced for the same dashboards; why the SDK is
not a dependency: docs/operations.md, "Dashboards and alerts".

Every query reads only the services' own metrics (scorer/metrics.py, scorer/api/metrics.py,
stream_processors/metrics.py, monitor/metrics.py, streamscore/health.py) and, for the broker row, kafka_exporter's.
Gauges every replica publishes alike (the group's lag) are aggregated with `max`, counters with `sum`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT_DIR = HERE / "dashboards"
DATASOURCE_UID = "prometheus"
"""The uid the provisioned data source has (provisioning/datasources/prometheus.yml)."""
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
RATE = "$__rate_interval"
E2E_OBJECTIVE_S = 0.05
"""The scorer's objective: p99 end-to-end latency at or under 50 ms (docs/benchmarks.md); a bucket bound."""
PSI_LARGE = 0.2
"""MONITOR_PSI_THRESHOLD's default: a shift at or above it is large."""
SRM_ALPHA = 0.001
"""MONITOR_SRM_ALPHA's default."""
KAFKA_EXPORTER_NOTE = "Source: kafka_exporter (not a streamscore service)."
"""Ends the description of every panel that reads kafka_exporter's metrics, so an operator knows what feeds it;
tests/integration/test_dashboards.py runs the streamscore services but no kafka_exporter (none can be installed on
our machines) and leaves exactly these panels out by this note."""
GRID_WIDTH = 24
SCHEMA_VERSION = 41
"""Grafana's dashboard JSON schema of 11.6 (Grafana migrates an older version on load, never a newer one)."""

Query = tuple[str, str]
"""(PromQL, legend)."""


# ---- queries ----------------------------------------------------------------------------------------------------


def rate(metric: str, by: str = "", selector: str = "", window: str = RATE) -> str:
    """Per-second rate of a counter summed over instances (and `by` these labels)."""
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({metric}{selector}[{window}]))"


def increase(metric: str, window: str, by: str = "", selector: str = "") -> str:
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(increase({metric}{selector}[{window}]))"


def share(counter: str, by: str, selector: str, total_by: str) -> str:
    """Over the last 5 minutes: the part of a counter's rate that `selector` picks, over its whole rate (per
    `total_by`, the part's `by` labels matched to it). Ungrouped, a part with no series (no 5xx yet: the label value
    never counted) is 0, so the panel reads 0 %, not "No data"."""
    part = rate(counter, by, selector, "5m")
    whole = rate(counter, total_by, window="5m")
    return f"{part} / on ({total_by}) group_left {whole}" if total_by else f"({part} or vector(0)) / {whole}"


def quantile(q: float, histogram: str, by: str = "", selector: str = "", at_least: float | None = None) -> str:
    """`at_least`: the smallest value the histogram can hold, when above 0. histogram_quantile takes the lowest
    bucket to start at 0, so batches of one record (bucket le="1") would read as a p50 of 0.5."""
    labels = f"{by}, le" if by else "le"
    expr = f"histogram_quantile({q:g}, sum by ({labels}) (rate({histogram}_bucket{selector}[{RATE}])))"
    return expr if at_least is None else f"clamp_min({expr}, {at_least:g})"


def quantiles(
    histogram: str, legend: str, by: str = "", selector: str = "", at_least: float | None = None
) -> list[Query]:
    """p50 and p99 of a histogram; `legend` is prefixed to "p50"/"p99"."""
    prefix = f"{legend} " if legend else ""
    return [(quantile(q, histogram, by, selector, at_least), f"{prefix}p{round(q * 100)}") for q in (0.5, 0.99)]


def mean(histogram: str, legend: str) -> Query:
    return (f"sum(rate({histogram}_sum[{RATE}])) / sum(rate({histogram}_count[{RATE}]))", legend)


def target(expr: str, legend: str, ref: int, *, instant: bool = False) -> dict[str, Any]:
    query: dict[str, Any] = {"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + ref)}
    if instant:
        query |= {"instant": True, "range": False, "format": "table"}
    return query


# ---- panels -----------------------------------------------------------------------------------------------------

Panel = dict[str, Any]
"""One panel of the dashboard JSON model (schemaVersion 41, Grafana 11.6 and later)."""


def panel(
    kind: str, title: str, description: str, queries: Sequence[Query], span: int, height: int, **defaults: Any
) -> Panel:
    """A panel of `kind` (timeseries, stat, state-timeline) reading `queries`; `defaults`: its fieldConfig
    defaults. Its position on the grid is set by `Board.row`."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, legend, i) for i, (expr, legend) in enumerate(queries)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": height, "w": span, "x": 0, "y": 0},
        "repeatDirection": "h",
        "transparent": False,
    }


def thresholds(red_at: float | None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_at is not None:
        steps.append({"color": "red", "value": red_at})
    return {"mode": "absolute", "steps": steps}


def series(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    span: int = 12,
    height: int = 8,
    log: bool = False,
    line_at: float | None = None,
    dashed: str | None = None,
) -> Panel:
    """A time series panel. `line_at`: a red threshold line (an objective); `dashed`: a regex of series drawn
    dashed (the bounds of an interval)."""
    defaults: dict[str, Any] = {"unit": unit}
    custom: dict[str, Any] = {}
    if log:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    elif unit != "none":
        defaults["min"] = 0
    if line_at is not None:
        defaults["thresholds"] = thresholds(line_at)
        custom["thresholdsStyle"] = {"mode": "line"}
    if custom:
        defaults["custom"] = custom
    out = panel("timeseries", title, description, queries, span, height, **defaults)
    out["options"] = {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    if dashed is not None:
        out["fieldConfig"]["overrides"].append(
            {
                "matcher": {"id": "byRegexp", "options": dashed},
                "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
            }
        )
    return out


def single(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    span: int = 6,
    height: int = 4,
    red_at: float | None = None,
) -> Panel:
    """One number (the last value); `red_at`: the value from which it turns red."""
    return panel("stat", title, description, [(expr, "")], span, height, unit=unit, thresholds=thresholds(red_at))


def states(
    title: str,
    description: str,
    queries: Sequence[Query],
    mapping: dict[str, tuple[str, str]],
    *,
    span: int = 12,
    height: int = 8,
) -> Panel:
    """A state timeline of a gauge that takes few values; `mapping`: value -> (text, color)."""
    options = {value: {"text": text, "color": color} for value, (text, color) in mapping.items()}
    return panel(
        "state-timeline", title, description, queries, span, height, mappings=[{"type": "value", "options": options}]
    )


def info_table(title: str, description: str, expr: str, *, span: int = GRID_WIDTH, height: int = 6) -> Panel:
    """The labels of an `_info` metric as a table (one instant query), the sample's time and value hidden."""
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, "", 0, instant=True)],
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}],
        "gridPos": {"h": height, "w": span, "x": 0, "y": 0},
        "repeatDirection": "h",
        "transparent": False,
    }


def from_kafka_exporter(item: Panel) -> Panel:
    """A panel that reads kafka_exporter's metrics, its description saying so (KAFKA_EXPORTER_NOTE)."""
    item["description"] = f"{item['description']}. {KAFKA_EXPORTER_NOTE}"
    return item


READY = {"0": ("not ready", "red"), "1": ("ready", "green")}


# ---- layout -----------------------------------------------------------------------------------------------------


class Board:
    """A dashboard filled row by row, left to right: a panel goes right of the previous one, or below the line
    when it is full. Every row's panels must fill whole lines of the grid (24 units)."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid = uid
        self.document: dict[str, Any] = {
            "uid": uid,
            "title": title,
            "description": description,
            "tags": ["streamscore"],
            "editable": True,
            "time": {"from": "now-1h", "to": "now"},
            "refresh": "30s",
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,  # shared crosshair
            "schemaVersion": SCHEMA_VERSION,
            "templating": {"list": []},
            # Grafana's own built-in query (alert state changes, annotations made by hand): spelled out, as
            # Grafana would add it on load, so the file is what Grafana shows.
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "links": [
                {
                    "title": "streamscore",
                    "type": "dashboards",
                    "tags": ["streamscore"],
                    "asDropdown": True,
                    "keepTime": True,
                    "includeVars": False,
                    "targetBlank": False,
                    "icon": "",
                    "tooltip": "",
                }
            ],
            "panels": [],
        }
        self._id = 0
        self._x = 0
        self._y = 0
        self._height = 0

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def row(self, title: str, *panels: Panel) -> None:
        assert self._x == 0, f"{self.uid}: the row before {title!r} does not fill its last line"
        self._y += self._height
        self.document["panels"].append(
            {
                "type": "row",
                "title": title,
                "id": self._next_id(),
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self._y},
            }
        )
        self._y, self._height = self._y + 1, 0
        for item in panels:
            pos = item["gridPos"]
            assert self._x + pos["w"] <= GRID_WIDTH, f"{self.uid}: {item['title']!r} does not fit its line"
            pos["x"], pos["y"] = self._x, self._y
            item["id"] = self._next_id()
            self.document["panels"].append(item)
            self._x += pos["w"]
            self._height = max(self._height, pos["h"])
            if self._x == GRID_WIDTH:
                self._x, self._y, self._height = 0, self._y + self._height, 0
        assert self._x == 0, f"{self.uid}: row {title!r} does not fill its last line"

    def to_json(self) -> dict[str, Any]:
        return self.document


# ---- Pipeline -----------------------------------------------------------------------------------------------------


def pipeline() -> Board:
    s = "streamscore_scorer"
    f = "streamscore_features"
    board = Board(
        "streamscore-pipeline",
        "streamscore — pipeline",
        "Transactions in, scores and dead letters out: the scorer's throughput, decisions, latency, lag, faults and "
        "models; the feature processor that feeds it; the broker as kafka_exporter sees it.",
    )
    board.row(
        "Overview",
        single("Events in", "Records consumed from transactions, per second", rate(f"{s}_events_in_total"), unit="ops"),
        single(
            "Dead-lettered share",
            "Dead letters / records consumed, last 5 minutes",
            f"{rate(f'{s}_dead_letters_total', window='5m')} / {rate(f'{s}_events_in_total', window='5m')}",
            unit="percentunit",
            red_at=0.01,
        ),
        single(
            "End-to-end p99",
            "Record appended to transactions → its score committed; objective 50 ms",
            quantile(0.99, f"{s}_end_to_end_latency_seconds"),
            unit="s",
            red_at=E2E_OBJECTIVE_S,
        ),
        single(
            "Oldest unscored record",
            "Largest lag in seconds over the transactions partitions (the scorer group's view)",
            f"max({s}_consumer_lag_seconds)",
            unit="s",
            red_at=60,
        ),
    )
    board.row(
        "Throughput",
        series(
            "Events per second",
            "Consumed, scored (live and shadow, per variant) and dead-lettered, committed per second",
            [
                (rate(f"{s}_events_in_total"), "in"),
                (rate(f"{s}_scored_total", "variant, kind"), "scored {{variant}} ({{kind}})"),
                (rate(f"{s}_dead_letters_total"), "dead-lettered"),
            ],
            unit="ops",
        ),
        series(
            "Dead letters by reason",
            "Records committed to the dead-letter topic per second (streamscore dlq inspect shows them)",
            [(rate(f"{s}_dead_letters_total", "reason"), "{{reason}}")],
            unit="ops",
        ),
    )
    board.row(
        "Decisions",
        series(
            "Decisions per second by variant and version",
            "Scores committed per second by decision (approve / review / decline), variant and model version",
            [
                (
                    rate(f"{s}_decisions_total", "variant, model_version, decision"),
                    "{{variant}} v{{model_version}} {{decision}}",
                )
            ],
            unit="ops",
        ),
        series(
            "Review and decline share by variant and version",
            "Share of a variant-version's scores that are reviews or declines, last 5 minutes",
            [
                (
                    share(
                        f"{s}_decisions_total",
                        "variant, model_version, decision",
                        '{decision!="approve"}',
                        "variant, model_version",
                    ),
                    "{{variant}} v{{model_version}} {{decision}}",
                )
            ],
            unit="percentunit",
        ),
    )
    board.row(
        "Latency",
        series(
            "End-to-end latency",
            "Record timestamp on transactions (broker append time) → its score committed; red line: the 50 ms "
            "objective for p99",
            quantiles(f"{s}_end_to_end_latency_seconds", ""),
            unit="s",
            line_at=E2E_OBJECTIVE_S,
        ),
        series(
            "Records over the 50 ms objective",
            "Share of records whose end-to-end latency exceeded 50 ms (p99 meets the objective while this stays "
            "at or under 1 %)",
            [
                (
                    f'1 - sum(rate({s}_end_to_end_latency_seconds_bucket{{le="{E2E_OBJECTIVE_S:g}"}}[{RATE}])) / '
                    f"sum(rate({s}_end_to_end_latency_seconds_count[{RATE}]))",
                    "over 50 ms",
                )
            ],
            unit="percentunit",
            line_at=0.01,
        ),
        series(
            "Stage latency p99",
            "Per batch: queue (first record to the batch closing), feature read, inference, produce + commit",
            [
                (quantile(0.99, f"{s}_{stage}_latency_seconds"), stage)
                for stage in ("queue", "feature", "inference", "commit")
            ],
            unit="s",
        ),
        series(
            "Stage latency p50",
            "Per batch, as on the left, at the median",
            [
                (quantile(0.5, f"{s}_{stage}_latency_seconds"), stage)
                for stage in ("queue", "feature", "inference", "commit")
            ],
            unit="s",
        ),
        series(
            "Batch size",
            "Records per batch (SCORER_MAX_BATCH_SIZE bounds it)",
            [*quantiles(f"{s}_batch_size", "", at_least=1), mean(f"{s}_batch_size", "mean")],
        ),
        series("Batches per second", "Batches committed per second", [(rate(f"{s}_batches_total"), "batches")]),
    )
    board.row(
        "Consumer lag (scorer group)",
        series(
            "Lag in records per partition",
            "Records the group has not committed, per transactions partition (the group's view: the same from "
            "every instance, whoever holds the partition)",
            [(f"max by (topic, partition) ({s}_consumer_lag_offsets)", "{{topic}}[{{partition}}]")],
        ),
        series(
            "Lag in seconds per partition",
            "Age of the oldest record the group has not committed, per partition (0 when caught up)",
            [(f"max by (topic, partition) ({s}_consumer_lag_seconds)", "{{topic}}[{{partition}}]")],
            unit="s",
            line_at=60,
        ),
        series(
            "Partitions held per instance",
            "Transactions partitions each scorer instance holds",
            [(f"{s}_assigned_partitions", "{{instance}}")],
            span=8,
        ),
        states(
            "Scorer instances: loop and readiness",
            "up: the scoring loop runs; ready: /readyz passes",
            [(f"{s}_up", "{{instance}} loop"), (f"{s}_ready", "{{instance}} ready")],
            {"0": ("down / not ready", "red"), "1": ("up / ready", "green")},
            span=8,
        ),
        series(
            "Seconds since the last commit",
            "Per instance: now minus its last successful transaction commit",
            [(f"time() - ({s}_last_commit_timestamp_seconds > 0)", "{{instance}}")],
            unit="s",
            span=8,
        ),
    )
    board.row(
        "Faults",
        series(
            "Transaction aborts by cause (per 5 min)",
            "Transactions aborted and rewound: abortable, error, fatal, delivery",
            [(increase(f"{s}_transaction_aborts_total", "5m", "cause"), "{{cause}}")],
            span=8,
        ),
        series(
            "Producer rebuilds and shadow failures (per 5 min)",
            "Transactional producers rebuilt after a fatal error; shadow inferences that failed",
            [
                (increase(f"{s}_producer_rebuilds_total", "5m"), "producer rebuilds"),
                (increase(f"{s}_shadow_failures_total", "5m"), "shadow failures"),
            ],
            span=8,
        ),
        series(
            "Infrastructure retries by dependency (per 5 min)",
            "Batches retried after a feature-store or broker failure (never dead-lettered)",
            [(increase(f"{s}_infra_retries_total", "5m", "dependency"), "{{dependency}}")],
            span=8,
        ),
    )
    board.row(
        "Models",
        info_table(
            "Model versions serving",
            "What each variant serves now (streamscore_scorer_model_info), one row per instance",
            f"max by (instance, variant, kind, alias, weight, model_name, model_version, experiment_id, providers, "
            f"thresholds, review_threshold, decline_threshold) ({s}_model_info)",
        ),
        series(
            "Version per variant",
            "Instances serving each variant's version (a change of version is an alias move applied)",
            [(f"count by (variant, model_version) ({s}_model_info)", "{{variant}} v{{model_version}}")],
            span=8,
        ),
        series(
            "Hot reloads (per 15 min)",
            "Alias moves applied, and new versions that failed to load (the previous one keeps serving)",
            [
                (increase(f"{s}_model_swaps_total", "15m", "variant"), "{{variant}} swaps"),
                (increase(f"{s}_model_reload_failures_total", "15m", "variant"), "{{variant}} reload failures"),
            ],
            span=8,
        ),
        series(
            "Model load time",
            "Load and warm-up time of the version each variant serves",
            [(f"max by (variant) ({s}_model_load_seconds)", "{{variant}}")],
            unit="s",
            span=8,
        ),
    )
    board.row(
        "Features",
        series(
            "Feature freshness",
            "At each push: now minus the event time of the batch's newest event (p50, p99); and the age of the "
            "newest event whose snapshot reached the online store",
            [
                *quantiles(f"{f}_freshness_seconds", "at push"),
                (f"time() - max({f}_last_pushed_event_timestamp_seconds)", "newest pushed event's age"),
            ],
            unit="s",
            span=8,
        ),
        series(
            "Scores with missing or default features",
            "Share of each variant's scores whose feature_status is missing (no account snapshot nor profile) or "
            "default (another view had no row), last 5 minutes",
            [
                (
                    share(f"{s}_feature_status_total", "variant, status", '{status!="ok"}', "variant"),
                    "{{variant}} {{status}}",
                )
            ],
            unit="percentunit",
            span=8,
        ),
        series(
            "Feature processor: events",
            "Transactions folded into states, skipped (duplicate, late, invalid) and dead-lettered to features.dlq",
            [
                (rate(f"{f}_events_processed_total"), "processed"),
                (rate(f"{f}_events_skipped_total", "reason"), "skipped {{reason}}"),
                (rate(f"{f}_dead_letters_total", "reason"), "dead-lettered {{reason}}"),
            ],
            unit="ops",
            span=8,
        ),
        series(
            "Online store pushes",
            "Batched writes per second, snapshots written per second, failed writes (kept queued) per second",
            [
                (rate(f"{f}_push_batches_total"), "batches"),
                (rate(f"{f}_pushed_rows_total"), "rows"),
                (rate(f"{f}_push_failures_total"), "failures"),
            ],
            unit="ops",
            span=8,
        ),
        series(
            "Push latency",
            "One batched write to the online store",
            quantiles(f"{f}_push_latency_seconds", ""),
            unit="s",
            span=8,
        ),
        series(
            "Queued",
            "Snapshots waiting for the next push; consumed events whose offsets wait for it",
            [(f"sum({f}_pending_rows)", "snapshots"), (f"sum({f}_pending_events)", "events")],
            span=8,
        ),
        series(
            "Feature processor lag in records",
            "Records its group has not committed, per transactions partition",
            [(f"max by (topic, partition) ({f}_consumer_lag_offsets)", "{{topic}}[{{partition}}]")],
            span=8,
        ),
        series(
            "Feature processor lag in seconds",
            "Age of the oldest record its group has not committed, per partition",
            [(f"max by (topic, partition) ({f}_consumer_lag_seconds)", "{{topic}}[{{partition}}]")],
            unit="s",
            span=8,
        ),
        states(
            "Feature processor readiness",
            "1 while /readyz passes, per worker",
            [(f"{f}_ready", "{{instance}}")],
            READY,
            span=8,
        ),
        series(
            "Online store restores (per hour)",
            "An emptied online store found and restored; snapshots pushed again; account states reset",
            [
                (increase(f"{f}_online_store_restores_total", "1h"), "restores"),
                (increase(f"{f}_online_store_restored_rows_total", "1h"), "snapshots pushed again"),
                (increase(f"{f}_state_resets_total", "1h"), "state resets"),
            ],
        ),
        series(
            "Restore duration by step (mean, last hour)",
            "views: materializing the batch views; snapshots: re-pushing every account",
            [
                (
                    f"{increase(f'{f}_online_store_restore_seconds_sum', '1h', 'step')} / "
                    f"{increase(f'{f}_online_store_restore_seconds_count', '1h', 'step')}",
                    "{{step}}",
                )
            ],
            unit="s",
        ),
    )
    board.row(
        "Kafka (kafka_exporter)",
        *map(
            from_kafka_exporter,
            [
                single("Brokers", "Brokers in the cluster", "max(kafka_brokers)", span=4),
                single(
                    "Under-replicated partitions",
                    "Partitions with fewer in-sync replicas than replicas",
                    "sum(kafka_topic_partition_under_replicated_partition)",
                    span=4,
                    red_at=1,
                ),
                series(
                    "Consumer group members",
                    "Members per consumer group",
                    [("max by (consumergroup) (kafka_consumergroup_members)", "{{consumergroup}}")],
                    span=8,
                ),
                series(
                    "Records appended per topic",
                    "Log end offsets' rate per topic (transaction markers included)",
                    [
                        (
                            f'sum by (topic) (rate(kafka_topic_partition_current_offset{{topic!~"__.*"}}[{RATE}]))',
                            "{{topic}}",
                        )
                    ],
                    unit="ops",
                    span=8,
                ),
                series(
                    "Consumer group lag (broker view)",
                    "kafka_exporter's lag per group and topic: log end minus committed offset (counts transaction "
                    "markers, so a caught-up exactly-once group may show 1 per partition; streamscore lag does not)",
                    [("max by (consumergroup, topic) (kafka_consumergroup_lag_sum)", "{{consumergroup}} {{topic}}")],
                    span=GRID_WIDTH,
                ),
            ],
        ),
    )
    return board


# ---- Monitor ------------------------------------------------------------------------------------------------------


def monitor() -> Board:
    m = "streamscore_monitor"
    ab = "experiment, variant"
    board = Board(
        "streamscore-monitor",
        "streamscore — monitor",
        "Drift of every model input and score against the model's reference, alerts, and the A/B comparison "
        "with its always-valid interval, verdict and sample-ratio check; the monitor's own health.",
    )
    board.row(
        "Overview",
        single(
            "Inputs drifted",
            "Series that drifted in the last evaluated window",
            f"sum(max by (feature) ({m}_drift_drifted))",
            red_at=1,
        ),
        single(
            "Last window end",
            "End of the last evaluated drift window (its event-time clock)",
            f"max({m}_drift_window_end_timestamp_seconds) * 1000",
            unit="dateTimeAsIso",
        ),
        single("Open windows", "Drift windows open in the workers' partitions", f"sum({m}_open_windows)"),
        single(
            "Alerts, last 24 h",
            "Alerts published to monitor.alerts (drift, A/B verdict, sample-ratio mismatch)",
            f"round({increase(f'{m}_alerts_total', '24h')})",
            red_at=1,
        ),
    )
    board.row(
        "Drift",
        series(
            "PSI per input",
            "Population stability index of each series in the last evaluated window (red line: large shift, "
            "MONITOR_PSI_THRESHOLD's default)",
            [(f"max by (feature) ({m}_drift_psi)", "{{feature}}")],
            line_at=PSI_LARGE,
        ),
        series(
            "Test p-value per input",
            "Two-sample test p-value of each series in the last window (KS, χ² or Fisher); the alarm threshold "
            "comes from the multiple-testing correction of the window",
            [(f"max by (feature) ({m}_drift_p_value)", "{{feature}}")],
            unit="none",
            log=True,
        ),
        states(
            "Drift decision per input",
            "1 when the last evaluated window declared the series drifted",
            [(f"max by (feature) ({m}_drift_drifted)", "{{feature}}")],
            {"0": ("no drift", "green"), "1": ("drift", "red")},
            span=GRID_WIDTH,
            height=10,
        ),
        series(
            "Test statistic per input",
            "KS gap, χ² statistic or binomial share of the last window",
            [(f"max by (feature) ({m}_drift_statistic)", "{{feature}}")],
            unit="none",
        ),
        series(
            "Windows evaluated and scores left out (per hour)",
            "Windows merged and evaluated; scores left out of windows (late, no_reference, version_changed); "
            "partition states measured against another champion version",
            [
                (increase(f"{m}_windows_evaluated_total", "1h"), "windows evaluated"),
                (increase(f"{m}_drift_skipped_total", "1h", "reason"), "skipped {{reason}}"),
                (increase(f"{m}_drift_dropped_feature_states_total", "1h"), "dropped partition states"),
            ],
        ),
    )
    board.row(
        "Alerts",
        series(
            "Alerts published by kind (per hour)",
            "drift, ab_verdict, sample_ratio_mismatch (the messages are on monitor.alerts and in the log)",
            [(increase(f"{m}_alerts_total", "1h", "kind"), "{{kind}}")],
            span=GRID_WIDTH,
        ),
    )
    board.row(
        "A/B",
        series(
            "Difference from the champion, with its always-valid interval",
            "Variant minus champion on the primary metric at the last look; dashed: the always-valid interval "
            "(an interval that excludes 0 is a decisive verdict)",
            [
                (f"max by ({ab}) ({m}_ab_difference)", "{{variant}} difference"),
                (f"max by ({ab}) ({m}_ab_ci_low)", "{{variant}} interval low"),
                (f"max by ({ab}) ({m}_ab_ci_high)", "{{variant}} interval high"),
            ],
            unit="none",
            dashed="/interval/",
        ),
        states(
            "Verdict per variant",
            "Always-valid verdict at the last look: better, inconclusive or worse than the champion",
            [(f"max by ({ab}) ({m}_ab_verdict)", "{{experiment}} {{variant}}")],
            {"-1": ("worse", "red"), "0": ("inconclusive", "text"), "1": ("better", "green")},
        ),
        series(
            "Primary metric per variant",
            "The primary metric's rate at the last look",
            [(f"max by ({ab}) ({m}_ab_metric_rate)", "{{experiment}} {{variant}}")],
            unit="none",
            span=8,
        ),
        series(
            "Always-valid p-value",
            "Per comparison; never increases",
            [(f"max by ({ab}) ({m}_ab_p_value)", "{{experiment}} {{variant}}")],
            unit="none",
            log=True,
            span=8,
        ),
        series(
            "Matured units per variant",
            "Unit variants counted at the last look (their label maturity window has passed)",
            [(f"max by ({ab}) ({m}_ab_units)", "{{experiment}} {{variant}}")],
            span=8,
        ),
        series(
            "Units maturing",
            "Units counted per second at maturity; units waiting for their label maturity window",
            [(rate(f"{m}_units_counted_total"), "counted per second"), (f"sum({m}_pending_units)", "pending")],
            span=8,
        ),
        series(
            "Sample-ratio check p-value",
            "χ² p-value of the live variants' unit counts against the expected split (red line: MONITOR_SRM_ALPHA's "
            "default)",
            [(f"max by (experiment) ({m}_ab_srm_p_value)", "{{experiment}}")],
            unit="none",
            log=True,
            line_at=SRM_ALPHA,
            span=8,
        ),
        states(
            "Sample-ratio alarm",
            "1 when the traffic split does not match the configuration: no comparison can be trusted",
            [(f"max by (experiment) ({m}_ab_srm_alarm)", "{{experiment}}")],
            {"0": ("split as configured", "green"), "1": ("sample-ratio mismatch", "red")},
            span=8,
        ),
    )
    board.row(
        "Monitor health",
        series(
            "Records consumed by topic and outcome",
            "counted, joined, duplicate, replayed, ignored (API scores), invalid",
            [(rate(f"{m}_records_total", "topic, outcome"), "{{topic}} {{outcome}}")],
            unit="ops",
        ),
        series(
            "Dead letters and infrastructure retries (per 5 min)",
            "Records written to monitor.dlq by reason; retries by dependency (registry, broker)",
            [
                (increase(f"{m}_dead_letters_total", "5m", "reason"), "dead letters {{reason}}"),
                (increase(f"{m}_infra_retries_total", "5m", "dependency"), "retries {{dependency}}"),
            ],
        ),
        series(
            "Lag in records per partition",
            "Records the monitor group has not committed (scores, shadow scores, labels, the merge topic)",
            [(f"max by (topic, partition) ({m}_consumer_lag_offsets)", "{{topic}}[{{partition}}]")],
            span=8,
        ),
        series(
            "Lag in seconds per partition",
            "Age of the oldest record the monitor group has not committed",
            [(f"max by (topic, partition) ({m}_consumer_lag_seconds)", "{{topic}}[{{partition}}]")],
            unit="s",
            span=8,
        ),
        states(
            "Monitor readiness",
            "1 while /readyz passes, per worker",
            [(f"{m}_ready", "{{instance}}")],
            READY,
            span=8,
        ),
        series(
            "Checkpoint duration",
            "One partition checkpoint (state records to the changelog)",
            quantiles(f"{m}_checkpoint_seconds", ""),
            unit="s",
        ),
        series(
            "Seconds since the last checkpoint",
            "Per worker: now minus its last completed checkpoint",
            [(f"time() - ({m}_last_checkpoint_timestamp_seconds > 0)", "{{instance}}")],
            unit="s",
        ),
    )
    return board


# ---- API ----------------------------------------------------------------------------------------------------------


def api() -> Board:
    a = "streamscore_api"
    board = Board(
        "streamscore-api",
        "streamscore — API",
        "The ad-hoc scoring API: requests by route and status, latency, refusals, request batching and the audit "
        "trail to Kafka.",
    )
    board.row(
        "Overview",
        single("Requests", "Requests per second, every route", rate(f"{a}_requests_total"), unit="reqps"),
        single(
            "p99 latency of /v1/score",
            "Request handling time",
            quantile(0.99, f"{a}_request_latency_seconds", selector='{route="/v1/score"}'),
            unit="s",
        ),
        single(
            "5xx share",
            "Requests answered 5xx, last 5 minutes",
            share(f"{a}_requests_total", "", '{status=~"5.."}', ""),
            unit="percentunit",
            red_at=0.01,
        ),
        single(
            "429 share",
            "Requests refused over their key's rate, last 5 minutes",
            share(f"{a}_requests_total", "", '{status="429"}', ""),
            unit="percentunit",
            red_at=0.1,
        ),
    )
    board.row(
        "Requests",
        series(
            "Requests by route and status",
            "Requests per second",
            [(rate(f"{a}_requests_total", "route, status"), "{{route}} {{status}}")],
            unit="reqps",
        ),
        series(
            "Latency by route",
            "Request handling time, p50 and p99",
            quantiles(f"{a}_request_latency_seconds", "{{route}}", by="route"),
            unit="s",
        ),
        series(
            "Refused: 401, 413, 422, 429",
            "Unauthorized (no or unknown key), payload too large, invalid transaction, rate-limited; per second",
            [(rate(f"{a}_requests_total", "status", selector='{status=~"401|413|422|429"}'), "{{status}}")],
            unit="reqps",
        ),
        series(
            "Server errors",
            "Requests answered 5xx per second (an engine failure is answered 503)",
            [(rate(f"{a}_requests_total", "route, status", selector='{status=~"5.."}'), "{{route}} {{status}}")],
            unit="reqps",
        ),
        series(
            "Refusals by reason",
            "Requests refused, by the error they were answered with",
            [(rate(f"{a}_rejected_total", "reason"), "{{reason}}")],
            unit="reqps",
        ),
        series(
            "Read timeouts by phase",
            "Connections closed because a request's header or body did not arrive in time (per second)",
            [(rate(f"{a}_read_timeouts_total", "phase"), "{{phase}}")],
            unit="ops",
        ),
    )
    board.row(
        "Scoring",
        series(
            "Scored per second by variant",
            "Transactions scored by the API",
            [(rate(f"{a}_scored_total", "variant"), "{{variant}}")],
            unit="ops",
            span=8,
        ),
        series(
            "Batch size",
            "Requests per engine call (the request batcher's micro-batches)",
            [*quantiles(f"{a}_batch_size", "", at_least=1), mean(f"{a}_batch_size", "mean")],
            span=8,
        ),
        series(
            "Audit failures (per 5 min)",
            "Predictions that could not be written to Kafka for audit (the answer went out regardless)",
            [(increase(f"{a}_audit_failures_total", "5m"), "audit failures")],
            span=8,
        ),
        series(
            "Engine stages p99",
            "Per engine call: queue (first request to the batch closing), feature read, inference",
            [(quantile(0.99, f"{a}_{stage}_latency_seconds"), stage) for stage in ("queue", "feature", "inference")],
            unit="s",
        ),
        series(
            "Engine stages p50",
            "Per engine call, at the median",
            [(quantile(0.5, f"{a}_{stage}_latency_seconds"), stage) for stage in ("queue", "feature", "inference")],
            unit="s",
        ),
    )
    return board


BOARDS = {"pipeline": pipeline, "monitor": monitor, "api": api}
"""File stem (dashboards/<stem>.json) → the function that builds it."""


def render(document: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indents, a final newline (stable diffs)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """File name → its JSON text, for every dashboard."""
    return {f"{stem}.json": render(build().to_json()) for stem, build in BOARDS.items()}


PANEL_TABLE = HERE.parents[1] / "docs" / "dashboards.md"
"""Every panel with its queries, for whoever reads the dashboards without Grafana (generated with the JSON)."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def panel_table() -> str:
    """docs/dashboards.md: per dashboard, every panel (its row, title, kind) with each query and its legend."""
    lines = [
        "# Dashboards: every panel and its query",
        "",
        "Generated by `python -m deploy.grafana.dashboards` from `deploy/grafana/dashboards.py`, with the JSON it",
        "writes to `deploy/grafana/dashboards/`; `make test` fails when this page differs from what it builds. The",
        "dashboards, their provisioning and the alert rules: [operations.md](operations.md#dashboards-and-alerts).",
        "`$__rate_interval` is Grafana's rate window (at least four scrape intervals).",
    ]
    for stem, build in BOARDS.items():
        document = build().to_json()
        lines += ["", f"## {document['title']} (`{stem}.json`)", "", "| row | panel | kind | query | legend |"]
        lines.append("|---|---|---|---|---|")
        row = ""
        for item in document["panels"]:
            if item["type"] == "row":
                row = item["title"]
                continue
            for number, query in enumerate(item.get("targets", [])):
                title = _cell(item["title"]) if number == 0 else ""
                kind = item["type"] if number == 0 else ""
                expr, legend = _cell(query["expr"]), _cell(query.get("legendFormat", ""))
                lines.append(f"| {_cell(row) if number == 0 else ''} | {title} | {kind} | `{expr}` | {legend} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = ()) -> int:
    out = Path(argv[0]) if argv else OUTPUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, text in build_all().items():
        (out / name).write_text(text, encoding="utf-8")
    if not argv:
        PANEL_TABLE.write_text(panel_table(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
