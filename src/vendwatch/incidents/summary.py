"""Numbers for ``vendwatch demo --summary-json``."""

from __future__ import annotations

from typing import Any

from vendwatch.delivery.outbox import Outbox
from vendwatch.incidents.store import IncidentStore
from vendwatch.runtime import Context


def summary(ctx: Context) -> dict[str, Any]:
    """Incidents opened/resolved (reopens count as openings), open now, ServiceNow tickets, outbox and DLQ."""
    store = IncidentStore(ctx.state)
    db = store.db
    opened = db.one("SELECT count(*), COALESCE(sum(reopen_count), 0) FROM incidents") or (0, 0)
    resolved = db.one("SELECT count(*) FROM incident_timeline WHERE kind='resolved'") or (0,)
    by_status = store.counts_by_status()
    tickets = db.one("SELECT count(*) FROM incident_refs WHERE system='servicenow'") or (0,)
    ob = Outbox(db)
    return {
        "incidents_opened": int(opened[0]) + int(opened[1]),
        "incidents_resolved": int(resolved[0]),
        "incidents_open": by_status.get("open", 0) + by_status.get("acknowledged", 0),
        "incidents_absorbed": by_status.get("absorbed", 0),
        "servicenow_tickets": int(tickets[0]),
        "outbox_pending": sum(ob.depth().values()),
        "dlq_depth": sum(ob.dlq_depth().values()),
    }
