"""Checkpointed stages scaled out: replicas share partitions through a Kafka consumer
group and keep exactly-once effects in PostgreSQL across rebalances."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from tests.contract.kafka_backend import kafka_settings
from tests.contract.pg_backend import fresh_schema

from vendwatch import events as ev
from vendwatch.bus import EVENTS
from vendwatch.bus.base import Record
from vendwatch.bus.kafka import KafkaLog
from vendwatch.config import BusSettings, KafkaSettings, Settings, StateSettings
from vendwatch.runtime import Context
from vendwatch.stage import StaleAssignment
from vendwatch.state import open_state
from vendwatch.state.projector import DeviceStateProjector

pytestmark = pytest.mark.timeout(120)


def _value(device: str, i: int) -> bytes:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)
    return ev.encode(ev.StoredEvent(event_id=f"{device}-{i}", device_id=device, type="heartbeat", occurred_at=at,
                                    received_at=at, data=msgspec.Raw(b"{}"), seq=i))


@pytest.fixture
def scaleout() -> Iterator[Settings]:
    ks: KafkaSettings = kafka_settings()
    with fresh_schema() as dsn:
        yield Settings(bus=BusSettings(backend="kafka", kafka=ks),
                       state=StateSettings(backend="postgres", postgres_dsn=dsn, pool_size=4))


class Replica:
    def __init__(self, settings: Settings) -> None:
        self.ctx = Context(settings)
        self.stage = DeviceStateProjector(self.ctx)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.stage.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.ctx.close()


def _wait(pred, timeout_s: float = 60) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_replicas_split_partitions_and_hand_over_exactly_once(scaleout: Settings) -> None:
    writer = KafkaLog(scaleout.bus.kafka)
    writer.create_topic(EVENTS, 4)
    devices = [f"vm-{i}" for i in range(12)]
    writer.append(EVENTS, [(d, _value(d, i)) for i in range(20) for d in devices])
    store = open_state(scaleout)
    a, b = Replica(scaleout), Replica(scaleout)
    try:
        assert _wait(lambda: a.stage.positions and b.stage.positions), "both replicas should own partitions"

        def total() -> int:
            row = store.db.one("SELECT coalesce(sum(events), 0) FROM device_state")
            return int(row[0]) if row else 0

        assert _wait(lambda: total() == 240)
        a.close()  # a leaves: b takes its partitions over from their checkpoints
        writer.append(EVENTS, [(d, _value(d, i)) for i in range(20, 30) for d in devices])
        assert _wait(lambda: total() == 360)
        assert len(b.stage.positions) == 4, "the survivor owns every partition"
        counts = {s["device_id"]: s["events"] for s in store.list_device_states()}
        assert counts == dict.fromkeys(devices, 30), "every event applied exactly once"
    finally:
        b.close()
        a.close()
        store.close()
        writer.close()


def test_zombie_owner_cannot_apply_twice(tmp_path: Path) -> None:
    # two owners of the same partition (the group replaced one that was paused, not dead)
    ctx = Context(Settings(data_dir=str(tmp_path)))
    first, zombie = DeviceStateProjector(ctx), DeviceStateProjector(ctx)
    tp = (EVENTS, 0)
    ctx.log.create_topic(EVENTS, 1)
    for s in (first, zombie):
        s._consumer = ctx.log.consumer(s.group, [EVENTS])
        s._on_assign([tp])
    first.process([Record(EVENTS, 0, 0, "vm-1", _value("vm-1", 0), 0)])
    with pytest.raises(StaleAssignment):
        zombie.process([Record(EVENTS, 0, 0, "vm-1", _value("vm-1", 0), 0)])
    assert ctx.state.get_device_state("vm-1")["events"] == 1  # type: ignore[index]
    # once reloaded, it continues from the real checkpoint
    zombie._on_revoke([tp])
    zombie._on_assign([tp])
    zombie.process([Record(EVENTS, 0, 1, "vm-1", _value("vm-1", 1), 0)])
    assert ctx.state.get_device_state("vm-1")["events"] == 2  # type: ignore[index]
    ctx.close()


def test_console_stage_lag_reads_per_partition_checkpoints(tmp_path: Path) -> None:
    from vendwatch.console import activity

    ctx = Context(Settings(data_dir=str(tmp_path)))
    ctx.log.create_topic(EVENTS, 2)
    ctx.log.append(EVENTS, [("vm-1", _value("vm-1", i)) for i in range(5)])
    stage = DeviceStateProjector(ctx)
    stage._consumer = ctx.log.consumer(stage.group, [EVENTS])
    stage._on_assign([(EVENTS, 0), (EVENTS, 1)])
    recs = [r for p in range(2) for r in ctx.log.read(EVENTS, p, 0)]
    stage.process(recs[:2])  # 3 of the 5 records still to read
    rows = [(n, bytes(d)) for n, d in ctx.state.db.query("SELECT name, data FROM checkpoints")]
    assert activity.stage_lag(ctx.log, rows) == [{"stage": "device-state", "lag_records": 3}]
    ctx.close()
