"""The incident service: runs lifecycle decisions against the store and enqueues the
external deliveries they imply, in one transaction. Used by the orchestrator role
(signals, timers), the API and the CLI (acknowledge, resolve)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vendwatch.delivery.clock import Clock, SystemClock
from vendwatch.delivery.outbox import Outbox
from vendwatch.incidents import lifecycle as lc
from vendwatch.incidents import metrics as m
from vendwatch.incidents.batch import IncidentBatch
from vendwatch.incidents.config import IncidentsSettings
from vendwatch.incidents.store import IncidentStore
from vendwatch.observe.logs import subject
from vendwatch.observe.metrics import TIME_TO_ACK, TIME_TO_RESOLVE, child, observe_age, observe_hop
from vendwatch.signals import Signal
from vendwatch.state.db import Tx
from vendwatch.state.store import StateStore

log = logging.getLogger("vendwatch.incidents")
# lifecycle changes worth a log line each (updates of a firing incident are counted, not logged)
_LOGGED = frozenset({"opened", "reopened", "acknowledged", "resolved", "absorbed", "severity_changed"})


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

    def _commit(self, batch: IncidentBatch, d: lc.Decision, now: float, event_at: float | None = None) -> None:
        batch.apply(d)
        by_id = {inc.incident_id: inc for inc in d.incidents}
        for e in d.entries:
            child(m.TRANSITIONS, e.kind).inc()
            inc = by_id.get(e.incident_id)
            if inc is not None and e.kind in _LOGGED:
                log.info("incident %s %s (%s)", inc.incident_id, e.kind, inc.dedupe_key,
                         extra=subject(incident_id=inc.incident_id, device_id=inc.device_id, site_id=inc.site_id,
                                       dedupe_key=inc.dedupe_key, severity=inc.severity, actor=e.actor))
            if inc is not None and e.kind in ("acknowledged", "resolved"):
                hist = TIME_TO_ACK if e.kind == "acknowledged" else TIME_TO_RESOLVE
                hist.labels(inc.severity).observe(max(0.0, e.at - inc.opened_at))
        for inc in d.sync:
            for target in self.sync_targets:
                idem = f"{target}:sync:{inc.incident_id}"
                if (inc.incident_id in d.withdraw and batch.ref(inc.incident_id, target) is None
                        and batch.cancel(idem)):
                    continue  # never told, and no longer worth telling (a false alarm)
                # one pending "sync this incident" per incident and target; later changes mark it dirty
                payload: dict[str, object] = {"incident_id": inc.incident_id}
                if event_at is not None:  # for the event-to-ticket latency (observe.metrics)
                    payload["event_at"] = event_at
                batch.coalesce(target, "sync", inc.dedupe_key, payload,
                               idem_key=idem, now=now, not_before=d.hold.get(inc.incident_id))

    def handle_signal(self, tx: Tx, sig: Signal) -> lc.Decision:
        """Apply one signal (inside the caller's transaction)."""
        return self.handle_signals(tx, [sig])[0]

    def handle_signals(self, tx: Tx, sigs: Sequence[Signal]) -> list[lc.Decision]:
        """Apply signals in order, each seeing the effects of those before it, inside the
        caller's transaction: the same decisions and writes as one ``handle_signal`` call
        each, in a few statements per batch (``IncidentBatch``). A replay (a signal id seen
        before, or twice in ``sigs``) changes nothing."""
        now = self.clock.now()
        batch = IncidentBatch(self.store, self.outbox, tx)
        fresh = self.store.record_signals(tx, [s.signal_id for s in sigs], now)
        keys: list[str] = []
        for s in sigs:
            if s.signal_id in fresh and s.kind == "incident":
                keys.append(s.dedupe_key)
                pk = lc.parent_key(s)
                if pk:
                    keys.append(pk)
        batch.load_active(keys)
        # an incident-less key's latest closed incident decides whether a firing reopens it
        batch.load_closed(s.dedupe_key for s in sigs
                          if s.signal_id in fresh and s.kind == "incident" and batch.active_for(s.dedupe_key) is None)
        out = []
        for sig in sigs:
            if sig.signal_id not in fresh:
                out.append(lc.Decision(ignored="duplicate signal"))
                continue
            fresh.discard(sig.signal_id)  # a second copy in the same batch is a replay too
            out.append(self._on_signal(batch, sig, now))
        batch.flush()
        return out

    def _on_signal(self, batch: IncidentBatch, sig: Signal, now: float) -> lc.Decision:
        if sig.kind != "incident":  # decided without any state: read none
            return lc.on_signal(sig, now, self.policy, active=None, last_closed=None, parent=None, silence_id=None)
        active = batch.active_for(sig.dedupe_key)
        parent_key = lc.parent_key(sig)
        parent = batch.active_for(parent_key) if parent_key else None
        silence = None
        if active is None and sig.status == "firing" and sig.kind == "incident":
            silence = batch.matching_silence(now, device_id=sig.device_id, site_id=sig.site_id, rule_id=sig.rule_id)
        last_closed = batch.last_closed_for(sig.dedupe_key) if active is None else None
        children = []
        if sig.scope == "site" and sig.status == "firing":
            children = batch.active_caused_by(sig.dedupe_key)
            device_rule = sig.evidence.get("device_rule")
            if sig.site_id and isinstance(device_rule, str):
                # device incidents that opened before the site was found (still in their grouping delay)
                children += batch.active_of_site(sig.site_id, device_rule, opened_since=now - self.policy.group_wait_s)
        d = lc.on_signal(sig, now, self.policy, active=active, last_closed=last_closed, parent=parent,
                         silence_id=silence, children=children)
        if d.suppressed_by:
            m.SUPPRESSED.inc()
        event_at = sig.occurred_at.timestamp()
        self._commit(batch, d, now, event_at if sig.status == "firing" else None)
        if d.incidents and sig.status == "firing":
            observe_hop("incident", now - sig.emitted_at.timestamp())
            observe_age("incident", now - event_at)
        return d

    def tick(self) -> int:
        """Timers: resolve incidents whose flap-damping delay has passed. Returns how many."""
        now = self.clock.now()
        n = 0
        with self.store.db.transaction() as tx:
            batch = IncidentBatch(self.store, self.outbox, tx)
            for inc in self.store.due_resolves(tx, now):
                d = lc.due_resolve(inc, now)
                self._commit(batch, d, now)
                n += len(d.incidents)
            batch.flush()
            self.store.prune_seen(tx, now - 7 * 86_400)
        return n

    def _operator(self, incident_id: str, fn: str, actor: str, note: str = "") -> lc.Decision:
        now = self.clock.now()
        with self.store.db.transaction() as tx:
            inc = self.store.get(incident_id, tx)
            if inc is None:
                raise IncidentNotFound(incident_id)
            d = lc.acknowledge(inc, now, actor) if fn == "ack" else lc.resolve(inc, now, actor, note)
            batch = IncidentBatch(self.store, self.outbox, tx)
            self._commit(batch, d, now)
            batch.flush()
        return d

    def acknowledge(self, incident_id: str, actor: str) -> lc.Decision:
        return self._operator(incident_id, "ack", actor)

    def resolve(self, incident_id: str, actor: str, note: str = "") -> lc.Decision:
        return self._operator(incident_id, "resolve", actor, note)

    def refresh_metrics(self) -> None:
        m.refresh(self.store.counts_by_status(), self.outbox.depth(), self.outbox.dlq_depth())
