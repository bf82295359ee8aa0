"""Retry policy: which outcomes are retried, and when the next attempt is due."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

from vendwatch.delivery.config import RetryPolicy


def retryable_status(status: int) -> bool:
    """429 and 5xx are worth retrying; other 4xx will fail the same way again."""
    return status == 429 or 500 <= status <= 599


def backoff_s(policy: RetryPolicy, attempts: int, rng: random.Random | None = None) -> float:
    """Exponential backoff after ``attempts`` failed attempts, with jitter.

    ``jitter`` j keeps (1 - j) of the delay and draws the rest at random, so j = 0.5
    is "equal jitter" and j = 1 is "full jitter".
    """
    base = min(policy.backoff_max_s, policy.backoff_initial_s * policy.backoff_multiplier ** max(0, attempts - 1))
    r = (rng or random).random()
    return base * (1 - policy.jitter) + base * policy.jitter * r


def retry_at_from_headers(headers: dict[str, str], now: float) -> float | None:
    """The instant a server asked us to wait until (``Retry-After`` or ``X-RateLimit-Reset``)."""
    h = {k.lower(): v for k, v in headers.items()}
    ra = h.get("retry-after")
    if ra:
        ra = ra.strip()
        try:
            return now + max(0.0, float(ra))
        except ValueError:
            try:
                return parsedate_to_datetime(ra).timestamp()
            except (TypeError, ValueError):
                pass
    reset = h.get("x-ratelimit-reset")
    if reset:
        try:
            v = float(reset.strip())
        except ValueError:
            return None
        # ServiceNow and GitHub send epoch seconds; some APIs send seconds to wait
        return v if v > 1e9 else now + max(0.0, v)
    return None
