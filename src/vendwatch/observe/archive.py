"""Ships this process's log lines to the ``system_logs`` topic, from where the lake writer
archives them in ``raw.system_logs`` (``log_archive = true``, the default; lines at
``log_archive_level``, default ``warning``, and above).

Lines are queued in memory and appended in batches by one background thread, so
logging never waits for the log. The queue is bounded (``MAX_QUEUE``): when the log is
down for long, the oldest lines are dropped and counted
(``vendwatch_log_archive_dropped_total``); stderr still has every line. Lines logged
while appending (the log's own errors) are not archived, which keeps the handler
from feeding itself.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from prometheus_client import Counter

from vendwatch.bus.base import Log, LogError
from vendwatch.observe.logs import LEVELS, IdentityFilter, _json, _record_dict

SYSTEM_LOGS = "system_logs"  # the lake's name for it: vendwatch.lake.system_logs.SYSTEM_LOGS
MAX_QUEUE = 20_000
BATCH = 1_000
DROPPED = Counter("vendwatch_log_archive_dropped_total", "Log lines not archived (queue full while the log was down)")
ARCHIVED = Counter("vendwatch_log_archive_lines_total", "Log lines appended to the system_logs topic")

_local = threading.local()


class ArchiveHandler(logging.Handler):
    def __init__(self, log: Log, level: str = "warning", flush_s: float = 1.0) -> None:
        super().__init__(level.upper())
        self.log, self.flush_s = log, flush_s
        self.queue: deque[tuple[str, bytes]] = deque()
        self.addFilter(IdentityFilter())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="vw-log-archive", daemon=True)
        self._created = False
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(_local, "shipping", False):
            return
        try:
            line = _record_dict(record)
            value = _json.encode(line)
        except Exception:  # noqa: BLE001 - a line that cannot be encoded is not worth a crash
            self.handleError(record)
            return
        with self._lock:
            if len(self.queue) >= MAX_QUEUE:
                self.queue.popleft()
                DROPPED.inc()
            self.queue.append((str(line.get("role") or "-"), value))

    def _take(self) -> list[tuple[str, bytes]]:
        with self._lock:
            n = min(BATCH, len(self.queue))
            return [self.queue.popleft() for _ in range(n)]

    def ship(self) -> int:
        """Append what is queued now; returns the lines appended (0 when the log refused them)."""
        _local.shipping = True
        sent = 0
        try:
            if not self._created:
                self.log.create_topic(SYSTEM_LOGS)
                self._created = True
            while True:
                batch = self._take()
                if not batch:
                    return sent
                try:
                    self.log.append(SYSTEM_LOGS, batch)
                except (LogError, OSError, RuntimeError):
                    with self._lock:  # back to the front: retried on the next round
                        self.queue.extendleft(reversed(batch))
                    return sent
                sent += len(batch)
                ARCHIVED.inc(len(batch))
        except (LogError, OSError, RuntimeError):
            return sent
        finally:
            _local.shipping = False

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_s)
            self.ship()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.ship()
        super().close()


_installed: dict[str, Any] = {}


def install(log: Log, level: str = "warning") -> ArchiveHandler:
    """Archive this process's lines from now on (replaces an earlier installation)."""
    if level.lower() not in LEVELS:
        level = "warning"
    uninstall()
    h = ArchiveHandler(log, level)
    logging.getLogger().addHandler(h)
    _installed["handler"] = h
    return h


def uninstall() -> None:
    """Ship what is queued and stop (before the log it writes to is closed)."""
    h = _installed.pop("handler", None)
    if h is not None:
        logging.getLogger().removeHandler(h)
        h.close()
