"""Typed ``[incidents]`` settings section (owned by the incident orchestrator).

Kept free of other vendwatch imports so ``vendwatch.config`` can import it without a
cycle. Validation errors raised here surface as ``invalid configuration: incidents.KEY: ...``.
"""

from __future__ import annotations

from typing import Literal

import msgspec
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


class Assignment(_Section):
    """Assignment group / category for incidents of a site or rule (first match wins)."""

    site_id: str | None = None
    rule_id: str | None = None
    assignment_group: str | None = None
    category: str | None = None
    subcategory: str | None = None


class OAuthSettings(_Section):
    client_id: str = ""
    client_secret: str = ""
    grant_type: Literal["password", "client_credentials"] = "password"


class ServiceNowSettings(_Section):
    url: str = ""  # e.g. https://example.service-now.com; empty: ServiceNow disabled
    auth: Literal["basic", "oauth"] = "basic"
    username: str = ""
    password: str = ""
    oauth: OAuthSettings = msgspec.field(default_factory=OAuthSettings)
    timeout_s: float = 10.0
    caller_id: str | None = None
    default_assignment_group: str | None = None
    default_category: str = "hardware"
    assignment: list[Assignment] = []
    close_code: str = "Resolved by caller"  # ServiceNow's default choice list value
    # closed (state 6/7) incident and the key fires again inside the reopen window:
    # "reopen" sets it back to In Progress; "new" always opens a new incident
    on_closed_refire: Literal["reopen", "new"] = "reopen"
    cmdb_lookup: bool = True
    cmdb_cache_s: float = 3600.0
    rate_limit: RateLimit = msgspec.field(default_factory=RateLimit)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    circuit: CircuitBreaker = msgspec.field(default_factory=CircuitBreaker)

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.url and self.auth == "basic" and not (self.username and self.password):
            raise ValueError("username and password are required with auth = basic")
        if self.url and self.auth == "oauth" and not (self.oauth.client_id and self.oauth.client_secret):
            raise ValueError("oauth.client_id and oauth.client_secret are required with auth = oauth")
        if self.url and self.auth == "oauth" and self.oauth.grant_type == "password" and not self.username:
            raise ValueError("username and password are required for the OAuth password grant")


class IncidentsSettings(_Section):
    enabled: bool = True
    flap_damping_s: float = 120.0  # a resolved signal closes the incident only after this quiet time
    reopen_window_s: float = 3600.0  # a firing within this time after resolve reopens it
    # a device incident a site outage may still absorb (machine offline) opens at once, but
    # its ticket waits this long: a site incident found meanwhile takes it over, one ticket
    # per site. Cover the heartbeat interval (machines of a site fall silent up to one
    # interval apart). 0: ticket at once; longer: fewer tickets, later tickets
    group_wait_s: float = 60.0
    routing_rules: str | None = None  # YAML file of routing rules and targets (see docs/incidents.md)
    servicenow: ServiceNowSettings = msgspec.field(default_factory=ServiceNowSettings)
    outbox_batch: int = 50
    outbox_lease_s: float = 60.0  # a claimed delivery not finished by then is claimed again
    tick_s: float = 0.5  # how often timers (flap damping, outbox) are checked when idle

    def __post_init__(self) -> None:
        if self.flap_damping_s < 0 or self.reopen_window_s < 0 or self.group_wait_s < 0:
            raise ValueError("flap_damping_s, reopen_window_s and group_wait_s must be >= 0")
        if self.outbox_batch < 1 or self.outbox_lease_s <= 0 or self.tick_s <= 0:
            raise ValueError("outbox_batch, outbox_lease_s and tick_s must be > 0")
