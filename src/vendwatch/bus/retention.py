"""Periodic log retention (``bus.retention_hours``), run by the process that writes the log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import Counter

from vendwatch.bus.base import Log

log = logging.getLogger("vendwatch.bus")

RETENTION_DROPPED = Counter("vendwatch_bus_retention_dropped_records_total", "Log records dropped by retention")


class RetentionTask:
    """Every ``interval_s``: drop records older than ``max_age_s``, then run ``also`` (e.g. dedupe expiry)."""

    name = "log-retention"

    def __init__(self, log_: Log, max_age_s: float, interval_s: float,
                 also: Callable[[], None] | None = None) -> None:
        self.log = log_
        self.max_age_s = max_age_s
        self.interval_s = interval_s
        self.also = also
        self.runs = 0

    def run_once(self) -> int:
        """One pass; returns how many records were dropped."""
        dropped = self.log.enforce_retention(self.max_age_s)
        RETENTION_DROPPED.inc(dropped)
        if dropped:
            log.info("retention dropped %d records older than %.0fh", dropped, self.max_age_s / 3600)
        if self.also is not None:
            self.also()
        self.runs += 1
        return dropped

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # a failed pass is retried next interval; the log keeps working
                log.exception("log retention pass failed")
