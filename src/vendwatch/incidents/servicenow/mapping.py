"""How a vendwatch incident becomes ServiceNow incident fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vendwatch.incidents.config import ServiceNowSettings
from vendwatch.incidents.lifecycle import Incident

# severity -> (impact, urgency); ServiceNow derives priority = impact + urgency - 1
IMPACT_URGENCY: dict[str, tuple[str, str]] = {
    "critical": ("1", "1"),  # P1
    "major": ("1", "2"),  # P2
    "minor": ("2", "2"),  # P3
    "warning": ("2", "3"),  # P4
    "info": ("3", "3"),  # P5
}
STATE_NEW, STATE_IN_PROGRESS, STATE_RESOLVED, STATE_CLOSED = "1", "2", "6", "7"
CLOSED_STATES = (STATE_RESOLVED, STATE_CLOSED, "8")


def assignment_for(cfg: ServiceNowSettings, inc: Incident) -> dict[str, str]:
    """Assignment group and category: the first mapping whose site/rule match, else the defaults."""
    out = {"category": cfg.default_category}
    if cfg.default_assignment_group:
        out["assignment_group"] = cfg.default_assignment_group
    for a in cfg.assignment:
        if (a.site_id is None or a.site_id == inc.site_id) and (a.rule_id is None or a.rule_id == inc.rule_id):
            if a.assignment_group:
                out["assignment_group"] = a.assignment_group
            if a.category:
                out["category"] = a.category
            if a.subcategory:
                out["subcategory"] = a.subcategory
            break
    return out


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def desired_fields(cfg: ServiceNowSettings, inc: Incident, *, parent_number: str | None = None) -> dict[str, str]:
    """The field values ServiceNow should hold for ``inc`` (work notes are sent separately)."""
    impact, urgency = IMPACT_URGENCY.get(inc.severity, ("3", "3"))
    where = inc.device_id or inc.site_id or "fleet"
    fields = {
        "short_description": f"[{inc.severity}] {inc.rule_id} on {where}: {inc.summary}"[:160],
        "description": (
            f"{inc.summary}\n\nvendwatch incident {inc.incident_id}\nrule: {inc.rule_id}\n"
            f"device: {inc.device_id or '-'}\nsite: {inc.site_id or '-'}\n"
            f"occurrences: {inc.occurrences}\nfirst seen: {_ts(inc.opened_at)}\nlast seen: {_ts(inc.last_seen_at)}"
        ),
        "impact": impact,
        "urgency": urgency,
        "correlation_id": inc.dedupe_key,
        "correlation_display": "vendwatch",
        **assignment_for(cfg, inc),
    }
    if cfg.caller_id:
        fields["caller_id"] = cfg.caller_id
    if inc.status == "open":
        fields["state"] = STATE_NEW
    elif inc.status == "acknowledged":
        fields["state"] = STATE_IN_PROGRESS
    else:
        fields["state"] = STATE_RESOLVED
        fields["close_code"] = cfg.close_code
        if inc.status == "absorbed":
            fields["close_notes"] = f"Absorbed by site-level incident {parent_number or inc.parent_id}"
        else:
            fields["close_notes"] = f"Resolved by vendwatch ({inc.resolved_by or 'unknown'}) at {_ts(inc.resolved_at)}"
    return fields


def creation_fields(desired: dict[str, Any]) -> dict[str, Any]:
    """Create as New/In Progress; a resolution is applied by the follow-up update."""
    out = {k: v for k, v in desired.items() if k not in ("close_code", "close_notes")}
    if out.get("state") not in (STATE_NEW, STATE_IN_PROGRESS):
        out["state"] = STATE_NEW
    return out
