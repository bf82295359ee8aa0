"""Prometheus metrics of incident orchestration (``vendwatch_incidents_*``); the delivery
metrics live in ``vendwatch.delivery.metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from vendwatch.delivery.metrics import refresh_depths

INCIDENTS = Gauge("vendwatch_incidents_incidents", "Incidents by status", ["status"])
TRANSITIONS = Counter("vendwatch_incidents_transitions_total", "Lifecycle changes by kind", ["kind"])
SUPPRESSED = Counter("vendwatch_incidents_suppressed_total", "Incident creations suppressed by a silence")


def refresh(counts_by_status: dict[str, int], outbox_depth: dict[str, int], dlq_depth: dict[str, int]) -> None:
    """Set the gauges from the store (called by the orchestrator's timer and the API)."""
    for status in ("open", "acknowledged", "resolved", "absorbed"):
        INCIDENTS.labels(status).set(counts_by_status.get(status, 0))
    refresh_depths(outbox_depth, dlq_depth)
