"""Device registry -> ServiceNow CMDB (opt-in with ``incidents.servicenow.cmdb_sync``).

One CI per registered machine in the configured class table (``cmdb_ci_hardware`` by
default), found again by an opaque correlation id (never by device text), holding
serial, model, site and location, firmware version, the day it was last seen and an
operational status. The orchestrator compares the registry with what was last sent
every ``cmdb_sync_interval_s`` and enqueues a ``ci`` delivery for each machine that
changed; those deliveries share the ServiceNow outbox, rate limit, retries and circuit
with the incident syncs. Incidents of a synced machine reference its CI (``cmdb_ci``).

``last_discovered`` is kept to the day so a machine that reports every minute costs
one CMDB call a day, not one per sync interval.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec

from vendwatch.delivery.dispatch import Gate
from vendwatch.delivery.outbox import Outbox
from vendwatch.incidents.config import ServiceNowSettings
from vendwatch.incidents.servicenow import creating
from vendwatch.incidents.servicenow.client import CORRELATION_DISPLAY, ServiceNowClient
from vendwatch.incidents.servicenow.mapping import ci_correlation_id
from vendwatch.state import migrations
from vendwatch.state.db import Database
from vendwatch.state.store import StateStore

log = logging.getLogger("vendwatch.incidents.servicenow")
TARGET = "servicenow"
OP = "ci"
OPERATIONAL, NON_OPERATIONAL = "1", "2"  # cmdb_ci.operational_status choices

migrations.register(
    "servicenow",
    2,
    """CREATE TABLE servicenow_ci(
        device_id TEXT PRIMARY KEY,
        sys_id TEXT,
        fingerprint TEXT NOT NULL DEFAULT '',
        synced TEXT NOT NULL DEFAULT '{{}}',
        updated_at DOUBLE PRECISION NOT NULL)""",
)


def ci_ref(db: Database, device_id: str) -> str | None:
    """The sys_id of the CI synced for ``device_id``, if it was created or found already."""
    row = db.one("SELECT sys_id FROM servicenow_ci WHERE device_id=?", (device_id,))
    return str(row[0]) if row and row[0] else None


def _day(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d 00:00:00") if t else ""


def _text(v: Any) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in str(v or ""))


def ci_fields(state: StateStore, device_id: str) -> dict[str, str] | None:
    """What the CI of ``device_id`` should hold (None: not in the registry)."""
    dev = state.get_device(device_id)
    if dev is None:
        return None
    st = state.get_device_state(device_id) or {}
    firmware = (st.get("firmware") or {}).get("firmware_version")
    return {
        "name": device_id,
        "serial_number": _text(dev.serial),
        "model_number": _text(dev.model),
        "short_description": _text(f"Vending machine at site {dev.site_id or '-'}, {dev.location or 'no location'}"),
        "firmware_version": _text(firmware),
        "last_discovered": _day(st.get("last_seen_at")),
        "operational_status": OPERATIONAL if dev.status == "active" else NON_OPERATIONAL,
        "correlation_id": ci_correlation_id(device_id),
        "correlation_display": CORRELATION_DISPLAY,
    }


def _fingerprint(fields: dict[str, str]) -> str:
    return hashlib.blake2b(msgspec.json.encode(fields), digest_size=12).hexdigest()


class CmdbSync:
    """Finds machines whose CI is out of date and enqueues their ``ci`` deliveries."""

    def __init__(self, cfg: ServiceNowSettings, state: StateStore, outbox: Outbox) -> None:
        state.migrate()
        self.cfg, self.state, self.outbox, self.db = cfg, state, outbox, state.db
        self._next_at = 0.0

    def enqueue_due(self, now: float) -> int:
        """Every ``cmdb_sync_interval_s``: one coalesced delivery per machine whose CI fields changed."""
        if now < self._next_at:
            return 0
        self._next_at = now + self.cfg.cmdb_sync_interval_s
        sent = {r[0]: r[1] for r in self.db.query("SELECT device_id, fingerprint FROM servicenow_ci")}
        n, after = 0, ""
        while True:
            batch = self.state.list_devices(limit=500, after=after)
            if not batch:
                break
            after = batch[-1].device_id
            with self.db.transaction() as tx:
                for dev in batch:
                    fields = ci_fields(self.state, dev.device_id)
                    if fields is None or sent.get(dev.device_id) == _fingerprint(fields):
                        continue
                    self.outbox.coalesce(tx, TARGET, OP, f"ci/{dev.device_id}", {"device_id": dev.device_id},
                                         idem_key=f"{TARGET}:ci:{dev.device_id}", now=now)
                    n += 1
        return n


def deliver_ci(cfg: ServiceNowSettings, state: StateStore, client: ServiceNowClient, gate: Gate,
               device_id: str, now: float) -> None:
    """Create or update the CI of one machine (looked up by correlation id before any create)."""
    fields = ci_fields(state, device_id)
    if fields is None:
        return  # removed from the registry since: the CI stays for people to retire
    db = state.db
    row = db.one("SELECT sys_id, synced FROM servicenow_ci WHERE device_id=?", (device_id,))
    sys_id = str(row[0]) if row and row[0] else None
    synced: dict[str, str] = msgspec.json.decode(row[1]) if row else {}
    if sys_id is None:
        rec, created = creating.find_or_create(
            gate, str(synced.get("_stage", "")),
            set_stage=lambda st: _save(db, device_id, None, {"_stage": st}, now),
            lookup=lambda: client.ci_by_correlation(gate, "cmdb_ci", fields["correlation_id"]),
            prepare=lambda: None,
            create=lambda: client.create_ci(gate, cfg.cmdb_class, fields, prepaid=True))
        sys_id, synced = str(rec["sys_id"]), dict(fields) if created else {}
        if created:
            log.info("created CMDB %s %s for %s", cfg.cmdb_class, sys_id, device_id)
        _save(db, device_id, sys_id, synced, now)
    diff = {k: v for k, v in fields.items() if synced.get(k) != v}
    if diff:
        client.update_ci(gate, "cmdb_ci", sys_id, diff)
        synced = {**synced, **diff}
    _save(db, device_id, sys_id, synced, now, _fingerprint(fields))


def _save(db: Database, device_id: str, sys_id: str | None, synced: dict[str, str], now: float,
          fingerprint: str = "") -> None:
    db.execute("INSERT INTO servicenow_ci VALUES (?,?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET"
               " sys_id=excluded.sys_id, fingerprint=excluded.fingerprint, synced=excluded.synced,"
               " updated_at=excluded.updated_at",
               (device_id, sys_id, fingerprint, msgspec.json.encode(synced).decode(), now))
