"""Pipeline metrics: lag in records and seconds for every consumer, latency per hop."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from vendwatch.bus.base import Record
from vendwatch.delivery.clock import VirtualClock
from vendwatch.incidents.role import Orchestrator
from vendwatch.observe.lag import LagMeter

sys.path.insert(0, str(Path(__file__).parents[1] / "incidents"))
from incident_helpers import context, make_signal, publish  # noqa: E402


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _rec(part: int, offset: int, ts: float) -> Record:
    return Record("events", part, offset, "k", b"{}", int(ts * 1000))


def test_lag_meter_counts_records_and_seconds_behind_and_zero_when_caught_up() -> None:
    now = [1_000.0]
    meter = LagMeter("unit-test-stage", clock=lambda: now[0])
    meter.processed([_rec(0, 0, 990.0), _rec(0, 1, 995.0), _rec(1, 0, 999.0)])
    now[0] = 1_010.0
    # partition 0: 3 records wait after offset 2 (last processed appended at 995); partition 1 caught up
    meter.measure({"events": {0: 5, 1: 1}}, [(("events", 0), 2), (("events", 1), 1)])
    assert (meter.records, meter.seconds) == (3, 15.0)
    assert _value("vendwatch_stage_lag_records", stage="unit-test-stage") == 3
    assert _value("vendwatch_stage_lag_seconds", stage="unit-test-stage") == 15.0
    assert _value("vendwatch_stage_records_total", stage="unit-test-stage") == 3
    meter.measure({"events": {0: 2, 1: 1}}, [(("events", 0), 2), (("events", 1), 1)])
    assert (meter.records, meter.seconds) == (0, 0.0)


def test_lag_meter_counts_a_partition_never_read_from_the_start() -> None:
    now = [500.0]
    meter = LagMeter("unit-test-new", clock=lambda: now[0])
    now[0] = 530.0
    meter.measure({"events": {0: 4}}, [(("events", 0), 0)])
    assert (meter.records, meter.seconds) == (4, 30.0)


def test_orchestrator_reports_lag_and_the_signal_to_incident_hop(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vendwatch.incidents")
    clock = VirtualClock()
    ctx = context(tmp_path)
    before = _value("vendwatch_pipeline_hop_seconds_count", hop="incident") or 0.0
    publish(ctx, *(make_signal(clock, f"offline/VM-{i:04d}", device_id=f"VM-{i:04d}") for i in range(3)))
    orch = Orchestrator(ctx, clock=clock)
    try:
        orch.step()
        assert _value("vendwatch_stage_lag_records", stage="orchestrator") == 0
        assert _value("vendwatch_stage_lag_seconds", stage="orchestrator") == 0
        assert _value("vendwatch_pipeline_hop_seconds_count", hop="incident") == before + 3
        opened = [r for r in caplog.records if r.name == "vendwatch.incidents" and "opened" in r.getMessage()]
        assert {r.device_id for r in opened} == {"VM-0000", "VM-0001", "VM-0002"}  # type: ignore[attr-defined]
        assert all(r.incident_id.startswith("inc_") for r in opened)  # type: ignore[attr-defined]
        publish(ctx, *(make_signal(clock, f"offline/VM-{i:04d}", device_id=f"VM-{i:04d}") for i in range(5, 7)))
        orch._report_lag()  # throttled: nothing new within 15 s
        assert _value("vendwatch_stage_lag_records", stage="orchestrator") == 0
        orch.lag.report(ctx.log, orch.topics, orch.positions, force=True)
        assert _value("vendwatch_stage_lag_records", stage="orchestrator") == 2
        assert (_value("vendwatch_stage_lag_seconds", stage="orchestrator") or 0) > 0
    finally:
        orch.close()
        ctx.close()


def _stored(device_id: str, type_: str, data: dict, received_at: float, site: str = "s1") -> bytes:
    import msgspec

    from vendwatch import events as ev
    e = ev.StoredEvent(event_id=f"{device_id}-{type_}-{received_at}", device_id=device_id, type=type_,
                       occurred_at=datetime.fromtimestamp(received_at - 1, UTC),
                       received_at=datetime.fromtimestamp(received_at, UTC),
                       data=msgspec.Raw(msgspec.json.encode(data)), site_id=site)
    return ev.encode(e)


def test_fleet_gauges_come_from_device_state_with_device_text_labels_bounded(tmp_path: Path) -> None:
    from vendwatch.observe import fleet
    from vendwatch.state.projector import DeviceStateProjector

    ctx = context(tmp_path)
    now = 1_800_000_000.0
    try:
        for i in range(3):
            ctx.state.add_device(f"m{i}", "s1")
        ctx.state.add_device("gone", "s2")
        values = [
            _stored("m0", "telemetry", {"cabinet_temp_c": 4.0}, now - 10),
            _stored("m0", "heartbeat", {"firmware_version": "2.1.0"}, now - 10),
            _stored("m1", "telemetry", {"cabinet_temp_c": 12.5}, now - 10),
            _stored("m1", "fault", {"code": "motor_jam"}, now - 10),
            _stored("m2", "fault", {"code": "bad code\n{x}"}, now - 10),
            _stored("m2", "inventory", {"slots": [{"slot": "A1", "count": 0, "capacity": 10},
                                                  {"slot": "A2", "count": 9, "capacity": 10}]}, now - 10),
            _stored("gone", "heartbeat", {}, now - 86_400, "s2"),
        ]
        records = [Record("events", 0, i, "", v, 0) for i, v in enumerate(values)]
        with ctx.state.db.transaction() as tx:
            DeviceStateProjector(ctx).apply(tx, records)
        fams = {f.name: f for f in fleet.FleetCollector(ctx.state.db, clock=lambda: now).collect()}
        by = {f: {tuple(s.labels.values()): s.value for s in fams[f].samples} for f in fams}
        assert by["vendwatch_fleet_devices"][("online",)] == 3 and by["vendwatch_fleet_devices"][("offline",)] == 1
        assert by["vendwatch_fleet_site_devices"][("s2", "offline")] == 1
        assert by["vendwatch_fleet_active_faults"] == {("motor_jam",): 1, ("other",): 1}  # device text is not a label
        assert by["vendwatch_fleet_firmware_devices"] == {("2.1.0",): 1}
        assert by["vendwatch_fleet_slots"][("out",)] == 1
        temp = {s.name + s.labels.get("le", ""): s.value for s in fams["vendwatch_fleet_cabinet_temp_celsius"].samples}
        assert temp["vendwatch_fleet_cabinet_temp_celsius_bucket8.0"] == 1
        assert temp["vendwatch_fleet_cabinet_temp_celsius_bucket+Inf"] == 2
    finally:
        ctx.close()


def test_business_counters_follow_transactions_after_commit() -> None:
    from vendwatch import events as ev
    from vendwatch.state.projector import count_business

    before = {o: _value("vendwatch_business_vends_total", outcome=o) or 0.0
              for o in ("success", "vend_failure", "payment_failure")}
    rev = _value("vendwatch_business_revenue_minor_total", currency="EUR") or 0.0
    tx = {"transaction_id": "t", "product_id": "p", "slot": "A1", "price_minor": 150, "currency": "EUR",
          "payment_method": "card", "payment_status": "success", "vend_status": "success"}
    evs = [ev.decode_stored(_stored("m0", "transaction", d, 1_800_000_000.0)) for d in (
        tx, {**tx, "vend_status": "failure"}, {**tx, "payment_status": "failure", "vend_status": "not_attempted"})]
    count_business(evs)
    assert _value("vendwatch_business_vends_total", outcome="success") == before["success"] + 1
    assert _value("vendwatch_business_vends_total", outcome="vend_failure") == before["vend_failure"] + 1
    assert _value("vendwatch_business_vends_total", outcome="payment_failure") == before["payment_failure"] + 1
    assert _value("vendwatch_business_revenue_minor_total", currency="EUR") == rev + 150


def test_pipeline_view_reports_quantiles_lag_and_targets_from_the_registry() -> None:
    from vendwatch.delivery import metrics as dm
    from vendwatch.observe import pipeline
    from vendwatch.observe.metrics import observe_hop

    for v in (0.01, 0.02, 0.03, 2.0):
        observe_hop("durable", v)
    dm.CIRCUIT.labels("unit-target").set(2)
    dm.DLQ_DEPTH.labels("unit-target").set(3)
    view = pipeline.pipeline_view(now=pipeline._STARTED + 10)
    hop = next(x for x in view["hops"] if x["hop"] == "durable")
    assert hop["role"] == "collector" and hop["count"] >= 4
    assert 0 < hop["p50_s"] <= 0.05 and 1.0 <= hop["p99_s"] <= 2.5  # linear within the bucket, like PromQL
    target = next(t for t in view["targets"] if t["target"] == "unit-target")
    assert target["circuit"] == "open" and target["dlq"] == 3
    assert [r["role"] for r in view["roles"]][0] == "collector"


def test_the_router_housekeeping_leaves_the_incident_counts_alone(tmp_path: Path) -> None:
    """In `vendwatch serve` router and orchestrator share one registry: the router, which
    knows no incidents, must not reset the orchestrator's open-incident gauge to 0."""
    from vendwatch.incidents import metrics as im
    from vendwatch.route.role import Router
    from vendwatch.route.rules import parse_rules

    ctx = context(tmp_path)
    try:
        im.INCIDENTS.labels("open").set(7)
        router = Router(ctx, clock=VirtualClock(), rules=parse_rules({"rules": [{"name": "all", "pattern": {"source": [{"prefix": "vendwatch"}]},
                                                                             "targets": ["orchestrator"]}]}))
        router.housekeeping()
        assert _value("vendwatch_incidents_incidents", status="open") == 7
        router.close()
    finally:
        ctx.close()
