"""Backtesting: run a rule set over stored events, with a virtual clock and no side effects.

Events come from the log (``source="log"``) or from the lake
(``vendwatch.lake.replay:iter_events``, ordered by ``occurred_at``). Each rule set gets
its own engine; the clock follows event time, so absence and duration timers fire
exactly where they would have. Nothing is written: no signals, no checkpoints.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from vendwatch.bus.base import EVENTS, Log
from vendwatch.config import Settings
from vendwatch.detect.engine import Engine, SiteOptions
from vendwatch.detect.role import LeanEvent
from vendwatch.detect.rules import RuleSet
from vendwatch.runtime import load
from vendwatch.signals import Signal

# (event_id, device_id, site_id, type, occurred_at epoch s, payload)
Row = tuple[str, str, str | None, str, float, dict[str, Any]]


class BacktestError(Exception):
    """A backtest cannot run (no such source, bad range)."""


_lean = msgspec.json.Decoder(LeanEvent)
_data = msgspec.json.Decoder(dict)


def log_events(log: Log, start: float, end: float) -> Iterator[Row]:
    """Events of the log with start <= occurred_at < end, in event-time order.

    Within a partition the log is in arrival order; each partition is sorted by event
    time (in memory, bounded by the range asked for) and the partitions are merged.
    """
    parts: list[list[Row]] = []
    begins = log.begin_offsets(EVENTS)
    for p, end_off in log.end_offsets(EVENTS).items():
        rows: list[Row] = []
        off = begins.get(p, 0)
        while off < end_off:
            recs = log.read(EVENTS, p, off, 5000)
            if not recs:
                break
            for r in recs:
                try:
                    e = _lean.decode(r.value)
                    t = e.occurred_at.timestamp()
                    if start <= t < end:
                        rows.append((e.event_id, e.device_id, e.site_id, e.type, t, _data.decode(e.data)))
                except msgspec.DecodeError:
                    continue  # the live detector counts these; a backtest just skips them
            off = recs[-1].offset + 1
        rows.sort(key=lambda row: row[4])
        parts.append(rows)
    yield from heapq.merge(*parts, key=lambda row: row[4])


def lake_events(settings: Settings, start: datetime, end: datetime) -> Iterator[Row]:
    """Events from the lake's raw zone (needs ``vendwatch.lake.replay``)."""
    fn = load("vendwatch.lake.replay:iter_events")
    if fn is None:
        raise BacktestError("--source lake needs the lake module (vendwatch.lake.replay:iter_events), "
                            "which is not part of this build; use --source log")
    for e in fn(settings, start, end):
        yield (e.event_id, e.device_id, e.site_id, e.type, e.occurred_at.timestamp(), _data.decode(e.data))


@dataclass
class Result:
    signals: list[Signal]
    events: int = 0
    devices: int = 0
    by_rule: dict[str, dict[str, int]] = field(default_factory=dict)


def run(rows: Iterable[Row], rulesets: list[RuleSet], end: float, *, site: SiteOptions | None = None,
        registry: list[tuple[str, str | None, int | None, dict[str, Any]]] | None = None,
        site_sizes: dict[str, int] | None = None) -> list[Result]:
    """Evaluate every rule set over the same events in one pass; the clock is event time."""
    engines = [Engine(rs, allowed_lateness_s=0.0, site=site) for rs in rulesets]
    for eng in engines:
        for device_id, site_id, hb, meta in registry or ():
            eng.set_device_info(device_id, site_id, float(hb) if hb else None, meta)
        eng.set_site_sizes(site_sizes or {})
    results = [Result([]) for _ in engines]
    n = 0
    for event_id, device_id, site_id, etype, t, data in rows:
        n += 1
        for eng, res in zip(engines, results, strict=True):
            eng.process(event_id, device_id, site_id, etype, t, data)
            eng.advance(t)
            if eng.out:
                res.signals.extend(eng.drain())
    for eng, res in zip(engines, results, strict=True):
        eng.advance(end)
        res.signals.extend(eng.drain())
        res.events = n
        res.devices = len(eng.devices)
        for s in res.signals:
            st = res.by_rule.setdefault(s.rule_id, {"firing": 0, "resolved": 0})
            st[s.status] += 1
    return results


def _ident(s: Signal) -> tuple[str, str, str, str]:
    return (s.rule_id, s.dedupe_key, s.status, s.occurred_at.isoformat())


def diff(candidate: Result, active: Result) -> dict[str, Any]:
    """Per-rule counts side by side, and the signals only one side produces."""
    cand = {_ident(s): s for s in candidate.signals}
    act = {_ident(s): s for s in active.signals}
    rules = sorted(set(candidate.by_rule) | set(active.by_rule))
    zero = {"firing": 0, "resolved": 0}
    return {
        "rules": [
            {"rule_id": r, "candidate_fired": candidate.by_rule.get(r, zero)["firing"],
             "candidate_resolved": candidate.by_rule.get(r, zero)["resolved"],
             "active_fired": active.by_rule.get(r, zero)["firing"],
             "active_resolved": active.by_rule.get(r, zero)["resolved"]}
            for r in rules
        ],
        "only_candidate": [cand[k] for k in sorted(set(cand) - set(act), key=lambda k: (k[3], k[0], k[1]))],
        "only_active": [act[k] for k in sorted(set(act) - set(cand), key=lambda k: (k[3], k[0], k[1]))],
        "same": len(set(cand) & set(act)),
    }
