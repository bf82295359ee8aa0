"""Typed delivery settings shared by every outbound target (retry, rate limit, circuit).

Free of other vendwatch imports so every settings module can use it without a cycle.
"""

from __future__ import annotations

from msgspec import Struct


class _Section(Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class RetryPolicy(_Section):
    """Per-target retry policy (EventBridge style): attempts, event age, backoff with jitter."""

    max_attempts: int = 185  # EventBridge's default
    max_event_age_s: float = 86_400.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.5  # fraction of the delay drawn at random ("equal jitter" at 0.5)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_event_age_s <= 0 or self.backoff_initial_s <= 0 or self.backoff_max_s <= 0:
            raise ValueError("max_event_age_s, backoff_initial_s and backoff_max_s must be > 0")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")


class RateLimit(_Section):
    """Token bucket: ``per_minute`` calls on average, ``burst`` at once."""

    per_minute: float = 120.0
    burst: float = 10.0

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")


class CircuitBreaker(_Section):
    failure_threshold: int = 5  # consecutive retryable failures that open the circuit
    open_s: float = 30.0  # how long it stays open before one trial call (half-open)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.open_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and open_s > 0")
