"""Virtual-time harness for detector tests (Alertmanager-acceptance style).

A timeline is a list of events at given instants (minutes after T0); the harness feeds
them to a real ``Engine`` while a virtual clock advances in ticks, and records for
every signal the virtual instant it came out. Tests then say which signals they want
and in which window — no sleeps, no wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vendwatch.detect.engine import Engine, SiteOptions
from vendwatch.detect.rules import RuleSet, load_ruleset, parse_rules
from vendwatch.signals import Signal

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()
DEFAULT = load_ruleset([])


def at(minutes: float) -> datetime:
    return datetime.fromtimestamp(T0 + minutes * 60, timezone.utc)


@dataclass
class Ev:
    """An event at ``t`` minutes; it reaches the detector at ``arrive`` minutes (default: ``t``)."""

    t: float
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    device: str = "VM-1"
    site: str | None = "S1"
    id: str | None = None
    arrive: float | None = None


@dataclass
class Out:
    signal: Signal
    emitted_min: float  # virtual clock (minutes after T0) when it came out

    @property
    def occurred_min(self) -> float:
        return round((self.signal.occurred_at.timestamp() - T0) / 60, 6)


def ruleset(yaml_text: str | None = None) -> RuleSet:
    if yaml_text is None:
        return DEFAULT
    return RuleSet(parse_rules(yaml_text, "test.yaml"), ["test.yaml"])


def run(events: list[Ev], until: float, *, rules: RuleSet | None = None, lateness_s: float = 0.0,
        tick_s: float = 30.0, site: SiteOptions | None = None, engine: Engine | None = None,
        start: float = 0.0) -> list[Out]:
    """Feed ``events`` in arrival order, ticking a virtual clock; return every signal."""
    eng = engine or make_engine(rules, lateness_s=lateness_s, site=site)
    out: list[Out] = []
    clock = T0 + start * 60
    n = 0

    def collect() -> None:
        for s in eng.drain():
            out.append(Out(s, round((clock - T0) / 60, 6)))

    order = sorted(events, key=lambda e: e.t if e.arrive is None else e.arrive)
    for e in order:
        n += 1
        arrival = T0 + 60 * (e.t if e.arrive is None else e.arrive)
        while clock + tick_s <= arrival:
            clock += tick_s
            eng.advance(clock)
            collect()
        clock = max(clock, arrival)
        eng.process(e.id or f"e{n}-{e.device}", e.device, e.site, e.type, T0 + e.t * 60, e.data)
        eng.advance(clock)
        collect()
    end = T0 + until * 60
    while clock < end:
        clock = min(clock + tick_s, end)
        eng.advance(clock)
        collect()
    return out


def make_engine(rules: RuleSet | None = None, *, lateness_s: float = 0.0, site: SiteOptions | None = None) -> Engine:
    fixed = datetime(2030, 1, 1, tzinfo=timezone.utc)
    return Engine(rules or DEFAULT, allowed_lateness_s=lateness_s, site=site or SiteOptions(wait_s=0.0),
                  wall=lambda: fixed)


def transitions(out: list[Out], rule_id: str, key: str | None = None) -> list[tuple[str, float]]:
    """(status, occurred minute) of one rule's signals, in emission order."""
    return [(o.signal.status, o.occurred_min) for o in out
            if o.signal.rule_id == rule_id and (key is None or o.signal.dedupe_key == key)]
