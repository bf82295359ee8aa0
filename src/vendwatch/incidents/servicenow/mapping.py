"""How a vendwatch incident becomes ServiceNow incident fields, and the state rules.

State mapping (base-instance incident states):

| vendwatch                  | ServiceNow            |
|----------------------------|-----------------------|
| open                       | 1 New                 |
| acknowledged               | 2 In Progress         |
| reopened (fired again)     | 2 In Progress         |
| resolved / absorbed        | 6 Resolved (+ close code and notes) |

vendwatch only ever moves a ticket forward (New -> In Progress -> Resolved); the one
step back is a reopen after a new firing, from Resolved to In Progress. Closed (7) and
Canceled (8) are never touched: they belong to people.
"""

from __future__ import annotations

import hashlib
import re
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
STATE_NEW, STATE_IN_PROGRESS, STATE_ON_HOLD, STATE_RESOLVED, STATE_CLOSED, STATE_CANCELED = "1", "2", "3", "6", "7", "8"
STATE_NAMES = {"1": "New", "2": "In Progress", "3": "On Hold", "6": "Resolved", "7": "Closed", "8": "Canceled"}
CLOSED_BY_PEOPLE = (STATE_CLOSED, STATE_CANCELED)  # read-only to an integration user
_RANK = {STATE_NEW: 0, STATE_IN_PROGRESS: 1, STATE_ON_HOLD: 1, STATE_RESOLVED: 2, STATE_CLOSED: 3, STATE_CANCELED: 3}
SHORT_DESCRIPTION_MAX = 160
CORRELATION_MAX = 100
_INTERNAL_ID = re.compile(r"\binc_[0-9a-f]{16}\b")


def state_name(state: str | None) -> str | None:
    """``"6"`` -> ``"Resolved"`` (unknown values are shown as they are)."""
    return STATE_NAMES.get(state or "", state)


def correlation_id(incident_id: str, generation: int = 0) -> str:
    """Opaque and short (35-37 characters, limit 100): never device text, so never query syntax."""
    digest = hashlib.blake2b(f"{incident_id}|{generation}".encode(), digest_size=16).hexdigest()
    return f"vw-{digest}"


def ci_correlation_id(device_id: str) -> str:
    return "vw-ci-" + hashlib.blake2b(device_id.encode(), digest_size=16).hexdigest()


def rank(state: str | None) -> int:
    return _RANK.get(state or "", 0)


def wanted_state(inc: Incident) -> str:
    if inc.status in ("resolved", "absorbed"):
        return STATE_RESOLVED
    if inc.status == "acknowledged":
        return STATE_IN_PROGRESS
    return STATE_NEW


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


_CODE_TAG = re.compile(r"\[(/?code)\]", re.I)


def plain(text: str, *, lines: bool = False) -> str:
    """Device text as inert ServiceNow text: control characters out, and ``[code]`` tags
    (which journal fields render as HTML when ``glide.ui.security.allow_codetag`` is on) broken up."""
    out = "".join(ch if ch.isprintable() or (lines and ch == "\n") else " " for ch in text)
    return _CODE_TAG.sub(r"[ \1]", out)


def _line(label: str, value: Any) -> str:
    return f"{label}: {plain(str(value))}"  # one line per value


def describe(inc: Incident, device: dict[str, Any] | None) -> str:
    """The description a technician reads: what, where (site, location, model, serial), when, how often."""
    dev = device or {}
    lines = [
        plain(inc.summary, lines=True),
        "",
        _line("rule", inc.rule_id),
        _line("severity", inc.severity),
        _line("machine", inc.device_id or "-"),
        _line("site", inc.site_id or "-"),
        _line("location", dev.get("location") or "-"),
        _line("model", dev.get("model") or "-"),
        _line("serial", dev.get("serial") or "-"),
        _line("occurrences", inc.occurrences),
        _line("opened (vendwatch clock)", _ts(inc.opened_at)),
        _line("last event (device clock)", _ts(inc.last_seen_at)),
    ]
    for k, v in sorted(inc.labels.items()):
        lines.append(_line(f"label {k}", v))
    return "\n".join(lines)


def desired_fields(cfg: ServiceNowSettings, inc: Incident, *, parent_number: str | None = None,
                   device: dict[str, Any] | None = None, resolve_note: str | None = None,
                   generation: int = 0, previous_number: str | None = None) -> dict[str, str]:
    """The field values ServiceNow should hold for ``inc`` (work notes are sent separately)."""
    impact, urgency = IMPACT_URGENCY.get(inc.severity, ("3", "3"))
    where = inc.device_id or inc.site_id or "fleet"
    description = describe(inc, device)
    if previous_number:
        description += f"\n\nFollows {previous_number}, which was closed in ServiceNow."
    fields = {
        "short_description": plain(f"[{inc.severity}] {inc.rule_id} on {where}: {inc.summary}")[:SHORT_DESCRIPTION_MAX],
        "description": description,
        "impact": impact,
        "urgency": urgency,
        "correlation_id": correlation_id(inc.incident_id, generation),
        "correlation_display": "vendwatch",
        "state": wanted_state(inc),
        **assignment_for(cfg, inc),
    }
    if cfg.caller_id:
        fields["caller_id"] = cfg.caller_id
    if fields["state"] == STATE_RESOLVED:
        fields["close_code"] = cfg.close_code
        if inc.status == "absorbed":
            fields["close_notes"] = f"Absorbed by site-level incident {parent_number or 'of the site'}"
        elif resolve_note:
            fields["close_notes"] = f"{plain(resolve_note, lines=True)} (resolved by {inc.resolved_by or 'vendwatch'} at {_ts(inc.resolved_at)})"
        else:
            fields["close_notes"] = f"Resolved by vendwatch ({inc.resolved_by or 'unknown'}) at {_ts(inc.resolved_at)}"
    return fields


def creation_fields(desired: dict[str, Any]) -> dict[str, Any]:
    """Create as New/In Progress; a resolution is applied by the follow-up update."""
    out = {k: v for k, v in desired.items() if k not in ("close_code", "close_notes")}
    if out.get("state") not in (STATE_NEW, STATE_IN_PROGRESS):
        out["state"] = STATE_NEW
    return out


def readable_note(note: str, numbers: dict[str, str]) -> str:
    """Replace internal ``inc_…`` ids in a work note with the ServiceNow numbers people know."""
    return plain(_INTERNAL_ID.sub(lambda m: numbers.get(m.group(0), "another vendwatch incident"), note), lines=True)


def internal_ids(note: str) -> list[str]:
    return _INTERNAL_ID.findall(note)
