"""Canned reports on crafted data: each one's figures, CSV export, errors."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest
from tests.lake.conftest import drain, make_settings
from tests.lake.factory import T0, heartbeat, inventory, publish, sale

from vendwatch.lake import etl as etl_mod
from vendwatch.lake import formats
from vendwatch.lake.etl import Etl
from vendwatch.lake.reports import REPORTS, ReportError, run_report
from vendwatch.runtime import Context

NOW = T0 + timedelta(days=1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two sites, three machines, a day of sales and stock, two incidents (built once; reports only read)."""
    ctx = Context(make_settings(tmp_path_factory.mktemp("fleet") / "data"))
    items = [
        heartbeat(T0, device="a1", site="site-a"),
        heartbeat(NOW - timedelta(minutes=5), device="a1", site="site-a"),  # fresh
        heartbeat(T0, device="a2", site="site-a"),  # silent for a day: stale
        heartbeat(T0, device="b1", site="site-b"),
        sale(T0 + timedelta(hours=1), device="a1", site="site-a", product="cola", price=200, method="card", txid="1"),
        sale(T0 + timedelta(hours=2), device="a1", site="site-a", product="cola", price=200, method="cash", txid="2"),
        sale(T0 + timedelta(hours=3), device="a2", site="site-a", product="cola", price=200, method="card", txid="3",
             vended=False),
        sale(T0 + timedelta(hours=4), device="b1", site="site-b", product="chips", price=150, method="card", txid="4",
             paid=False),
        inventory(T0, {"A1": 4}, device="a1", site="site-a"),
        inventory(T0 + timedelta(hours=6), {"A1": 0}, device="a1", site="site-a"),  # out from 06:00 ...
        inventory(T0 + timedelta(hours=8), {"A1": 10}, device="a1", site="site-a"),  # ... to 08:00
        inventory(T0 + timedelta(hours=9), {"A1": 2}, device="a2", site="site-a"),
    ]
    publish(ctx.log, items)
    drain(ctx)
    rows = [
        {"incident_id": "i1", "rule_id": "cooling", "severity": "high", "status": "resolved", "device_id": "a1",
         "site_id": "site-a", "opened_at": T0.timestamp(), "acknowledged_at": T0.timestamp() + 120,
         "resolved_at": T0.timestamp() + 1200, "occurrences": 2},
        {"incident_id": "i2", "rule_id": "cooling", "severity": "high", "status": "resolved", "device_id": "a2",
         "site_id": "site-a", "opened_at": T0.timestamp(), "acknowledged_at": None,
         "resolved_at": T0.timestamp() + 600, "occurrences": 1},
    ]
    real = etl_mod.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(etl_mod, "load", lambda ref: (lambda s: rows) if ref == etl_mod.INCIDENT_ROWS else real(ref))
        Etl(ctx.settings, state=ctx.state).run()
    yield ctx.settings
    ctx.close()


def rep(settings, name, **kw):
    return run_report(settings, name, now=NOW, **kw).rows()


def test_every_report_runs_and_returns_rows(fleet):
    for name in REPORTS:
        assert rep(fleet, name), name


def test_device_last_seen(fleet):
    rows = {r["device_id"]: r for r in rep(fleet, "device-last-seen")}
    assert not rows["a1"]["stale"] and rows["a2"]["stale"]
    assert rows["a1"]["silent_s"] == pytest.approx(5 * 60 - 1)  # sent 5 min ago, received 1 s later


def test_incident_history_mttr(fleet):
    (r,) = rep(fleet, "incident-history")
    assert (r["rule_id"], r["incidents"], r["open"]) == ("cooling", 2, 0)
    assert r["mttr_s"] == pytest.approx(900.0) and r["mtta_s"] == pytest.approx(120.0)


def test_revenue_counts_only_paid_and_vended(fleet):
    rows = rep(fleet, "revenue")
    assert [(r["site_id"], r["payment_method"], r["sales"], r["revenue"]) for r in rows] == [
        ("site-a", "card", 1, 2.0), ("site-a", "cash", 1, 2.0)]


def test_failure_rates(fleet):
    rows = {(r["site_id"], r["payment_method"]): r for r in rep(fleet, "failure-rates")}
    a = rows[("site-a", "card")]
    assert (a["transactions"], a["failed_vends"], a["failed_vend_pct"]) == (2, 1, 50.0)
    b = rows[("site-b", "card")]
    assert (b["failed_payments"], b["failed_payment_pct"]) == (1, 100.0)


def test_sla_uptime_per_device_and_site(fleet):
    rows = {(r["level"], r["site_id"], r["device_id"]): r for r in rep(fleet, "sla-uptime")}
    assert set(rows) == {("device", "site-a", "a1"), ("device", "site-a", "a2"), ("site", "site-a", None),
                         ("device", "site-b", "b1"), ("site", "site-b", None)}
    a1, a2 = rows[("device", "site-a", "a1")], rows[("device", "site-a", "a2")]
    # two days in the lake; a2 was silent on the second: that day counts as 0 %
    assert (a1["days_seen"], a2["days_seen"]) == (2, 1)
    assert a2["worst_day_pct"] == 0.0 and 0 < a2["uptime_pct"] < 50
    site = rows[("site", "site-a", None)]
    assert site["uptime_pct"] == pytest.approx((a1["uptime_pct"] + a2["uptime_pct"]) / 2)


def test_stockouts_with_estimated_lost_sales(fleet):
    (r,) = rep(fleet, "stockouts")
    assert (r["device_id"], r["slot"], r["hours_out"]) == ("a1", "A1", 2.0)
    # a1 sold 2 cola over the 3-hour span of sales: 2/3 per hour x 2 hours out x 2.00
    assert r["est_lost_sales"] == pytest.approx(4 / 3)
    assert r["est_lost_revenue"] == pytest.approx(8 / 3)


def test_refill_picklist(fleet):
    rows = rep(fleet, "refill-picklist")
    assert rows == [{"site_id": "site-a", "product_id": "cola", "units_to_load": 8, "devices": 1,
                     "empty_slots": 0, "min_days_left": 35.0}]  # a1: 10 left, sells 2 a week


def test_date_window_and_csv_export(fleet):
    assert rep(fleet, "revenue", since=date(2030, 1, 1)) == []
    res = run_report(fleet, "revenue", now=NOW)
    lines = list(csv.DictReader(io.StringIO(formats.to_csv(res.table).decode())))
    assert lines[0]["site_id"] == "site-a" and float(lines[0]["revenue"]) == 2.0


def test_bad_report_requests(fleet):
    with pytest.raises(ReportError, match="unknown report 'nope'"):
        run_report(fleet, "nope")
    with pytest.raises(ReportError, match="after until"):
        run_report(fleet, "revenue", since=date(2026, 2, 1), until=date(2026, 1, 1))


def test_reports_on_an_empty_lake(settings):
    for name in REPORTS:
        assert run_report(settings, name, now=datetime.now(UTC)).rows() == []
