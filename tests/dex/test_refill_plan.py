"""Refill planning: velocity by weekday and hour, days to empty, pick lists, lost sales."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.lake.conftest import drain, make_settings
from tests.lake.factory import publish, sale, stored

from vendwatch import events as ev
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.lake.dex_reports import Window
from vendwatch.lake.query import LakeSQL
from vendwatch.lake.refill_plan import (
    days_to_empty,
    expected_units,
    pick_list,
    refill_plan,
    stockout_lost_sales,
)
from vendwatch.runtime import Context

MONDAY = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday


def _rates(weekday: int, hour: int, per_hour: float) -> list[list[float]]:
    r = [[0.0] * 24 for _ in range(7)]
    r[weekday][hour] = per_hour
    return r


def test_projection_follows_the_weekday_and_hour() -> None:
    rates = _rates(0, 9, 4.0)  # four an hour, Mondays 09-10 only
    assert expected_units(rates, MONDAY, MONDAY + timedelta(days=7)) == 4.0
    assert expected_units(rates, MONDAY + timedelta(hours=9, minutes=30), MONDAY + timedelta(hours=12)) == 2.0
    assert days_to_empty(rates, 6, MONDAY) == 7.4  # 4 this Monday 09-10, 2 more by 09:30 next Monday (7 d 9.5 h)
    assert days_to_empty(rates, 0, MONDAY) == 0.0
    assert days_to_empty(_rates(0, 9, 0.0), 5, MONDAY) is None


def test_plan_pick_list_and_lost_sales_over_the_lake(tmp_path: Path) -> None:
    ctx = Context(make_settings(tmp_path / "data", **{"ingest.max_age_days": 36500}))
    for t in (EVENTS, REJECTED):
        ctx.log.create_topic(t)
    now = MONDAY + timedelta(days=28)  # after four Mondays of history
    # two machines at two sites sell 3 cola each Monday 09:00-10:00
    events = []
    for dev, site in (("dev-1", "site-a"), ("dev-2", "site-b")):
        for week in range(4):
            for k in range(3):
                at = MONDAY + timedelta(weeks=week, hours=9, minutes=10 * k)
                events.append(sale(at, device=dev, site=site, price=250, txid=f"{dev}-{week}-{k}"))
        events.append(stored("inventory", ev.Inventory(slots=[ev.SlotState(slot="A1", product_id="cola", count=4,
                                                                           capacity=10)]),
                             device=dev, site=site, at=now - timedelta(hours=2)))
    # dev-1's slot ran out on the third Monday at 09:20 until a refill at 11:20
    out_at = MONDAY + timedelta(weeks=2, hours=9, minutes=20)
    events += [stored("stock_alert", ev.StockAlert(slot="A1", product_id="cola", level="out", count=0),
                      device="dev-1", site="site-a", at=out_at),
               stored("refill", ev.Refill(visit_id="v"), device="dev-1", site="site-a", at=out_at + timedelta(hours=2))]
    publish(ctx.log, events)
    drain(ctx)
    sql = LakeSQL(ctx.settings)

    visit = now.date()  # this Monday, 09:00 UTC: before today's sales hour
    plan = refill_plan(sql, Window(), visit=visit, now=now).to_pylist()
    assert [(r["device_id"], r["stock_now"], r["expected_by_visit"], r["to_load"]) for r in plan] == [
        ("dev-1", 4, 0.0, 6), ("dev-2", 4, 0.0, 6)]
    assert plan[0]["sold_per_day"] == round(3 / 7, 2) and plan[0]["days_to_empty"] is not None
    later = refill_plan(sql, Window(site="site-a"), visit=visit + timedelta(days=1), now=now).to_pylist()
    assert [(r["device_id"], r["expected_by_visit"], r["stock_at_visit"], r["to_load"]) for r in later] == [
        ("dev-1", 3.0, 1, 9)]
    picks = pick_list(sql, Window(site="site-a,site-b"), visit=visit, now=now).to_pylist()
    assert [(p["site_id"], p["product_id"], p["units_to_load"]) for p in picks] == [
        ("site-a", "cola", 6), ("site-b", "cola", 6), ("route", "cola", 12)]
    (lost,) = stockout_lost_sales(sql, Window(), now=now).to_pylist()
    assert (lost["device_id"], lost["hours_out"]) == ("dev-1", 2.0)
    assert lost["lost_units"] == round(3 * 40 / 60, 1)  # 09:20-10:00 of a 3-an-hour Monday slot
    ctx.close()
