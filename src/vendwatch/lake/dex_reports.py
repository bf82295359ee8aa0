"""Reports built on DEX audit reads (raw files, reconciliation, cash accountability).

They read ``raw.events`` and ``raw.rejected`` (no ETL needed) and compute in Python with
the pure cores of :mod:`vendwatch.dex`; the output has fixed columns so an empty
period still gives a header. Parameters reach SQL only as typed literals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pyarrow as pa

from vendwatch.config import Settings
from vendwatch.dex.reconcile import (
    DexPeriodSales,
    Finding,
    Read,
    Sale,
    Visit,
    reconcile_cash,
    reconcile_sales,
)
from vendwatch.lake.query import LakeSQL, QueryResult
from vendwatch.state.store import StateStore

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Window:
    since: date | None = None
    until: date | None = None
    site: str | None = None

    def sql(self, col: str = "event_date") -> str:
        lo = (self.since or date(1970, 1, 1)).isoformat()
        hi = (self.until or date(9999, 12, 31)).isoformat()
        return f"{col} BETWEEN CAST('{lo}' AS DATE) AND CAST('{hi}' AS DATE)"

    def keep(self, site_id: str | None) -> bool:
        """``site`` is one site, or a route: sites separated by commas."""
        return self.site is None or site_id in self.site.split(",")


def rows_of(sql: LakeSQL, text: str) -> list[dict[str, Any]]:
    return sql.run(text, limit=10_000_000).rows()


def _ts(v: Any) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    t = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _payloads(sql: LakeSQL, types: tuple[str, ...], w: Window, extra: str = "") -> list[dict[str, Any]]:
    names = ", ".join(f"'{t}'" for t in types)  # constants of this module, never user text
    out = []
    for r in rows_of(sql, f"SELECT event_id, device_id, site_id, type, occurred_at, received_at, payload"
                          f" FROM raw.events WHERE type IN ({names}) AND {w.sql()} {extra}"
                          f" ORDER BY occurred_at, event_id"):
        if w.keep(r["site_id"]):
            r["data"] = msgspec.json.decode(r.pop("payload"))
            out.append(r)
    return out


# --- dex-files: the raw DEX table (every file, accepted or refused) -------------------
_FILES = pa.schema([("received_at", TS), ("device_id", pa.string()), ("site_id", pa.string()),
                    ("read_id", pa.string()), ("verdict", pa.string()), ("reason", pa.string()),
                    ("read_at", TS), ("flags", pa.string()), ("findings", pa.string()), ("bytes", pa.int64()),
                    ("file", pa.string())])


def dex_files(sql: LakeSQL, w: Window) -> pa.Table:
    rows = []
    for r in _payloads(sql, ("dex_read",), w):
        d = r["data"]
        rows.append({"received_at": _ts(r["received_at"]), "device_id": r["device_id"], "site_id": r["site_id"],
                     "read_id": r["event_id"], "verdict": "accepted", "reason": None, "read_at": _ts(d.get("read_at")),
                     "flags": ",".join(d.get("flags", [])) or None, "findings": ",".join(d.get("findings", [])) or None,
                     "bytes": len(d["raw"].encode("latin-1")), "file": d["raw"]})
    refused = rows_of(sql, "SELECT received_at, device_id, event_id, reason, raw FROM raw.rejected"
                           f" WHERE event_id LIKE 'dex:%' AND {w.sql('CAST(received_at AS DATE)')}")
    for r in refused:
        if w.site is not None:
            continue  # refused files carry no site: they are listed without a site filter only
        text = msgspec.json.decode(r["raw"]) if r["raw"] else None
        rows.append({"received_at": _ts(r["received_at"]), "device_id": r["device_id"], "site_id": None,
                     "read_id": r["event_id"], "verdict": "refused", "reason": r["reason"], "read_at": None,
                     "flags": None, "findings": None, "bytes": len(text.encode("latin-1")) if text else None,
                     "file": text})
    rows.sort(key=lambda x: (x["received_at"], x["read_id"]))
    return pa.Table.from_pylist(rows, _FILES)


# --- reconciliation --------------------------------------------------------------------
_RECON = pa.schema([("device_id", pa.string()), ("site_id", pa.string()), ("period_start", TS), ("period_end", TS),
                    ("slot", pa.string()), ("product_id", pa.string()), ("dex_units", pa.int64()),
                    ("telemetry_units", pa.int64()), ("dex_value_minor", pa.int64()),
                    ("telemetry_value_minor", pa.int64()), ("dex_cash_units", pa.int64()),
                    ("telemetry_cash_units", pa.int64()), ("dex_card_units", pa.int64()),
                    ("telemetry_card_units", pa.int64()), ("difference_units", pa.int64()),
                    ("finding", pa.string()), ("read_id", pa.string())])
_CASH = pa.schema([("device_id", pa.string()), ("site_id", pa.string()), ("visit_at", TS),
                   ("collected_minor", pa.int64()), ("expected_minor", pa.int64()), ("difference_minor", pa.int64()),
                   ("finding", pa.string()), ("read_id", pa.string())])


def _period_sales(sql: LakeSQL, w: Window) -> list[DexPeriodSales]:
    out = []
    for r in _payloads(sql, ("dex_sales",), w):
        d = r["data"]
        out.append(DexPeriodSales(r["device_id"], r["site_id"], d["read_id"], d["slot"], d.get("product_id"),
                                  _ts(d["period_start"]), _ts(d["period_end"]), d["units"], d["value_minor"],  # type: ignore[arg-type]
                                  d.get("cash_units"), d.get("card_units"), d.get("counter_reset", False)))
    return out


def _sales_between(sql: LakeSQL, devices: set[str], start: datetime, end: datetime) -> list[Sale]:
    if not devices:
        return []
    w = Window(start.date() - timedelta(days=1), end.date() + timedelta(days=1))
    out = []
    for r in _payloads(sql, ("transaction",), w, "AND json_extract_string(payload, '$.payment_status') = 'success'"
                                                 " AND json_extract_string(payload, '$.vend_status') = 'success'"):
        if r["device_id"] in devices:
            d = r["data"]
            out.append(Sale(r["device_id"], _ts(r["occurred_at"]), d["slot"], d["payment_method"],  # type: ignore[arg-type]
                            d["price_minor"]))
    return out


def reconciliation(sql: LakeSQL, w: Window) -> tuple[pa.Table, list[Finding]]:
    periods = _period_sales(sql, w)
    if not periods:
        return pa.Table.from_pylist([], _RECON), []
    sales = _sales_between(sql, {p.device_id for p in periods}, min(p.start for p in periods),
                           max(p.end for p in periods))
    rows, findings = reconcile_sales(periods, sales)
    return pa.Table.from_pylist(rows, _RECON), findings


def _reads(sql: LakeSQL, w: Window) -> list[Read]:
    out = []
    for r in _payloads(sql, ("dex_read",), w):
        d = r["data"]
        out.append(Read(r["device_id"], r["site_id"], r["event_id"], _ts(d.get("read_at")) or _ts(r["occurred_at"]),  # type: ignore[arg-type]
                        _ts(d.get("period_start")), d.get("cash_to_box_minor", 0), d.get("findings", [])))
    return out


def cash_accountability(sql: LakeSQL, w: Window) -> tuple[pa.Table, list[Finding]]:
    visits = []
    for r in _payloads(sql, ("refill",), w):
        d = r["data"]
        if d.get("cash_collected_minor") is not None and d.get("phase", "completed") == "completed":
            visits.append(Visit(r["device_id"], r["site_id"], r["event_id"], _ts(r["occurred_at"]),  # type: ignore[arg-type]
                                d["cash_collected_minor"]))
    wider = Window(w.since - timedelta(days=1) if w.since else None, w.until + timedelta(days=1) if w.until else None,
                   w.site)
    rows, findings = reconcile_cash(_reads(sql, wider), visits)
    return pa.Table.from_pylist(rows, _CASH), findings


def findings(sql: LakeSQL, w: Window) -> list[Finding]:
    """Every reconciliation finding of the window (sales per slot, cash per visit)."""
    return reconciliation(sql, w)[1] + cash_accountability(sql, w)[1]


# --- registry used by `vendwatch report` ----------------------------------------------
@dataclass(frozen=True)
class Options:
    limits: dict[str, float] = field(default_factory=dict)  # device -> food-safety limit (°C)
    visit: date | None = None  # refill planning: the visit date (default: 24 h from now)


def _food_safety(sql: LakeSQL, w: Window, o: Options) -> pa.Table:
    from vendwatch.lake.food_safety import food_safety  # noqa: PLC0415 - it builds on this module

    return food_safety(sql, w, limits=o.limits)


Builder = Callable[[LakeSQL, Window, Options], pa.Table]
DEX_REPORTS: dict[str, tuple[str, Builder]] = {
    "dex-files": ("every DEX file received, accepted or refused, with the file itself",
                  lambda s, w, o: dex_files(s, w)),
    "dex-reconciliation": ("DEX sales per read period and slot vs telemetry sales",
                           lambda s, w, o: reconciliation(s, w)[0]),
    "cash-accountability": ("cash the audit put in the cash box vs cash collected at each visit",
                            lambda s, w, o: cash_accountability(s, w)[0]),
    "food-safety": ("every episode above the food-safety limit (5 °C unless set per machine)", _food_safety),
    "refill-plan": ("per slot: stock now, sales velocity by weekday and hour, days to empty, units to load at"
                    " the visit", lambda s, w, o: _refill_plan(s, w, o)),
    "pick-list": ("units to take per site and product for the visit, and for the whole route (--site A,B)",
                  lambda s, w, o: _pick_list(s, w, o)),
    "stockout-lost-sales": ("each stock-out with the sales it lost (from the slot's weekday/hour velocity)",
                            lambda s, w, o: _lost_sales(s, w)),
}


# refill planning builds on this module: imported when used
def _refill_plan(sql: LakeSQL, w: Window, o: Options) -> pa.Table:
    from vendwatch.lake.refill_plan import refill_plan  # noqa: PLC0415

    return refill_plan(sql, w, visit=o.visit)


def _pick_list(sql: LakeSQL, w: Window, o: Options) -> pa.Table:
    from vendwatch.lake.refill_plan import pick_list  # noqa: PLC0415

    return pick_list(sql, w, visit=o.visit)


def _lost_sales(sql: LakeSQL, w: Window) -> pa.Table:
    from vendwatch.lake.refill_plan import stockout_lost_sales  # noqa: PLC0415

    return stockout_lost_sales(sql, w)


def food_safety_limits(state: StateStore) -> dict[str, float]:
    """Per-machine food-safety limits from the registry (device meta ``food_safety_max_c``)."""
    out: dict[str, float] = {}
    after = ""
    while True:
        page = state.list_devices(limit=1000, after=after)
        for d in page:
            v = d.meta.get("food_safety_max_c")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[d.device_id] = float(v)
        if len(page) < 1000:
            return out
        after = page[-1].device_id


def run_dex_report(settings: Settings, name: str, *, since: date | None = None, until: date | None = None,
                   site: str | None = None, sql: LakeSQL | None = None,
                   limits: dict[str, float] | None = None, visit: date | None = None) -> QueryResult:
    """Run one of :data:`DEX_REPORTS` (``limits``: device -> food-safety limit in °C; ``visit``: refill date)."""
    _, build = DEX_REPORTS[name]
    return QueryResult(build(sql or LakeSQL(settings), Window(since, until, site), Options(limits or {}, visit)),
                       False, {})
