"""Incident rows for the lake (``analytics.incidents``)."""

from __future__ import annotations

from typing import Any

from vendwatch.incidents.store import IncidentStore
from vendwatch.state.store import StateStore


def incident_rows(store: StateStore) -> list[dict[str, Any]]:
    """One dict per incident; times are epoch seconds (float) or None.

    ``external_ref`` is the ServiceNow number (e.g. INC0010001) when there is one.
    """
    IncidentStore(store)  # tables exist even if the orchestrator never ran
    rows = store.db.query(
        "SELECT i.incident_id, i.dedupe_key, i.rule_id, i.severity, i.status, i.device_id, i.site_id,"
        " i.opened_at, i.acknowledged_at, i.resolved_at, i.occurrences, r.number"
        " FROM incidents i LEFT JOIN incident_refs r ON r.incident_id = i.incident_id AND r.system = 'servicenow'"
        " ORDER BY i.opened_at, i.incident_id")
    keys = ("incident_id", "dedupe_key", "rule_id", "severity", "status", "device_id", "site_id", "opened_at",
            "acknowledged_at", "resolved_at", "occurrences", "external_ref")
    out = []
    for r in rows:
        d = dict(zip(keys, r, strict=True))
        for k in ("opened_at", "acknowledged_at", "resolved_at"):
            d[k] = float(d[k]) if d[k] is not None else None
        d["occurrences"] = int(d["occurrences"])
        out.append(d)
    return out
