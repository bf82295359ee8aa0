"""Operator surfaces: the incidents API, the CLI (incidents, silences, dlq, routes), summary and export."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner
from incident_helpers import context, make_signal

from vendwatch.api.server import build_app
from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.config import ConfigError, load_settings
from vendwatch.delivery.clock import VirtualClock
from vendwatch.delivery.outbox import Outbox
from vendwatch.emulators.base import ThreadedServer
from vendwatch.incidents.export import incident_rows
from vendwatch.incidents.service import IncidentService
from vendwatch.incidents.summary import summary
from vendwatch.runtime import Context


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Context, IncidentService, str]:
    ctx = context(tmp_path, **{"incidents.flap_damping_s": 0})
    svc = IncidentService(ctx.state, ctx.settings.incidents, VirtualClock())
    with ctx.state.db.transaction() as tx:
        svc.handle_signal(tx, make_signal(svc.clock))  # type: ignore[arg-type]
        svc.handle_signal(tx, make_signal(svc.clock, key="offline/VM-0002", device_id="VM-0002",  # type: ignore[arg-type]
                                          severity="critical"))
        svc.handle_signal(tx, make_signal(svc.clock, key="offline/VM-0002", device_id="VM-0002",  # type: ignore[arg-type]
                                          status="resolved"))
    return ctx, svc, svc.store.list(dedupe_key="offline/VM-0001")[0].incident_id


def run(ctx: Context, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args[:2], "--data-dir", ctx.settings.data_dir, *args[2:]],
                              obj=Env(None, {"bus.partitions": 2}), catch_exceptions=False)


def test_api_lists_filters_shows_and_transitions(seeded: tuple[Context, IncidentService, str]) -> None:
    ctx, _, iid = seeded
    viewer = ctx.state.add_operator_token("v", "viewer")
    operator = ctx.state.add_operator_token("o", "operator")
    server = ThreadedServer(build_app(Context(ctx.settings), ["console"])).start()
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v1/incidents").status_code == 401
        h = {"Authorization": f"Bearer {viewer}"}
        assert len(c.get("/v1/incidents", headers=h).json()["incidents"]) == 2
        assert [i["dedupe_key"] for i in c.get("/v1/incidents?status=active", headers=h).json()["incidents"]] \
            == ["offline/VM-0001"]
        assert len(c.get("/v1/incidents?severity=critical", headers=h).json()["incidents"]) == 1
        for bad in ("status=nope", "severity=huge", "limit=0", "limit=x", "colour=red"):
            assert c.get(f"/v1/incidents?{bad}", headers=h).status_code == 400
        assert c.get("/v1/deliveries").status_code == 401
        targets = c.get("/v1/deliveries", headers=h).json()["targets"]
        assert all(not t["paused"] for t in targets)
        d = c.get(f"/v1/incidents/{iid}", headers=h).json()
        assert d["timeline"][0]["kind"] == "opened" and d["severity_history"][0]["to"] == "major"
        assert d["external_refs"] == []
        assert c.get("/v1/incidents/inc_nope", headers=h).status_code == 404
        assert c.post(f"/v1/incidents/{iid}/ack", headers=h).status_code == 403  # viewer cannot
        o = {"Authorization": f"Bearer {operator}"}
        r = c.post(f"/v1/incidents/{iid}/ack", headers=o)
        assert r.status_code == 200 and r.json()["acknowledged_by"] == "operator:o"
        assert c.post(f"/v1/incidents/{iid}/ack", headers=o).status_code == 409
        assert c.post(f"/v1/incidents/{iid}/resolve", headers=o, content=b"{bad").status_code == 400
        r = c.post(f"/v1/incidents/{iid}/resolve", headers=o, json={"note": "fixed"})
        assert r.status_code == 200 and r.json()["status"] == "resolved"

        assert c.post("/v1/silences", headers=o, json={"site_id": "SITE-1"}).status_code == 400  # no duration
        assert c.post("/v1/silences", headers=o, json={"duration_s": 60}).status_code == 400  # no matcher
        assert c.post("/v1/silences", headers=o, json={"site_id": "S", "duration_s": 60, "x": 1}).status_code == 400
        r = c.post("/v1/silences", headers=o, json={"site_id": "SITE-1", "duration_s": 600, "reason": "works"})
        assert r.status_code == 201
        sid = r.json()["silence_id"]
        [s] = c.get("/v1/silences", headers=h).json()["silences"]
        assert s["silence_id"] == sid and s["active"] and s["created_by"] == "operator:o"
        assert c.delete(f"/v1/silences/{sid}", headers=o).status_code == 204
        assert c.delete(f"/v1/silences/{sid}", headers=o).status_code == 404
    server.stop()


def test_cli_incidents_and_silences(seeded: tuple[Context, IncidentService, str]) -> None:
    ctx, _, iid = seeded
    out = run(ctx, "incidents", "list")
    assert iid in out.output and "offline/VM-0002" in out.output
    rows = msgspec.json.decode(run(ctx, "incidents", "list", "--status", "open", "--json").output)
    assert [r["incident_id"] for r in rows] == [iid]
    shown = msgspec.json.decode(run(ctx, "incidents", "show", iid).output)
    assert shown["timeline"][0]["kind"] == "opened"
    assert run(ctx, "incidents", "ack", iid, "--actor", "op:me").exit_code == 0
    assert run(ctx, "incidents", "resolve", iid, "--note", "done").exit_code == 0
    r = run(ctx, "incidents", "resolve", iid)
    assert r.exit_code == 1 and "incident is resolved" in r.output
    assert run(ctx, "incidents", "show", "inc_missing").exit_code == 1

    sid = run(ctx, "silences", "add", "--device", "VM-0001", "--duration", "2h", "--reason", "repair").output.strip()
    assert sid.startswith("sil_")
    assert "repair" in run(ctx, "silences", "list").output
    assert run(ctx, "silences", "add", "--duration", "2h").exit_code == 2  # needs a matcher
    assert run(ctx, "silences", "add", "--site", "S", "--duration", "soon").exit_code == 2
    assert run(ctx, "silences", "remove", sid).exit_code == 0
    assert run(ctx, "silences", "remove", sid).exit_code == 1


def test_cli_dlq(seeded: tuple[Context, IncidentService, str]) -> None:
    ctx, svc, iid = seeded
    ob = Outbox(ctx.state.db)
    with ctx.state.db.transaction() as tx:
        ob.enqueue(tx, "servicenow", "sync", "k", {"incident_id": iid}, idem_key="x", now=0)
    [item] = ob.claim(["servicenow"], 1, 1, 60, "w")
    with ctx.state.db.transaction() as tx:
        dlq_id = ob.dead_letter(tx, item, 2, status=400, reason="HTTP 400: bad field")
    rows = msgspec.json.decode(run(ctx, "dlq", "list", "--json").output)
    assert [r["dlq_id"] for r in rows] == [dlq_id]
    assert msgspec.json.decode(run(ctx, "dlq", "show", dlq_id).output)["payload"] == {"incident_id": iid}
    assert run(ctx, "dlq", "redrive").exit_code == 2  # needs a selection
    assert "redriven: 1" in run(ctx, "dlq", "redrive", dlq_id).output
    assert ob.depth() == {"servicenow": 1} and ob.dlq_list() == []
    [item] = ob.claim(["servicenow"], time.time() + 1, 1, 60, "w")
    with ctx.state.db.transaction() as tx:
        ob.dead_letter(tx, item, time.time(), status=500, reason="gave up")
    assert "purged: 1" in run(ctx, "dlq", "purge", "--target", "servicenow", "--yes").output
    assert ob.dlq_list() == []


def test_cli_routes_check_and_match(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - name: crit\n    pattern: {detail: {severity: [critical]}}\n    targets: [orchestrator]\n")
    r = CliRunner().invoke(cli, ["routes", "check", str(f)], obj=Env(None, {}))
    assert r.exit_code == 0 and "1 rule" in r.output
    r = CliRunner().invoke(cli, ["routes", "match", str(f), '{"source": "x", "detail": {"severity": "critical"}}'],
                           obj=Env(None, {}))
    assert msgspec.json.decode(r.output)["targets"] == ["orchestrator"]
    f.write_text("rules:\n  - name: crit\n    pattern: {detail: {severity: critical}}\n    targets: [orchestrator]\n")
    r = CliRunner().invoke(cli, ["routes", "check", str(f)], obj=Env(None, {}))
    assert r.exit_code == 1 and "rule crit: pattern.detail.severity" in r.output


def test_summary_and_export(seeded: tuple[Context, IncidentService, str]) -> None:
    ctx, _, iid = seeded
    s = summary(ctx)
    assert s["incidents_opened"] == 2 and s["incidents_resolved"] == 1 and s["incidents_open"] == 1
    rows = incident_rows(ctx.state)
    assert {r["incident_id"] for r in rows} >= {iid}
    r = next(r for r in rows if r["dedupe_key"] == "offline/VM-0002")
    assert r["status"] == "resolved" and isinstance(r["resolved_at"], float) and r["external_ref"] is None
    assert set(r) == {"incident_id", "dedupe_key", "rule_id", "severity", "status", "device_id", "site_id",
                      "opened_at", "acknowledged_at", "resolved_at", "occurrences", "external_ref"}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("incidents.servicenow.url", "example.com", "incidents.servicenow: url must start with"),
    ("incidents.servicenow.url", "https://x.service-now.com", "username and password are required"),
    ("incidents.flap_damping_s", -1, "incidents: flap_damping_s"),
    ("incidents.servicenow.retry.jitter", 2, "incidents.servicenow.retry: jitter"),
    ("incidents.servicenow.auth", "kerberos", "incidents.servicenow.auth"),
    ("incidents.nonsense", 1, "unknown field `nonsense`"),
])
def test_settings_errors_name_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("`", ".")):
        load_settings(None, {key: value}, environ={})


def test_start_for_demo_points_settings_at_a_working_emulator(tmp_path: Path) -> None:
    from vendwatch.emulators.servicenow import start_for_demo

    base, stop, overrides = start_for_demo(load_settings(None, {"data_dir": str(tmp_path)}, environ={}))
    try:
        s = load_settings(None, {"data_dir": str(tmp_path), **overrides}, environ={})
        assert s.incidents.servicenow.url == base
        r = httpx.get(f"{base}/api/now/table/incident", auth=(s.incidents.servicenow.username,
                                                              s.incidents.servicenow.password))
        assert r.status_code == 200 and r.json() == {"result": []}
    finally:
        stop()


def test_dev_servicenow_emulator_command_serves() -> None:
    import re
    import subprocess

    from tests.conftest import vendwatch_cmd

    p = subprocess.Popen(vendwatch_cmd("dev", "servicenow-emulator", "--port", "0", "--ci", "S1=machine one"),
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        url = re.search(r"http://\S+", line)
        assert url, line
        r = httpx.get(f"{url.group(0)}/api/now/table/cmdb_ci", params={"sysparm_query": "serial_number=S1"},
                      auth=("vendwatch", "vendwatch"))
        assert r.json()["result"][0]["name"] == "machine one"
        assert httpx.get(f"{url.group(0)}/api/now/table/incident").status_code == 401
    finally:
        p.terminate()
        p.wait(10)


def test_metrics_expose_incident_gauges(seeded: tuple[Context, IncidentService, str]) -> None:
    from prometheus_client import generate_latest

    _, svc, _ = seeded
    svc.refresh_metrics()
    text = generate_latest().decode()
    assert 'vendwatch_incidents_incidents{status="open"} 1.0' in text
    assert 'vendwatch_incidents_incidents{status="resolved"} 1.0' in text
    assert "vendwatch_incidents_transitions_total" in text
