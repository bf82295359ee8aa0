"""Virtual-time harness for detector tests (Alertmanager-acceptance style).

A timeline is a list of events at given instants (minutes after T0); the harness feeds
them to a real ``Engine`` while a virtual clock advances in ticks, and records for
every signal the virtual instant it came out. Tests then say which signals they want
and in which window — no sleeps, no wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vendwatch.detect.engine import Engine, SiteOptions
from vendwatch.detect.rules import RuleSet, load_ruleset, parse_rules
from vendwatch.signals import Signal

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()
DEFAULT = load_ruleset([])


def at(minutes: float) -> datetime:
    return datetime.fromtimestamp(T0 + minutes * 60, UTC)


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

    def collect() -> None:
        for s in eng.drain():
            out.append(Out(s, round((clock - T0) / 60, 6)))

    order = sorted(events, key=lambda e: e.t if e.arrive is None else e.arrive)
    for n, e in enumerate(order, 1):
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
    fixed = datetime(2030, 1, 1, tzinfo=UTC)
    return Engine(rules or DEFAULT, allowed_lateness_s=lateness_s, site=site or SiteOptions(wait_s=0.0),
                  wall=lambda: fixed)


def transitions(out: list[Out], rule_id: str, key: str | None = None) -> list[tuple[str, float]]:
    """(status, occurred minute) of one rule's signals, in emission order."""
    return [(o.signal.status, o.occurred_min) for o in out
            if o.signal.rule_id == rule_id and (key is None or o.signal.dedupe_key == key)]


# --- synthetic fleet for role / recovery tests --------------------------------------
def synthetic_fleet(n_devices: int = 40, hours: float = 6.0, seed: int = 7) -> list[tuple[str, bytes]]:
    """A deterministic fleet history as (key, StoredEvent JSON) records, in arrival order.

    Heartbeats every minute, telemetry every 2 minutes, sales; injected: refrigeration
    excursions, a motor jam, payment-failure bursts, a whole site going dark, single
    machines going silent, crash loops, and retried (duplicate) events.
    """
    import random

    import msgspec

    from vendwatch import events as ev

    rnd = random.Random(seed)
    out: list[tuple[float, str, bytes]] = []
    minutes = int(hours * 60)
    dark_site = "S3"

    def add(device: str, site: str, m: float, etype: str, data: dict[str, Any], eid: str) -> None:
        t = datetime.fromtimestamp(T0 + m * 60, UTC)
        se = ev.StoredEvent(event_id=eid, device_id=device, type=etype, occurred_at=t, received_at=t,
                            data=msgspec.Raw(msgspec.json.encode(data)), site_id=site)
        out.append((m, device, ev.encode(se)))

    for d in range(n_devices):
        dev, site = f"VM-{d:03d}", f"S{d // 4}"
        silent = set()
        if site == dark_site:
            silent |= set(range(120, 140))
        if d % 9 == 1:
            start = rnd.randrange(30, minutes - 60)
            silent |= set(range(start, start + rnd.randrange(5, 30)))
        warm = range(60, 100) if d % 7 == 5 else range(0)
        for m in range(minutes):
            if m in silent:
                continue
            add(dev, site, m, "heartbeat", {"interval_s": 60, "firmware_version": "1.4.2"}, f"{dev}-hb-{m}")
            if m % 2 == 0:
                temp = 8.0 if m in warm else 3.0 + rnd.random()
                add(dev, site, m + 0.25, "telemetry",
                    {"refrigeration_temp_c": temp, "door_open": False, "cpu_pct": 20.0, "voltage_v": 230.0},
                    f"{dev}-tel-{m}")
            if rnd.random() < 0.3:
                fail = (d % 11 == 7 and 200 <= m < 215) or rnd.random() < 0.03
                add(dev, site, m + 0.5, "transaction",
                    {"transaction_id": f"{dev}-tx-{m}", "product_id": "p1", "slot": "A1", "price_minor": 200,
                     "currency": "EUR", "payment_method": "card", "payment_status": "failure" if fail else "success",
                     "vend_status": "not_attempted" if fail else ("failure" if rnd.random() < 0.05 else "success")},
                    f"{dev}-tx-{m}")
            if d % 13 == 10 and m in (30, 90):
                add(dev, site, m + 0.75, "fault", {"code": "motor_jam", "state": "raised" if m == 30 else "cleared"},
                    f"{dev}-fault-{m}")
            if d % 17 == 3 and m in (150, 170, 185):
                add(dev, site, m + 0.6, "log", {"kind": "crash", "level": "critical"}, f"{dev}-crash-{m}")
    out.sort(key=lambda x: (x[0], x[1]))
    records = [(device, value) for _m, device, value in out]
    # devices retry: some events arrive twice
    for i in rnd.sample(range(len(records)), len(records) // 200):
        records.insert(min(len(records), i + rnd.randrange(1, 50)), records[i])
    return records
