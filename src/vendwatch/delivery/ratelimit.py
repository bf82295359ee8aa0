"""Token bucket, as a pure function over (tokens, last refill) so it can live in the DB.

``per_minute`` is a hard ceiling over any 60-second window: the bucket holds ``burst``
tokens and refills at ``(per_minute - burst) / 60`` per second, so a full bucket spent
at once plus a minute of refill never exceeds ``per_minute``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bucket:
    per_minute: float
    burst: float

    @property
    def capacity(self) -> float:
        return min(self.burst, self.per_minute)

    @property
    def rate_per_s(self) -> float:
        # keep a small positive rate even when burst == per_minute
        return max(self.per_minute - self.capacity, self.per_minute * 0.01) / 60.0

    def refill(self, tokens: float, refilled_at: float, now: float) -> float:
        return min(self.capacity, tokens + max(0.0, now - refilled_at) * self.rate_per_s)

    def take(self, tokens: float, refilled_at: float, now: float) -> tuple[bool, float, float]:
        """Try to spend one token: (allowed, tokens after, when the next token is available)."""
        t = self.refill(tokens, refilled_at, now)
        if t >= 1.0:
            return True, t - 1.0, now
        return False, t, now + (1.0 - t) / self.rate_per_s
