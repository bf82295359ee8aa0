"""Circuit breaker transitions (pure): closed -> open after N consecutive failures,
open -> half-open after ``open_s`` (one trial call), half-open -> closed on success or
back to open on failure."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class BreakerState:
    circuit: str = "closed"  # closed | open | half-open
    failures: int = 0
    opened_until: float = 0.0  # open: when the trial may go; half-open: when a lost trial may be retried


def allow(s: BreakerState, now: float, open_s: float) -> tuple[bool, BreakerState]:
    """May a call go out now? An expired open circuit lets exactly one trial through."""
    if s.circuit == "closed":
        return True, s
    if now >= s.opened_until:
        # open and expired, or half-open whose trial never reported back (process died mid-call)
        return True, replace(s, circuit="half-open", opened_until=now + open_s)
    return False, s


def on_success(s: BreakerState) -> BreakerState:
    return BreakerState()


def on_failure(s: BreakerState, now: float, threshold: int, open_s: float) -> BreakerState:
    failures = s.failures + 1
    if s.circuit == "half-open" or failures >= threshold:
        return BreakerState("open", failures, now + open_s)
    return replace(s, failures=failures)
