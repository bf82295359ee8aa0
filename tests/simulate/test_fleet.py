"""The simulated fleet is deterministic, valid protocol v1, and physically/commercially plausible."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

import msgspec
import pytest

from vendwatch import events as ev
from vendwatch.simulate import FaultPlan, Fleet
from vendwatch.simulate.catalog import daily_curve

START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday, midnight UTC


def _data(e: ev.DeviceEvent) -> dict:
    """The payload as sent, with the typed payload's defaults filled in (they are omitted on the wire)."""
    typed = ev.decode_payload(e.type, e.data)
    d = msgspec.json.decode(e.data)
    for f in typed.__struct_fields__:
        d.setdefault(f, msgspec.to_builtins(getattr(typed, f)))
    return d


@pytest.fixture(scope="module")
def healthy_day() -> tuple[Fleet, list[ev.DeviceEvent]]:
    fleet = Fleet(seed=11, n_devices=30, start=START)
    return fleet, fleet.run_for(36 * 3600)


def test_same_seed_same_stream_however_sliced() -> None:
    a = Fleet(seed=5, n_devices=8, start=START, faults=FaultPlan.all(scale=5))
    b = Fleet(seed=5, n_devices=8, start=START, faults=FaultPlan.all(scale=5))
    one_go = a.run_for(6 * 3600)
    sliced = [e for k in range(1, 6 * 60 + 1) for e in b.advance(START.timestamp() + k * 60)]
    assert [ev.encode(e) for e in one_go] == [ev.encode(e) for e in sliced]
    assert a.injected == b.injected and a.injected


def test_other_seed_or_run_changes_the_stream() -> None:
    base = Fleet(seed=5, n_devices=3, start=START).run_for(3600)
    other_seed = Fleet(seed=6, n_devices=3, start=START).run_for(3600)
    other_run = Fleet(seed=5, n_devices=3, start=START, run_id="2").run_for(3600)
    assert [ev.encode(e) for e in base] != [ev.encode(e) for e in other_seed]
    assert not {e.event_id for e in base} & {e.event_id for e in other_run}


def test_events_are_valid_protocol_v1_with_unique_ids_and_ordered_seq(healthy_day) -> None:
    fleet, events = healthy_day
    assert {e.type for e in events} >= {"heartbeat", "telemetry", "transaction", "inventory", "stock_alert",
                                        "refill", "connectivity", "config", "log"}
    for e in events:
        ev.decode_device_event(ev.encode(e))  # raises on any schema violation
    ids = [(e.device_id, e.event_id) for e in events]
    assert len(ids) == len(set(ids))
    seqs: dict[str, list[int]] = defaultdict(list)
    for e in events:
        seqs[e.device_id].append(e.seq)
    for s in seqs.values():
        assert s == sorted(s) and s == list(range(s[0], s[0] + len(s)))
    times = [e.occurred_at for e in events]
    assert times == sorted(times)
    assert set(seqs) == set(fleet.device_ids)


def test_refrigerated_compartment_cycles_between_3_and_5_degrees(healthy_day) -> None:
    fleet, events = healthy_day
    fridges = {p.device_id for p in fleet.profiles if p.refrigerated}
    assert fridges
    by_dev: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.type == "telemetry" and e.device_id in fridges:
            d = _data(e)
            if not d["door_open"]:
                by_dev[e.device_id].append(d["refrigeration_temp_c"])
    for temps in by_dev.values():
        # door-closed readings stay in the food-safe band (a refill visit warms it briefly)
        assert min(temps) > 2.5 and sorted(temps)[int(len(temps) * 0.98)] < 5.5
        # compressor cycles: the reading crosses the 4 °C midpoint many times a day
        crossings = sum(1 for a, b in zip(temps, temps[1:], strict=False) if (a - 4) * (b - 4) < 0)
        assert crossings > 20
    for e in events:
        if e.type == "telemetry":
            d = _data(e)
            assert 15 < d["cabinet_temp_c"] < 40 and 220 < d["voltage_v"] < 240 and d["power_on"]


def test_stock_never_negative_and_refills_restore_it(healthy_day) -> None:
    fleet, events = healthy_day
    capacity = {(p.device_id, s.slot): s.capacity for p in fleet.profiles for s in p.slots}
    counts: dict[tuple[str, str], int] = {}
    visits = 0
    for e in events:
        d = _data(e)
        if e.type == "inventory":
            for s in d["slots"]:
                assert 0 <= s["count"] <= s["capacity"]
                counts[(e.device_id, s["slot"])] = s["count"]
        elif e.type == "transaction" and d["vend_status"] == "success":
            key = (e.device_id, d["slot"])
            counts[key] -= 1
            assert counts[key] >= 0, f"sold from an empty slot {key}"
        elif e.type == "refill" and d["phase"] == "completed":
            visits += 1
            assert d["slots"]
            for s in d["slots"]:
                key = (e.device_id, s["slot"])
                assert s["count_after"] == capacity[key] and s["added"] == capacity[key] - counts[key]
                counts[key] = s["count_after"]
    assert visits >= 5


def test_refill_visit_is_started_door_open_completed_door_closed(healthy_day) -> None:
    _, events = healthy_day
    by_dev: dict[str, list[ev.DeviceEvent]] = defaultdict(list)
    for e in events:
        by_dev[e.device_id].append(e)
    checked = 0
    for evs in by_dev.values():
        for i, e in enumerate(evs):
            if e.type == "refill" and _data(e)["phase"] == "started":
                visit = _data(e)["visit_id"]
                rest = evs[i + 1:]
                done = next((x for x in rest if x.type == "refill"), None)
                if done is None or not any(x.type == "telemetry" for x in rest[rest.index(done):]):
                    continue  # the visit runs past the end of the simulated range
                door_open = next(x for x in rest if x.type == "telemetry")
                assert _data(door_open)["door_open"] is True
                assert _data(done)["phase"] == "completed" and _data(done)["visit_id"] == visit
                after = rest[rest.index(done) + 1:]
                closed = next((x for x in after if x.type == "telemetry" and not _data(x)["door_open"]), None)
                if closed is None:
                    continue
                # the technician closes the door within minutes of completing the refill
                assert (closed.occurred_at - done.occurred_at).total_seconds() <= 180
                during = rest[: rest.index(closed)]
                assert all(_data(x)["door_open"] for x in during if x.type == "telemetry")
                assert not any(x.type == "security" for x in during)
                checked += 1
    assert checked >= 5


def test_stock_alerts_follow_thresholds(healthy_day) -> None:
    _, events = healthy_day
    levels = Counter(_data(e)["level"] for e in events if e.type == "stock_alert")
    assert levels["low"] > 0 and levels["out"] > 0 and levels["ok"] > 0
    for e in events:
        if e.type == "stock_alert":
            d = _data(e)
            if d["level"] == "out":
                assert d["count"] == 0
            elif d["level"] == "low":
                assert 0 < d["count"] <= 3


def test_sales_follow_a_daily_curve_and_payment_mix() -> None:
    fleet = Fleet(seed=3, n_devices=40, n_sites=1, start=START)
    events = fleet.run_for(3 * 86400)
    offset = fleet.profiles[0].site.utc_offset_h
    by_hour = Counter((e.occurred_at.hour + offset) % 24 for e in events if e.type == "transaction")
    night = sum(by_hour[h] for h in range(1, 5))
    lunch = sum(by_hour[h] for h in range(11, 15))
    assert lunch > 8 * max(night, 1)
    assert daily_curve(12.5) > 5 * daily_curve(3)
    mix = Counter(_data(e)["payment_method"] for e in events if e.type == "transaction")
    total = sum(mix.values())
    assert 0.35 < mix["card"] / total < 0.55 and 0.15 < mix["cash"] / total < 0.35
    failures = sum(1 for e in events if e.type == "transaction" and _data(e)["payment_status"] == "failure")
    assert 0 < failures / total < 0.06


def test_smart_machines_report_cpu_memory_disk_others_do_not(healthy_day) -> None:
    fleet, events = healthy_day
    smart = {p.device_id: p.smart for p in fleet.profiles}
    assert any(smart.values()) and not all(smart.values())
    for e in events:
        if e.type == "telemetry":
            has = _data(e)["cpu_pct"] is not None
            assert has == smart[e.device_id]


def test_stored_events_carry_site_and_receive_time() -> None:
    fleet = Fleet(seed=1, n_devices=4, n_sites=2, start=START)
    stored = fleet.stored(fleet.run_for(600))
    assert {s.site_id for s in stored} == {"SITE-01", "SITE-02"}
    assert all(s.received_at > s.occurred_at for s in stored)
    assert ev.decode_stored(ev.encode(stored[0])) == stored[0]
