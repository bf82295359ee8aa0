"""Incident lifecycle: the pure core (no I/O, time passed in).

Given the incident currently active for a dedupe key (if any), the most recently
closed one, the parent site incident a signal names in ``caused_by`` and whether a
silence covers it, ``on_signal`` decides what happens and returns a ``Decision``:
the incidents to write, timeline entries (each with the actor that caused it),
severity changes, and whether external systems must be told. ``due_resolve``,
``acknowledge`` and ``resolve`` are the timer and operator transitions.

Statuses: ``open`` -> ``acknowledged`` -> ``resolved``; ``absorbed`` when a site-level
incident took over a per-device one. ``open`` and ``acknowledged`` are *active*: at most
one active incident exists per dedupe key.

Detection and notification are decided separately (as Alertmanager separates an
alert's state from ``group_wait``): a device incident that a site-level incident may
still take over (its signal names a ``site_rule_id``) opens at once, but external
systems hear of it only after ``Policy.group_wait_s`` (``Decision.hold``). A site
incident opening meanwhile absorbs it, and it never becomes a ticket of its own. A
retraction (a ``resolved`` signal with ``retracts``: a late event showed the condition
never held) closes the incident at once as a false alarm; a notification still held
back is withdrawn (``Decision.withdraw``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vendwatch.signals import SEVERITIES, Signal

ACTIVE = ("open", "acknowledged")
STATUSES = ("open", "acknowledged", "resolved", "absorbed")


@dataclass(frozen=True)
class Policy:
    flap_damping_s: float = 120.0
    reopen_window_s: float = 3600.0
    group_wait_s: float = 0.0  # how long a device incident a site may absorb waits before it is notified


FALSE_ALARM = "false_alarm"  # the ``resolution`` label of an incident closed by a retraction


@dataclass(frozen=True)
class Incident:
    incident_id: str
    dedupe_key: str
    rule_id: str
    severity: str
    status: str
    opened_at: float
    last_seen_at: float
    scope: str = "device"
    device_id: str | None = None
    site_id: str | None = None
    summary: str = ""
    occurrences: int = 1
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    resolve_due_at: float | None = None  # flap damping: resolve at this time unless it fires again
    resolved_at: float | None = None
    resolved_by: str | None = None
    parent_id: str | None = None  # the site incident that absorbed this one
    caused_by: str | None = None  # dedupe key of the site-level condition the detector blamed
    reopen_count: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    version: int = 1  # bumped on every change; external sync compares it

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class Entry:
    """One timeline entry: what changed, who or what caused it."""

    incident_id: str
    at: float
    kind: str  # opened, updated, severity_changed, resolve_scheduled, resolve_cancelled, resolved, reopened, acknowledged, absorbed, absorbed_child
    actor: str
    detail: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # text to send to external systems as a work note


@dataclass
class Decision:
    incidents: list[Incident] = field(default_factory=list)  # to upsert
    entries: list[Entry] = field(default_factory=list)
    severity_changes: list[tuple[str, float, str, str, str]] = field(default_factory=list)  # id, at, from, to, actor
    sync: list[Incident] = field(default_factory=list)  # incidents external systems must hear about
    suppressed_by: str | None = None  # silence id that suppressed creation
    ignored: str | None = None  # why nothing happened
    hold: dict[str, float] = field(default_factory=dict)  # incident id -> notify external systems not before
    withdraw: list[str] = field(default_factory=list)  # incident ids whose unsent notification is dropped


def new_incident_id(dedupe_key: str, signal_id: str) -> str:
    """Deterministic id: reprocessing the same opening signal yields the same incident."""
    return "inc_" + hashlib.blake2b(f"{dedupe_key}|{signal_id}".encode(), digest_size=8).hexdigest()


def parent_key(sig: Signal) -> str | None:
    """The site-level condition that may take over ``sig``'s incident.

    The one its signal blames (``caused_by``); or, for a signal of a site-correlated
    device rule (``evidence.site_rule_id``), that rule's site signal: signals of
    different keys may arrive in either order, so a machine whose deadline came just
    before the site was found can arrive after the site incident opened.
    """
    if sig.caused_by:
        return sig.caused_by
    site_rule = sig.evidence.get("site_rule_id")
    if sig.scope == "device" and sig.site_id and isinstance(site_rule, str):
        return f"{site_rule}/{sig.site_id}"
    return None


def actor_for(sig: Signal) -> str:
    return f"detector:{sig.rule_id}"


def _bump(inc: Incident, **changes: Any) -> Incident:
    return replace(inc, version=inc.version + 1, **changes)


def severity_rank(sev: str) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else 0


def on_signal(
    sig: Signal,
    now: float,
    policy: Policy,
    *,
    active: Incident | None,
    last_closed: Incident | None,
    parent: Incident | None,
    silence_id: str | None,
    children: Sequence[Incident] = (),
) -> Decision:
    """Apply one signal to the incident state of its dedupe key.

    ``parent``: the active incident of ``sig.caused_by``; ``children``: active incidents
    whose ``caused_by`` is this signal's key (absorbed when this is a site-level firing).
    """
    d = Decision()
    at = sig.occurred_at.timestamp()
    actor = actor_for(sig)
    if sig.kind != "incident":
        d.ignored = "business signals never open incidents"
        return d
    if sig.status == "resolved":
        if active is None:
            d.ignored = "resolved signal without an active incident"
            return d
        if sig.retracts:
            _retract(d, active, sig, now, actor)
            return d
        if active.resolve_due_at is not None:
            d.ignored = "resolve already scheduled"
            return d
        due = now + policy.flap_damping_s
        inc = _bump(active, resolve_due_at=due, last_seen_at=max(active.last_seen_at, at))
        d.incidents.append(inc)
        d.entries.append(Entry(inc.incident_id, now, "resolve_scheduled", actor, {"resolve_at": due}))
        if policy.flap_damping_s <= 0:
            _resolve_into(d, inc, now, actor, "condition cleared")
        return d

    # firing
    if parent is not None and parent.active and parent_key(sig) == parent.dedupe_key:
        if active is not None:
            _absorb(d, parent, active, now, actor)
        else:
            d.entries.append(Entry(parent.incident_id, now, "absorbed_child", actor,
                                   {"dedupe_key": sig.dedupe_key, "device_id": sig.device_id}))
            d.ignored = f"absorbed by {parent.incident_id}"
        return d
    _fire(d, sig, now, policy, actor, active, last_closed, silence_id)
    # a site-level incident takes over the device incidents it caused that opened before it
    # (signals of different keys may arrive in either order)
    site = next((i for i in d.incidents if i.active and i.scope == "site"), None)
    if site is not None:
        for child in children:
            if child.incident_id != site.incident_id and absorbable(child, site, sig, now, policy):
                _absorb(d, site, child, now, actor)
    elif (sig.scope == "device" and sig.evidence.get("site_rule_id") and policy.group_wait_s > 0
          and sig.caused_by is None):
        # a site incident may still take this one over: tell external systems later
        for inc in d.incidents:
            if inc.status == "open" and inc.occurrences == 1 and inc.reopen_count == 0:
                d.hold[inc.incident_id] = now + policy.group_wait_s
    return d


def absorbable(child: Incident, site: Incident, sig: Signal, now: float, policy: Policy) -> bool:
    """Does the site-level incident ``site`` (opened by ``sig``) take over the device incident ``child``?

    Those whose signal named it as the cause, and those of the site's device rule that
    opened within the grouping delay (their notification is still held back): a machine
    that was already down and notified long before keeps its own incident.
    """
    if child.scope != "device":
        return False
    if child.caused_by == site.dedupe_key:
        return True
    return (child.caused_by is None and child.site_id == site.site_id
            and child.rule_id == sig.evidence.get("device_rule")
            and child.opened_at >= now - policy.group_wait_s)


def _retract(d: Decision, inc: Incident, sig: Signal, now: float, actor: str) -> None:
    """A late event showed the condition never held: close as a false alarm, at once."""
    labels = {**inc.labels, "resolution": FALSE_ALARM}
    done = _bump(inc, labels=labels)
    d.entries.append(Entry(done.incident_id, now, "retracted", actor,
                           {"signal_id": sig.signal_id, "retracts": sig.retracts},
                           note="False alarm: a late event showed the condition never held"))
    _resolve_into(d, done, now, actor, "false alarm (retracted by the detector)")
    d.withdraw.append(done.incident_id)


def _absorb(d: Decision, parent: Incident, child: Incident, now: float, actor: str) -> None:
    d.entries.append(Entry(parent.incident_id, now, "absorbed_child", actor,
                           {"dedupe_key": child.dedupe_key, "device_id": child.device_id}))
    done = _bump(child, status="absorbed", parent_id=parent.incident_id, resolved_at=now, resolved_by=actor,
                 resolve_due_at=None)
    d.incidents.append(done)
    d.entries.append(Entry(done.incident_id, now, "absorbed", actor, {"parent_id": parent.incident_id},
                           note=f"Absorbed by site-level incident {parent.incident_id} ({parent.dedupe_key})"))
    d.sync.append(done)


def _fire(d: Decision, sig: Signal, now: float, policy: Policy, actor: str, active: Incident | None,
          last_closed: Incident | None, silence_id: str | None) -> None:
    """A firing signal without a site-level parent: update, suppress, reopen or open."""
    at = sig.occurred_at.timestamp()
    if active is not None:
        changes: dict[str, Any] = {
            "occurrences": active.occurrences + 1,
            "last_seen_at": max(active.last_seen_at, at),
            "summary": sig.summary or active.summary,
            "caused_by": sig.caused_by or active.caused_by,
        }
        if active.resolve_due_at is not None:
            changes["resolve_due_at"] = None
            d.entries.append(Entry(active.incident_id, now, "resolve_cancelled", actor, {"reason": "fired again"}))
        inc = _bump(active, **changes)
        if sig.severity != active.severity:
            inc = replace(inc, severity=sig.severity)
            d.severity_changes.append((inc.incident_id, now, active.severity, sig.severity, actor))
            d.entries.append(Entry(inc.incident_id, now, "severity_changed", actor,
                                   {"from": active.severity, "to": sig.severity},
                                   note=f"Severity changed from {active.severity} to {sig.severity}: {sig.summary}"))
        else:
            d.entries.append(Entry(inc.incident_id, now, "updated", actor, {"occurrences": inc.occurrences}))
        d.incidents.append(inc)
        d.sync.append(inc)
        return

    if silence_id is not None:
        d.suppressed_by = silence_id
        d.ignored = f"silenced by {silence_id}"
        return

    if (last_closed is not None and last_closed.status == "resolved" and last_closed.resolved_at is not None
            and now - last_closed.resolved_at <= policy.reopen_window_s
            and last_closed.labels.get("resolution") != FALSE_ALARM):  # a false alarm is not reopened
        inc = _bump(last_closed, status="open", resolved_at=None, resolved_by=None, resolve_due_at=None,
                    acknowledged_at=None, acknowledged_by=None, reopen_count=last_closed.reopen_count + 1,
                    occurrences=last_closed.occurrences + 1, last_seen_at=at, severity=sig.severity,
                    summary=sig.summary or last_closed.summary, caused_by=sig.caused_by)
        d.entries.append(Entry(inc.incident_id, now, "reopened", actor,
                               {"closed_for_s": now - (last_closed.resolved_at or now)},
                               note=f"Reopened: fired again {now - last_closed.resolved_at:.0f}s after resolution"))
        if sig.severity != last_closed.severity:
            d.severity_changes.append((inc.incident_id, now, last_closed.severity, sig.severity, actor))
        d.incidents.append(inc)
        d.sync.append(inc)
        return

    inc = Incident(
        incident_id=new_incident_id(sig.dedupe_key, sig.signal_id), dedupe_key=sig.dedupe_key,
        rule_id=sig.rule_id, severity=sig.severity, status="open", opened_at=now, last_seen_at=at,
        scope=sig.scope, device_id=sig.device_id, site_id=sig.site_id, summary=sig.summary,
        labels=dict(sig.labels), caused_by=sig.caused_by,
    )
    d.incidents.append(inc)
    d.entries.append(Entry(inc.incident_id, now, "opened", actor, {"signal_id": sig.signal_id, "severity": sig.severity}))
    d.severity_changes.append((inc.incident_id, now, "", sig.severity, actor))
    d.sync.append(inc)


def _resolve_into(d: Decision, inc: Incident, now: float, actor: str, why: str) -> Incident:
    done = _bump(inc, status="resolved", resolved_at=now, resolved_by=actor, resolve_due_at=None)
    d.incidents = [x for x in d.incidents if x.incident_id != inc.incident_id] + [done]
    d.entries.append(Entry(done.incident_id, now, "resolved", actor, {"reason": why}))
    d.sync = [x for x in d.sync if x.incident_id != inc.incident_id] + [done]
    return done


def due_resolve(inc: Incident, now: float) -> Decision:
    """Timer: resolve an incident whose flap-damping delay has passed."""
    d = Decision()
    if inc.active and inc.resolve_due_at is not None and inc.resolve_due_at <= now:
        _resolve_into(d, inc, now, "timer:flap-damping", "condition cleared and stayed clear")
    return d


def acknowledge(inc: Incident, now: float, actor: str) -> Decision:
    d = Decision()
    if inc.status != "open":
        d.ignored = f"incident is {inc.status}"
        return d
    done = _bump(inc, status="acknowledged", acknowledged_at=now, acknowledged_by=actor)
    d.incidents.append(done)
    d.entries.append(Entry(done.incident_id, now, "acknowledged", actor, note=f"Acknowledged by {actor}"))
    d.sync.append(done)
    return d


def resolve(inc: Incident, now: float, actor: str, note: str = "") -> Decision:
    d = Decision()
    if not inc.active:
        d.ignored = f"incident is {inc.status}"
        return d
    _resolve_into(d, inc, now, actor, note or "resolved by operator")
    return d
