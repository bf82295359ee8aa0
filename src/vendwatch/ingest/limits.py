"""Per-device token-bucket rate limiting (pure, clock injected)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBuckets:
    """One bucket per key; ``take`` answers 0 when allowed, else seconds to wait."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 2_000_000) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._b: dict[str, tuple[float, float]] = {}

    def take(self, key: str, n: float = 1.0) -> float:
        now = self.clock()
        tokens, last = self._b.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if n > self.burst:  # can never fit: tell the caller how long a full bucket takes
            return (n - tokens) / self.rate
        if tokens >= n:
            if len(self._b) >= self.max_keys and key not in self._b:
                self._b.clear()  # bounded memory; a reset only ever grants, never denies
            self._b[key] = (tokens - n, now)
            return 0.0
        self._b[key] = (tokens, now)
        return (n - tokens) / self.rate
