#!/usr/bin/env python3
"""Writes the Grafana dashboards in deploy/grafana/dashboards/ (run after editing this file).

Four dashboards, every query over metrics vendwatch exports (tests/observe/
test_dashboards.py checks each name against the code's registry):

* fleet health: connectivity by site, temperatures, faults, firmware, stock;
* pipeline health: rates, lag in records and seconds, latency per hop, errors,
  restarts, retries, 429/503, outbox/DLQ/circuit per target;
* incidents: open by severity and status, transitions, MTTA/MTTR, tickets;
* business: vends, failed vends, revenue, refunds, stock-outs.

Each dashboard has a ``datasource`` variable (any Prometheus data source), so the
files import unchanged into any Grafana (provisioning: deploy/grafana/provisioning/).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}


class _Grid:
    """Lays panels out left to right, 24 columns wide."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos


def _targets(queries: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"datasource": DS, "expr": q, "legendFormat": legend, "refId": chr(65 + i)}
            for i, (q, legend) in enumerate(queries)]


def panel(grid: _Grid, title: str, queries: list[tuple[str, str]], *, kind: str = "timeseries", unit: str = "short",
          w: int = 12, h: int = 8, description: str = "", stack: bool = False) -> dict[str, Any]:
    p: dict[str, Any] = {
        "id": grid.next_id, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": grid.place(w, h), "targets": _targets(queries),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries" and stack:
        p["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 30}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    if kind == "table":
        for t in p["targets"]:
            t["instant"] = True
            t["format"] = "table"
    grid.next_id += 1
    return p


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["vendwatch"],
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "utc",
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus", "current": {}}]},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


def q99(metric: str, by: str = "", sel: str = "", window: str = "5m", q: float = 0.99) -> str:
    grp = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({grp}) (rate({metric}_bucket{sel}[{window}])))"


HOPS = ["received", "durable", "state", "evaluated", "signal", "incident", "ticket"]


def fleet() -> dict[str, Any]:
    g = _Grid()
    return dashboard("vendwatch-fleet", "vendwatch / fleet health",
                     "Machines online/stale/offline, temperatures, faults, firmware, stock (console role).", [
        panel(g, "Online", [('sum(vendwatch_fleet_devices{connectivity="online"})', "online")], kind="stat", w=4, h=4),
        panel(g, "Stale", [('sum(vendwatch_fleet_devices{connectivity="stale"})', "stale")], kind="stat", w=4, h=4),
        panel(g, "Offline", [('sum(vendwatch_fleet_devices{connectivity="offline"})', "offline")], kind="stat",
              w=4, h=4),
        panel(g, "Never seen", [('sum(vendwatch_fleet_devices{connectivity="never"})', "never")], kind="stat",
              w=4, h=4),
        panel(g, "Disabled", [('sum(vendwatch_fleet_devices{connectivity="disabled"})', "disabled")], kind="stat",
              w=4, h=4),
        panel(g, "Cabinet above 8 °C", [(
            'sum(vendwatch_fleet_cabinet_temp_celsius_bucket{le="+Inf"})'
            ' - sum(vendwatch_fleet_cabinet_temp_celsius_bucket{le="8.0"})',
            "too warm")], kind="stat", w=4, h=4),
        panel(g, "Connectivity over time", [("sum by (connectivity) (vendwatch_fleet_devices)", "{{connectivity}}")],
              stack=True),
        panel(g, "Sites with machines not online", [(
            'sum by (site) (vendwatch_fleet_site_devices{connectivity=~"offline|stale|never"}) > 0', "{{site}}")],
              kind="table", description="The worst sites first; online counts per site are in the same metric."),
        panel(g, "Cabinet temperature p50 / p95 across the fleet", [
            (q99("vendwatch_fleet_cabinet_temp_celsius", q=0.5).replace("rate(", "(").replace("[5m]", ""), "p50"),
            (q99("vendwatch_fleet_cabinet_temp_celsius", q=0.95).replace("rate(", "(").replace("[5m]", ""), "p95"),
        ], unit="celsius"),
        panel(g, "Active faults by code", [("sum by (code) (vendwatch_fleet_active_faults)", "{{code}}")], stack=True),
        panel(g, "Firmware versions", [("sum by (version) (vendwatch_fleet_firmware_devices)", "{{version}}")],
              kind="piechart"),
        panel(g, "Slots by stock level", [("sum by (level) (vendwatch_fleet_slots)", "{{level}}")], stack=True),
        panel(g, "Events received per second by type of outcome",
              [("sum by (outcome) (rate(vendwatch_ingest_events_total[5m]))", "{{outcome}}")], unit="ops", w=24),
    ])


def pipeline() -> dict[str, Any]:
    g = _Grid()
    return dashboard("vendwatch-pipeline", "vendwatch / pipeline health",
                     "Rates, lag, latency per hop, errors, retries, 429/503, outbox/DLQ/circuit per target.", [
        panel(g, "Events accepted / s", [('sum(rate(vendwatch_ingest_events_total{outcome="accepted"}[1m]))',
                                         "accepted")], kind="stat", unit="ops", w=6, h=4),
        panel(g, "Event to ticket p99", [(q99("vendwatch_pipeline_event_age_seconds", sel='{point="ticket"}',
                                              window="15m"), "p99")], kind="stat", unit="s", w=6, h=4),
        panel(g, "Worst stage lag (s)", [("max(vendwatch_stage_lag_seconds)", "lag")], kind="stat", unit="s",
              w=6, h=4),
        panel(g, "Error lines / min", [('sum(rate(vendwatch_log_messages_total{level=~"error|critical"}[5m])) * 60',
                                        "errors")], kind="stat", w=6, h=4),
        panel(g, "Events per second by outcome", [("sum by (outcome) (rate(vendwatch_ingest_events_total[1m]))",
                                                   "{{outcome}}")], unit="ops"),
        panel(g, "Records processed per second by stage", [("sum by (stage) (rate(vendwatch_stage_records_total[1m]))",
                                                            "{{stage}}")], unit="ops"),
        panel(g, "Stage lag (records behind the log end)", [("sum by (stage) (vendwatch_stage_lag_records)",
                                                             "{{stage}}")]),
        panel(g, "Stage lag (seconds behind)", [("max by (stage) (vendwatch_stage_lag_seconds)", "{{stage}}")],
              unit="s"),
        panel(g, "Latency per hop, p99", [(q99("vendwatch_pipeline_hop_seconds", by="hop"), "{{hop}}")], unit="s",
              description="received: device clock to collector; durable: to the log; state/evaluated: log to "
                          "device-state/detector; signal: event time to signal; incident: signal to incident; "
                          "ticket: incident to ticket."),
        panel(g, "Event age at each point, p99", [(q99("vendwatch_pipeline_event_age_seconds", by="point"),
                                                   "{{point}}")], unit="s"),
        panel(g, "Collector request latency", [
            (q99("vendwatch_ingest_request_seconds", q=0.5), "p50"), (q99("vendwatch_ingest_request_seconds"), "p99")],
              unit="s"),
        panel(g, "Durable log append (group commit) latency", [
            (q99("vendwatch_bus_append_seconds", q=0.5), "p50"), (q99("vendwatch_bus_append_seconds"), "p99")],
              unit="s"),
        panel(g, "Requests by HTTP status", [("sum by (status) (rate(vendwatch_ingest_requests_total[1m]))",
                                              "{{status}}")], unit="reqps"),
        panel(g, "503 (log unavailable) and 429 (rate limited)", [
            ("sum(rate(vendwatch_ingest_unavailable_total[1m]))", "503"),
            ("sum(rate(vendwatch_ingest_rate_limited_total[1m]))", "429")], unit="reqps"),
        panel(g, "Rejections by reason", [('sum by (reason) (rate(vendwatch_ingest_events_total{outcome="rejected"}[5m]))',
                                           "{{reason}}")], unit="ops"),
        panel(g, "Errors and warnings logged, by role", [
            ("sum by (role, level) (rate(vendwatch_log_messages_total[5m]))", "{{role}} {{level}}")], unit="ops"),
        panel(g, "Restarts by role (crash loops)", [("sum by (role) (increase(vendwatch_role_restarts_total[15m]))",
                                                     "{{role}}")]),
        panel(g, "Deliveries by target and outcome", [
            ("sum by (target, outcome) (rate(vendwatch_incidents_deliveries_total[5m]))", "{{target}} {{outcome}}")],
              unit="ops"),
        panel(g, "Retries and throttling by target", [
            ("sum by (target) (rate(vendwatch_incidents_retries_total[5m]))", "retry {{target}}"),
            ("sum by (target) (rate(vendwatch_incidents_throttled_total[5m]))", "throttled {{target}}")], unit="ops"),
        panel(g, "Outbox depth by target", [("max by (target) (vendwatch_incidents_outbox_depth_items)", "{{target}}")]),
        panel(g, "DLQ depth by target", [("max by (target) (vendwatch_incidents_dlq_depth_items)", "{{target}}")]),
        panel(g, "Circuit state by target (0 closed, 1 half-open, 2 open)", [
            ("max by (target) (vendwatch_incidents_circuit_state)", "{{target}}")]),
        panel(g, "Detector: watermark lag and state", [
            ("max(vendwatch_detect_watermark_lag_seconds)", "watermark lag (s)"),
            ("sum(vendwatch_detect_devices)", "devices in state")]),
        panel(g, "Lake: rows committed and commit latency", [
            ("sum by (table) (rate(vendwatch_lake_raw_rows_total[5m]))", "rows/s {{table}}"),
            (q99("vendwatch_lake_commit_seconds"), "commit p99 (s)")]),
        panel(g, "MQTT bridge", [
            ("sum by (outcome) (rate(vendwatch_mqtt_messages_total[1m]))", "{{outcome}}"),
            ("sum(rate(vendwatch_mqtt_append_retries_total[1m]))", "append retries")], unit="ops"),
    ])


def incidents() -> dict[str, Any]:
    g = _Grid()
    return dashboard("vendwatch-incidents", "vendwatch / incidents",
                     "Open incidents, lifecycle, time to acknowledge/resolve, tickets.", [
        panel(g, "Open", [('max(vendwatch_incidents_incidents{status="open"})', "open")], kind="stat", w=6, h=4),
        panel(g, "Acknowledged", [('max(vendwatch_incidents_incidents{status="acknowledged"})', "ack")], kind="stat",
              w=6, h=4),
        panel(g, "Signals / h", [("sum(increase(vendwatch_detect_signals_total[1h]))", "signals")], kind="stat",
              w=6, h=4),
        panel(g, "Tickets created / h", [('sum(increase(vendwatch_pipeline_hop_seconds_count{hop="ticket"}[1h]))',
                                         "tickets")], kind="stat", w=6, h=4),
        panel(g, "Incidents by status", [("max by (status) (vendwatch_incidents_incidents)", "{{status}}")],
              stack=True),
        panel(g, "Open incidents by severity", [("max by (severity) (vendwatch_incidents_open)", "{{severity}}")],
              stack=True),
        panel(g, "Lifecycle transitions", [("sum by (kind) (rate(vendwatch_incidents_transitions_total[5m]))",
                                            "{{kind}}")], unit="ops"),
        panel(g, "Signals by rule", [('sum by (rule) (rate(vendwatch_detect_signals_total{status="firing"}[15m]))',
                                      "{{rule}}")], unit="ops"),
        panel(g, "MTTA / MTTR (mean, 1 h)", [
            ("sum(rate(vendwatch_incidents_time_to_ack_seconds_sum[1h])) / "
             "sum(rate(vendwatch_incidents_time_to_ack_seconds_count[1h]))", "MTTA"),
            ("sum(rate(vendwatch_incidents_time_to_resolve_seconds_sum[1h])) / "
             "sum(rate(vendwatch_incidents_time_to_resolve_seconds_count[1h]))", "MTTR")], unit="s"),
        panel(g, "Signal to incident and incident to ticket, p99", [
            (q99("vendwatch_pipeline_hop_seconds", sel='{hop="incident"}'), "signal to incident"),
            (q99("vendwatch_pipeline_hop_seconds", sel='{hop="ticket"}', window="15m"), "incident to ticket")],
              unit="s"),
        panel(g, "Suppressed (silences, repeats)", [
            ("sum(rate(vendwatch_incidents_suppressed_total[15m]))", "silenced"),
            ("sum(rate(vendwatch_detect_signals_suppressed_total[15m]))", "detector repeats")], unit="ops"),
        panel(g, "Dead letters by target", [("sum by (target) (increase(vendwatch_incidents_dead_letters_total[1h]))",
                                             "{{target}}")]),
    ])


def business() -> dict[str, Any]:
    g = _Grid()
    return dashboard("vendwatch-business", "vendwatch / business",
                     "Live sales, failed vends, revenue, refunds and stock-outs (exact figures: the lake reports).", [
        panel(g, "Vends / h", [('sum(increase(vendwatch_business_vends_total{outcome="success"}[1h]))', "vends")],
              kind="stat", w=6, h=4),
        panel(g, "Failed vends (1 h)", [('sum(increase(vendwatch_business_vends_total{outcome!="success"}[1h]))',
                                        "failed")], kind="stat", w=6, h=4),
        panel(g, "Failed vend ratio (1 h)", [(
            'sum(increase(vendwatch_business_vends_total{outcome=~"vend_failure|payment_failure"}[1h])) / '
            'clamp_min(sum(increase(vendwatch_business_vends_total[1h])), 1)', "ratio")], kind="stat",
              unit="percentunit", w=6, h=4),
        panel(g, "Slots out of stock", [('sum(vendwatch_fleet_slots{level="out"})', "out")], kind="stat", w=6, h=4),
        panel(g, "Vends per minute by outcome", [
            ("sum by (outcome) (rate(vendwatch_business_vends_total[5m])) * 60", "{{outcome}}")], stack=True),
        panel(g, "Revenue per hour by currency (minor units)", [
            ("sum by (currency) (increase(vendwatch_business_revenue_minor_total[1h]))", "{{currency}}")]),
        panel(g, "Refunds per hour by currency (minor units)", [
            ("sum by (currency) (increase(vendwatch_business_refunds_minor_total[1h]))", "{{currency}}")]),
        panel(g, "Stock levels", [("sum by (level) (vendwatch_fleet_slots)", "{{level}}")], stack=True),
    ])


DASHBOARDS = {"fleet-health": fleet, "pipeline-health": pipeline, "incidents": incidents, "business": business}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"vendwatch-{name}.json": json.dumps(fn(), indent=2) + "\n" for name, fn in DASHBOARDS.items()}


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
