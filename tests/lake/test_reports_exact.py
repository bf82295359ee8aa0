"""Report figures an operator checks by hand: money adds up exactly, and uptime is
counted over the time a machine was expected to report (not the whole calendar day)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.lake.conftest import drain, make_settings
from tests.lake.factory import T0, heartbeat, publish, sale

from vendwatch.lake.etl import Etl
from vendwatch.lake.reports import run_report
from vendwatch.runtime import Context

NOW = T0 + timedelta(hours=2)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    ctx = Context(make_settings(tmp_path_factory.mktemp("exact") / "data"))
    items = [
        # 0.10 + 0.20 in floats is 0.30000000000000004
        sale(T0 + timedelta(minutes=1), device="new", site="s", product="gum", price=10, method="card", txid="1"),
        sale(T0 + timedelta(minutes=2), device="new", site="s", product="gum", price=20, method="card", txid="2"),
        sale(T0 + timedelta(minutes=3), device="new", site="s", product="gum", price=720, method="cash", txid="3"),
        sale(T0 + timedelta(minutes=4), device="new", site="s", product="gum", price=720, method="cash", txid="4"),
        sale(T0 + timedelta(minutes=5), device="new", site="s", product="gum", price=720, method="cash", txid="5"),
    ]
    # "new" first reports at 08:00 and heartbeats every 5 minutes for the hour it exists;
    # "half" starts with it and falls silent after 30 minutes
    items += [heartbeat(T0 + timedelta(minutes=m), device="new", site="s") for m in range(0, 61, 5)]
    items += [heartbeat(T0 + timedelta(minutes=m), device="half", site="s") for m in range(0, 31, 5)]
    publish(ctx.log, items)
    drain(ctx)
    Etl(ctx.settings, state=ctx.state).run()
    yield ctx.settings
    ctx.close()


def test_revenue_is_summed_in_minor_units(lake) -> None:
    rows = {r["payment_method"]: r for r in run_report(lake, "revenue", now=NOW).rows()}
    assert rows["card"]["revenue_minor"] == 30
    assert repr(float(rows["card"]["revenue"])) == "0.3"
    assert rows["cash"]["revenue_minor"] == 2160
    assert repr(float(rows["cash"]["revenue"])) == "21.6"


def test_sla_uptime_counts_only_the_time_a_machine_was_expected_to_report(lake) -> None:
    rows = {(r["level"], r["device_id"]): r for r in run_report(lake, "sla-uptime", now=NOW).rows()}
    assert rows[("device", "new")]["uptime_pct"] == pytest.approx(100.0, abs=0.5)
    assert rows[("device", "half")]["uptime_pct"] == pytest.approx(50.0, abs=10)
    assert rows[("site", None)]["uptime_pct"] == pytest.approx(75.0, abs=5)
