"""Collector metrics beyond the shared ones in ``observe.metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from vendwatch.observe.histogram import FastHistogram

_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 20_000)

DEDUPE_KEYS = Gauge("vendwatch_ingest_dedupe_keys", "Event ids remembered by the dedupe index (dedupe window)")
BATCH_EVENTS = FastHistogram("vendwatch_ingest_batch_events", "Events per accepted request", buckets=_SIZES)
GROUP_COMMIT_EVENTS = FastHistogram(
    "vendwatch_ingest_group_commit_events", "Events (accepted + quarantined) per durable group commit", buckets=_SIZES
)
GROUP_COMMIT_REQUESTS = FastHistogram(
    "vendwatch_ingest_group_commit_requests", "Requests sharing one durable group commit", buckets=_SIZES
)

ABANDONED_CLAIMS = Counter(
    "vendwatch_ingest_abandoned_claims_total",
    "Events whose earlier claim was abandoned (collector died, append failed) and were looked for in the log,"
    " by outcome (found: already stored, answered as a duplicate; not_found: appended now)",
    ["outcome"],
)
ABANDONED_RECORDS_READ = Counter(
    "vendwatch_ingest_abandoned_records_read_total", "Log records read while looking for the events of abandoned claims"
)
