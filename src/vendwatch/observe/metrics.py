"""Prometheus metrics, named ``vendwatch_<part>_<what>_<unit>``.

Latency is measured at every hop an event takes (docs/observability.md):

    occurred -> received -> durable -> state applied / evaluated -> signal -> incident -> ticket

``vendwatch_pipeline_hop_seconds{hop}`` is the time of one hop (from the previous point
to this one); ``vendwatch_pipeline_event_age_seconds{point}`` is the age of the event
(since it occurred on the device) when it reached the point, so "event to ticket p99"
is ``histogram_quantile(0.99, sum by (le) (rate(
vendwatch_pipeline_event_age_seconds_bucket{point="ticket"}[5m])))``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from vendwatch.observe.histogram import FastHistogram

_LAT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# pipeline hops span milliseconds (an append) to minutes (an absence timer, a retried ticket)
_HOP = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        1800.0, 3600.0)

# the points of the pipeline, in order, and the role that observes each
POINTS: dict[str, str] = {
    "received": "collector",  # occurred_at (device clock) -> received_at
    "durable": "collector",  # received_at -> appended to the log (group commit done)
    "state": "device-state",  # durable -> applied to the device's state
    "evaluated": "detector",  # durable -> rules evaluated
    "signal": "detector",  # the triggering event's time -> signal emitted
    "incident": "orchestrator",  # signal emitted -> incident opened/updated
    "ticket": "orchestrator",  # incident opened -> ticket created in the incident system
}

INGEST_REQUESTS = Counter("vendwatch_ingest_requests_total", "Collector requests by HTTP status", ["status"])
INGEST_EVENTS = Counter(
    "vendwatch_ingest_events_total", "Events by outcome (accepted, duplicate, rejected) and rejection reason",
    ["outcome", "reason"],
)
INGEST_LATENCY = FastHistogram("vendwatch_ingest_request_seconds", "Collector request latency", buckets=_LAT)
INGEST_RATE_LIMITED = Counter("vendwatch_ingest_rate_limited_total", "Requests refused by the per-device rate limit")
INGEST_UNAVAILABLE = Counter("vendwatch_ingest_unavailable_total", "Requests answered 503 because the log failed")
LOG_APPEND_SECONDS = FastHistogram("vendwatch_bus_append_seconds", "Durable log append (group commit) latency", buckets=_LAT)
STAGE_LAG = Gauge("vendwatch_stage_lag_records", "Records between a stage's position and the log end", ["stage"])
STAGE_LAG_SECONDS = Gauge(
    "vendwatch_stage_lag_seconds",
    "How far behind a stage is in time: age of the last record it processed while records wait (0 caught up)",
    ["stage"],
)
STAGE_FAILURES = Gauge(
    "vendwatch_stage_consecutive_failures", "Batches a stage failed in a row (0 once it makes progress)", ["stage"])
STAGE_DEAD_LETTERS = Counter(
    "vendwatch_stage_dead_letters_total", "Records a stage could not process and set aside", ["stage"])
STAGE_RECORDS = Counter("vendwatch_stage_records_total", "Log records processed by a stage", ["stage"])
HOP_SECONDS = FastHistogram("vendwatch_pipeline_hop_seconds", "Time of one pipeline hop (see POINTS)", ["hop"],
                        buckets=_HOP)
EVENT_AGE = FastHistogram("vendwatch_pipeline_event_age_seconds",
                      "Age of the triggering event (since occurred_at) when it reached a pipeline point",
                      ["point"], buckets=_HOP)
VENDS = Counter("vendwatch_business_vends_total",
                "Vend attempts reported by machines: success, vend_failure, payment_failure, not_attempted",
                ["outcome"])
REVENUE = Counter("vendwatch_business_revenue_minor_total", "Revenue of successful vends, in minor units",
                  ["currency"])
REFUNDS = Counter("vendwatch_business_refunds_minor_total", "Refunds, in minor units", ["currency"])
_LIFE = (60.0, 300.0, 900.0, 1800.0, 3600.0, 2 * 3600.0, 4 * 3600.0, 8 * 3600.0, 24 * 3600.0, 3 * 86400.0,
         7 * 86400.0)
TIME_TO_ACK = FastHistogram("vendwatch_incidents_time_to_ack_seconds", "Incident opened -> acknowledged (MTTA)",
                        ["severity"], buckets=_LIFE)
TIME_TO_RESOLVE = FastHistogram("vendwatch_incidents_time_to_resolve_seconds", "Incident opened -> resolved (MTTR)",
                            ["severity"], buckets=_LIFE)
ROLE_RESTARTS = Counter("vendwatch_role_restarts_total", "Components restarted by the supervisor after a crash",
                        ["role"])
LOG_MESSAGES = Counter("vendwatch_log_messages_total", "Log lines at warning level and above", ["level", "role"])


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: ``labels()`` takes a lock and builds a key
    on every call (~2.6 µs), a measurable share of a stage's time per record on hot paths."""
    key = (id(metric), labels)
    c = _CHILDREN.get(key)
    if c is None:
        c = _CHILDREN[key] = metric.labels(*labels)
    return c


def observe_hop(point: str, seconds: float) -> None:
    """One hop into ``point``; negative spans (clock skew between device and platform) count as 0."""
    child(HOP_SECONDS, point).observe(seconds if seconds > 0.0 else 0.0)


def observe_age(point: str, seconds: float) -> None:
    child(EVENT_AGE, point).observe(seconds if seconds > 0.0 else 0.0)
