"""Test events built from vendwatch.events structs (no simulator dependency)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from vendwatch import events as ev
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.base import Log

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def stored(
    type_: str,
    payload: Any,
    *,
    device: str = "dev-1",
    site: str | None = "site-a",
    at: datetime = T0,
    received: datetime | None = None,
    event_id: str | None = None,
    seq: int | None = None,
) -> ev.StoredEvent:
    """A StoredEvent as the collector would put it on the log."""
    data = msgspec.json.encode(payload)
    # validate against the protocol so tests use only well-formed payloads
    ev.decode_payload(type_, data)
    return ev.StoredEvent(
        event_id=event_id or f"{device}-{type_}-{at.timestamp():.0f}-{seq or 0}",
        device_id=device,
        type=type_,
        occurred_at=at,
        received_at=received or at + timedelta(seconds=1),
        data=msgspec.Raw(data),
        seq=seq,
        site_id=site,
    )


def sale(at: datetime, *, device: str = "dev-1", site: str = "site-a", product: str = "cola", price: int = 250,
         method: str = "card", paid: bool = True, vended: bool = True, txid: str | None = None, **kw: Any) -> ev.StoredEvent:
    tx = ev.Transaction(
        transaction_id=txid or f"tx-{device}-{at.timestamp():.0f}",
        product_id=product, slot="A1", price_minor=price, currency="EUR", payment_method=method,  # type: ignore[arg-type]
        payment_status="success" if paid else "failure",
        vend_status=("success" if vended else "failure") if paid else "not_attempted",
    )
    return stored("transaction", tx, device=device, site=site, at=at, **kw)


def telemetry(at: datetime, *, device: str = "dev-1", site: str = "site-a", temp: float = 4.0, **kw: Any) -> ev.StoredEvent:
    return stored("telemetry", ev.Telemetry(cabinet_temp_c=temp, refrigeration_temp_c=temp - 2, voltage_v=230.0,
                                            door_open=False, power_on=True), device=device, site=site, at=at, **kw)


def heartbeat(at: datetime, *, device: str = "dev-1", site: str = "site-a", **kw: Any) -> ev.StoredEvent:
    return stored("heartbeat", ev.Heartbeat(uptime_s=100, firmware_version="1.2.3"), device=device, site=site, at=at, **kw)


def inventory(at: datetime, counts: dict[str, int], *, device: str = "dev-1", site: str = "site-a",
              product: str = "cola", **kw: Any) -> ev.StoredEvent:
    slots = [ev.SlotState(slot=s, product_id=product, count=c, capacity=10) for s, c in counts.items()]
    return stored("inventory", ev.Inventory(slots=slots), device=device, site=site, at=at, **kw)


def publish(log: Log, items: list[ev.StoredEvent]) -> None:
    log.create_topic(EVENTS)
    log.append(EVENTS, [(e.device_id, ev.encode(e)) for e in items])


def publish_rejected(log: Log, reasons: list[str]) -> None:
    log.create_topic(REJECTED)
    log.append(REJECTED, [("dev-x", ev.encode(ev.RejectedEvent(received_at=T0, reason=r, device_id="dev-x",
                                                                  raw=msgspec.Raw(b'{"bad":1}')))) for r in reasons])


def day_of_events(device: str = "dev-1", site: str = "site-a", start: datetime = T0, n: int = 24) -> list[ev.StoredEvent]:
    """An hour-by-hour day of a healthy machine: heartbeat, telemetry, one sale."""
    out: list[ev.StoredEvent] = []
    for h in range(n):
        at = start + timedelta(hours=h)
        out.append(heartbeat(at, device=device, site=site))
        out.append(telemetry(at + timedelta(minutes=1), device=device, site=site))
        out.append(sale(at + timedelta(minutes=2), device=device, site=site))
    return out
