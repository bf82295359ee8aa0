"""Prometheus metrics of outbound delivery, per target.

The names keep their ``vendwatch_incidents_`` prefix: delivery started as part of the
incident orchestrator, and dashboards and alert rules already query these names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OUTBOX_DEPTH = Gauge("vendwatch_incidents_outbox_depth_items", "Deliveries waiting in the outbox", ["target"])
DLQ_DEPTH = Gauge("vendwatch_incidents_dlq_depth_items", "Deliveries in the dead-letter queue", ["target"])
DELIVERIES = Counter("vendwatch_incidents_deliveries_total",
                     "Delivery attempts by target and outcome (delivered, retry, rejected, failed)",
                     ["target", "outcome"])
RETRIES = Counter("vendwatch_incidents_retries_total", "Deliveries scheduled for another attempt", ["target"])
THROTTLED = Counter("vendwatch_incidents_throttled_total", "Calls held back by the per-target rate limit", ["target"])
DEAD_LETTERS = Counter("vendwatch_incidents_dead_letters_total", "Deliveries moved to the DLQ", ["target"])
AUTH_FAILURES = Counter("vendwatch_delivery_auth_failures_total",
                        "Calls refused for credentials (HTTP 401); each pauses the target", ["target"])
CIRCUIT = Gauge("vendwatch_incidents_circuit_state", "Circuit breaker per target: 0 closed, 1 half-open, 2 open",
                ["target"])


def refresh_depths(outbox_depth: dict[str, int], dlq_depth: dict[str, int]) -> None:
    """Set the queue gauges from the outbox (targets drained to zero read 0, not their last value)."""
    for gauge, depth in ((OUTBOX_DEPTH, outbox_depth), (DLQ_DEPTH, dlq_depth)):
        for target, n in depth.items():
            gauge.labels(target).set(n)
        for labels in list(gauge._metrics):
            if labels[0] not in depth:
                gauge.labels(labels[0]).set(0)
