"""One DEX file from one device: judged, turned into events, ready for the collector's sink.

Shared by every front door (``POST /v1/dex``, ``vendwatch dex import``, the MQTT
bridge) so they give the same verdicts. The events go through the collector's own
``Validator``: the same limits, the same stored form, the same quarantine.
A refused file (wrong CRC, broken frame) is kept whole in the quarantine (``rejected``
topic, code ``dex_<reason>``) and nothing of it is counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from vendwatch.config import IngestSettings
from vendwatch.dex import model as dm
from vendwatch.dex.meaning import compare
from vendwatch.dex.parser import DexError, parse, read_time
from vendwatch.dex.store import DexStore
from vendwatch.dex.translate import Window, read_id, to_events
from vendwatch.ingest.sink import Pending
from vendwatch.ingest.validate import Parsed, Validator, quarantine_record
from vendwatch.state.store import Device

MAX_FILE_BYTES = 65_536  # kept whole in the quarantine when refused, and inside its dex_read event
_enc = msgspec.json.Encoder()


@dataclass(slots=True)
class Judged:
    """The verdict on one file: ``refused`` (code, reason) or the events to append."""

    sha256: str
    read_id: str
    accepted: list[Pending] = field(default_factory=list)
    quarantine: list[tuple[str, bytes]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # events of an accepted file refused one by one
    refused: tuple[str, str] | None = None  # (code, reason) when the file itself is refused
    file: dm.DexFile | None = None
    taken_at: datetime | None = None
    findings: list[str] = field(default_factory=list)

    def answer(self, fresh: list[bool]) -> dict[str, Any]:
        n_new = sum(1 for f in fresh if f)
        flags = self.file.flags if self.file else []
        return {"read_id": self.read_id, "accepted": n_new, "duplicates": len(fresh) - n_new,
                "rejected": self.rejected, "flags": flags, "findings": self.findings}


def file_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def judge(raw: bytes, device: Device, s: IngestSettings, store: DexStore, now: datetime) -> Judged:
    """Parse ``raw``, compare it with the device's previous read, and build its events (no append)."""
    sha = file_sha256(raw)
    j = Judged(sha, read_id(sha))
    if len(raw) > MAX_FILE_BYTES:
        return _refuse(j, device, now, raw, "too_large", f"DEX file is {len(raw)} bytes; the limit is {MAX_FILE_BYTES}")
    try:
        f = parse(raw)
    except DexError as e:
        return _refuse(j, device, now, raw, e.code, f"DEX file refused: {e.reason}")
    j.file = f
    local = read_time(f.read)
    read_at = local.replace(tzinfo=UTC) if local is not None else None
    window = Window(now - timedelta(days=s.max_age_days), now + timedelta(seconds=s.max_future_skew_s), now)
    j.taken_at = window.clamp(read_at)
    prev = store.previous(device.device_id, sha, j.taken_at)
    period = compare(prev.read if prev else None, f.read)
    j.findings = period.findings
    events = to_events(device.device_id, f, raw, sha, period, read_at, prev.taken_at if prev else None, window)
    out = Validator(s).validate(Parsed(b"", None, [msgspec.Raw(_enc.encode(e)) for e in events]),
                                device.device_id, device.site_id, now)
    j.accepted, j.quarantine, j.rejected = out.accepted, out.quarantine, out.rejected
    return j


def remember(j: Judged, device: Device, store: DexStore) -> None:
    """After the events are durable: this read becomes the baseline of the next one."""
    if j.file is not None and j.taken_at is not None and any(p.event_id == j.read_id for p in j.accepted):
        store.record(device.device_id, j.sha256, j.taken_at, j.file.read)


def _refuse(j: Judged, device: Device, now: datetime, raw: bytes, code: str, reason: str) -> Judged:
    j.refused = (f"dex_{code}", reason)
    j.quarantine = [(device.device_id, quarantine_record(device.device_id, now, reason, raw, event_id=j.read_id,
                                                         code=f"dex_{code}"))]
    return j
