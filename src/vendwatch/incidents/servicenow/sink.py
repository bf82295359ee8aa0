"""The ServiceNow sink: reconciles one vendwatch incident with its ServiceNow ticket.

An outbox item only names the incident; the sink reads the incident's current state
and sends the difference from what ServiceNow last acknowledged (kept in
``incident_refs.synced``) plus any pending work notes, so a storm of updates collapses
into a few calls.

Creating a ticket is a small state machine kept in ``servicenow_sync`` so a sync that
runs out of rate-limit tokens resumes where it stopped instead of starting over:

1. no progress: look the ticket up by its opaque correlation id (adopt it if found,
   exact match only), then record ``checked``;
2. ``checked``: take the create's token, record ``creating``, then create; record the
   reference right after, in its own transaction;
3. ``creating`` (a crash or failure while the create was in flight): look up again
   before deciding no ticket exists. This also covers an incident absorbed by a site
   incident before the retry: its ticket is found and resolved with the parent's number.

People own tickets once they close them: state is read before it is changed, Closed (7)
and Canceled (8) tickets are never written to, and a refire after such a close opens a
new ticket (new correlation generation) that names the closed one.
"""

from __future__ import annotations

import logging
from typing import Any

from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import DeliveryFailed, Gate, TargetPolicy, Throttled
from vendwatch.delivery.outbox import Item
from vendwatch.incidents.config import ServiceNowSettings
from vendwatch.incidents.lifecycle import Incident
from vendwatch.incidents.servicenow import cmdb, creating
from vendwatch.incidents.servicenow import mapping as mp
from vendwatch.incidents.servicenow.client import ServiceNowClient
from vendwatch.incidents.store import IncidentStore
from vendwatch.state import migrations

log = logging.getLogger("vendwatch.incidents.servicenow")
SYSTEM = "servicenow"
PARENT_WAIT_S = 10.0  # an absorbed ticket waits this long between checks for its parent's number ...
READ_FRESH_S = 120.0  # a state read before a write is reused this long if the write had to wait for a token
PARENT_WAIT_MAX_S = 600.0  # ... and at most this long (a parent that never gets a ticket must not hold it forever)

migrations.register(
    "servicenow",
    1,
    """CREATE TABLE servicenow_sync(
        incident_id TEXT PRIMARY KEY,
        generation INTEGER NOT NULL DEFAULT 0,
        stage TEXT NOT NULL DEFAULT '',
        previous_number TEXT,
        updated_at DOUBLE PRECISION NOT NULL)""",
)


class ServiceNowSink:
    target = SYSTEM

    def __init__(self, cfg: ServiceNowSettings, store: IncidentStore, clock: Clock) -> None:
        store.state.migrate()
        self.cfg, self.store, self.clock = cfg, store, clock
        self.db = store.db
        self.client = ServiceNowClient(cfg, clock)
        self.policy = TargetPolicy(retry=cfg.retry, rate_limit=cfg.rate_limit, circuit=cfg.circuit)
        self._ci_cache: dict[str, tuple[str | None, float]] = {}

    # -- progress -------------------------------------------------------------------------
    def _progress(self, incident_id: str) -> tuple[int, str, str | None]:
        row = self.db.one("SELECT generation, stage, previous_number FROM servicenow_sync WHERE incident_id=?",
                          (incident_id,))
        return (int(row[0]), str(row[1]), row[2]) if row else (0, "", None)

    def _set_progress(self, incident_id: str, generation: int, stage: str, previous_number: str | None) -> None:
        self.db.execute(
            "INSERT INTO servicenow_sync VALUES (?,?,?,?,?) ON CONFLICT(incident_id) DO UPDATE SET"
            " generation=excluded.generation, stage=excluded.stage, previous_number=excluded.previous_number,"
            " updated_at=excluded.updated_at",
            (incident_id, generation, stage, previous_number, self.clock.now()))

    # -- delivery -------------------------------------------------------------------------
    def deliver(self, item: Item, gate: Gate) -> None:
        if item.op == cmdb.OP:
            cmdb.deliver_ci(self.cfg, self.store.state, self.client, gate, item.payload["device_id"], self.clock.now())
            return
        inc = self.store.get(item.payload["incident_id"])
        if inc is None:
            return  # purged locally: nothing to tell
        ref = self.store.ref(None, inc.incident_id, SYSTEM)
        if ref is None:
            gen, stage, _ = self._progress(inc.incident_id)
            absorbed = inc.status == "absorbed"
            if absorbed and stage != "creating":
                return  # no create was ever sent for it (recorded before sending): the site ticket speaks for it
            if absorbed:
                ref = self._adopt_if_exists(inc, gate, gen)
                if ref is None:
                    self._set_progress(inc.incident_id, gen, "", None)
                    return  # the create never reached ServiceNow
            else:
                ref = self._create(inc, gate)
        self._update(inc, ref, gate, wait_for_parent=self.clock.now() - item.created_at < PARENT_WAIT_MAX_S)

    # -- steps ------------------------------------------------------------------------
    def _device(self, inc: Incident) -> dict[str, Any] | None:
        if not inc.device_id:
            return None
        dev = self.store.state.get_device(inc.device_id)
        if dev is None:
            return None
        return {"serial": dev.serial, "model": dev.model, "location": dev.location}

    def _cmdb_ci(self, inc: Incident, gate: Gate) -> str | None:
        if not inc.device_id:
            return None
        if self.cfg.cmdb_sync:
            found = cmdb.ci_ref(self.db, inc.device_id)
            if found:
                return found
        if not self.cfg.cmdb_lookup:
            return None
        dev = self.store.state.get_device(inc.device_id)
        serial = dev.serial if dev else None
        if not serial:
            return None
        now = self.clock.now()
        hit = self._ci_cache.get(serial)
        if hit and hit[1] > now:
            return hit[0]
        ci = self.client.ci_by_serial(gate, serial)
        self._ci_cache[serial] = (ci, now + self.cfg.cmdb_cache_s)
        return ci

    def _numbers(self, *incident_ids: str) -> dict[str, str]:
        out = {}
        for i in incident_ids:
            r = self.store.ref(None, i, SYSTEM)
            if r and r.get("number"):
                out[i] = str(r["number"])
        return out

    def _resolve_note(self, inc: Incident) -> str | None:
        if inc.status != "resolved":
            return None
        for e in reversed(self.store.timeline(inc.incident_id)):
            if e["kind"] == "resolved":
                reason = e["detail"].get("reason")
                return str(reason) if reason else None
        return None

    def _references(self, fields: dict[str, Any], gate: Gate) -> dict[str, Any]:
        """Reference fields carry sys_ids: names from the settings are resolved once (cached)."""
        out = dict(fields)
        if out.get("assignment_group"):
            out["assignment_group"] = self.client.reference(gate, "sys_user_group", "name", out["assignment_group"])
        if out.get("caller_id"):
            out["caller_id"] = self.client.reference(gate, "sys_user", "user_name", out["caller_id"])
        return out

    def _desired(self, inc: Incident, gen: int, previous_number: str | None) -> dict[str, Any]:
        parent_number = self._numbers(inc.parent_id).get(inc.parent_id or "") if inc.parent_id else None
        fields = mp.desired_fields(self.cfg, inc, parent_number=parent_number, device=self._device(inc),
                                   resolve_note=self._resolve_note(inc), generation=gen,
                                   previous_number=previous_number)
        ci = cmdb.ci_ref(self.db, inc.device_id) if self.cfg.cmdb_sync and inc.device_id else None
        if ci:
            fields["cmdb_ci"] = ci  # a CI synced after the ticket was opened is linked by the next update
        return fields

    def _save(self, inc: Incident, rec: dict[str, Any], synced: dict[str, Any]) -> dict[str, Any]:
        with self.db.transaction() as tx:
            self.store.save_ref(tx, inc.incident_id, SYSTEM, str(rec["sys_id"]), number=rec.get("number"),
                                url=f"{self.client.base}/nav_to.do?uri=incident.do?sys_id={rec['sys_id']}",
                                state=rec.get("state"), synced=synced, now=self.clock.now())
        ref = self.store.ref(None, inc.incident_id, SYSTEM)
        assert ref is not None
        return ref

    def _adopt_if_exists(self, inc: Incident, gate: Gate, gen: int) -> dict[str, Any] | None:
        found = self.client.find_by_correlation(gate, mp.correlation_id(inc.incident_id, gen))
        if found is None:
            return None
        log.info("adopting ServiceNow %s for %s (found by correlation id)", found.get("number"), inc.incident_id)
        # what it holds is unknown: send every field once more (but never re-announce a reopen)
        ref = self._save(inc, found, {"_reopens": inc.reopen_count, "_state": found.get("state")})
        self._set_progress(inc.incident_id, gen, "", self._progress(inc.incident_id)[2])
        return ref

    def _create(self, inc: Incident, gate: Gate) -> dict[str, Any]:
        gen, stage, previous = self._progress(inc.incident_id)
        fields: dict[str, Any] = {}
        rec, created = creating.find_or_create(
            gate, stage,
            set_stage=lambda st: self._set_progress(inc.incident_id, gen, st, previous),
            lookup=lambda: self.client.find_by_correlation(gate, mp.correlation_id(inc.incident_id, gen)),
            prepare=lambda: fields.update(self._creation_fields(inc, gate, gen, previous)),
            create=lambda: self.client.create(gate, fields, prepaid=True))
        if created:
            log.info("created ServiceNow %s for %s", rec.get("number"), inc.incident_id)
            synced = {**fields, "_reopens": inc.reopen_count, "_state": rec.get("state")}
        else:
            log.info("adopting ServiceNow %s for %s (found by correlation id)", rec.get("number"), inc.incident_id)
            # what it holds is unknown: send every field once more (but never re-announce a reopen)
            synced = {"_reopens": inc.reopen_count, "_state": rec.get("state")}
        ref = self._save(inc, rec, synced)
        self._set_progress(inc.incident_id, gen, "", previous)
        return ref

    def _creation_fields(self, inc: Incident, gate: Gate, gen: int, previous: str | None) -> dict[str, Any]:
        fields = self._references(mp.creation_fields(self._desired(inc, gen, previous)), gate)
        ci = self._cmdb_ci(inc, gate)
        if ci:
            fields["cmdb_ci"] = ci
        self.client.ensure_auth(gate)  # a token fetch, if due, goes before the create's own token
        return fields

    def _closed_by_person(self, inc: Incident, ref: dict[str, Any], state: str, notes: list[tuple[int, str]]) -> None:
        """Record that people closed the ticket; pending notes cannot be added to it any more."""
        synced = {**ref["synced"], "_state": state, "_reopens": inc.reopen_count}
        with self.db.transaction() as tx:
            self.store.save_ref(tx, inc.incident_id, SYSTEM, ref["ref_id"], number=ref.get("number"),
                                url=ref.get("url"), state=state, synced=synced, now=self.clock.now())
            self.store.mark_notes_sent(tx, [i for i, _ in notes])
        log.info("ServiceNow %s was %s by a person; vendwatch leaves it as it is", ref.get("number"),
                 mp.state_name(state))

    def _replace_closed(self, inc: Incident, ref: dict[str, Any], gate: Gate) -> dict[str, Any]:
        """A refire after people closed the ticket: a new ticket (next correlation generation) naming the old one."""
        gen, _, _ = self._progress(inc.incident_id)
        self._set_progress(inc.incident_id, gen + 1, "", ref.get("number"))
        with self.db.transaction() as tx:
            self.store.drop_ref(tx, inc.incident_id, SYSTEM)
        return self._create(inc, gate)

    def _update(self, inc: Incident, ref: dict[str, Any], gate: Gate, *, wait_for_parent: bool = True) -> None:
        synced: dict[str, Any] = dict(ref["synced"])
        with self.db.transaction() as tx:
            notes = self.store.pending_notes(tx, inc.incident_id)
        known = ref.get("state")
        reopened = inc.active and inc.reopen_count > int(synced.get("_reopens", 0))
        if wait_for_parent and inc.parent_id and not self._numbers(inc.parent_id):
            raise Throttled(self.clock.now() + PARENT_WAIT_S)  # close notes must name the parent's INC number

        if known in mp.CLOSED_BY_PEOPLE:
            if reopened:
                self._refire_after_close(inc, ref, gate)
            return
        gen, _, previous = self._progress(inc.incident_id)
        desired = self._desired(inc, gen, previous)
        want = desired.pop("state")
        close = {k: desired.pop(k) for k in ("close_code", "close_notes") if k in desired}
        state_fields: dict[str, Any] = {}
        if reopened or mp.rank(want) > mp.rank(known):
            current = self._read_state(inc, ref, synced, gate)
            if current in mp.CLOSED_BY_PEOPLE:
                self._closed_by_person(inc, ref, str(current), [])
                if reopened:
                    self._refire_after_close(inc, self.store.ref(None, inc.incident_id, SYSTEM) or ref, gate)
                return
            if reopened and current == mp.STATE_RESOLVED and self.cfg.on_closed_refire == "new":
                self._replace_closed(inc, ref, gate)
                return
            if reopened and current == mp.STATE_RESOLVED:
                state_fields = {"state": mp.STATE_IN_PROGRESS}
            elif mp.rank(want) > mp.rank(current):
                state_fields = {"state": want, **close}
            known = current
        diff = {k: v for k, v in self._references(desired, gate).items() if synced.get(k) != v}
        body: dict[str, Any] = {**diff, **state_fields}
        if notes:
            numbers = self._numbers(*{i for _, n in notes for i in mp.internal_ids(n)})
            body["work_notes"] = "\n".join(mp.readable_note(n, numbers) for _, n in notes)
        if not body:
            if reopened:
                self._save_synced(inc, ref, synced, known)
            return
        try:
            rec = self.client.update(gate, ref["ref_id"], body)
        except DeliveryFailed as e:
            if e.status != 403:
                raise
            current = self.client.get(gate, ref["ref_id"]).get("state")
            if current in mp.CLOSED_BY_PEOPLE:  # closed between our read and our write
                self._closed_by_person(inc, ref, str(current), notes)
                return
            raise
        synced.update(diff)
        synced.update({k: v for k, v in state_fields.items()})
        with self.db.transaction() as tx:
            self.store.mark_notes_sent(tx, [i for i, _ in notes])
        self._save_synced(inc, ref, synced, str(rec.get("state") or state_fields.get("state") or known or ""))

    def _read_state(self, inc: Incident, ref: dict[str, Any], synced: dict[str, Any], gate: Gate) -> str:
        """The ticket's state, read before changing it. The answer is kept for ``READ_FRESH_S``
        so a write that finds no rate-limit token does not pay for the read again; a person
        closing the ticket in between is caught by the write's 403."""
        now = self.clock.now()
        if synced.get("_read_state") is not None and now - float(synced.get("_read_at", 0)) <= READ_FRESH_S:
            return str(synced["_read_state"])
        current = str(self.client.get(gate, ref["ref_id"]).get("state") or "")
        synced.update(_read_state=current, _read_at=now)
        with self.db.transaction() as tx:
            self.store.save_ref(tx, inc.incident_id, SYSTEM, ref["ref_id"], number=ref.get("number"),
                                url=ref.get("url"), state=current, synced=synced, now=now)
        return current

    def _refire_after_close(self, inc: Incident, ref: dict[str, Any], gate: Gate) -> None:
        new = self._replace_closed(inc, ref, gate)
        self._update(inc, new, gate)

    def _save_synced(self, inc: Incident, ref: dict[str, Any], synced: dict[str, Any], state: str | None) -> None:
        synced = {**synced, "_reopens": inc.reopen_count, "_state": state}
        synced.pop("_read_state", None)  # written: the next state change reads again
        synced.pop("_read_at", None)
        with self.db.transaction() as tx:
            self.store.save_ref(tx, inc.incident_id, SYSTEM, ref["ref_id"], number=ref.get("number"),
                                url=ref.get("url"), state=state, synced=synced, now=self.clock.now())
