"""Signed webhooks: POST the event envelope, HMAC-SHA256 signature in a header.

Headers: ``X-Vendwatch-Timestamp`` (unix seconds), ``X-Vendwatch-Signature:
v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` and ``X-Vendwatch-Event-Id``.
Receivers recompute the HMAC over the raw body and reject stale timestamps (replay).
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import Gate, TargetPolicy
from vendwatch.delivery.outbox import Item
from vendwatch.route.rules import TargetSpec


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
        body = msgspec.json.encode(item.payload["event"])
        ts = str(int(self.clock.now()))
        headers = {"Content-Type": "application/json", "X-Vendwatch-Timestamp": ts,
                   "X-Vendwatch-Signature": sign(self.spec.secret or "", ts, body),
                   "X-Vendwatch-Event-Id": str(item.payload["event"].get("id", ""))}
        gate.request("POST", self.spec.url or "", content=body, headers=headers, timeout=self.spec.timeout_s)
