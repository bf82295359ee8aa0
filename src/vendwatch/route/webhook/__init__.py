"""Signed webhooks: POST the event envelope, HMAC-SHA256 signature in a header.

Headers: ``X-Vendwatch-Timestamp`` (unix seconds), ``X-Vendwatch-Signature:
v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` and ``X-Vendwatch-Event-Id``.
Receivers recompute the HMAC over the raw body and reject stale timestamps (replay).

The body is the envelope as JSON (device text is a JSON string, escaped by the
encoder), at most ``MAX_BODY_BYTES``: an envelope larger than that (a device sent
huge values) is sent with its strings clipped and ``"truncated": true``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import Gate, TargetPolicy
from vendwatch.delivery.outbox import Item
from vendwatch.route.clip import bounded_json
from vendwatch.route.rules import TargetSpec

MAX_BODY_BYTES = 256 * 1024


def body(event: dict[str, Any]) -> bytes:
    """The request body for one envelope, bounded."""
    return bounded_json(event, MAX_BODY_BYTES)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSink:
    def __init__(self, name: str, spec: TargetSpec, clock: Clock) -> None:
        assert spec.url and spec.secret
        self.target, self.spec, self.clock = name, spec, clock
        self.policy = TargetPolicy(retry=spec.retry, rate_limit=spec.rate_limit, circuit=spec.circuit)

    def deliver(self, item: Item, gate: Gate) -> None:
        raw = body(item.payload["event"])
        ts = str(int(self.clock.now()))
        # header values must be one line of printable ASCII: the id is ours, but say so in code
        event_id = "".join(c for c in str(item.payload["event"].get("id", ""))[:128] if " " <= c <= "~")
        headers = {"Content-Type": "application/json", "X-Vendwatch-Timestamp": ts,
                   "X-Vendwatch-Signature": sign(self.spec.secret or "", ts, raw),
                   "X-Vendwatch-Event-Id": event_id}
        gate.request("POST", self.spec.url or "", content=raw, headers=headers, timeout=self.spec.timeout_s)
