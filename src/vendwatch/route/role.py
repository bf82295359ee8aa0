"""The router role: business events -> routing rules -> outbox -> targets.

Reads ``signals`` and ``business`` as a checkpointed stage; for every record, each
matching rule's targets get one outbox row, written in the same transaction as the
consumer position (exactly-once enqueue: a crash replays only records whose rows were
not committed, and ``idem_key`` drops the rest). The ``orchestrator`` target is served
by the orchestrator role, which reads the same signals itself. Deliveries go through
the shared dispatcher (rate limit, retries, circuit breaker, DLQ per target).
"""

from __future__ import annotations

import logging

from vendwatch.bus import BUSINESS, SIGNALS
from vendwatch.bus.base import Record
from vendwatch.delivery.clock import Clock, SystemClock
from vendwatch.delivery.dispatch import Dispatcher, Sink
from vendwatch.delivery.outbox import Outbox
from vendwatch.delivery.stage import DeliveringStage
from vendwatch.route.envelope import EnvelopeError, from_record
from vendwatch.route.rules import ORCHESTRATOR, RuleSet, TargetSpec, load_rules
from vendwatch.runtime import Context
from vendwatch.state.db import Tx

log = logging.getLogger("vendwatch.route")


def make_sink(name: str, spec: TargetSpec, clock: Clock, ctx: Context) -> Sink | None:
    """The sink for one configured target (None for the built-in orchestrator)."""
    if spec.type == "webhook":
        from vendwatch.route.webhook import WebhookSink

        return WebhookSink(name, spec, clock)
    if spec.type == "slack":
        from vendwatch.route.slack import SlackSink

        return SlackSink(name, spec, clock)
    if spec.type == "pagerduty":
        from vendwatch.route.pagerduty import PagerDutySink

        return PagerDutySink(name, spec, clock)
    if spec.type == "log":
        from vendwatch.route.logtopic import LogTopicSink

        return LogTopicSink(name, spec, clock, ctx.log)
    return None


class Router(DeliveringStage):
    name = "router"
    topics = (SIGNALS, BUSINESS)
    batch_size = 500

    def __init__(self, ctx: Context, clock: Clock | None = None, rules: RuleSet | None = None) -> None:
        super().__init__(ctx)
        self.clock = clock or SystemClock()
        self.rules = rules or load_rules(ctx.settings.incidents.routing_rules)
        ctx.state.migrate()  # makes sure the outbox tables exist (registered by delivery.outbox)
        self.outbox = Outbox(ctx.state.db)
        sinks = [s for n, spec in self.rules.targets.items() if (s := make_sink(n, spec, self.clock, ctx))]
        self.dispatcher = Dispatcher(ctx.state.db, self.outbox, sinks, self.clock,
                                     batch=ctx.settings.incidents.outbox_batch,
                                     lease_s=ctx.settings.incidents.outbox_lease_s)
        self.tick_s = ctx.settings.incidents.tick_s
        for t in self.topics:
            ctx.log.create_topic(t)

    def apply(self, tx: Tx, records: list[Record]) -> None:
        now = self.clock.now()
        for r in records:
            try:
                event = from_record(r.value, r.topic, r.partition, r.offset)
            except EnvelopeError as e:
                self.dead_letter(tx, r, str(e))
                continue
            detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
            key = str(detail.get("dedupe_key") or r.key or event["id"])
            for target in self.rules.targets_for(event):
                if target == ORCHESTRATOR:
                    continue
                self.outbox.enqueue(tx, target, "event", key, {"event": event},
                                    idem_key=f"{target}:{r.topic}/{r.partition}/{r.offset}", now=now)

    def housekeeping(self) -> None:
        from vendwatch.delivery import metrics

        metrics.refresh_depths(self.outbox.depth(), self.outbox.dlq_depth())


def build(ctx: Context) -> Router:
    return Router(ctx)
