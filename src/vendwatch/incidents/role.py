"""The orchestrator role: signals -> incident lifecycle -> outbox -> ServiceNow.

It reads the ``signals`` topic as a checkpointed stage (lifecycle changes, outbox rows
and the consumer position commit together: exactly-once effects), keeps only signals
that a routing rule sends to the ``orchestrator`` target, runs the flap-damping timer
and drains the outbox through the ServiceNow sink.
"""

from __future__ import annotations

import logging

import msgspec

from vendwatch.bus import SIGNALS
from vendwatch.bus.base import Record
from vendwatch.delivery.clock import Clock, SystemClock
from vendwatch.delivery.dispatch import Dispatcher, Sink
from vendwatch.delivery.stage import DeliveringStage
from vendwatch.incidents.service import IncidentService
from vendwatch.route.envelope import from_signal
from vendwatch.route.rules import RuleSet, load_rules
from vendwatch.runtime import Context
from vendwatch.signals import Signal, decode_signal
from vendwatch.state.db import Tx

log = logging.getLogger("vendwatch.incidents")


class Orchestrator(DeliveringStage):
    name = "orchestrator"
    topics = (SIGNALS,)
    batch_size = 500

    def __init__(self, ctx: Context, clock: Clock | None = None, rules: RuleSet | None = None) -> None:
        super().__init__(ctx)
        cfg = ctx.settings.incidents
        self.clock = clock or SystemClock()
        self.service = IncidentService(ctx.state, cfg, self.clock)
        self.rules = rules or load_rules(cfg.routing_rules)
        sinks: list[Sink] = []
        if cfg.servicenow.url:
            from vendwatch.incidents.servicenow.sink import ServiceNowSink

            sinks.append(ServiceNowSink(cfg.servicenow, self.service.store, self.clock))
        self.cmdb = None
        if cfg.servicenow.url and cfg.servicenow.cmdb_sync:
            from vendwatch.incidents.servicenow.cmdb import CmdbSync

            self.cmdb = CmdbSync(cfg.servicenow, ctx.state, self.service.outbox)
        self.dispatcher = Dispatcher(ctx.state.db, self.service.outbox, sinks, self.clock,
                                     batch=cfg.outbox_batch, lease_s=cfg.outbox_lease_s)
        self.tick_s = cfg.tick_s
        self.ctx.log.create_topic(SIGNALS)

    def apply(self, tx: Tx, records: list[Record]) -> None:
        sigs: list[Signal] = []
        for r in records:
            try:
                sig = decode_signal(r.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                # a malformed signal cannot become valid by retrying: set it aside and move on
                self.dead_letter(tx, r, f"undecodable signal: {e}")
                continue
            if self.rules.to_orchestrator(from_signal(sig)):
                sigs.append(sig)
        # the poll's signals in order, read and written in bulk (one by one in effect); a
        # signal that fails fails the batch, which the stage then splits to set it aside
        self.service.handle_signals(tx, sigs)

    def timers(self) -> int:
        n = self.service.tick()
        if self.cmdb is not None:
            n += self.cmdb.enqueue_due(self.clock.now())
        return n

    def housekeeping(self) -> None:
        self.service.refresh_metrics()


def build(ctx: Context) -> Orchestrator:
    return Orchestrator(ctx)
