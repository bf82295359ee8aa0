"""Fleet views for the console: connectivity classes, site summary, enriched device rows.

Connectivity is judged from ``last_seen_at`` (when the collector last received
anything from the machine) against the machine's registered heartbeat interval
(``DEFAULT_HEARTBEAT_S`` when none is registered):

* ``online``   seen within ``ONLINE_INTERVALS`` intervals,
* ``stale``    seen within ``STALE_INTERVALS`` intervals (missed a few heartbeats),
* ``offline``  seen before that,
* ``never``    registered but never heard from,
* ``disabled`` refused by the registry (its tokens do not work).

The class is computed in SQL so the device list can filter and page on it without
loading the fleet; every view uses the same expression. All functions take ``now``
so tests pin the clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from vendwatch.state.db import Database

DEFAULT_HEARTBEAT_S = 60
ONLINE_INTERVALS = 2
STALE_INTERVALS = 10
CLASSES = ("online", "stale", "offline", "never", "disabled")
MAX_SITES = 200  # rows in the overview's site table (worst sites first)

# one expression, four parameters: now, default interval, now, default interval
_CLASS_SQL = f"""CASE
  WHEN d.status = 'disabled' THEN 'disabled'
  WHEN s.last_seen_at IS NULL THEN 'never'
  WHEN s.last_seen_at >= ? - {ONLINE_INTERVALS} * coalesce(d.heartbeat_interval_s, ?) THEN 'online'
  WHEN s.last_seen_at >= ? - {STALE_INTERVALS} * coalesce(d.heartbeat_interval_s, ?) THEN 'stale'
  ELSE 'offline' END"""

_FROM = " FROM devices d LEFT JOIN device_state s ON s.device_id = d.device_id"

# msgspec writes compact JSON, so a non-empty fault map always starts with this text
_HAS_FAULTS_LIKE = '%"active_faults":{"%'


def _class_params(now: float) -> list[Any]:
    return [now, DEFAULT_HEARTBEAT_S, now, DEFAULT_HEARTBEAT_S]


def site_summary(db: Database, now: float) -> dict[str, Any]:
    """Device counts per connectivity class, fleet-wide and per site (worst sites first)."""
    rows = db.query(
        f"SELECT coalesce(d.site_id, ''), {_CLASS_SQL}, count(*), max(s.last_seen_at), sum(s.events)"
        f"{_FROM} GROUP BY 1, 2",
        _class_params(now),
    )
    totals = dict.fromkeys(CLASSES, 0)
    sites: dict[str, dict[str, Any]] = {}
    for site_id, cls, n, last_seen, events in rows:
        totals[cls] += n
        site = sites.setdefault(
            site_id, {"site_id": site_id or None, "devices": 0, **dict.fromkeys(CLASSES, 0),
                      "last_seen_at": None, "events": 0},
        )
        site["devices"] += n
        site[cls] += n
        site["events"] += int(events or 0)
        if last_seen is not None and (site["last_seen_at"] is None or last_seen > site["last_seen_at"]):
            site["last_seen_at"] = last_seen
    ranked = sorted(sites.values(), key=lambda s: (-(s["offline"] + s["stale"] + s["never"]), s["site_id"] or ""))
    return {
        "devices": sum(totals.values()),
        "connectivity": totals,
        "sites_total": len(sites),
        "sites": ranked[:MAX_SITES],
    }


class DeviceFilter(msgspec.Struct, kw_only=True, frozen=True):
    """What the device list asks for; every field optional."""

    site_id: str | None = None
    status: str | None = None  # a connectivity class
    q: str | None = None  # substring of device id, serial, model or location (case-insensitive)
    faulted: bool = False  # only machines with an active fault
    after: str = ""  # keyset paging: device ids greater than this
    limit: int = 100


def _like_escape(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _filter_sql(f: DeviceFilter, now: float, paged: bool = True) -> tuple[str, list[Any]]:
    where = ["d.device_id > ?"] if paged else ["1=1"]
    params: list[Any] = [f.after] if paged else []
    if f.site_id:
        where.append("d.site_id = ?")
        params.append(f.site_id)
    if f.status:
        where.append(f"({_CLASS_SQL}) = ?")
        params += [*_class_params(now), f.status]
    if f.q:
        pat = f"%{_like_escape(f.q.lower())}%"
        where.append(" OR ".join(f"lower(coalesce(d.{c}, '')) LIKE ? ESCAPE '!'"
                                 for c in ("device_id", "serial", "model", "location")).join("()"))
        params += [pat] * 4
    if f.faulted:
        where.append("s.doc LIKE ?")
        params.append(_HAS_FAULTS_LIKE)
    return " AND ".join(where), params


def list_devices(db: Database, f: DeviceFilter, now: float) -> list[dict[str, Any]]:
    """Registered devices joined with their live state, filtered, ordered by device id."""
    where, params = _filter_sql(f, now)
    rows = db.query(
        "SELECT d.device_id, d.site_id, d.status, d.serial, d.model, d.location, d.heartbeat_interval_s,"
        f" s.first_seen_at, s.last_seen_at, s.last_event_at, s.events, s.doc, {_CLASS_SQL}"
        f"{_FROM} WHERE {where} ORDER BY d.device_id LIMIT ?",
        [*_class_params(now), *params, f.limit],
    )
    return [_device_row(r) for r in rows]


def get_device(db: Database, device_id: str, now: float) -> dict[str, Any] | None:
    """One device with its full state document and derived fields, or None."""
    rows = db.query(
        "SELECT d.device_id, d.site_id, d.status, d.serial, d.model, d.location, d.heartbeat_interval_s,"
        f" s.first_seen_at, s.last_seen_at, s.last_event_at, s.events, s.doc, {_CLASS_SQL}"
        f"{_FROM} WHERE d.device_id = ?",
        [*_class_params(now), device_id],
    )
    if not rows:
        return None
    doc: dict[str, Any] = msgspec.json.decode(rows[0][11] or "{}")
    out = _device_row(rows[0])
    out["state"] = doc
    out["stock"] = [{**slot, "level": slot_level(slot)} for slot in sorted_slots(doc.get("stock", {}))]
    return out


def _device_row(r: Sequence[Any]) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.json.decode(r[11] or "{}")
    health = doc.get("health", {})
    levels = [slot_level(s) for s in doc.get("stock", {}).values()]
    fw = doc.get("firmware", {})
    return {
        "device_id": r[0],
        "site_id": r[1],
        "status": r[2],
        "serial": r[3],
        "model": r[4],
        "location": r[5],
        "heartbeat_interval_s": r[6] or DEFAULT_HEARTBEAT_S,
        "first_seen_at": r[7],
        "last_seen_at": r[8],
        "last_event_at": r[9],
        "events": r[10] or 0,
        "connectivity": r[12],
        "cabinet_temp_c": health.get("cabinet_temp_c"),
        "refrigeration_temp_c": health.get("refrigeration_temp_c"),
        "firmware_version": fw.get("firmware_version"),
        "faults": sorted(doc.get("active_faults", {})),
        "slots_low": levels.count("low"),
        "slots_out": levels.count("out"),
    }


def sorted_slots(stock: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Slots in natural order (A2 before A10)."""

    def key(name: str) -> tuple[Any, ...]:
        return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))

    return [stock[k] for k in sorted(stock, key=key)]


def slot_level(slot: dict[str, Any]) -> str:
    """``out``, ``low``, ``ok`` or ``unknown`` for one slot of the state document.

    A counted slot is judged by its count (0 is out, at or under its low threshold is
    low). The level of the last stock alert decides only when no count is known, or
    says "low" when no threshold is registered: the state keeps an alert's level even
    after a later recount, so a level alone is not trusted over a count.
    """
    count, threshold, level = slot.get("count"), slot.get("low_threshold"), slot.get("level")
    if count is None:
        return level if level in ("low", "out", "ok") else "unknown"
    if count <= 0:
        return "out"
    if threshold is not None:
        return "low" if count <= threshold else "ok"
    return "low" if level == "low" else "ok"


def count_devices(db: Database, f: DeviceFilter, now: float) -> int:
    """How many devices match ``f`` in total (every page), for "100 of 2,345"."""
    where, params = _filter_sql(f, now, paged=False)
    rows = db.query(f"SELECT count(*){_FROM} WHERE {where}", params)
    return int(rows[0][0]) if rows else 0


def list_sites(db: Database) -> list[dict[str, Any]]:
    """Every site id with its number of registered devices (the device list's site filter)."""
    rows = db.query("SELECT d.site_id, count(*) FROM devices d WHERE d.site_id IS NOT NULL GROUP BY d.site_id"
                    " ORDER BY d.site_id")
    return [{"site_id": r[0], "devices": int(r[1])} for r in rows]


MAX_MAP_POINTS = 5000
# msgspec writes compact JSON: a state with a GPS fix always contains this text
_HAS_GPS_LIKE = '%"gps":{%'


def map_points(db: Database, now: float, limit: int = MAX_MAP_POINTS) -> dict[str, Any]:
    """Machines with a GPS fix: position, site and connectivity class (the overview map)."""
    rows = db.query(
        f"SELECT d.device_id, d.site_id, {_CLASS_SQL}, s.doc{_FROM} WHERE s.doc LIKE ? ORDER BY d.device_id LIMIT ?",
        [*_class_params(now), _HAS_GPS_LIKE, limit + 1],
    )
    points = []
    for device_id, site_id, cls, doc in rows[:limit]:
        gps = (msgspec.json.decode(doc or "{}").get("connectivity") or {}).get("gps") or {}
        lat, lon = gps.get("lat"), gps.get("lon")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            points.append({"device_id": device_id, "site_id": site_id, "connectivity": cls, "lat": lat, "lon": lon})
    return {"points": points, "truncated": len(rows) > limit}
