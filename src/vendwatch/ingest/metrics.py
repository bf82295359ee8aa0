"""Collector metrics beyond the shared ones in ``observe.metrics``."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 20_000)

DEDUPE_KEYS = Gauge("vendwatch_ingest_dedupe_keys", "Event ids remembered by the dedupe index (dedupe window)")
BATCH_EVENTS = Histogram("vendwatch_ingest_batch_events", "Events per accepted request", buckets=_SIZES)
GROUP_COMMIT_EVENTS = Histogram(
    "vendwatch_ingest_group_commit_events", "Events (accepted + quarantined) per durable group commit", buckets=_SIZES
)
GROUP_COMMIT_REQUESTS = Histogram(
    "vendwatch_ingest_group_commit_requests", "Requests sharing one durable group commit", buckets=_SIZES
)
