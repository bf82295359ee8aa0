"""Detector figures for ``vendwatch demo --summary-json``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from vendwatch.bus.base import SIGNALS, Log
from vendwatch.runtime import Context


class _Head(msgspec.Struct):
    rule_id: str
    status: str
    kind: str = "incident"
    scope: str = "device"


_dec = msgspec.json.Decoder(_Head)


def iter_signal_heads(log: Log) -> Iterator[_Head]:
    """Rule, status, kind and scope of every signal still retained on the signals topic."""
    begins = log.begin_offsets(SIGNALS)
    ends = log.end_offsets(SIGNALS)
    for p, end in ends.items():
        off = begins.get(p, 0)
        while off < end:
            recs = log.read(SIGNALS, p, off, 5000)
            if not recs:
                break
            for r in recs:
                yield _dec.decode(r.value)
            off = recs[-1].offset + 1


def summary(ctx: Context) -> dict[str, Any]:
    """``signals_fired`` / ``signals_resolved`` by rule id, read back from the signals topic."""
    fired: dict[str, int] = {}
    resolved: dict[str, int] = {}
    business = 0
    site = 0
    for h in iter_signal_heads(ctx.log):
        target = fired if h.status == "firing" else resolved
        target[h.rule_id] = target.get(h.rule_id, 0) + 1
        if h.status == "firing":
            business += h.kind == "business"
            site += h.scope == "site"
    return {
        "signals_fired": dict(sorted(fired.items())),
        "signals_resolved": dict(sorted(resolved.items())),
        "signals_total": sum(fired.values()) + sum(resolved.values()),
        "business_signals_fired": business,
        "site_signals_fired": site,
    }
