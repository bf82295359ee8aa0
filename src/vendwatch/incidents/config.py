"""Typed ``[incidents]`` settings section (owned by the incident orchestrator).

Imports only the delivery settings (themselves free of vendwatch imports) so
``vendwatch.config`` can import it without a cycle. Validation errors raised here surface as ``invalid configuration: incidents.KEY: ...``.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

from vendwatch.delivery.config import CircuitBreaker, RateLimit, RetryPolicy


class _Section(Struct, kw_only=True, forbid_unknown_fields=True):
    pass


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
    cmdb_lookup: bool = True  # link incidents to a CI found by the machine's serial number
    cmdb_cache_s: float = 3600.0
    cmdb_sync: bool = False  # keep one CI per registered machine in the CMDB (opt-in)
    cmdb_class: str = "cmdb_ci_hardware"  # CMDB class table the synced CIs are created in
    cmdb_sync_interval_s: float = 300.0  # how often the registry is compared with what the CMDB was sent
    rate_limit: RateLimit = msgspec.field(default_factory=RateLimit)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    circuit: CircuitBreaker = msgspec.field(default_factory=CircuitBreaker)

    def __post_init__(self) -> None:
        # these names are looked up with an encoded query: query syntax in them would change its meaning
        for key, value in (("default_assignment_group", self.default_assignment_group),
                           ("caller_id", self.caller_id),
                           *((f"assignment[{i}].assignment_group", a.assignment_group)
                             for i, a in enumerate(self.assignment))):
            if value and ("^" in value or "\n" in value):
                raise ValueError(f"{key} must not contain '^' or line breaks, got {value!r}")
        if not self.cmdb_class.startswith("cmdb_ci") or not self.cmdb_class.replace("_", "").isalnum():
            raise ValueError(f"cmdb_class must be a CMDB class table name such as cmdb_ci_hardware, "
                             f"got {self.cmdb_class!r}")
        if self.cmdb_sync_interval_s <= 0:
            raise ValueError("cmdb_sync_interval_s must be > 0")
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
