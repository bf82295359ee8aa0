"""The ServiceNow sink: reconciles one vendwatch incident with its ServiceNow ticket.

An outbox item only names the incident; the sink reads the incident's current state
and sends the difference from what ServiceNow last acknowledged (kept in
``incident_refs.synced``) plus any pending work notes. That makes every delivery
idempotent and lets a storm of updates collapse into a few calls.

Crash safety: before creating, the sink looks for an active ServiceNow incident with
``correlation_id`` = the dedupe key and adopts it. If vendwatch died after ServiceNow
created a ticket but before the reference was recorded, the retry finds that ticket
instead of opening a second one. The reference is recorded right after the create,
in its own transaction, before anything else is attempted.
"""

from __future__ import annotations

import logging
from typing import Any

from vendwatch.incidents.clock import Clock
from vendwatch.incidents.config import ServiceNowSettings
from vendwatch.incidents.delivery import Gate, TargetPolicy
from vendwatch.incidents.lifecycle import Incident
from vendwatch.incidents.outbox import Item
from vendwatch.incidents.servicenow.client import ServiceNowClient
from vendwatch.incidents.servicenow.mapping import (
    CLOSED_STATES,
    STATE_IN_PROGRESS,
    creation_fields,
    desired_fields,
)
from vendwatch.incidents.store import IncidentStore
from vendwatch.observe.logs import subject
from vendwatch.observe.metrics import observe_age, observe_hop

log = logging.getLogger("vendwatch.incidents.servicenow")
SYSTEM = "servicenow"


class ServiceNowSink:
    target = SYSTEM

    def __init__(self, cfg: ServiceNowSettings, store: IncidentStore, clock: Clock) -> None:
        self.cfg, self.store, self.clock = cfg, store, clock
        self.client = ServiceNowClient(cfg)
        self.policy = TargetPolicy(retry=cfg.retry, rate_limit=cfg.rate_limit, circuit=cfg.circuit)
        self._ci_cache: dict[str, tuple[str | None, float]] = {}

    def deliver(self, item: Item, gate: Gate) -> None:
        inc = self.store.get(item.payload["incident_id"])
        if inc is None:
            return  # purged locally: nothing to tell
        ref = self.store.ref(None, inc.incident_id, SYSTEM)
        if ref is None:
            if inc.status == "absorbed":
                return  # never reached ServiceNow: the site incident speaks for it
            ref = self._create(inc, gate)
            now = self.clock.now()
            observe_hop("ticket", now - inc.opened_at)
            if isinstance(item.payload.get("event_at"), (int, float)):
                observe_age("ticket", now - item.payload["event_at"])
        self._update(inc, ref, gate)

    # -- steps ------------------------------------------------------------------------
    def _cmdb_ci(self, inc: Incident, gate: Gate) -> str | None:
        if not self.cfg.cmdb_lookup or not inc.device_id:
            return None
        dev = self.store.state.get_device(inc.device_id)
        serial = dev.serial if dev else None
        if not serial:
            return None
        now = self.clock.now()
        hit = self._ci_cache.get(serial)
        if hit and hit[1] > now:
            return hit[0]
        ci = self.client.cmdb_ci_by_serial(gate, serial)
        self._ci_cache[serial] = (ci, now + self.cfg.cmdb_cache_s)
        return ci

    def _parent_number(self, inc: Incident) -> str | None:
        if not inc.parent_id:
            return None
        pref = self.store.ref(None, inc.parent_id, SYSTEM)
        return pref["number"] if pref else None

    def _create(self, inc: Incident, gate: Gate) -> dict[str, Any]:
        existing = self.client.find_active_by_correlation(gate, inc.dedupe_key)
        now = self.clock.now()
        if existing is not None:
            log.info("adopting ServiceNow %s for %s (found by correlation_id)", existing.get("number"), inc.incident_id,
                     extra=subject(incident_id=inc.incident_id, ticket=existing.get("number"), device_id=inc.device_id))
            synced: dict[str, Any] = {}  # unknown: send every field once more
            rec = existing
        else:
            fields = creation_fields(desired_fields(self.cfg, inc))
            ci = self._cmdb_ci(inc, gate)
            if ci:
                fields["cmdb_ci"] = ci
            rec = self.client.create(gate, fields)
            synced = fields
            log.info("created ServiceNow %s for %s", rec.get("number"), inc.incident_id,
                     extra=subject(incident_id=inc.incident_id, ticket=rec.get("number"), device_id=inc.device_id))
        with self.store.db.transaction() as tx:
            self.store.save_ref(tx, inc.incident_id, SYSTEM, str(rec["sys_id"]), number=rec.get("number"),
                                url=f"{self.client.base}/nav_to.do?uri=incident.do?sys_id={rec['sys_id']}",
                                state=rec.get("state"), synced={**synced, "_reopens": inc.reopen_count}, now=now)
        ref = self.store.ref(None, inc.incident_id, SYSTEM)
        assert ref is not None
        return ref

    def _update(self, inc: Incident, ref: dict[str, Any], gate: Gate) -> None:
        synced: dict[str, Any] = dict(ref["synced"])
        desired = desired_fields(self.cfg, inc, parent_number=self._parent_number(inc))
        with self.store.db.transaction() as tx:
            notes = self.store.pending_notes(tx, inc.incident_id)
        sn_closed = ref.get("state") in CLOSED_STATES
        if inc.status in ("open", "acknowledged") and sn_closed:
            if self.cfg.on_closed_refire == "reopen":
                desired["state"] = STATE_IN_PROGRESS  # reopen the same ticket
                synced.pop("state", None)
            else:
                # the ticket is closed and configured to open a new one: forget the old reference
                with self.store.db.transaction() as tx:
                    self.store.drop_ref(tx, inc.incident_id, SYSTEM)
                ref = self._create(inc, gate)
                synced = dict(ref["synced"])
        diff = {k: v for k, v in desired.items() if synced.get(k) != v}
        if ref.get("state") in ("7", "8") and not inc.active:
            # closed or canceled in ServiceNow: never drag it back to Resolved
            for k in ("state", "close_code", "close_notes"):
                diff.pop(k, None)
        if not diff and not notes:
            return
        body: dict[str, Any] = dict(diff)
        if notes:
            body["work_notes"] = "\n".join(n for _, n in notes)
        rec = self.client.update(gate, ref["ref_id"], body)
        synced.update(diff)
        synced["_reopens"] = inc.reopen_count
        with self.store.db.transaction() as tx:
            self.store.save_ref(tx, inc.incident_id, SYSTEM, ref["ref_id"], number=ref.get("number"),
                                url=ref.get("url"), state=rec.get("state", desired.get("state")), synced=synced,
                                now=self.clock.now())
            self.store.mark_notes_sent(tx, [i for i, _ in notes])
