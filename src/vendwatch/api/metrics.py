"""HTTP server and authentication metrics (collector and operator API alike)."""

from __future__ import annotations

from prometheus_client import Counter

CONNECTIONS_REFUSED = Counter(
    "vendwatch_server_connections_refused_total",
    "Connections closed by the server's guards (header_timeout, headers_too_large, per_client_limit)",
    ["reason"],
)
AUTH_FAILURES = Counter(
    "vendwatch_api_auth_failures_total",
    "Requests refused for a missing, unknown, expired or disabled token, by kind (device, operator)",
    ["kind"],
)
AUTH_THROTTLED = Counter(
    "vendwatch_api_auth_throttled_total",
    "Requests refused with 429 because their client address failed authentication too often",
    ["kind"],
)
