"""deploy/prometheus: promtool checks the scrape config and the rules and runs the rules' unit tests; every alert is
tested firing and not firing, carries its labels and annotations, and has a runbook paragraph in
docs/operations.md; the scrape targets are the Compose services on their settings' default ports.

promtool is Prometheus' own checker (Debian's `prometheus` package ships it; .ci/run installs it). Without it these
tests fail, saying what to install: a check that silently skips would let a broken rule through.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.app_settings import MonitorAppSettings
from scorer.api.settings import ApiSettings
from scorer.settings import ScorerSettings
from stream_processors.settings import StreamProcessorSettings

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
OPERATIONS = REPO / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install it with `apt-get install prometheus` (Debian's package ships promtool)",
            pytrace=False,
        )
    return found


def run_promtool(*args: str) -> None:
    done = subprocess.run([promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


@cache
def alerts() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in out, f"alert {rule['alert']} defined twice"
                    out[rule["alert"]] = rule
    return out


def test_there_are_rules_and_tests() -> None:
    assert RULE_FILES and TEST_FILES
    assert len(alerts()) >= 10


def test_promtool_checks_the_rules() -> None:
    run_promtool("check", "rules", *(str(p.relative_to(REPO)) for p in RULE_FILES))


def test_promtool_checks_the_scrape_config_and_the_rule_files_it_loads() -> None:
    run_promtool("check", "config", str((PROMETHEUS / "prometheus.yml").relative_to(REPO)))


def test_promtool_runs_the_rules_unit_tests() -> None:
    run_promtool("test", "rules", *(str(p.relative_to(REPO)) for p in TEST_FILES))


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../rules/streamscore.yml"] or all(
            (path.parent / f).resolve() in {p.resolve() for p in RULE_FILES} for f in document["rule_files"]
        ), f"{path.name} tests rules that are not the shipped ones"
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alerts())
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The headings of a Markdown text, not the comment lines of its code blocks."""
    out: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            out.append(line.lstrip("#"))
    return out


def test_every_alert_has_severity_service_summary_description_and_its_runbook() -> None:
    anchors = {github_anchor(heading) for heading in headings(OPERATIONS.read_text())}
    for name, rule in alerts().items():
        labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
        assert labels.get("severity") in SEVERITIES, f"{name}: severity {labels.get('severity')!r}"
        assert labels.get("service"), f"{name}: no service label"
        assert annotations.get("summary") and annotations.get("description"), f"{name}: summary and description"
        assert annotations.get("runbook_url") == f"docs/operations.md#{name.lower()}", f"{name}: runbook_url"
        assert name.lower() in anchors, f"{name}: docs/operations.md has no heading '### {name}'"


@cache
def scrape_config() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return document


def targets(job: dict[str, Any]) -> set[str]:
    found = {t for config in job.get("static_configs", []) for t in config["targets"]}
    found |= {f"{name}:{config['port']}" for config in job.get("dns_sd_configs", []) for name in config["names"]}
    return found


def test_the_services_are_scraped_by_their_compose_names_on_their_default_ports() -> None:
    jobs = {job["job_name"]: targets(job) for job in scrape_config()["scrape_configs"]}
    default = {
        "scorer": ScorerSettings.model_fields["metrics_port"].default,
        "features": StreamProcessorSettings.model_fields["metrics_port"].default,
        "monitor": MonitorAppSettings.model_fields["metrics_port"].default,
        "api": ApiSettings.model_fields["port"].default,
        "kafka-exporter": 9308,
    }
    for service, port in default.items():
        assert jobs.get(service) == {f"{service}:{port}"}, f"job {service}"
    assert scrape_config()["rule_files"] == ["rules/*.yml"]


def test_the_jobs_an_alert_names_are_scraped() -> None:
    jobs = {job["job_name"] for job in scrape_config()["scrape_configs"]}
    for name, rule in alerts().items():
        for alternatives in re.findall(r'job=~?"([^"]*)"', rule["expr"]):
            named = set(alternatives.split("|"))
            assert named <= jobs, f"{name}: jobs {sorted(named - jobs)} are not in prometheus.yml"
