"""Food-safety evidence: every episode a refrigerated machine spent above its limit.

An episode starts at the first telemetry sample above the machine's limit (5 °C /
41 °F unless the device's registry meta sets ``food_safety_max_c``) and ends at the
first sample at or below it. Each episode is reported with its peak, duration, the
door state during it, whether it followed a service visit (loading with the door
open warms the cabinet), the incident and ticket it raised, and the sales made
during it (products that should have been locked out). Listed are the episodes that
stayed above the limit with the door closed for ``min_minutes`` (15, as the default
detection rule): a door opened for loading warms the cabinet by design, and only
what happens after it closes is the machine's failure to keep food safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from vendwatch.lake.dex_reports import TS, Window, _payloads, _ts, rows_of
from vendwatch.lake.query import LakeSQL

DEFAULT_MAX_C = 5.0
AFTER_VISIT = timedelta(minutes=60)  # an episode starting this soon after a visit "followed" it
FOOD_RULES = ("food_safety_temperature", "cooling_failure")


@dataclass(slots=True)
class Sample:
    at: datetime
    temp_c: float
    door_open: bool | None


@dataclass(slots=True)
class Episode:
    device_id: str
    site_id: str | None
    limit_c: float
    start: datetime
    end: datetime | None  # None: still above the limit at the last sample
    last_above: datetime
    peak_c: float
    door_open_samples: int
    samples: int
    closed_s: float = 0.0  # time above the limit with the door closed
    _last: Sample | None = None

    def minutes(self, now: datetime) -> float:
        return ((self.end or now) - self.start).total_seconds() / 60.0


def episodes(device_id: str, site_id: str | None, samples: list[Sample], limit_c: float) -> list[Episode]:
    """Contiguous runs of samples above ``limit_c`` (pure)."""
    out: list[Episode] = []
    cur: Episode | None = None
    for s in sorted(samples, key=lambda s: s.at):
        if cur is not None and cur._last is not None and not cur._last.door_open:
            cur.closed_s += (s.at - cur._last.at).total_seconds()
        if s.temp_c > limit_c:
            if cur is None:
                cur = Episode(device_id, site_id, limit_c, s.at, None, s.at, s.temp_c, 0, 0)
            cur._last = s
            cur.peak_c = max(cur.peak_c, s.temp_c)
            cur.last_above = s.at
            cur.samples += 1
            cur.door_open_samples += 1 if s.door_open else 0
        elif cur is not None:
            cur.end = s.at
            out.append(cur)
            cur = None
    if cur is not None:
        out.append(cur)
    return out


_SCHEMA = pa.schema([
    ("site_id", pa.string()), ("device_id", pa.string()), ("limit_c", pa.float64()), ("start", TS), ("end", TS),
    ("duration_min", pa.float64()), ("peak_c", pa.float64()), ("peak_f", pa.float64()), ("door", pa.string()),
    ("after_service_visit", pa.bool_()), ("visit_at", TS), ("incident_id", pa.string()), ("ticket", pa.string()),
    ("sales_during", pa.int64()), ("ongoing", pa.bool_()), ("closed_min", pa.float64()),
])


def _door(e: Episode) -> str:
    if e.door_open_samples == 0:
        return "closed"
    return "open" if e.door_open_samples == e.samples else "opened during"


def food_safety(sql: LakeSQL, w: Window, *, limits: dict[str, float] | None = None, min_minutes: float = 15.0,
                now: datetime | None = None) -> pa.Table:
    """The food-safety report of the window (``limits``: device -> °C, default 5)."""
    limits = limits or {}
    per_dev: dict[str, tuple[str | None, list[Sample]]] = {}
    for r in _payloads(sql, ("telemetry",), w, "AND json_extract(payload, '$.refrigeration_temp_c') IS NOT NULL"):
        d = r["data"]
        if d.get("refrigeration_temp_c") is None:
            continue
        per_dev.setdefault(r["device_id"], (r["site_id"], []))[1].append(
            Sample(_ts(r["occurred_at"]), float(d["refrigeration_temp_c"]), d.get("door_open")))  # type: ignore[arg-type]
    found = [e for dev, (site, samples) in sorted(per_dev.items())
             for e in episodes(dev, site, samples, limits.get(dev, DEFAULT_MAX_C))]
    end_of_window = now or max((e.last_above for e in found), default=None)
    found = [e for e in found if e.closed_s >= min_minutes * 60]
    if not found:
        return pa.Table.from_pylist([], _SCHEMA)
    devices = {e.device_id for e in found}
    wide = Window(w.since - timedelta(days=1) if w.since else None, w.until + timedelta(days=1) if w.until else None)
    visits = [(r["device_id"], _ts(r["occurred_at"])) for r in _payloads(sql, ("refill",), wide)
              if r["device_id"] in devices]
    sold = [(r["device_id"], _ts(r["occurred_at"])) for r in _payloads(
        sql, ("transaction",), wide, "AND json_extract_string(payload, '$.payment_status') = 'success'"
                                     " AND json_extract_string(payload, '$.vend_status') = 'success'")
        if r["device_id"] in devices]
    rules = ", ".join(f"'{x}'" for x in FOOD_RULES)
    incidents = [r for r in rows_of(sql, "SELECT incident_id, device_id, rule_id, opened_at, external_ref"
                                         f" FROM analytics.incidents WHERE rule_id IN ({rules})")
                 if r["device_id"] in devices]
    rows: list[dict[str, Any]] = []
    for e in found:
        stop = e.end or end_of_window or e.last_above
        before = [t for d, t in visits if d == e.device_id and t is not None and e.start - AFTER_VISIT <= t <= e.start]
        inc = sorted((r for r in incidents if r["device_id"] == e.device_id and r["opened_at"] is not None
                      and e.start - timedelta(minutes=5) <= _ts(r["opened_at"]) <= stop + timedelta(minutes=30)),  # type: ignore[operator]
                     key=lambda r: r["opened_at"])
        rows.append({
            "site_id": e.site_id, "device_id": e.device_id, "limit_c": e.limit_c, "start": e.start, "end": e.end,
            "duration_min": round(e.minutes(stop), 1), "peak_c": e.peak_c, "peak_f": round(e.peak_c * 9 / 5 + 32, 1),
            "door": _door(e), "after_service_visit": bool(before), "visit_at": max(before) if before else None,
            "incident_id": inc[0]["incident_id"] if inc else None, "ticket": inc[0]["external_ref"] if inc else None,
            "sales_during": sum(1 for d, t in sold if d == e.device_id and t is not None and e.start <= t <= stop),
            "ongoing": e.end is None, "closed_min": round(e.closed_s / 60.0, 1),
        })
    rows.sort(key=lambda r: (r["site_id"] or "", r["device_id"], r["start"]))
    return pa.Table.from_pylist(rows, _SCHEMA)
