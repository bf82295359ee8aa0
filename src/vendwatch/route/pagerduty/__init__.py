"""PagerDuty Events API v2 target: trigger on firing, resolve on resolved, ``dedup_key`` =
the signal's dedupe key (so PagerDuty groups re-fires into one alert)."""

from __future__ import annotations

from typing import Any

from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import Gate, TargetPolicy
from vendwatch.delivery.outbox import Item
from vendwatch.route.rules import TargetSpec

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# vendwatch severity -> PagerDuty's four levels
SEVERITY = {"critical": "critical", "major": "error", "minor": "warning", "warning": "warning", "info": "info"}


def pd_event(routing_key: str, event: dict[str, Any]) -> dict[str, Any]:
    """The Events v2 body for one vendwatch event envelope."""
    d = event.get("detail", {})
    key = str(d.get("dedupe_key") or event.get("id"))[:255]
    if d.get("status") == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": key}
    where = d.get("device_id") or d.get("site_id") or "vendwatch"
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": key,
        "payload": {
            "summary": (f"{d.get('rule_id', event.get('detail-type', 'event'))} on {where}: "
                        f"{d.get('summary', '')}")[:1024],
            "source": str(where),
            "severity": SEVERITY.get(str(d.get("severity", "info")), "info"),
            "timestamp": event.get("time"),
            "component": d.get("device_id"),
            "group": d.get("site_id"),
            "class": d.get("rule_id"),
            "custom_details": {k: d.get(k) for k in ("evidence", "labels", "signal_id") if d.get(k)},
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
