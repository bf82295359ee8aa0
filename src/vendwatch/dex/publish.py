"""Reconciliation findings onto the log, as ``dex_finding`` events of the machine concerned."""

from __future__ import annotations

from collections import defaultdict

import msgspec

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.dex.reconcile import Finding
from vendwatch.dex.translate import finding_event
from vendwatch.events import utcnow
from vendwatch.ingest.sink import open_sink
from vendwatch.ingest.validate import Parsed, Validator
from vendwatch.runtime import Context

_enc = msgspec.json.Encoder()


def publish_findings(ctx: Context, findings: list[Finding]) -> tuple[int, int]:
    """Append the findings (validated like device events); returns (new, already there)."""
    by_device: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_device[f.device_id].append(f)
    ctx.log.create_topic(EVENTS)
    ctx.log.create_topic(REJECTED)
    sink = open_sink(ctx.log, ctx.settings)
    sink.warm()
    new = dup = 0
    now = utcnow()
    for device_id, fs in sorted(by_device.items()):
        device = ctx.state.get_device(device_id)
        site = device.site_id if device is not None else fs[0].site_id
        raws = [msgspec.Raw(_enc.encode(finding_event(f))) for f in fs]
        out = Validator(ctx.settings.ingest).validate(Parsed(b"", None, raws), device_id, site, now)
        fresh = sink.commit(out.accepted, out.quarantine)
        new += sum(1 for x in fresh if x)
        dup += sum(1 for x in fresh if not x)
    return new, dup
