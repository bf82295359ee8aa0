"""Business events as EventBridge-shaped envelopes, the documents patterns match against.

A signal becomes::

    {"version": "0", "id": <signal_id>, "source": "vendwatch.detect",
     "detail-type": "Signal Firing" | "Signal Resolved", "time": <occurred_at ISO>,
     "resources": [<device_id>, <site_id>], "detail": {<the Signal's fields>}}

Records on the ``business`` topic that already look like envelopes (``source`` and
``detail`` keys) are used as they are; other JSON objects are wrapped with source
``vendwatch`` and detail-type ``Business Event``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from vendwatch.signals import Signal

_SIGNAL_FIELDS = set(Signal.__struct_fields__)


def from_signal(sig: Signal) -> dict[str, Any]:
    # every field, defaults included (Signal omits defaults when encoded), so patterns can test them
    detail = msgspec.to_builtins({f: getattr(sig, f) for f in sig.__struct_fields__})
    return {
        "version": "0",
        "id": sig.signal_id,
        "source": "vendwatch.detect",
        "detail-type": "Signal Firing" if sig.status == "firing" else "Signal Resolved",
        "time": sig.occurred_at.isoformat(),
        "resources": [r for r in (sig.device_id, sig.site_id) if r],
        "detail": detail,
    }


class EnvelopeError(ValueError):
    """A record on the bus is not a JSON object."""


def from_record(value: bytes, topic: str, partition: int, offset: int) -> dict[str, Any]:
    """The envelope of one log record (signals and business events alike)."""
    try:
        doc = msgspec.json.decode(value)
    except msgspec.DecodeError as e:
        raise EnvelopeError(f"{topic}/{partition}@{offset}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError(f"{topic}/{partition}@{offset}: not a JSON object")
    if "source" in doc and "detail" in doc:
        doc.setdefault("id", _record_id(topic, partition, offset))
        return doc
    if {"signal_id", "rule_id", "status", "dedupe_key"} <= doc.keys():
        try:
            return from_signal(msgspec.convert(doc, Signal, strict=False))
        except msgspec.ValidationError:
            pass
    return {"version": "0", "id": _record_id(topic, partition, offset), "source": "vendwatch",
            "detail-type": "Business Event", "resources": [], "detail": doc}


def _record_id(topic: str, partition: int, offset: int) -> str:
    return "evt_" + hashlib.blake2b(f"{topic}/{partition}/{offset}".encode(), digest_size=10).hexdigest()
