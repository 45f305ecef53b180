"""deploy/grafana: the committed dashboards are what deploy/grafana/dashboards.py builds, their panels sit on the
grid without overlapping and read the provisioned Prometheus data source, and the provisioning files point where
the dashboards are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.grafana import dashboards

GRAFANA = Path(dashboards.__file__).resolve().parent
PROVISIONING = GRAFANA / "provisioning"


def committed() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(dashboards.OUTPUT_DIR.glob("*.json"))}


def test_the_committed_dashboards_are_the_generated_ones() -> None:
    built = dashboards.build_all()
    on_disk = {path.name: path.read_text() for path in sorted(dashboards.OUTPUT_DIR.glob("*.json"))}
    assert sorted(on_disk) == sorted(built) == ["api.json", "monitor.json", "pipeline.json"]
    for name, text in built.items():
        assert on_disk[name] == text, f"{name} differs from the code: run `python -m deploy.grafana.dashboards`"


def test_the_panel_table_in_the_docs_is_the_generated_one() -> None:
    table = dashboards.panel_table()
    assert dashboards.PANEL_TABLE.read_text() == table, "run `python -m deploy.grafana.dashboards`"
    queries = [t["expr"] for board in committed().values() for p in board["panels"] for t in p.get("targets", [])]
    assert len(queries) > 100
    assert all(f"`{expr.replace('|', chr(92) + '|')}`" in table for expr in queries), "every query, once per target"


def test_main_writes_the_dashboards(tmp_path: Path) -> None:
    assert dashboards.main([str(tmp_path)]) == 0
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == dashboards.build_all()


@pytest.mark.parametrize("name", ["pipeline.json", "monitor.json", "api.json"])
def test_panels_fill_the_grid_without_overlapping_and_query_the_provisioned_prometheus(name: str) -> None:
    board = committed()[name]
    assert board["uid"].startswith("streamscore-") and "streamscore" in board["tags"]
    taken: set[tuple[int, int]] = set()
    ids: set[int] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']} sticks out of the grid"
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        assert panel["id"] not in ids, f"panel id {panel['id']} twice"
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": dashboards.DATASOURCE_UID}, panel["title"]
        assert panel["title"] and panel["description"], panel
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), f"{panel['title']}: refIds {refs}"
        assert all(target["expr"].strip() for target in panel["targets"])


def test_the_pipeline_shows_what_the_operators_asked_for() -> None:
    exprs = " ".join(t["expr"] for p in committed()["pipeline.json"]["panels"] for t in p.get("targets", []))
    for metric in (
        "streamscore_scorer_events_in_total",
        "streamscore_scorer_scored_total",
        "streamscore_scorer_dead_letters_total",
        "streamscore_scorer_decisions_total",
        "streamscore_scorer_end_to_end_latency_seconds_bucket",
        "streamscore_scorer_queue_latency_seconds_bucket",
        "streamscore_scorer_feature_latency_seconds_bucket",
        "streamscore_scorer_inference_latency_seconds_bucket",
        "streamscore_scorer_batch_size_bucket",
        "streamscore_scorer_consumer_lag_offsets",
        "streamscore_scorer_consumer_lag_seconds",
        "streamscore_scorer_transaction_aborts_total",
        "streamscore_scorer_producer_rebuilds_total",
        "streamscore_scorer_infra_retries_total",
        "streamscore_scorer_model_info",
        "streamscore_features_freshness_seconds_bucket",
        "streamscore_scorer_feature_status_total",
        "kafka_consumergroup_lag_sum",
    ):
        assert metric in exprs, metric


def test_provisioning_names_the_data_source_and_the_dashboards_folder() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(s["uid"], s["type"], s["url"]) for s in sources] == [
        (dashboards.DATASOURCE_UID, "prometheus", "http://prometheus:9090")
    ]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "streamscore.yml").read_text())["providers"]
    assert [(p["type"], p["options"]["path"]) for p in providers] == [
        ("file", "/var/lib/grafana/dashboards/streamscore")
    ]
