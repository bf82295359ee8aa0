"""Prometheus metrics, named ``vendwatch_<part>_<what>_<unit>``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LAT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

INGEST_REQUESTS = Counter("vendwatch_ingest_requests_total", "Collector requests by HTTP status", ["status"])
INGEST_EVENTS = Counter(
    "vendwatch_ingest_events_total", "Events by outcome (accepted, duplicate, rejected) and rejection reason",
    ["outcome", "reason"],
)
INGEST_LATENCY = Histogram("vendwatch_ingest_request_seconds", "Collector request latency", buckets=_LAT)
INGEST_RATE_LIMITED = Counter("vendwatch_ingest_rate_limited_total", "Requests refused by the per-device rate limit")
INGEST_UNAVAILABLE = Counter("vendwatch_ingest_unavailable_total", "Requests answered 503 because the log failed")
LOG_APPEND_SECONDS = Histogram("vendwatch_bus_append_seconds", "Durable log append (group commit) latency", buckets=_LAT)
STAGE_LAG = Gauge("vendwatch_stage_lag_records", "Records between a stage's position and the log end", ["stage"])
STAGE_LAG_SECONDS = Gauge(
    "vendwatch_stage_lag_seconds", "Age of the oldest record a stage has read but not yet processed", ["stage"])
STAGE_FAILURES = Gauge(
    "vendwatch_stage_consecutive_failures", "Batches a stage failed in a row (0 once it makes progress)", ["stage"])
STAGE_DEAD_LETTERS = Counter(
    "vendwatch_stage_dead_letters_total", "Records a stage could not process and set aside", ["stage"])
