"""Every metric a dashboard panel or an alert rule reads is one a service exports, with the labels it selects on.

The names come from the services' metrics classes (what `/metrics` serves), not from a list kept here: renaming a
metric or a label in a metrics.py breaks this test until the dashboards and the rules follow. The PromQL is parsed
roughly — string literals, ranges and grouping clauses taken out, then the identifiers that are not functions,
keywords or label names — which is enough for the expressions we write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.metrics import MonitorMetrics
from scorer.api.metrics import ApiMetrics
from scorer.metrics import ScorerMetrics
from stream_processors.metrics import FeatureMetrics

REPO = Path(__file__).resolve().parents[3]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
RULES = REPO / "deploy" / "prometheus" / "rules"

TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""

KAFKA_EXPORTER: dict[str, frozenset[str]] = {
    name: frozenset(labels)
    for name, labels in {
        # kafka_exporter's metrics (danielqsj/kafka_exporter README, "Metrics"), for the broker row: the names the
        # community Kafka dashboards use too.
        "kafka_brokers": (),
        "kafka_broker_info": ("address", "id"),
        "kafka_topic_partitions": ("topic",),
        "kafka_topic_partition_current_offset": ("topic", "partition"),
        "kafka_topic_partition_oldest_offset": ("topic", "partition"),
        "kafka_topic_partition_in_sync_replica": ("topic", "partition"),
        "kafka_topic_partition_leader": ("topic", "partition"),
        "kafka_topic_partition_leader_is_preferred": ("topic", "partition"),
        "kafka_topic_partition_replicas": ("topic", "partition"),
        "kafka_topic_partition_under_replicated_partition": ("topic", "partition"),
        "kafka_consumergroup_current_offset": ("consumergroup", "topic", "partition"),
        "kafka_consumergroup_current_offset_sum": ("consumergroup", "topic"),
        "kafka_consumergroup_lag": ("consumergroup", "topic", "partition"),
        "kafka_consumergroup_lag_sum": ("consumergroup", "topic"),
        "kafka_consumergroup_members": ("consumergroup",),
    }.items()
}
PROMETHEUS: dict[str, frozenset[str]] = {"up": frozenset()}
"""Series Prometheus itself writes for every target."""

FUNCTIONS_AND_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "inf"}
)
ANY_LABEL = frozenset({"*"})
"""An `_info` metric's labels are its info keys, set where it is filled (scorer.service.publish_models)."""


@dataclass(frozen=True)
class Exported:
    """Series names a service exports, each with its label names (Prometheus' target labels included)."""

    labels: dict[str, frozenset[str]] = field(default_factory=dict)

    def add(self, name: str, labels: frozenset[str]) -> None:
        self.labels[name] = labels | TARGET_LABELS


def exported() -> Exported:
    """What /metrics serves for every metric the four services define: a counter `x` as `x_total`, a histogram as
    `x_bucket` (with `le`), `x_sum` and `x_count`, an info as `x_info`, a gauge as `x`."""
    registry = CollectorRegistry()
    ScorerMetrics(registry)
    ApiMetrics(registry)
    FeatureMetrics(registry)
    MonitorMetrics(registry)
    out = Exported()
    # prometheus_client keeps each metric's name, type and label names on the collector; the registry's map of
    # collectors is the only place that lists them all, labelled metrics without children included.
    for collector in registry._collector_to_names:
        name: str = collector._name  # type: ignore[attr-defined]
        kind: str = collector._type  # type: ignore[attr-defined]
        labels = frozenset(collector._labelnames)  # type: ignore[attr-defined]
        if kind == "counter":
            out.add(f"{name}_total", labels)
        elif kind == "histogram":
            out.add(f"{name}_bucket", labels | {"le"})
            out.add(f"{name}_sum", labels)
            out.add(f"{name}_count", labels)
        elif kind == "info":
            out.add(f"{name}_info", ANY_LABEL)
        elif kind == "gauge":
            out.add(name, labels)
        else:
            raise AssertionError(f"{name}: a {kind} — teach this test how /metrics names its series")
    for name, labels in {**KAFKA_EXPORTER, **PROMETHEUS}.items():
        out.add(name, labels)
    return out


# ---- rough PromQL ---------------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


@dataclass
class Parsed:
    metrics: set[str] = field(default_factory=set)
    matchers: list[tuple[str, str]] = field(default_factory=list)
    """(metric, label) of every label matcher inside a selector's braces."""
    grouping: set[str] = field(default_factory=set)
    """Labels named in by / without / on / ignoring / group_left / group_right."""


def parse(expr: str) -> Parsed:
    out = Parsed()
    text = _STRING.sub('""', expr)
    text = _RANGE.sub("", text)
    for match in _GROUPING.finditer(text):
        out.grouping.update(label.strip() for label in match.group(2).split(",") if label.strip())
    text = _GROUPING.sub(" ", text)

    def selector(match: re.Match[str]) -> str:
        metric = match.group(1) or ""
        out.matchers.extend((metric, label) for label in _MATCHER_LABEL.findall(match.group(2)))
        return f" {metric} "

    text = _SELECTOR.sub(selector, text)
    for name, call in _IDENTIFIER.findall(text):
        if not call and name not in FUNCTIONS_AND_KEYWORDS:
            out.metrics.add(name)
    return out


# ---- the expressions ------------------------------------------------------------------------------------------------


def dashboard_queries() -> Iterator[tuple[str, str]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboards in {DASHBOARDS}"
    for path in files:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]


def rule_expressions() -> Iterator[tuple[str, str]]:
    files = sorted(RULES.glob("*.yml"))
    assert files, f"no rule files in {RULES}"
    for path in files:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]


EXPRESSIONS = [*dashboard_queries(), *rule_expressions()]


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[where for where, _ in EXPRESSIONS])
def test_every_metric_and_label_an_expression_reads_is_exported(where: str, expr: str) -> None:
    known = exported().labels
    parsed = parse(expr)
    assert parsed.metrics, f"{where}: no metric found in {expr!r}"
    unknown = sorted(parsed.metrics - known.keys())
    assert not unknown, f"{where}: no service exports {unknown} (in {expr!r})"
    for metric, label in parsed.matchers:
        labels = known.get(metric, frozenset())
        assert label in labels or labels == ANY_LABEL | TARGET_LABELS, f"{where}: {metric} has no label {label!r}"
    offered = set().union(*(known[m] for m in parsed.metrics))
    if "*" not in offered:
        missing = sorted(parsed.grouping - offered)
        assert not missing, f"{where}: no metric of {sorted(parsed.metrics)} has the labels {missing}"


def test_the_parser_finds_metrics_labels_and_groupings() -> None:
    parsed = parse(
        'histogram_quantile(0.99, sum by (le, route) (rate(streamscore_api_request_latency_seconds_bucket{route="/v1/'
        'score", status=~"5.."}[$__rate_interval]))) / on (route) group_left max(up offset 5m) and on () '
        "time() - max(streamscore_features_last_pushed_event_timestamp_seconds) > 300"
    )
    assert parsed.metrics == {
        "streamscore_api_request_latency_seconds_bucket",
        "up",
        "streamscore_features_last_pushed_event_timestamp_seconds",
    }
    assert parsed.matchers == [
        ("streamscore_api_request_latency_seconds_bucket", "route"),
        ("streamscore_api_request_latency_seconds_bucket", "status"),
    ]
    assert parsed.grouping == {"le", "route"}


def test_a_renamed_metric_or_label_is_caught() -> None:
    known = exported().labels
    assert "streamscore_scorer_events_in_total" in known
    assert "streamscore_scorer_events_in" not in known, "a counter is served as _total"
    assert {"variant", "kind", "model_version", "decision"} <= known["streamscore_scorer_decisions_total"]
    assert "le" in known["streamscore_scorer_end_to_end_latency_seconds_bucket"]
    assert "le" not in known["streamscore_scorer_end_to_end_latency_seconds_count"]
    assert parse("rate(streamscore_scorer_events_total[5m])").metrics - known.keys() == {
        "streamscore_scorer_events_total"
    }
    assert "arm" not in known["streamscore_monitor_ab_verdict"]
