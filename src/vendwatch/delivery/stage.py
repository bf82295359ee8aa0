"""A checkpointed log stage that also drains an outbox: the shape of both the router and
the orchestrator. ``step()`` is one round (poll, timers, deliveries) so tests can drive
it in virtual time; ``run()`` loops it until stopped."""

from __future__ import annotations

import threading
import time

from vendwatch.delivery.dispatch import Dispatcher
from vendwatch.stage import CheckpointedStage


class DeliveringStage(CheckpointedStage):
    dispatcher: Dispatcher
    tick_s: float = 0.5
    housekeeping_s: float = 5.0

    def timers(self) -> int:
        """Hook: time-driven work; returns how much was done."""
        return 0

    def housekeeping(self) -> None:
        """Hook: called every ``housekeeping_s`` seconds (metrics gauges)."""

    def step(self, poll_timeout_s: float = 0.0) -> int:
        """One round: new records, timers, then every delivery due now. Returns work done."""
        if self._consumer is None:
            self.open()
        assert self._consumer is not None
        recs = self.poll(self._consumer, poll_timeout_s)
        if recs:
            self.process(recs)
            self._group_behind = True
        self.commit_group(self._consumer)
        self._report_lag()
        done = len(recs) + self.timers()
        while True:
            n = self.dispatcher.run_once()
            done += n
            if n < self.dispatcher.batch:
                break
        return done

    def open(self) -> None:
        self._consumer = self.ctx.log.consumer(self.group, self.topics, on_assign=self._on_assign,
                                               on_revoke=self.on_revoke)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self.dispatcher.close()

    def run(self, stop: threading.Event) -> None:
        self.open()
        last = 0.0
        try:
            while not stop.is_set():
                did = self.step(poll_timeout_s=self.tick_s)
                if time.monotonic() - last >= self.housekeeping_s:
                    self.housekeeping()
                    last = time.monotonic()
                if not did:
                    self._maybe_redrive()  # stage dead letters an operator asked to apply again
                    stop.wait(0.01)
                self._report_lag()
        except BaseException:
            self._lag_due = 0.0  # a stuck stage's lag shows at once
            self._report_lag()
            raise
        finally:
            self.close()
