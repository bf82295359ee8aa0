"""Slack incoming webhooks: a short text message per event.

Slack answers 200 ``ok``; errors are 400 ``invalid_payload``, 403 ``action_prohibited``,
404 ``no_service``, 410 ``channel_is_archived`` (not retried) and 429 with
``Retry-After`` (retried).

Every piece of text is escaped for Slack mrkdwn (``&``, ``<``, ``>``, as Slack's
"Formatting text" guide asks): a slot name such as ``<!everyone>`` or
``<https://evil|Open>`` reaches the channel as literal text, not as a mention or a
disguised link. Links are not unfurled and the text is bounded.
"""

from __future__ import annotations

from typing import Any

from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import Gate, TargetPolicy
from vendwatch.delivery.outbox import Item
from vendwatch.route.clip import ELLIPSIS, clip
from vendwatch.route.rules import TargetSpec

_ICON = {"critical": ":red_circle:", "major": ":large_orange_circle:", "minor": ":large_yellow_circle:",
         "warning": ":warning:", "info": ":information_source:"}


MAX_TEXT = 3000  # Slack truncates long messages; a Block Kit text field takes 3,000 characters


def escape(text: Any) -> str:
    """Text as a literal in Slack mrkdwn: the three control characters become entities."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def message(event: dict[str, Any]) -> dict[str, Any]:
    d = event.get("detail", {})
    sev = str(d.get("severity", "info"))
    status = d.get("status", "")
    where = clip(d.get("device_id") or d.get("site_id") or "fleet", 200)
    rule = clip(d.get("rule_id", event.get("detail-type", "event")), 200)
    head = f"{_ICON.get(sev, '')} *{escape(sev.upper()[:20])}* {escape(rule)} " \
           f"{'RESOLVED' if status == 'resolved' else 'FIRING' if status == 'firing' else ''} on {escape(where)}"
    # clipped before escaping, so a cut never splits an entity such as &lt;
    summary = escape(clip(d.get("summary", ""), MAX_TEXT))
    text = f"{head.strip()}\n{summary}".strip()
    if len(text) > MAX_TEXT:
        cut = text[: MAX_TEXT - 1]
        amp = cut.rfind("&")
        if amp > cut.rfind(";"):
            cut = cut[:amp]  # do not leave half an entity
        text = cut + ELLIPSIS
    return {"text": text, "unfurl_links": False, "unfurl_media": False}


class SlackSink:
    def __init__(self, name: str, spec: TargetSpec, clock: Clock) -> None:
        assert spec.url
        self.target, self.spec = name, spec
        self.policy = TargetPolicy(retry=spec.retry, rate_limit=spec.rate_limit, circuit=spec.circuit)

    def deliver(self, item: Item, gate: Gate) -> None:
        gate.request("POST", self.spec.url or "", json=message(item.payload["event"]), timeout=self.spec.timeout_s)
