"""Dashboards and alert rules: only metrics the code exports, every alert unit-tested by promtool."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY
from tests.conftest import service_missing

import vendwatch

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
RULES = ROOT / "deploy" / "monitoring" / "prometheus-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "monitoring" / "tests" / "rules-test.yaml"
# metrics from outside vendwatch the rules may use: Prometheus' own and kube-state-metrics
FOREIGN = {"up", "kube_job_status_failed"}
_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""],
             "summary": ["_sum", "_count"], "unknown": [""]}


def exported_metric_names() -> set[str]:
    """Every sample name the code can export: all modules imported, custom collectors described."""
    for mod in pkgutil.walk_packages(vendwatch.__path__, "vendwatch."):
        if mod.name.endswith("__main__"):
            continue
        importlib.import_module(mod.name)
    from vendwatch.observe.fleet import FleetCollector, IncidentCollector

    families: list[Any] = [f for c in list(REGISTRY._collector_to_names) for f in c.collect()]
    families += FleetCollector(None).describe() + IncidentCollector(None).describe()  # type: ignore[arg-type]
    return {f.name + sfx for f in families for sfx in _SUFFIXES.get(f.type, [""])}


def _dashboards() -> dict[str, dict[str, Any]]:
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert len(files) >= 4
    return {f.name: json.loads(f.read_text()) for f in files}


def _metrics_in(expr: str) -> set[str]:
    names = set(re.findall(r"\bvendwatch_[a-z0-9_]+", expr))
    names |= {n for n in re.findall(r"\b([a-z_:][a-z0-9_:]*)\s*\{", expr) if not n.startswith("vendwatch_")}
    return names


def test_every_dashboard_panel_uses_only_metrics_the_code_exports() -> None:
    exported = exported_metric_names()
    for name, dash in _dashboards().items():
        for p in dash["panels"]:
            assert p["targets"], f"{name}: panel {p['title']!r} has no query"
            for t in p["targets"]:
                used = _metrics_in(t["expr"])
                assert used, f"{name}: {p['title']!r} queries no metric: {t['expr']}"
                missing = used - exported
                assert not missing, f"{name}: panel {p['title']!r} uses metrics the code does not export: {missing}"


def test_the_metric_check_catches_an_unknown_name() -> None:
    exported = exported_metric_names()
    assert _metrics_in('sum(rate(vendwatch_ingest_events_totl{outcome="x"}[5m]))') - exported


def test_every_alert_uses_only_exported_or_known_foreign_metrics() -> None:
    exported = exported_metric_names() | FOREIGN
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            missing = _metrics_in(r["expr"]) - exported
            assert not missing, f"{r['alert']} uses unknown metrics {missing}"


def test_dashboards_cover_fleet_pipeline_incidents_and_business() -> None:
    titles = " ".join(d["title"] for d in _dashboards().values())
    for part in ("fleet health", "pipeline health", "incidents", "business"):
        assert part in titles
    pipeline = _dashboards()["vendwatch-pipeline-health.json"]
    exprs = " ".join(t["expr"] for p in pipeline["panels"] for t in p["targets"])
    for metric in ("vendwatch_stage_lag_records", "vendwatch_stage_lag_seconds", "vendwatch_pipeline_hop_seconds",
                   "vendwatch_incidents_outbox_depth_items", "vendwatch_incidents_dlq_depth_items",
                   "vendwatch_incidents_circuit_state", "vendwatch_ingest_rate_limited_total",
                   "vendwatch_ingest_unavailable_total", "vendwatch_incidents_retries_total"):
        assert metric in exprs, metric


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    sys.path.insert(0, str(GRAFANA))
    try:
        import dashboards  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(GRAFANA))
    for name, text in dashboards.render().items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, f"run deploy/grafana/dashboards.py ({name})"


def test_provisioning_files_point_at_the_dashboards() -> None:
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vendwatch.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "vendwatch.yaml").read_text())
    assert {d["type"] for d in ds["datasources"]} >= {"prometheus", "grafana-postgresql-datasource"}


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    assert alerts - fired == set(), f"alerts without a firing test: {alerts - fired}"


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool", "install Debian's prometheus package (scripts/promtool.sh)")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
