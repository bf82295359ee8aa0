"""Signals: what the detector emits onto the ``signals`` topic (key = ``dedupe_key``).

A signal says "condition X is firing / resolved for device D (or site S)". The
incident orchestrator and the business event bus consume them. ``signal_id`` is
deterministic (same rule, key, status and triggering instant give the same id), so a
consumer that sees a signal twice after a replay can drop the copy.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

import msgspec
from msgspec import Struct

Severity = Literal["critical", "major", "minor", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "minor", "major", "critical")  # ascending


class Signal(Struct, kw_only=True, omit_defaults=True):
    signal_id: str
    rule_id: str
    status: Literal["firing", "resolved"]
    severity: Severity
    dedupe_key: str  # stable identity of the condition, e.g. "offline/VM-0001"
    scope: Literal["device", "site"] = "device"
    kind: Literal["incident", "business"] = "incident"  # business: low stock etc., never a ticket
    summary: str = ""
    occurred_at: datetime  # event time of the transition
    emitted_at: datetime  # wall time the detector emitted it
    device_id: str | None = None
    site_id: str | None = None
    rule_version: int = 1
    labels: dict[str, str] = {}
    caused_by: str | None = None  # dedupe_key of a site-level signal that explains this one
    evidence: dict[str, Any] = {}  # values behind the decision (temperature, counts, ...)
    event_ids: list[str] = []  # contributing events (bounded)
    # on a "resolved" signal: the signal_id of the firing it withdraws (a late event showed
    # the condition never held: a false alarm, not a recovery)
    retracts: str | None = None


def signal_id(rule_id: str, dedupe_key: str, status: str, occurred_at: datetime) -> str:
    h = hashlib.blake2b(f"{rule_id}|{dedupe_key}|{status}|{occurred_at.isoformat()}".encode(), digest_size=12)
    return "sig_" + h.hexdigest()


_dec = msgspec.json.Decoder(Signal)
_enc = msgspec.json.Encoder()


def encode_signal(s: Signal) -> bytes:
    return _enc.encode(s)


def decode_signal(b: bytes) -> Signal:
    return _dec.decode(b)
