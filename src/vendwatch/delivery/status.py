"""Per-target delivery health for operators: queued, dead-lettered, paused and why."""

from __future__ import annotations

from typing import Any

from vendwatch.delivery.outbox import Outbox
from vendwatch.state.db import Database


def target_status(db: Database, now: float) -> list[dict[str, Any]]:
    """One entry per target that has a gate or queued deliveries.

    ``paused`` is true while the circuit is open; ``reason`` says ``credentials`` when
    the calls that opened it were refused with HTTP 401 (people must fix something)
    and ``failures`` for 5xx or network errors (the service is down).
    """
    outbox = Outbox(db)
    depth, dlq = outbox.depth(), outbox.dlq_depth()
    refused = {t: int(n) for t, n in db.query(
        "SELECT target, count(*) FROM outbox WHERE last_status=401 GROUP BY target")}
    gates = {r[0]: r[1:] for r in db.query("SELECT target, circuit, opened_until FROM delivery_gates")}
    out = []
    for target in sorted(set(gates) | set(depth) | set(dlq)):
        circuit, opened_until = gates.get(target, ("closed", 0.0))
        paused = circuit != "closed"
        out.append({
            "target": target, "circuit": circuit, "paused": paused,
            "reason": ("credentials" if refused.get(target) else "failures") if paused else None,
            "retry_at": float(opened_until) if paused else None,
            "queued": depth.get(target, 0), "dead_lettered": dlq.get(target, 0),
        })
    return out
