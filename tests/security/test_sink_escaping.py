"""Device text reaches Slack, webhooks and PagerDuty as data, never as markup (issue 10, item 7)."""

from __future__ import annotations

from typing import Any

import msgspec

from vendwatch.route.pagerduty import pd_event
from vendwatch.route.slack import message
from vendwatch.route.webhook import MAX_BODY_BYTES, body

HOSTILE = "slot <!everyone> <https://evil.example/login|Open the dashboard> & <@U123> A1"


def _event(**detail: Any) -> dict[str, Any]:
    base = {"rule_id": "out_of_stock", "severity": "major", "status": "firing", "device_id": "VM-1",
            "site_id": "S1", "dedupe_key": "k", "summary": f"out of stock on {HOSTILE}"}
    return {"id": "sig-1", "detail-type": "Signal Firing", "time": "2026-01-01T00:00:00Z", "detail": {**base, **detail}}


def test_slack_text_escapes_mentions_and_links() -> None:
    msg = message(_event(device_id="VM<!channel>", rule_id="r<x>"))
    text = msg["text"]
    assert "<" not in text and ">" not in text, text
    assert "&lt;!everyone&gt;" in text and "&lt;https://evil.example/login|Open the dashboard&gt;" in text
    assert "&amp;" in text and "VM&lt;!channel&gt;" in text
    assert msg["unfurl_links"] is False and msg["unfurl_media"] is False


def test_slack_text_is_bounded() -> None:
    text = message(_event(summary="x" * 100_000))["text"]
    assert len(text) <= 3000 and text.endswith("…")


def test_escaping_never_splits_an_entity_when_truncating() -> None:
    text = message(_event(summary="<" * 5000))["text"]
    assert len(text) <= 3000 and not text.rstrip("…").endswith(("&", "&l", "&lt"))


def test_webhook_body_is_json_and_bounded() -> None:
    ev = _event(summary=HOSTILE * 10_000, evidence={"blob": "y" * 2_000_000})
    raw = body(ev)
    assert len(raw) <= MAX_BODY_BYTES
    doc = msgspec.json.decode(raw)
    assert doc["id"] == "sig-1" and doc["detail"]["rule_id"] == "out_of_stock"
    assert doc["detail"]["summary"].startswith("slot <!everyone>") and doc["truncated"] is True


def test_pagerduty_fields_are_bounded_strings() -> None:
    ev = _event(device_id="d" * 5000, site_id="s" * 5000, rule_id="r" * 5000, evidence={"blob": "y" * 2_000_000})
    body = pd_event("key", ev)
    p = body["payload"]
    assert len(p["summary"]) <= 1024 and len(p["source"]) <= 255
    assert all(len(p[k]) <= 255 for k in ("component", "group", "class"))
    assert len(msgspec.json.encode(body)) <= 512 * 1024  # PagerDuty refuses larger events
