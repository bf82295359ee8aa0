"""Per-event validation shared by every ingestion front door (HTTP collector, MQTT bridge).

Given the raw elements of a batch and the authenticated device, decide for each event:
accepted (becomes a ``StoredEvent``), rejected (reason + quarantine record), or a
duplicate within the batch. Both collectors call ``validate_batch`` so an event is
judged the same whichever way it arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec

from vendwatch import events as ev
from vendwatch.config import IngestSettings
from vendwatch.ingest.sink import Pending
from vendwatch.observe import metrics as m
from vendwatch.state.store import Device

_enc = msgspec.json.Encoder()


@dataclass
class Verdicts:
    """The outcome of validating one batch."""

    accepted: list[Pending] = field(default_factory=list)
    accepted_index: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {index, event_id, reason} for the answer
    quarantine: list[tuple[str, bytes]] = field(default_factory=list)  # (key, RejectedEvent JSON)
    in_batch_duplicates: int = 0


def quarantine_record(device_id: str | None, now: datetime, reason: str, raw: bytes | None,
                      event_id: str | None = None, index: int | None = None) -> bytes:
    """A ``RejectedEvent`` for the ``rejected`` topic (raw kept up to 64 KiB; bytes that
    are not JSON are kept as a JSON string so the record itself stays valid JSON)."""
    keep = None
    if raw is not None and len(raw) <= 65_536:
        try:
            msgspec.json.decode(raw)
            keep = msgspec.Raw(raw)
        except msgspec.DecodeError:
            keep = msgspec.Raw(_enc.encode(raw.decode("utf-8", "replace")))
    return _enc.encode(ev.RejectedEvent(received_at=now, reason=reason, device_id=device_id, event_id=event_id,
                                        index=index, raw=keep))


def validate_batch(raws: Sequence[msgspec.Raw], device: Device, s: IngestSettings, now: datetime) -> Verdicts:
    """Judge each raw event of ``device``'s batch received at ``now`` (counts metrics)."""
    future_limit = now + timedelta(seconds=s.max_future_skew_s)
    late_limit = now - timedelta(seconds=s.late_after_s)
    oldest = now - timedelta(days=s.max_age_days)
    out = Verdicts()
    seen_in_batch: set[str] = set()

    def reject(i: int, raw: msgspec.Raw, reason: str, code: str, event_id: str | None) -> None:
        out.rejected.append({"index": i, "event_id": event_id, "reason": reason})
        m.INGEST_EVENTS.labels(outcome="rejected", reason=code).inc()
        out.quarantine.append((device.device_id, _enc.encode(ev.RejectedEvent(
            received_at=now, reason=reason, device_id=device.device_id, event_id=event_id, index=i,
            raw=raw if len(raw) <= 65_536 else None))))

    for i, raw in enumerate(raws):
        try:
            e = ev.decode_device_event(raw)
        except msgspec.ValidationError as err:
            reject(i, raw, str(err), "schema", peek_event_id(raw))
            continue
        except msgspec.DecodeError as err:
            reject(i, raw, f"not a JSON object: {err}", "schema", None)
            continue
        if e.device_id != device.device_id:
            reject(i, raw, f"device_id {e.device_id!r} does not match the authenticated device {device.device_id!r}",
                   "device_mismatch", e.event_id)
            continue
        if e.occurred_at > future_limit:
            reject(i, raw, f"occurred_at {e.occurred_at.isoformat()} is more than {s.max_future_skew_s:g}s in the future",
                   "future", e.event_id)
            continue
        if e.occurred_at < oldest:
            reject(i, raw, f"occurred_at {e.occurred_at.isoformat()} is older than {s.max_age_days:g} days",
                   "too_old", e.event_id)
            continue
        if e.event_id in seen_in_batch:
            out.in_batch_duplicates += 1
            continue
        seen_in_batch.add(e.event_id)
        stored = ev.StoredEvent(
            event_id=e.event_id, device_id=e.device_id, type=e.type, occurred_at=e.occurred_at,
            received_at=now, data=e.data, seq=e.seq, site_id=device.site_id,
            late=e.occurred_at < late_limit,
        )
        out.accepted.append(Pending(e.device_id, e.event_id, _enc.encode(stored)))
        out.accepted_index.append(i)
    return out


def peek_event_id(raw: msgspec.Raw) -> str | None:
    """The event_id of an event that failed validation, when it has a readable one."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    eid = obj.get("event_id") if isinstance(obj, dict) else None
    return eid[:128] if isinstance(eid, str) else None
