"""Reconciliation of audit reads with live telemetry (pure: rows in, rows and findings out).

Per machine and DEX period (previous read -> this read), per slot: units and money the
machine's own counters say were sold (``dex_sales``) against the sold transactions the
machine reported live. Per service visit: the cash the audit says went to the cash box
since the previous visit (``dex_read.cash_to_box_minor``) against the cash recorded as
collected (``refill.cash_collected_minor``).

Findings (each becomes a ``dex_finding`` event, so default rules open incidents):

- ``sales_exceed_telemetry``: the counters saw more sales than telemetry reported
  (telemetry lost, or vends the platform never saw: skimming);
- ``telemetry_exceeds_sales``: telemetry reported sales the counters did not count;
- ``cash_shortfall``: less cash collected than the audit put in the cash box.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class Tolerance:
    units: int = 1  # a difference of this many units is noise (a sale on the read's boundary second)
    cash_minor: int = 100  # coins stuck in the chute, rounding
    visit_match: timedelta = timedelta(hours=2)  # a read belongs to the visit this close to it


@dataclass(slots=True)
class Sale:
    """One sold transaction reported live."""

    device_id: str
    at: datetime
    slot: str
    method: str  # cash, card, qr, mobile
    value_minor: int


@dataclass(slots=True)
class DexPeriodSales:
    device_id: str
    site_id: str | None
    read_id: str
    slot: str
    product_id: str | None
    start: datetime
    end: datetime
    units: int
    value_minor: int
    cash_units: int | None = None
    card_units: int | None = None
    counter_reset: bool = False  # the counters restarted: the units are a lower bound, not compared


@dataclass(slots=True)
class Read:
    device_id: str
    site_id: str | None
    read_id: str
    at: datetime
    start: datetime | None
    cash_to_box_minor: int
    findings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Visit:
    device_id: str
    site_id: str | None
    event_id: str
    at: datetime
    cash_collected_minor: int


@dataclass(slots=True)
class Finding:
    kind: str
    device_id: str
    site_id: str | None
    read_id: str
    period_start: datetime | None
    period_end: datetime
    slot: str | None = None
    expected: int = 0  # what the audit says (units, or minor units of cash)
    actual: int = 0  # what telemetry / the collection says
    detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.read_id}:{self.slot or '-'}"


def reconcile_sales(periods: list[DexPeriodSales], sales: list[Sale],
                    tol: Tolerance = Tolerance()) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Per DEX period and slot: audit vs telemetry; report rows and findings."""
    by_slot: dict[tuple[str, str], list[Sale]] = defaultdict(list)
    for s in sales:
        by_slot[(s.device_id, s.slot)].append(s)
    rows, findings = [], []
    for p in sorted(periods, key=lambda p: (p.device_id, p.end, p.slot)):
        live = [s for s in by_slot.get((p.device_id, p.slot), []) if p.start < s.at <= p.end]
        t_units, t_value = len(live), sum(s.value_minor for s in live)
        t_cash = sum(1 for s in live if s.method == "cash")
        diff = p.units - t_units
        kind = ("sales_exceed_telemetry" if diff > tol.units else "telemetry_exceeds_sales" if -diff > tol.units
                else None)
        if p.counter_reset:
            kind = None  # reported once on the read (counter_reset), not as a sales discrepancy
        rows.append({"device_id": p.device_id, "site_id": p.site_id, "period_start": p.start, "period_end": p.end,
                     "slot": p.slot, "product_id": p.product_id, "dex_units": p.units,
                     "telemetry_units": t_units, "dex_value_minor": p.value_minor, "telemetry_value_minor": t_value,
                     "dex_cash_units": p.cash_units, "telemetry_cash_units": t_cash,
                     "dex_card_units": p.card_units, "telemetry_card_units": t_units - t_cash,
                     "difference_units": diff, "finding": "counter_reset" if p.counter_reset else kind,
                     "read_id": p.read_id})
        if kind is not None:
            findings.append(Finding(kind, p.device_id, p.site_id, p.read_id, p.start, p.end, p.slot, p.units, t_units,
                                    f"slot {p.slot}: audit counted {p.units} sales, telemetry reported {t_units}"))
    return rows, findings


def reconcile_cash(reads: list[Read], visits: list[Visit],
                   tol: Tolerance = Tolerance()) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Per service visit with an audit read: cash the audit put in the box since the previous such
    visit vs the cash collected since then (a visit whose read is missing carries over to the next)."""
    reads_by_dev: dict[str, list[Read]] = defaultdict(list)
    for r in reads:
        reads_by_dev[r.device_id].append(r)
    visits_by_dev: dict[str, list[Visit]] = defaultdict(list)
    for v in visits:
        visits_by_dev[v.device_id].append(v)
    rows, findings = [], []
    for device_id, dev_visits in sorted(visits_by_dev.items()):
        dev_reads = reads_by_dev.get(device_id, [])
        prev: Read | None = None  # the read of the last visit that had one
        pending = 0  # collected since that visit
        for v in sorted(dev_visits, key=lambda v: v.at):
            pending += v.cash_collected_minor
            near = [r for r in dev_reads if abs(r.at - v.at) <= tol.visit_match]
            read = min(near, key=lambda r: abs(r.at - v.at)) if near else None
            row: dict[str, Any] = {"device_id": v.device_id, "site_id": v.site_id, "visit_at": v.at,
                                   "collected_minor": pending, "expected_minor": None, "difference_minor": None,
                                   "finding": None, "read_id": read.read_id if read else None}
            rows.append(row)
            if read is None:
                row["finding"] = "no_audit_read_at_visit"  # its cash is counted at the next visit with a read
                continue
            if read.start is None:
                row["finding"] = "baseline_read"  # first read or new board: the account starts here
                prev, pending = read, 0
                continue
            since = prev.at if prev is not None else read.start
            expected = sum(r.cash_to_box_minor for r in dev_reads if r.start is not None and since < r.at <= read.at)
            diff = expected - pending
            row.update(expected_minor=expected, difference_minor=diff)
            if diff > tol.cash_minor:
                row["finding"] = "cash_shortfall"
                findings.append(Finding("cash_shortfall", v.device_id, v.site_id, read.read_id, since, read.at, None,
                                        expected, pending,
                                        f"audit put {expected} in the cash box, {pending} was collected"))
            prev, pending = read, 0
    return rows, findings
