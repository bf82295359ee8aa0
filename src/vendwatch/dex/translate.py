"""A read becomes ordinary device events, so detection, state and the lake see DEX like any source.

Event ids are derived, never random, so that resending a file (or a later read that
repeats the same EA1 history) is deduplicated by the collector like any retry:

- ``dex:<sha256 of the file>``: the ``dex_read`` summary (with the file, for audit);
- ``dex:<sha256>:<slot>``: one ``dex_sales`` per slot that sold in the period;
- ``dex-ea:<code>:<date><time>:<n>``: one event per EA1 machine event, mapped below.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from vendwatch.dex import model as dm
from vendwatch.dex.meaning import Period, serial
from vendwatch.dex.parser import parse_datetime
from vendwatch.dex.reconcile import Finding

# EA1 event identifiers (EVA-DTS) -> (event type, payload). Door openings are routine at
# service visits: they become log lines; cooling and power events become faults/security.
EA_MAP: dict[str, tuple[str, dict[str, Any]]] = {
    "EGS": ("log", {"kind": "system", "level": "info"}),
    "EJH": ("fault", {"code": "cooling_failure", "component": "refrigeration"}),
    "EJJ": ("fault", {"code": "cooling_failure", "component": "refrigeration"}),
    "EJK": ("fault", {"code": "cooling_failure", "component": "refrigeration"}),
    "EK": ("security", {"kind": "power_cut"}),
    "EK2": ("security", {"kind": "power_cut"}),
}
_PREFIX_MAP: dict[str, tuple[str, dict[str, Any]]] = {
    "EC": ("fault", {"code": "coin_mech_failure", "component": "coin_mech"}),
    "EB": ("fault", {"code": "bill_validator_failure", "component": "bill_validator"}),
    "ED": ("fault", {"code": "payment_device_failure", "component": "cashless"}),
}


@dataclass(frozen=True, slots=True)
class Window:
    """Times outside [oldest, newest] would be refused by the collector: use ``fallback`` instead."""

    oldest: datetime
    newest: datetime
    fallback: datetime

    def clamp(self, t: datetime | None) -> datetime:
        return t if t is not None and self.oldest <= t <= self.newest else self.fallback


def _utc(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None else None


def _ea_mapping(code: str) -> tuple[str, dict[str, Any]]:
    if code in EA_MAP:
        return EA_MAP[code]
    for prefix, target in _PREFIX_MAP.items():
        if code.startswith(prefix):
            return target
    return "log", {"kind": "system", "level": "warning"}


def read_id(sha256: str) -> str:
    return f"dex:{sha256}"


def to_events(device_id: str, f: dm.DexFile, raw: bytes, sha256: str, period: Period,
              read_at: datetime | None, prev_at: datetime | None, window: Window) -> list[dict[str, Any]]:
    """The device events (protocol v1 shape) of one accepted read."""
    r = f.read
    at = window.clamp(_utc(read_at))
    rid = read_id(sha256)
    machine_serial, board_serial = serial(r)
    currency = r.money.currency.upper() if r.money and r.money.currency and len(r.money.currency) == 3 else None
    temp = next((_float(s.values[1]) for s in r.status if s.status == "TEMP" and len(s.values) > 1), None)
    summary: dict[str, Any] = {
        "file_sha256": sha256, "raw": raw.decode("latin-1"), "flags": list(f.flags), "findings": period.findings,
        "missed_reads": period.missed_reads, "units": period.paid.units, "value_minor": period.paid.value,
        "cash_value_minor": period.cash_sales.value, "cashless_value_minor": period.cashless_sales.value,
        "cash_in_minor": period.cash_in, "cash_to_box_minor": period.cash_to_box,
        "cash_dispensed_minor": period.cash_dispensed,
    }
    for k, v in (("read_at", _iso(_utc(read_at))), ("period_start", None if period.baseline else _iso(prev_at)),
                 ("machine_serial", machine_serial), ("board_serial", board_serial), ("currency", currency),
                 ("cabinet_temp_c", temp)):
        if v is not None:
            summary[k] = v
    out = [_event(rid, device_id, "dex_read", at, summary)]
    if not period.baseline and prev_at is not None:
        for s in period.slots:
            if s.total.units == 0 and s.total.value == 0:
                continue
            data: dict[str, Any] = {"read_id": rid, "slot": s.slot, "period_start": _iso(prev_at),
                                    "period_end": _iso(at), "units": s.total.units, "value_minor": s.total.value,
                                    "counter_reset": s.counter_reset}
            if s.product_id:
                data["product_id"] = s.product_id
            if currency:
                data["currency"] = currency
            if s.cash is not None:
                data["cash_units"], data["cash_value_minor"] = s.cash.units, s.cash.value
            if s.card is not None:
                data["card_units"], data["card_value_minor"] = s.card.units, s.card.value
            out.append(_event(f"{rid}:{s.slot}", device_id, "dex_sales", at, data))
    out += _machine_events(device_id, r, window)
    return out


def _machine_events(device_id: str, r: dm.DexRead, window: Window) -> list[dict[str, Any]]:
    out = []
    seen: dict[str, int] = {}
    for e in r.events:
        start = _utc(parse_datetime(e.date, e.time))
        key = f"{e.code}:{e.date or ''}{e.time or ''}"
        n = seen[key] = seen.get(key, 0) + 1
        if start is None or not (window.oldest <= start <= window.newest):
            continue  # no usable time, or outside what the collector keeps: the summary still has the file
        etype, base = _ea_mapping(e.code)
        eid = f"dex-ea:{key}:{n}"
        detail = f"DEX event {e.code}" + (f", {e.duration_min} min" if e.duration_min is not None else "")
        if etype == "log":
            out.append(_event(eid, device_id, "log", start, {**base, "message": detail}))
        elif etype == "security":
            out.append(_event(eid, device_id, "security", start, {**base, "detail": detail}))
        else:
            out.append(_event(eid, device_id, "fault", start, {**base, "state": "raised", "detail": detail}))
            if e.duration_min is not None:
                end = start + timedelta(minutes=e.duration_min)
                if end <= window.newest:
                    out.append(_event(eid + ":cleared", device_id, "fault", end,
                                      {**base, "state": "cleared", "detail": detail}))
    return out


def _event(event_id: str, device_id: str, etype: str, at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": event_id, "device_id": device_id, "type": etype, "occurred_at": _iso(at), "data": data}


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _float(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if -60 <= v <= 150 else None


def finding_event(f: Finding) -> dict[str, Any]:
    """A reconciliation finding as a device event (id derived: re-running the job adds nothing)."""
    data: dict[str, Any] = {"kind": f.kind, "read_id": f.read_id, "period_end": _iso(f.period_end),
                            "expected": f.expected, "actual": f.actual, "detail": f.detail}
    if f.period_start is not None:
        data["period_start"] = _iso(f.period_start)
    if f.slot is not None:
        data["slot"] = f.slot
    return _event(f"dexf:{f.key}", f.device_id, "dex_finding", f.period_end, data)
