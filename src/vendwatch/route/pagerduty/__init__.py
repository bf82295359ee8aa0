"""PagerDuty Events API v2 target: trigger on firing, resolve on resolved, ``dedup_key`` =
the signal's dedupe key (so PagerDuty groups re-fires into one alert).

Every field is a bounded string (summary 1,024 characters, the others 255) and
``custom_details`` is clipped so the event stays under PagerDuty's 512 KB limit.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import Gate, TargetPolicy
from vendwatch.delivery.outbox import Item
from vendwatch.route.clip import clip, shrink
from vendwatch.route.rules import TargetSpec

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# vendwatch severity -> PagerDuty's four levels
MAX_DETAILS_BYTES = 256 * 1024  # the whole event must stay under 512 KB
SEVERITY = {"critical": "critical", "major": "error", "minor": "warning", "warning": "warning", "info": "info"}


def pd_event(routing_key: str, event: dict[str, Any]) -> dict[str, Any]:
    """The Events v2 body for one vendwatch event envelope."""
    d = event.get("detail", {})
    key = str(d.get("dedupe_key") or event.get("id"))[:255]
    if d.get("status") == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": key}
    where = clip(d.get("device_id") or d.get("site_id") or "vendwatch", 255)
    details = {k: d.get(k) for k in ("evidence", "labels", "signal_id") if d.get(k)}
    for max_str in (4096, 256):
        if len(msgspec.json.encode(details)) <= MAX_DETAILS_BYTES:
            break
        details = shrink(details, max_str)
    else:
        details = {"signal_id": clip(d.get("signal_id"), 255), "truncated": True}
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": key,
        "payload": {
            "summary": clip(f"{clip(d.get('rule_id', event.get('detail-type', 'event')), 255)} on {where}: "
                            f"{clip(d.get('summary', ''), 1024)}", 1024),
            "source": where,
            "severity": SEVERITY.get(str(d.get("severity", "info")), "info"),
            "timestamp": event.get("time"),
            **{k: clip(d[f], 255) for k, f in (("component", "device_id"), ("group", "site_id"),
                                                ("class", "rule_id")) if d.get(f)},
            "custom_details": details,
        },
        "client": "vendwatch",
    }


class PagerDutySink:
    def __init__(self, name: str, spec: TargetSpec, clock: Clock) -> None:
        assert spec.routing_key
        self.target, self.spec = name, spec
        self.url = spec.url or EVENTS_URL
        self.policy = TargetPolicy(retry=spec.retry, rate_limit=spec.rate_limit, circuit=spec.circuit)

    def deliver(self, item: Item, gate: Gate) -> None:
        gate.request("POST", self.url, json=pd_event(self.spec.routing_key or "", item.payload["event"]),
                     timeout=self.spec.timeout_s)
