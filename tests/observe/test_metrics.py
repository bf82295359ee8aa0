"""Pipeline metrics: lag in records and seconds for every consumer, latency per hop."""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client import REGISTRY

from vendwatch.bus.base import Record
from vendwatch.incidents.clock import VirtualClock
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


def test_orchestrator_reports_lag_and_the_signal_to_incident_hop(tmp_path: Path) -> None:
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
        publish(ctx, *(make_signal(clock, f"offline/VM-{i:04d}", device_id=f"VM-{i:04d}") for i in range(5, 7)))
        orch._report_lag()  # throttled: nothing new within 15 s
        assert _value("vendwatch_stage_lag_records", stage="orchestrator") == 0
        orch.lag.report(ctx.log, orch.topics, orch.positions, force=True)
        assert _value("vendwatch_stage_lag_records", stage="orchestrator") == 2
        assert (_value("vendwatch_stage_lag_seconds", stage="orchestrator") or 0) > 0
    finally:
        orch.close()
        ctx.close()
