"""The incident service: runs lifecycle decisions against the store and enqueues the
external deliveries they imply, in one transaction. Used by the orchestrator role
(signals, timers), the API and the CLI (acknowledge, resolve)."""

from __future__ import annotations

from vendwatch.delivery.clock import Clock, SystemClock
from vendwatch.delivery.outbox import Outbox
from vendwatch.incidents import lifecycle as lc
from vendwatch.incidents import metrics as m
from vendwatch.incidents.config import IncidentsSettings
from vendwatch.incidents.store import IncidentStore
from vendwatch.signals import Signal
from vendwatch.state.db import Tx
from vendwatch.state.store import StateStore


class IncidentNotFound(LookupError):
    """No incident with that id."""


class IncidentService:
    def __init__(self, state: StateStore, cfg: IncidentsSettings, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.store = IncidentStore(state)
        self.outbox = Outbox(state.db)
        self.policy = lc.Policy(flap_damping_s=cfg.flap_damping_s, reopen_window_s=cfg.reopen_window_s,
                                group_wait_s=cfg.group_wait_s)

    @property
    def sync_targets(self) -> list[str]:
        """External systems every incident change is sent to."""
        return ["servicenow"] if self.cfg.servicenow.url else []

    def _commit(self, tx: Tx, d: lc.Decision, now: float) -> None:
        self.store.apply(tx, d)
        for e in d.entries:
            m.TRANSITIONS.labels(e.kind).inc()
        for inc in d.sync:
            for target in self.sync_targets:
                idem = f"{target}:sync:{inc.incident_id}"
                if (inc.incident_id in d.withdraw and self.store.ref(tx, inc.incident_id, target) is None
                        and self.outbox.cancel(tx, idem)):
                    continue  # never told, and no longer worth telling (a false alarm)
                # one pending "sync this incident" per incident and target; later changes mark it dirty
                self.outbox.coalesce(tx, target, "sync", inc.dedupe_key, {"incident_id": inc.incident_id},
                                     idem_key=idem, now=now, not_before=d.hold.get(inc.incident_id))

    def handle_signal(self, tx: Tx, sig: Signal) -> lc.Decision:
        """Apply one signal (inside the caller's transaction)."""
        now = self.clock.now()
        if self.store.seen_signal(tx, sig.signal_id, now):
            return lc.Decision(ignored="duplicate signal")
        active = self.store.active_for(tx, sig.dedupe_key)
        parent_key = lc.parent_key(sig)
        parent = self.store.active_for(tx, parent_key) if parent_key else None
        silence = None
        if active is None and sig.status == "firing" and sig.kind == "incident":
            silence = self.store.matching_silence(tx, now, device_id=sig.device_id, site_id=sig.site_id,
                                                  rule_id=sig.rule_id)
        last_closed = self.store.last_closed_for(tx, sig.dedupe_key) if active is None else None
        children = []
        if sig.scope == "site" and sig.status == "firing":
            children = self.store.active_caused_by(tx, sig.dedupe_key)
            device_rule = sig.evidence.get("device_rule")
            if sig.site_id and isinstance(device_rule, str):
                # device incidents that opened before the site was found (still in their grouping delay)
                children += self.store.active_of_site(tx, sig.site_id, device_rule,
                                                      opened_since=now - self.policy.group_wait_s)
        d = lc.on_signal(sig, now, self.policy, active=active, last_closed=last_closed, parent=parent,
                         silence_id=silence, children=children)
        if d.suppressed_by:
            m.SUPPRESSED.inc()
        self._commit(tx, d, now)
        return d

    def tick(self) -> int:
        """Timers: resolve incidents whose flap-damping delay has passed. Returns how many."""
        now = self.clock.now()
        n = 0
        with self.store.db.transaction() as tx:
            for inc in self.store.due_resolves(tx, now):
                d = lc.due_resolve(inc, now)
                self._commit(tx, d, now)
                n += len(d.incidents)
            self.store.prune_seen(tx, now - 7 * 86_400)
        return n

    def _operator(self, incident_id: str, fn: str, actor: str, note: str = "") -> lc.Decision:
        now = self.clock.now()
        with self.store.db.transaction() as tx:
            inc = self.store.get(incident_id, tx)
            if inc is None:
                raise IncidentNotFound(incident_id)
            d = lc.acknowledge(inc, now, actor) if fn == "ack" else lc.resolve(inc, now, actor, note)
            self._commit(tx, d, now)
        return d

    def acknowledge(self, incident_id: str, actor: str) -> lc.Decision:
        return self._operator(incident_id, "ack", actor)

    def resolve(self, incident_id: str, actor: str, note: str = "") -> lc.Decision:
        return self._operator(incident_id, "resolve", actor, note)

    def refresh_metrics(self) -> None:
        m.refresh(self.store.counts_by_status(), self.outbox.depth(), self.outbox.dlq_depth())
