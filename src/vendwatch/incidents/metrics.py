"""Prometheus metrics of incident orchestration and delivery (``vendwatch_incidents_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

INCIDENTS = Gauge("vendwatch_incidents_incidents", "Incidents by status", ["status"])
TRANSITIONS = Counter("vendwatch_incidents_transitions_total", "Lifecycle changes by kind", ["kind"])
SUPPRESSED = Counter("vendwatch_incidents_suppressed_total", "Incident creations suppressed by a silence")
OUTBOX_DEPTH = Gauge("vendwatch_incidents_outbox_depth_items", "Deliveries waiting in the outbox", ["target"])
DLQ_DEPTH = Gauge("vendwatch_incidents_dlq_depth_items", "Deliveries in the dead-letter queue", ["target"])
DELIVERIES = Counter("vendwatch_incidents_deliveries_total",
                     "Delivery attempts by target and outcome (delivered, retry, rejected, failed)",
                     ["target", "outcome"])
RETRIES = Counter("vendwatch_incidents_retries_total", "Deliveries scheduled for another attempt", ["target"])
THROTTLED = Counter("vendwatch_incidents_throttled_total", "Calls held back by the per-target rate limit", ["target"])
DEAD_LETTERS = Counter("vendwatch_incidents_dead_letters_total", "Deliveries moved to the DLQ", ["target"])
CIRCUIT = Gauge("vendwatch_incidents_circuit_state", "Circuit breaker per target: 0 closed, 1 half-open, 2 open",
                ["target"])


def refresh(counts_by_status: dict[str, int] | None, outbox_depth: dict[str, int], dlq_depth: dict[str, int]) -> None:
    """Set the gauges from the store (called by the orchestrator's timer and the API).

    ``counts_by_status`` None leaves the incident counts alone (the router knows none:
    in ``vendwatch serve`` it shares the orchestrator's gauges)."""
    for status in ("open", "acknowledged", "resolved", "absorbed"):
        if counts_by_status is not None:
            INCIDENTS.labels(status).set(counts_by_status.get(status, 0))
    for target, n in outbox_depth.items():
        OUTBOX_DEPTH.labels(target).set(n)
    for target in list(OUTBOX_DEPTH._metrics):  # targets drained to zero
        if target[0] not in outbox_depth:
            OUTBOX_DEPTH.labels(target[0]).set(0)
    for target, n in dlq_depth.items():
        DLQ_DEPTH.labels(target).set(n)
    for target in list(DLQ_DEPTH._metrics):
        if target[0] not in dlq_depth:
            DLQ_DEPTH.labels(target[0]).set(0)
