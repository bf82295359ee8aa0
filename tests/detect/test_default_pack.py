"""Every rule of the default pack: a timeline that fires and clears it at the right
instants, and a near-miss timeline that must not fire it (virtual clock, no sleeps)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from tests.detect.harness import DEFAULT, Ev, run, transitions
from tests.dex.rule_cases import dex_cases

TEL = "telemetry"


def fault(t: float, code: str, state: str = "raised", **kw: str) -> Ev:
    return Ev(t, "fault", {"code": code, "state": state, **kw})


def sec(t: float, kind: str, **kw: object) -> Ev:
    return Ev(t, "security", {"kind": kind, **kw})


def txn(t: float, i: int, payment: str = "success", vend: str = "success") -> Ev:
    return Ev(t, "transaction", {"transaction_id": f"tx{i}", "product_id": "p1", "slot": "A1", "price_minor": 150,
                                 "currency": "EUR", "payment_method": "card", "payment_status": payment,
                                 "vend_status": vend})


def hb(t: float, **kw: object) -> Ev:
    return Ev(t, "heartbeat", dict(kw))


def conn(t: float, **kw: object) -> Ev:
    return Ev(t, "connectivity", dict(kw))


@dataclass
class Case:
    rule: str
    fire: list[Ev]
    expect: list[tuple[str, float]]  # (status, event-time minute), in order
    negative: list[Ev]
    until: float = 180.0
    key: str | None = None


def _vends(fail_at: set[int], n: int) -> list[Ev]:
    return [txn(i, i, vend="failure" if i in fail_at else "success") for i in range(n)]


CASES = [
    Case("offline", [hb(0), hb(5), hb(30), hb(38)], [("firing", 15), ("resolved", 30)],
         [hb(m) for m in range(0, 61, 5)], until=45),
    Case("heartbeat_missing", [hb(0), *[Ev(m, TEL, {"cpu_pct": 10}) for m in range(5, 45, 5)], hb(45)],
         # a machine that falls silent altogether is `offline`, not `heartbeat_missing`
         [("firing", 30), ("resolved", 45)], [hb(0), Ev(5, TEL, {"cpu_pct": 10})], until=65),
    Case("overheating",
         [Ev(0, TEL, {"cabinet_temp_c": 50}), Ev(5, TEL, {"cabinet_temp_c": 52}), Ev(10, TEL, {"cabinet_temp_c": 51}),
          Ev(12, TEL, {"cabinet_temp_c": 30}), Ev(20, TEL, {"cabinet_temp_c": 30})],
         [("firing", 10), ("resolved", 22)],
         [Ev(0, TEL, {"cabinet_temp_c": 50}), Ev(8, TEL, {"cabinet_temp_c": 30}), Ev(9, TEL, {"cabinet_temp_c": 50}),
          Ev(15, TEL, {"cabinet_temp_c": 30})], until=40),
    Case("food_safety_temperature",
         [Ev(0, TEL, {"refrigeration_temp_c": 7, "door_open": False}), Ev(10, TEL, {"refrigeration_temp_c": 7.5}),
          Ev(16, TEL, {"refrigeration_temp_c": 8}), Ev(20, TEL, {"refrigeration_temp_c": 4}),
          Ev(24, TEL, {"refrigeration_temp_c": 3.5})],
         [("firing", 15), ("resolved", 25)],
         # door open during a restock: warm readings must not count
         [Ev(0, TEL, {"refrigeration_temp_c": 7, "door_open": True}), Ev(10, TEL, {"refrigeration_temp_c": 8}),
          Ev(20, TEL, {"refrigeration_temp_c": 8.5}), Ev(21, TEL, {"door_open": False, "refrigeration_temp_c": 4})],
         until=60),
    Case("cooling_failure", [fault(0, "cooling_failure"), fault(30, "cooling_failure", "cleared")],
         [("firing", 0), ("resolved", 30)], [fault(0, "cooling_failure", "cleared"), fault(5, "motor_jam")]),
    Case("voltage_out_of_band",
         [Ev(0, TEL, {"voltage_v": 190}), Ev(1, TEL, {"voltage_v": 195}), Ev(2, TEL, {"voltage_v": 190}),
          Ev(3, TEL, {"voltage_v": 230})],
         [("firing", 2), ("resolved", 8)],
         [Ev(0, TEL, {"voltage_v": 190}), Ev(1, TEL, {"voltage_v": 230}), Ev(1.5, TEL, {"voltage_v": 260}),
          Ev(3, TEL, {"voltage_v": 231})], until=30),
    Case("power_off", [Ev(0, TEL, {"power_on": False}), Ev(20, TEL, {"power_on": True})],
         [("firing", 0), ("resolved", 20)], [Ev(0, TEL, {"power_on": True}), Ev(5, TEL, {"voltage_v": 230})]),
    Case("power_cut", [sec(0, "power_cut"), Ev(10, TEL, {"power_on": True})], [("firing", 0), ("resolved", 10)],
         [sec(0, "shock", magnitude_g=2.0), Ev(1, TEL, {"power_on": True})]),
    Case("power_supply_failure", [fault(0, "power_supply_failure"), fault(7, "power_supply_failure", "cleared")],
         [("firing", 0), ("resolved", 7)], [fault(0, "display_failure")]),
    Case("motor_jam",
         [Ev(0, TEL, {"motor_status": "jammed"}), fault(1, "motor_jam"), Ev(10, TEL, {"motor_status": "running"})],
         [("firing", 0), ("resolved", 10)],
         [Ev(0, TEL, {"motor_status": "running"}), Ev(1, TEL, {"motor_status": "idle"}), fault(2, "motor_jam", "cleared")]),
    Case("coin_sensor_malfunction", [Ev(0, TEL, {"coin_sensor": "failed"}), Ev(5, TEL, {"coin_sensor": "ok"})],
         [("firing", 0), ("resolved", 5)], [Ev(0, TEL, {"coin_sensor": "degraded"}), Ev(5, TEL, {"coin_sensor": "ok"})]),
    Case("bill_validator_malfunction",
         [fault(0, "bill_validator_failure"), fault(5, "bill_validator_failure", "cleared")],
         [("firing", 0), ("resolved", 5)], [Ev(0, TEL, {"bill_validator": "degraded"})]),
    Case("product_sensor_malfunction",
         [Ev(0, TEL, {"product_sensor": "failed"}), Ev(5, TEL, {"product_sensor": "ok"})],
         [("firing", 0), ("resolved", 5)], [Ev(0, TEL, {"product_sensor": "degraded"})]),
    Case("sensor_malfunction",
         [fault(0, "sensor_malfunction", component="temp_probe"), fault(1, "sensor_malfunction", component="door_switch"),
          fault(5, "sensor_malfunction", "cleared", component="temp_probe")],
         [("firing", 0), ("resolved", 5)],
         [fault(0, "sensor_malfunction", "cleared", component="temp_probe")],
         key="sensor_malfunction/VM-1/temp_probe"),
    Case("payment_device_failure",
         [fault(0, "payment_device_failure"), fault(9, "payment_device_failure", "cleared")],
         [("firing", 0), ("resolved", 9)], [fault(0, "bill_validator_failure")]),
    Case("device_fault", [fault(0, "display_failure"), fault(5, "display_failure", "cleared")],
         [("firing", 0), ("resolved", 5)],
         [fault(0, "motor_jam"), fault(1, "payment_device_failure"), fault(2, "display_failure", "cleared")],
         key="device_fault/VM-1/display_failure"),
    Case("repeated_transaction_failures", [txn(m, m, payment="failure", vend="not_attempted") for m in range(5)],
         [("firing", 4), ("resolved", 10)],
         [txn(m, m, payment="failure", vend="not_attempted") for m in (0, 1, 2, 3, 11)], until=40),
    Case("failed_vends", _vends({2, 5, 8}, 40), [("firing", 9), ("resolved", 29)],
         _vends({5, 15, 25, 35, 45}, 60), until=70),
    Case("unauthorized_door_opening", [Ev(0, TEL, {"door_open": True}), Ev(3, TEL, {"door_open": False})],
         [("firing", 0), ("resolved", 3)],
         [Ev(0, "refill", {"phase": "started", "visit_id": "v1"}), Ev(1, TEL, {"door_open": True}),
          Ev(20, TEL, {"door_open": False}), Ev(21, "refill", {"phase": "completed", "visit_id": "v1"}),
          Ev(23, TEL, {"door_open": True}), Ev(24, TEL, {"door_open": False})]),
    Case("door_forced", [sec(0, "door_forced")], [("firing", 0), ("resolved", 60)], [sec(0, "door_unauthorized")]),
    Case("shock_vibration", [sec(0, "shock", magnitude_g=3.5), sec(10, "vibration")],
         [("firing", 0), ("resolved", 25)], [sec(0, "power_cut")]),
    Case("firmware_integrity_failed",
         [sec(0, "firmware_integrity_failed"), Ev(30, "config", {"update_status": "success", "firmware_version": "2.0"})],
         [("firing", 0), ("resolved", 30)], [Ev(0, "config", {"update_status": "success"})]),
    Case("failed_payment_attempts", [sec(0, "payment_attempts_failed", attempts=6)],
         [("firing", 0), ("resolved", 30)], [txn(0, 1, payment="failure", vend="not_attempted")]),
    Case("update_failed",
         [Ev(0, "config", {"update_status": "failure", "target_version": "2.1"}), Ev(20, "config", {"update_status": "success"})],
         [("firing", 0), ("resolved", 20)],
         [Ev(0, "config", {"update_status": "started"}), Ev(5, "config", {"update_status": "success"})]),
    Case("firmware_changed_unexpectedly", [hb(0, firmware_version="1.0"), hb(10, firmware_version="1.1")],
         [("firing", 10), ("resolved", 70)],
         [hb(0, firmware_version="1.0"), Ev(5, "config", {"update_status": "started", "target_version": "1.1"}),
          hb(10, firmware_version="1.1"), Ev(12, "config", {"update_status": "success", "firmware_version": "1.1"})]),
    Case("location_moved", [conn(0, location_id="L1"), conn(10, location_id="L2")], [("firing", 10), ("resolved", 70)],
         [conn(0, location_id="L1"), conn(10, location_id="L1")]),
    Case("gps_moved", [conn(0, gps={"lat": 52.0, "lon": 13.0}), conn(10, gps={"lat": 52.01, "lon": 13.0})],
         [("firing", 10), ("resolved", 70)],
         [conn(0, gps={"lat": 52.0, "lon": 13.0}), conn(10, gps={"lat": 52.0009, "lon": 13.0})]),
    Case("weak_signal",
         [conn(0, signal_dbm=-110), conn(10, signal_dbm=-112), conn(15, signal_dbm=-111), conn(20, signal_dbm=-80)],
         [("firing", 15), ("resolved", 30)], [conn(0, signal_dbm=-110), conn(10, signal_dbm=-90)]),
    Case("high_latency",
         [conn(0, latency_ms=3000), conn(14, latency_ms=2500), conn(16, latency_ms=200)],
         [("firing", 15), ("resolved", 26)], [conn(0, latency_ms=3000), conn(14, latency_ms=100)]),
    Case("cpu_pressure", [Ev(0, TEL, {"cpu_pct": 95}), Ev(10, TEL, {"cpu_pct": 96}), Ev(12, TEL, {"cpu_pct": 50})],
         [("firing", 10), ("resolved", 17)], [Ev(0, TEL, {"cpu_pct": 95}), Ev(9, TEL, {"cpu_pct": 50})]),
    Case("memory_pressure", [Ev(0, TEL, {"mem_pct": 99}), Ev(11, TEL, {"mem_pct": 20})],
         [("firing", 10), ("resolved", 16)], [Ev(0, TEL, {"mem_pct": 90}), Ev(20, TEL, {"mem_pct": 90})]),
    Case("disk_pressure", [Ev(0, TEL, {"disk_pct": 97}), Ev(31, TEL, {"disk_pct": 60})],
         [("firing", 30), ("resolved", 36)], [Ev(0, TEL, {"disk_pct": 97}), Ev(29, TEL, {"disk_pct": 60})]),
    Case("crash_loop", [Ev(m, "log", {"kind": "crash", "level": "critical"}) for m in (0, 20, 40)],
         [("firing", 40), ("resolved", 60)],
         [Ev(m, "log", {"kind": "crash"}) for m in (0, 30, 70)] + [Ev(5, "log", {"kind": "application", "level": "error"})]),
    Case("low_stock",
         [Ev(0, "stock_alert", {"slot": "A1", "level": "low", "count": 2}), Ev(30, "refill", {"phase": "completed"})],
         [("firing", 0), ("resolved", 30)], [Ev(0, "stock_alert", {"slot": "A1", "level": "ok"})]),
    Case("out_of_stock",
         [Ev(0, "stock_alert", {"slot": "B2", "level": "out", "count": 0}), Ev(10, "stock_alert", {"slot": "B2", "level": "ok"})],
         [("firing", 0), ("resolved", 10)], [Ev(0, "stock_alert", {"slot": "B2", "level": "low"})]),
]

CASES += dex_cases(Case)  # DEX reconciliation and fraud rules (tests/dex/rule_cases.py)


def test_every_default_rule_has_a_case() -> None:
    assert {r.id for r in DEFAULT.rules} == {c.rule for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_fires_and_clears_at_the_right_instants(case: Case) -> None:
    out = run(case.fire, case.until, tick_s=30)
    assert transitions(out, case.rule, case.key) == case.expect
    for o in out:
        if o.signal.rule_id == case.rule:
            # emitted by the virtual clock no earlier than it happened, and within one tick
            assert o.occurred_min <= o.emitted_min <= o.occurred_min + 0.5, o
            assert o.signal.kind == ("business" if case.rule in ("low_stock", "out_of_stock") else "incident")


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_near_miss_does_not_fire(case: Case) -> None:
    out = run(case.negative, case.until, tick_s=30)
    assert transitions(out, case.rule) == []
