"""Every injectable fault produces the events a detector needs to see it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from vendwatch import events as ev
from vendwatch.simulate import FAULTS, FaultPlan, FaultSpecError, Fleet, ScheduledFault
from vendwatch.simulate.faults import parse_duration

START = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)  # morning: customers are buying
FAULT_AT = 600.0


def _d(e: ev.DeviceEvent) -> dict:
    typed = ev.decode_payload(e.type, e.data)
    d = msgspec.json.decode(e.data)
    for f in typed.__struct_fields__:
        d.setdefault(f, msgspec.to_builtins(getattr(typed, f)))
    return d


def _of(events: list[ev.DeviceEvent], type_: str, **match: object) -> list[dict]:
    return [d for e in events if e.type == type_ for d in [_d(e)] if all(d.get(k) == v for k, v in match.items())]


def _cooling(evs: list[ev.DeviceEvent], f) -> None:
    warm = [e for e in evs if e.type == "telemetry" and not _d(e)["door_open"] and _d(e)["refrigeration_temp_c"] > 5]
    assert warm and (warm[-1].occurred_at - warm[0].occurred_at) >= timedelta(minutes=15)
    assert _of(evs, "fault", code="cooling_failure", state="raised")


def _offline(evs: list[ev.DeviceEvent], f) -> None:
    inside = [e for e in evs if f.start < e.occurred_at.timestamp() < f.end]
    assert not inside
    assert any(e.occurred_at.timestamp() >= f.end for e in evs)


def _power(kind: str | None) -> Callable[[list[ev.DeviceEvent], object], None]:
    def check(evs: list[ev.DeviceEvent], f) -> None:
        assert _of(evs, "telemetry", power_on=False, voltage_v=0.0)
        assert not [e for e in evs if f.start + 1 < e.occurred_at.timestamp() < f.end]
        assert _of(evs, "log", kind="startup")
        if kind:
            assert _of(evs, "security", kind=kind)
    return check


def _crash_loop(evs: list[ev.DeviceEvent], f) -> None:
    crashes = sorted(e.occurred_at for e in evs if e.type == "log" and _d(e)["kind"] == "crash")
    assert len(crashes) >= 3 and crashes[2] - crashes[0] <= timedelta(hours=1)
    assert all(_d(e)["crash_dump"] for e in evs if e.type == "log" and _d(e)["kind"] == "crash")


EXPECT: dict[str, Callable[[list[ev.DeviceEvent], object], None]] = {
    "offline": _offline,
    "cooling_failure": _cooling,
    "overheating": lambda evs, f: _check(any(d["cabinet_temp_c"] > 50 for d in _of(evs, "telemetry"))),
    "voltage": lambda evs, f: _check(any(not 207 <= d["voltage_v"] <= 253 for d in _of(evs, "telemetry"))),
    "power_off": _power(None),
    "power_cut": _power("power_cut"),
    "motor_jam": lambda evs, f: _check(_of(evs, "fault", code="motor_jam", state="raised")
                                       and _of(evs, "fault", code="motor_jam", state="cleared")
                                       and _of(evs, "telemetry", motor_status="jammed")),
    "sensor_malfunction": lambda evs, f: _check(_of(evs, "fault", code="sensor_malfunction", state="raised")
                                                and any("failed" in (d["coin_sensor"], d["bill_validator"], d["product_sensor"])
                                                        for d in _of(evs, "telemetry"))),
    "payment_device_failure": lambda evs, f: _check(_of(evs, "fault", code="payment_device_failure", state="raised")
                                                    and _of(evs, "fault", code="payment_device_failure", state="cleared")),
    "payment_failures": lambda evs, f: _check(len(_of(evs, "transaction", failure_reason="card_declined")) >= 3
                                              and _of(evs, "security", kind="payment_attempts_failed")),
    "failed_vends": lambda evs, f: _check(len(_of(evs, "transaction", vend_status="failure")) >= 2
                                          and len(_of(evs, "refund")) == len(_of(evs, "transaction", vend_status="failure"))),
    "door_unauthorized": lambda evs, f: _check(_of(evs, "security", kind="door_unauthorized")
                                               and _of(evs, "telemetry", door_open=True)
                                               and not _of(evs, "refill", phase="started")),
    "door_forced": lambda evs, f: _check(_of(evs, "security", kind="door_forced")),
    "shock": lambda evs, f: _check(_of(evs, "security", kind="shock") or _of(evs, "security", kind="vibration")),
    "firmware_integrity": lambda evs, f: _check(_of(evs, "security", kind="firmware_integrity_failed")),
    "bad_connectivity": lambda evs, f: _check(any(d["signal_dbm"] < -110 and d["latency_ms"] > 1000
                                                  for d in _of(evs, "connectivity"))),
    "failed_update": lambda evs, f: _check(_of(evs, "config", update_status="started")
                                           and _of(evs, "config", update_status="failure")),
    "crash_loop": _crash_loop,
    "resource_pressure": lambda evs, f: _check(any(d["cpu_pct"] > 90 and d["mem_pct"] > 90 and d["disk_pct"] > 95
                                                   for d in _of(evs, "telemetry"))),
}


def _check(ok: object) -> None:
    assert ok


def test_every_fault_kind_has_an_expectation() -> None:
    assert set(EXPECT) == set(FAULTS)


def _device_for(fleet: Fleet, kind: str) -> str:
    if kind == "failed_vends":  # needs customers: take the busiest machine
        return max(fleet.profiles, key=lambda p: p.sales_per_day).device_id
    for p in fleet.profiles:
        if FAULTS[kind].fits(p.refrigerated, p.smart):
            return p.device_id
    raise AssertionError(f"no machine fits {kind}")


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_fault_kind_produces_its_events(kind: str) -> None:
    probe = Fleet(seed=21, n_devices=6, start=START)
    device = _device_for(probe, kind)
    duration = 7200.0 if FAULTS[kind].duration_s[1] > 0 else None
    fleet = Fleet(seed=21, n_devices=6, start=START,
                  faults=FaultPlan(scheduled=[ScheduledFault(kind, device, FAULT_AT, duration)]))
    events = fleet.run_for(4 * 3600)
    injected = [f for f in fleet.injected if f.kind == kind]
    assert len(injected) == 1 and injected[0].device_id == device
    f = injected[0]
    mine = [e for e in events if e.device_id == device and e.occurred_at.timestamp() >= f.start]
    EXPECT[kind](mine, f)
    for e in events:
        ev.decode_device_event(ev.encode(e))


def test_payload_defaults_are_sent_explicitly() -> None:
    """Rules match raw JSON: a raised fault says so, like a completed refill does."""
    fleet = Fleet(seed=21, n_devices=6, start=START,
                  faults=FaultPlan(scheduled=[ScheduledFault("motor_jam", "VM-00001", 60, 600)]))
    raw = [msgspec.json.decode(e.data) for e in fleet.run_for(36 * 3600) if e.type in ("fault", "refill")]
    assert {"raised", "cleared"} <= {d.get("state") for d in raw}
    assert {"started", "completed"} <= {d.get("phase") for d in raw}
    assert all(("state" in d) != ("phase" in d) for d in raw)


def test_healthy_fleet_has_no_fault_or_security_events() -> None:
    events = Fleet(seed=2, n_devices=10, start=START).run_for(6 * 3600)
    assert not [e for e in events if e.type in ("fault", "security")]
    assert not [e for e in events if e.type == "log" and _d(e)["kind"] == "crash"]


def test_random_faults_follow_their_rates() -> None:
    fleet = Fleet(seed=5, n_devices=40, start=START, faults=FaultPlan.parse("motor_jam=2,shock=1"))
    fleet.run_for(86400)
    kinds = [f.kind for f in fleet.injected]
    # Poisson with means 80 and 40 (a jam lasts up to 2 h, during which no second one starts)
    assert 50 < kinds.count("motor_jam") < 110 and 20 < kinds.count("shock") < 65
    assert set(kinds) == {"motor_jam", "shock"}


def test_fault_specs_parse_and_explain_errors() -> None:
    assert FaultPlan.parse("none").rates == {}
    assert set(FaultPlan.parse("all").rates) == set(FAULTS)
    assert FaultPlan.parse("offline=0.5,shock", scale=2).rates == {"offline": 1.0, "shock": FAULTS["shock"].rate_per_day * 2}
    assert ScheduledFault.parse("cooling_failure@VM-00003+5m/2h") == ScheduledFault("cooling_failure", "VM-00003", 300, 7200)
    assert parse_duration("1d") == 86400
    for bad in ("meltdown", "offline=x", "offline=-1"):
        with pytest.raises(FaultSpecError):
            FaultPlan.parse(bad)
    with pytest.raises(FaultSpecError, match="kind@DEVICE"):
        ScheduledFault.parse("offline:VM-1")
    with pytest.raises(ValueError, match="unknown device"):
        Fleet(seed=1, n_devices=2, faults=FaultPlan(scheduled=[ScheduledFault("offline", "VM-99999", 0)]))


def test_docs_list_every_fault_kind_with_its_rate() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "simulator.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)`(?: \([a-z]+\))? \| ([0-9.]+) \|", doc, re.M))
    assert {k: float(v) for k, v in rows.items()} == {k: f.rate_per_day for k, f in FAULTS.items()}
