"""deploy/: manifests parse, every role has a workload, config examples are valid
settings, and alerts/dashboard only use metrics vendwatch actually exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vendwatch.config import load_settings
from vendwatch.runtime import ROLES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _manifests() -> list[dict]:
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return docs


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {f.name for f in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_every_role_has_a_workload_running_it() -> None:
    run_roles = {}
    for d in _manifests():
        if d["kind"] in ("Deployment", "StatefulSet"):
            c = d["spec"]["template"]["spec"]["containers"][0]
            assert c["args"][:1] == ["run"]
            run_roles[c["args"][1]] = d
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"] == labels
            assert {"secretRef": {"name": "vendwatch-secrets"}} in c["envFrom"]
    assert set(run_roles) == set(ROLES)


def test_collector_has_service_readiness_and_hpa() -> None:
    docs = _manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Service", "vendwatch-collector"), ("HorizontalPodAutoscaler", "vendwatch-collector")} <= kinds
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "vendwatch-collector")
    probe = dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/healthz"


def _embedded_toml() -> str:
    cm = next(d for d in _manifests() if d["kind"] == "ConfigMap")
    return str(cm["data"]["vendwatch.toml"])


@pytest.mark.parametrize("name", ["local-scaleout.toml", "aws-msk-rds.toml", "s3-rest-catalog.toml", "configmap"])
def test_config_examples_are_valid_settings(name: str, tmp_path: Path) -> None:
    path = DEPLOY / "config" / name
    if name == "configmap":
        path = tmp_path / "cm.toml"
        path.write_text(_embedded_toml())
    s = load_settings(path, environ={})
    assert s.bus.backend == "kafka" and s.state.backend == "postgres"
    expected_catalog = {"aws-msk-rds.toml": "glue", "configmap": "glue", "s3-rest-catalog.toml": "rest"}
    if name in expected_catalog:
        assert s.lake.catalog.type == expected_catalog[name]
        assert (s.lake.catalog.warehouse or "").startswith("s3://")


# dashboards and alert rules against the exported metrics: tests/observe/test_dashboards.py


def test_liveness_is_separate_from_readiness() -> None:
    for name in ("vendwatch-collector", "vendwatch-console"):
        dep = next(d for d in _manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/healthz", name


def test_the_ingress_example_sets_timeouts_and_per_client_limits() -> None:
    conf = (DEPLOY / "nginx" / "vendwatch.conf").read_text()
    for directive in ("client_header_timeout", "client_body_timeout", "keepalive_timeout", "limit_conn ",
                      "client_max_body_size", "large_client_header_buffers", "proxy_read_timeout"):
        assert re.search(rf"^\s*{directive}", conf, re.M), directive
    assert "location = /v1/events" in conf and "X-Forwarded-For $remote_addr" in conf
