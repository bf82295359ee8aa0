"""Refill planning from history: per-slot sales velocity by weekday and hour, days to
empty, what to load at a visit on a chosen date, pick lists per site and per route, and
the sales each stock-out lost.

Velocity is learnt from the sold transactions of the ``history_days`` before ``now``:
for every (weekday, hour) the average units a slot sold in that hour. The stock now is
the latest inventory count minus what sold since it was taken. Projections walk
forward hour by hour with the learnt rates, so a Monday-morning office machine and a
Saturday-night station machine are planned differently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pyarrow as pa

from vendwatch.lake.dex_reports import TS, Window, _payloads, _ts
from vendwatch.lake.query import LakeSQL

HORIZON_DAYS = 60  # days_to_empty beyond this is reported as empty (None)
VISIT_HOUR_UTC = 9  # a visit on a date is planned for 09:00 UTC


@dataclass(slots=True)
class SlotHistory:
    device_id: str
    site_id: str | None
    slot: str
    product_id: str | None = None
    count: int | None = None  # latest inventory count
    capacity: int | None = None
    counted_at: datetime | None = None
    sales: list[datetime] = field(default_factory=list)

    def rates(self, now: datetime, history_days: int) -> list[list[float]]:
        """rates[weekday][hour]: average units sold in that hour over the history window."""
        start = now - timedelta(days=history_days)
        units = [[0] * 24 for _ in range(7)]
        for t in self.sales:
            if start <= t < now:
                units[t.weekday()][t.hour] += 1
        seen = [[0] * 24 for _ in range(7)]  # how many of each (weekday, hour) the window holds
        h = start.replace(minute=0, second=0, microsecond=0)
        while h < now:
            seen[h.weekday()][h.hour] += 1
            h += timedelta(hours=1)
        return [[units[d][x] / seen[d][x] if seen[d][x] else 0.0 for x in range(24)] for d in range(7)]

    def stock_now(self, now: datetime) -> int | None:
        if self.count is None or self.counted_at is None:
            return None
        return max(0, self.count - sum(1 for t in self.sales if self.counted_at < t <= now))


def expected_units(rates: list[list[float]], start: datetime, end: datetime) -> float:
    """Units the rates predict between ``start`` and ``end`` (hour by hour, partial hours pro rata)."""
    total, t = 0.0, start
    while t < end:
        nxt = min(end, t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
        total += rates[t.weekday()][t.hour] * (nxt - t).total_seconds() / 3600.0
        t = nxt
    return total


def days_to_empty(rates: list[list[float]], stock: int, now: datetime) -> float | None:
    """Days until the rates sell ``stock`` units (None: not within the horizon)."""
    if stock <= 0:
        return 0.0
    left, t = float(stock), now
    end = now + timedelta(days=HORIZON_DAYS)
    while t < end:
        nxt = t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        rate = rates[t.weekday()][t.hour] * (nxt - t).total_seconds() / 3600.0
        if rate >= left:
            frac = left / rates[t.weekday()][t.hour] * 3600.0
            return round(((t - now).total_seconds() + frac) / 86400.0, 2)
        left -= rate
        t = nxt
    return None


def _history(sql: LakeSQL, w: Window, now: datetime, history_days: int) -> list[SlotHistory]:
    slots: dict[tuple[str, str], SlotHistory] = {}
    hist = Window(now.date() - timedelta(days=history_days + 1), now.date(), w.site)
    for r in _payloads(sql, ("inventory",), hist):
        at = _ts(r["occurred_at"])
        if at is None or at > now:
            continue
        for s in r["data"].get("slots", []):
            h = slots.setdefault((r["device_id"], s["slot"]), SlotHistory(r["device_id"], r["site_id"], s["slot"]))
            if h.counted_at is None or at >= h.counted_at:
                h.count, h.counted_at = s.get("count"), at
                h.capacity = s.get("capacity", h.capacity)
                h.product_id = s.get("product_id", h.product_id)
    for r in _payloads(sql, ("transaction",), hist, "AND json_extract_string(payload, '$.payment_status') = 'success'"
                                                    " AND json_extract_string(payload, '$.vend_status') = 'success'"):
        d = r["data"]
        h = slots.setdefault((r["device_id"], d["slot"]), SlotHistory(r["device_id"], r["site_id"], d["slot"]))
        h.product_id = h.product_id or d.get("product_id")
        t = _ts(r["occurred_at"])
        if t is not None:
            h.sales.append(t)
    return [slots[k] for k in sorted(slots)]


_PLAN = pa.schema([
    ("site_id", pa.string()), ("device_id", pa.string()), ("slot", pa.string()), ("product_id", pa.string()),
    ("stock_now", pa.int64()), ("capacity", pa.int64()), ("sold_per_day", pa.float64()),
    ("days_to_empty", pa.float64()), ("expected_by_visit", pa.float64()), ("stock_at_visit", pa.int64()),
    ("to_load", pa.int64()), ("visit_at", TS),
])
_PICK = pa.schema([("site_id", pa.string()), ("product_id", pa.string()), ("units_to_load", pa.int64()),
                   ("slots", pa.int64()), ("empty_by_visit", pa.int64()), ("visit_at", TS)])
_LOST = pa.schema([
    ("site_id", pa.string()), ("device_id", pa.string()), ("slot", pa.string()), ("product_id", pa.string()),
    ("out_at", TS), ("back_at", TS), ("hours_out", pa.float64()), ("lost_units", pa.float64()),
])


def visit_time(visit: date | None, now: datetime) -> datetime:
    if visit is None:
        return now + timedelta(days=1)
    return datetime.combine(visit, time(VISIT_HOUR_UTC), UTC)


def refill_plan(sql: LakeSQL, w: Window, *, visit: date | None = None, now: datetime | None = None,
                history_days: int = 28) -> pa.Table:
    """Per slot: stock now, velocity, days to empty, and what to load at the visit."""
    now = now or datetime.now(UTC)
    at = visit_time(visit, now)
    rows: list[dict[str, Any]] = []
    for h in _history(sql, w, now, history_days):
        stock = h.stock_now(now)
        if stock is None:
            continue  # never counted: nothing to plan from
        rates = h.rates(now, history_days)
        by_visit = expected_units(rates, now, at) if at > now else 0.0
        at_visit = max(0, round(stock - by_visit))
        capacity = h.capacity if h.capacity is not None else stock
        rows.append({"site_id": h.site_id, "device_id": h.device_id, "slot": h.slot, "product_id": h.product_id,
                     "stock_now": stock, "capacity": capacity,
                     "sold_per_day": round(sum(map(sum, rates)) / 7.0, 2),
                     "days_to_empty": days_to_empty(rates, stock, now), "expected_by_visit": round(by_visit, 1),
                     "stock_at_visit": at_visit, "to_load": max(0, capacity - at_visit), "visit_at": at})
    return pa.Table.from_pylist(rows, _PLAN)


def pick_list(sql: LakeSQL, w: Window, *, visit: date | None = None, now: datetime | None = None) -> pa.Table:
    """Units to take per site and product, plus a ``route`` total over the sites of the window."""
    plan = refill_plan(sql, w, visit=visit, now=now).to_pylist()
    agg: dict[tuple[str, str | None], list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in plan:
        if r["to_load"] <= 0:
            continue
        for site in (r["site_id"] or "-", "route"):
            a = agg[(site, r["product_id"])]
            a[0] += r["to_load"]
            a[1] += 1
            a[2] += 1 if r["stock_at_visit"] == 0 else 0
    at = plan[0]["visit_at"] if plan else visit_time(visit, now or datetime.now(UTC))
    rows = [{"site_id": s, "product_id": p, "units_to_load": v[0], "slots": v[1], "empty_by_visit": v[2],
             "visit_at": at} for (s, p), v in agg.items()]
    rows.sort(key=lambda r: (r["site_id"] == "route", r["site_id"], -r["units_to_load"], r["product_id"] or ""))
    return pa.Table.from_pylist(rows, _PICK)


def stockout_lost_sales(sql: LakeSQL, w: Window, *, now: datetime | None = None, history_days: int = 28) -> pa.Table:
    """Each stock-out (``stock_alert`` out until ok/low or a completed refill) and the units it lost."""
    now = now or datetime.now(UTC)
    hist = {(h.device_id, h.slot): h for h in _history(sql, Window(None, None, w.site), now, history_days)}
    open_: dict[tuple[str, str], tuple[datetime, str | None, str | None]] = {}
    rows: list[dict[str, Any]] = []

    def close(key: tuple[str, str], end: datetime | None) -> None:
        start, site, product = open_.pop(key)
        h = hist.get(key)
        stop = end or now
        lost = expected_units(h.rates(now, history_days), start, stop) if h else 0.0
        rows.append({"site_id": site, "device_id": key[0], "slot": key[1], "product_id": product, "out_at": start,
                     "back_at": end, "hours_out": round((stop - start).total_seconds() / 3600.0, 2),
                     "lost_units": round(lost, 1)})

    for r in _payloads(sql, ("stock_alert", "refill"), w):
        at = _ts(r["occurred_at"])
        if at is None:
            continue
        d = r["data"]
        if r["type"] == "refill":
            if d.get("phase", "completed") == "completed":
                for key in [k for k in open_ if k[0] == r["device_id"]]:
                    close(key, at)
            continue
        key = (r["device_id"], d["slot"])
        if d["level"] == "out" and key not in open_:
            open_[key] = (at, r["site_id"], d.get("product_id"))
        elif d["level"] != "out" and key in open_:
            close(key, at)
    for key in list(open_):
        close(key, None)
    rows.sort(key=lambda r: (-r["lost_units"], r["device_id"], r["slot"], r["out_at"]))
    return pa.Table.from_pylist(rows, _LOST)
