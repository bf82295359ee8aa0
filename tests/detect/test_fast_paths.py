"""The engine's fast paths against the plain reading of the rules, on random event streams
with the default pack.

The engine generates one handler per event type with every rule's guard inlined
(``Kind.fast_src``), payload fields looked up once and the 'while' fields tracked
inline, and the role feeds whole partition runs (``Engine.process_run``). The
specification kept here: ``process`` per event and a handler that calls every applicable
rule's ``on_event`` in rule order. Both must give the same signals (every field) and the
same checkpointed state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vendwatch.detect.engine import DeviceState, Engine, SiteOptions
from vendwatch.detect.role import _LeanWithData
from vendwatch.detect.rules import RuleSet, load_ruleset, parse_rules
from vendwatch.events import PAYLOADS
from vendwatch.signals import Signal

RULES = load_ruleset([])
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
WALL = datetime(2030, 1, 1, tzinfo=UTC)


class PlainEngine(Engine):
    """The specification: ``on_event`` of every applicable rule, no generated code."""

    def _build_handlers(self) -> dict[str, Callable[..., None]]:
        out: dict[str, Callable[..., None]] = {}
        for etype in [*PAYLOADS, None]:
            kinds = self._always + (self._by_type.get(etype, []) if etype else [])
            out[etype or ""] = self._plain(etype, kinds, self._tracked.get(etype or "", ()))
        return out

    def _plain(self, etype: str | None, kinds: list[Any], tracked: tuple[str, ...]) -> Callable[..., None]:
        def handle(dev: DeviceState, et: str, t: float, d: dict[str, Any], eid: str) -> None:
            if etype == "refill":
                self._visit(dev, t, d)
            elif etype == "heartbeat":
                iv = d.get("interval_s")
                if iv and iv != dev.hb_reported:
                    dev.hb_reported = float(iv)
                    if dev.rules:
                        self.reschedule(dev)
            for f in tracked:
                v = d.get(f)
                if v is None:
                    continue
                if dev.fields is None:
                    dev.fields = [None] * (2 * len(self.field_slot))
                i = self.field_slot[f]
                if dev.fields[i] is None or dev.fields[i] <= t:
                    dev.fields[i], dev.fields[i + 1] = t, v
            for k in kinds:
                k.on_event(dev, et, t, d, eid)
        return handle


Decoded = _LeanWithData  # what the role's bulk decoder gives per record

# payload values around the default pack's thresholds and the values its rules name
_NUM = [-120.0, -106.0, -105.0, -60.0, 0, 3.5, 5, 5.5, 30, 45, 45.5, 60, 91, 96, 150, 199.5, 200, 207, 230,
        253.5, 2001.0, 7200]
_FIELDS: dict[str, dict[str, list[Any]]] = {
    "heartbeat": {"interval_s": [30, 60, 600], "firmware_version": ["1.4.2", "1.5.0"], "uptime_s": [5]},
    "telemetry": {"cabinet_temp_c": _NUM, "refrigeration_temp_c": _NUM, "voltage_v": _NUM, "cpu_pct": _NUM,
                  "mem_pct": _NUM, "disk_pct": _NUM, "power_on": [True, False], "door_open": [True, False],
                  "motor_status": ["idle", "running", "jammed"], "coin_sensor": ["ok", "failed", "degraded"],
                  "bill_validator": ["ok", "failed"], "product_sensor": ["ok", "failed"]},
    "transaction": {"payment_method": ["card", "cash"], "payment_status": ["success", "failure"],
                    "vend_status": ["success", "failure", "not_attempted"], "price_minor": [150, 200, 250]},
    "fault": {"code": ["motor_jam", "cooling_failure", "coin_mech_failure", "sensor_malfunction", "display_failure",
                       "power_supply_failure", "payment_device_failure", "bill_validator_failure"],
              "state": ["raised", "cleared"], "component": ["vend", "door"]},
    "security": {"kind": ["door_unauthorized", "door_forced", "shock", "power_cut", "firmware_integrity_failed",
                          "payment_attempts_failed"], "magnitude_g": [2.5], "attempts": [7]},
    "config": {"firmware_version": ["1.4.2", "1.5.0"], "update_status": ["started", "success", "failure"],
               "target_version": ["1.5.0"]},
    "connectivity": {"location_id": ["L1", "L2"], "signal_dbm": _NUM, "latency_ms": _NUM,
                     "gps": [{"lat": 48.1, "lon": 11.5}, {"lat": 48.2, "lon": 11.5}]},
    "log": {"kind": ["crash", "application"], "level": ["error"]},
    "stock_alert": {"slot": ["A1", "A2"], "level": ["low", "out", "ok"], "count": [0, 2]},
    "refill": {"phase": ["started", "completed"], "slots": [[]]},
    "refund": {"refund_id": ["r1"], "amount_minor": [100]},
    "dex_finding": {"kind": ["sales_exceed_telemetry", "telemetry_exceeds_sales", "cash_shortfall"],
                    "detail": ["slot A1: 3 vs 5"]},
}


@st.composite
def payload(draw: st.DrawFn, etype: str) -> dict[str, Any]:
    fields = _FIELDS[etype]
    names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=len(fields)))
    return {f: draw(st.sampled_from(fields[f])) for f in names}


@st.composite
def stream(draw: st.DrawFn) -> list[tuple[float, Decoded | None]]:
    """(arrival minute, event | None = a watermark step) in arrival order; times mostly
    increase, some events come late, some twice."""
    out: list[tuple[float, Decoded | None]] = []
    clock = 0.0
    n = draw(st.integers(10, 120))
    sent: list[Decoded] = []
    for k in range(n):
        clock += draw(st.sampled_from([0.0, 0.1, 1.0, 5.0, 20.0, 45.0]))
        choice = draw(st.integers(0, 19))
        if choice == 0 and sent:  # a retry: the same event again
            out.append((clock, draw(st.sampled_from(sent))))
            continue
        if choice == 1:
            out.append((clock, None))
            continue
        etype = draw(st.sampled_from(sorted(_FIELDS)))
        late = draw(st.sampled_from([0.0, 0.0, 0.0, 0.5, 3.0]))
        dev = draw(st.sampled_from(["VM-1", "VM-2", "VM-3", "VM-4"]))
        e = Decoded(f"e{k}", dev, etype, datetime.fromtimestamp(T0 + (clock - late) * 60, UTC),
                    draw(payload(etype)), site_id="S1" if dev != "VM-4" else "S2")
        sent.append(e)
        out.append((clock, e))
    return out


def _engines() -> tuple[Engine, Engine]:
    site = SiteOptions(min_devices=2, min_fraction=0.5, wait_s=60.0)
    return (PlainEngine(RULES, allowed_lateness_s=300.0, site=site, wall=lambda: WALL),
            Engine(RULES, allowed_lateness_s=300.0, site=site, wall=lambda: WALL))


def _state(eng: Engine) -> dict[str, bytes]:
    return {d: eng.encode_device(dev) for d, dev in sorted(eng.devices.items())} | {"": eng.encode_sites()}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream(), st.integers(1, 7))
def test_the_generated_handlers_and_runs_give_the_signals_of_the_plain_rules(
        events: list[tuple[float, Decoded | None]], run: int) -> None:
    plain, fast = _engines()
    for eng in (plain, fast):
        eng.set_device_info("VM-2", "S1", 120.0)
        eng.set_site_sizes({"S1": 3, "S2": 1})
    got_plain: list[Signal] = []
    got_fast: list[Signal] = []
    pending: list[Decoded] = []

    def step(now: float) -> None:
        # the role: runs of one partition through process_run; the spec: process per event
        for e in pending:
            plain.process(e.event_id, e.device_id, e.site_id, e.type, e.occurred_at.timestamp(), e.data)
        for i in range(0, len(pending), run):
            fast.process_run(pending[i:i + run])
            assert fast.run_taken == len(pending[i:i + run])
        pending.clear()
        for eng, got in ((plain, got_plain), (fast, got_fast)):
            eng.advance(T0 + now * 60, 60.0)
            got += eng.drain()

    for clock, e in events:
        if e is None:
            step(clock)
        else:
            pending.append(e)
            if len(pending) >= 5:
                step(clock)
    step(events[-1][0] + 240 if events else 0.0)
    assert got_fast == got_plain
    assert _state(fast) == _state(plain)
    assert (fast.events, fast.duplicates) == (plain.events, plain.duplicates)


# extra rules for the paths the default pack does not take: a change of a nested field, a
# clear of every key, a templated key cleared per event
_EXTRA = RuleSet(RULES.rules + parse_rules("""
format: vendwatch.rules/v1
rules:
  - id: lat_changed
    type: change
    severity: info
    of: {type: connectivity}
    field: gps.lat
    resolve_after: 10m
  - id: slot_alert
    type: match
    severity: info
    dedupe_key: "{rule_id}/{device_id}/{event[slot]}"
    match: {type: stock_alert, where: {level: [low, out]}}
    clear:
      - {type: stock_alert, where: {level: ok}}
      - {type: refill, where: {phase: completed}, all_keys: true}
""", "extra.yaml"), ["default.yaml", "extra.yaml"])


@st.composite
def batched_stream(draw: st.DrawFn) -> list[list[Decoded]]:
    """Polls of device batches: several events of one device at one instant (as devices
    send them), some batches late, some sent twice, devices interleaved between batches."""
    polls: list[list[Decoded]] = []
    clock = 0.0
    sent: list[list[Decoded]] = []
    for p in range(draw(st.integers(2, 12))):
        poll: list[Decoded] = []
        for b in range(draw(st.integers(1, 4))):
            if sent and draw(st.integers(0, 9)) == 0:
                poll += draw(st.sampled_from(sent))  # a redelivered batch
                continue
            clock += draw(st.sampled_from([0.0, 0.5, 2.0, 12.0]))
            at = clock - draw(st.sampled_from([0.0, 0.0, 0.0, 1.0, 6.0]))
            dev = draw(st.sampled_from(["VM-1", "VM-2", "VM-3"]))
            batch = []
            for k in range(draw(st.integers(1, 8))):
                etype = draw(st.sampled_from(sorted(_FIELDS)))
                t = at + draw(st.sampled_from([0.0, 0.0, 0.1]))  # mostly the same instant
                batch.append(Decoded(f"e{p}-{b}-{k}", dev, etype, datetime.fromtimestamp(T0 + t * 60, UTC),
                                     draw(payload(etype)), site_id="S1"))
            sent.append(batch)
            poll += batch
        polls.append(poll)
    return polls


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batched_stream())
def test_device_batches_give_the_signals_state_and_dirty_devices_of_the_plain_rules(polls: list[list[Decoded]]) -> None:
    site = SiteOptions(min_devices=2, min_fraction=0.5, wait_s=60.0)
    plain = PlainEngine(_EXTRA, allowed_lateness_s=300.0, site=site, wall=lambda: WALL)
    fast = Engine(_EXTRA, allowed_lateness_s=300.0, site=site, wall=lambda: WALL)
    got_plain: list[Signal] = []
    got_fast: list[Signal] = []
    clock = T0
    for poll in polls:
        for e in poll:
            plain.process(e.event_id, e.device_id, e.site_id, e.type, e.occurred_at.timestamp(), e.data)
        fast.process_run(poll)
        assert fast.run_taken == len(poll)
        assert fast.dirty == plain.dirty  # the devices a checkpoint writes
        plain.dirty.clear()
        fast.dirty.clear()
        clock = max([clock, *(e.occurred_at.timestamp() for e in poll)])
        for eng, got in ((plain, got_plain), (fast, got_fast)):
            eng.advance(clock, 60.0)
            got += eng.drain()
    for eng, got in ((plain, got_plain), (fast, got_fast)):
        eng.advance(clock + 7200, 60.0)
        got += eng.drain()
    assert got_fast == got_plain
    assert _state(fast) == _state(plain)
    assert (fast.events, fast.duplicates, fast.in_order) == (plain.events, plain.duplicates, plain.in_order)
