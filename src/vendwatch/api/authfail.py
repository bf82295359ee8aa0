"""Failed authentications: counted, logged (sampled) and limited per client address.

Without this a token-guessing client, or a fleet still sending a rotated-out token,
was invisible: a 401 left no metric and no log line, and nothing slowed it down. Each
failure takes one token from the client address's bucket (``server.auth_failures_per_min``,
burst ``server.auth_failures_burst``); an empty bucket answers 429 before the token is
even looked up. Successful requests cost nothing here. Behind a proxy the client
address is the one uvicorn takes from ``X-Forwarded-For`` (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from vendwatch.api import metrics as m

log = logging.getLogger("vendwatch.auth")


class AuthFailures:
    """Per-kind (``device``/``operator``) failure accounting with a per-client budget."""

    max_clients = 100_000  # bounded memory; a reset only ever forgives, never blocks

    def __init__(self, kind: str, per_min: float, burst: float, log_every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self.rate = per_min / 60.0
        self.burst = max(burst, 1.0)
        self.clock = clock
        self.log_every_s = log_every_s
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._failures = m.AUTH_FAILURES.labels(kind=kind)
        self._throttled = m.AUTH_THROTTLED.labels(kind=kind)
        self._last_log = -float("inf")
        self._unlogged = 0

    def _tokens(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def retry_after(self, client: str) -> int:
        """0 when ``client`` may try to authenticate, else seconds it must wait first."""
        if self.rate <= 0 or client not in self._buckets:
            return 0
        tokens = self._tokens(client, self.clock())
        if tokens >= 1.0:
            return 0
        self._throttled.inc()
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def failed(self, client: str, reason: str) -> None:
        """Record one failed authentication from ``client``."""
        self._failures.inc()
        now = self.clock()
        if self.rate > 0:
            if len(self._buckets) >= self.max_clients and client not in self._buckets:
                self._buckets.clear()
            self._buckets[client] = (self._tokens(client, now) - 1.0, now)
        self._unlogged += 1
        if now - self._last_log >= self.log_every_s:
            # sampled: a flood of bad tokens must not become a flood of log lines
            log.warning("%s authentication failed from %s (%s); %d failure(s) since the last line",
                        self.kind, client, reason, self._unlogged,
                        extra={"client": client, "kind": self.kind, "failures": self._unlogged})
            self._last_log = now
            self._unlogged = 0
