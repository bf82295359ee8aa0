"""Slack incoming webhooks: a short text message per event.

Slack answers 200 ``ok``; errors are 400 ``invalid_payload``, 403 ``action_prohibited``,
404 ``no_service``, 410 ``channel_is_archived`` (not retried) and 429 with
``Retry-After`` (retried).
"""

from __future__ import annotations

from typing import Any

from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import Gate, TargetPolicy
from vendwatch.delivery.outbox import Item
from vendwatch.route.rules import TargetSpec

_ICON = {"critical": ":red_circle:", "major": ":large_orange_circle:", "minor": ":large_yellow_circle:",
         "warning": ":warning:", "info": ":information_source:"}


def message(event: dict[str, Any]) -> dict[str, Any]:
    d = event.get("detail", {})
    sev = str(d.get("severity", "info"))
    status = d.get("status", "")
    where = d.get("device_id") or d.get("site_id") or "fleet"
    head = f"{_ICON.get(sev, '')} *{sev.upper()}* {d.get('rule_id', event.get('detail-type', 'event'))} " \
           f"{'RESOLVED' if status == 'resolved' else 'FIRING' if status == 'firing' else ''} on {where}"
    text = f"{head.strip()}\n{d.get('summary', '')}".strip()
    return {"text": text}


class SlackSink:
    def __init__(self, name: str, spec: TargetSpec, clock: Clock) -> None:
        assert spec.url
        self.target, self.spec = name, spec
        self.policy = TargetPolicy(retry=spec.retry, rate_limit=spec.rate_limit, circuit=spec.circuit)

    def deliver(self, item: Item, gate: Gate) -> None:
        gate.request("POST", self.spec.url or "", json=message(item.payload["event"]), timeout=self.spec.timeout_s)
