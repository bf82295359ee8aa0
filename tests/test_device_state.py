"""Device state: the projector folds accepted events, newest wins, exactly once across restarts."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.ingest_support import ago, event, running, settings

from vendwatch import events as ev
from vendwatch.bus import EVENTS
from vendwatch.runtime import Context
from vendwatch.state.projector import DeviceStateProjector, fold


def _stored(type_: str, data: dict[str, Any], at: datetime, device: str = "VM-1") -> ev.StoredEvent:
    return ev.StoredEvent(event_id=f"{type_}-{at.timestamp()}", device_id=device, type=type_, occurred_at=at,
                          received_at=ev.utcnow(), data=msgspec.Raw(msgspec.json.encode(data)), site_id="S1")


def test_fold_keeps_the_newest_state_whatever_the_arrival_order() -> None:
    new, old = ago(minutes=1), ago(minutes=30)
    doc: dict[str, Any] = {}
    for e in [
        _stored("telemetry", {"cabinet_temp_c": 5.0}, new),
        _stored("telemetry", {"cabinet_temp_c": 12.0}, old),
        _stored("config", {"firmware_version": "2.0"}, new),
        _stored("heartbeat", {"firmware_version": "1.0"}, old),
        _stored("connectivity", {"network": "5g", "signal_dbm": -70}, new),
        _stored("connectivity", {"network": "4g"}, old),
        _stored("inventory", {"slots": [{"slot": "A1", "count": 3, "capacity": 10}]}, new),
        _stored("inventory", {"slots": [{"slot": "A1", "count": 9, "capacity": 10}]}, old),
        _stored("fault", {"code": "motor_jam", "state": "cleared"}, new),
        _stored("fault", {"code": "motor_jam", "state": "raised"}, old),
        _stored("fault", {"code": "cooling_failure"}, old),
        _stored("transaction", {"transaction_id": "t2", "price_minor": 150}, new),
        _stored("transaction", {"transaction_id": "t1", "price_minor": 100}, old),
        _stored("security", {"kind": "door_forced"}, new),
        _stored("security", {"kind": "shock"}, old),
    ]:
        fold(doc, e)
    assert doc["health"]["cabinet_temp_c"] == 5.0
    assert doc["firmware"]["firmware_version"] == "2.0"
    assert doc["connectivity"]["network"] == "5g" and doc["connectivity"]["signal_dbm"] == -70
    assert doc["stock"]["A1"]["count"] == 3
    assert list(doc["active_faults"]) == ["cooling_failure"]
    assert doc["last_transaction"]["transaction_id"] == "t2"
    assert doc["last_security"]["kind"] == "door_forced"


def _wait(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _run_projector(data_dir: Path, until_events: int, fail_after: int | None = None) -> None:
    """Run the device-state role until the device has ``until_events`` events folded."""
    ctx = Context(settings(data_dir))
    proj = DeviceStateProjector(ctx)
    proj.batch_size = 7  # several transactions per run
    if fail_after is not None:
        real = proj.apply
        calls = [0]

        def flaky(tx, records):  # type: ignore[no-untyped-def]
            calls[0] += 1
            real(tx, records)  # the effects are written, then the process "dies" before commit
            if calls[0] > fail_after:
                raise RuntimeError("crash")

        proj.apply = flaky  # type: ignore[method-assign]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            proj.run(stop)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        if fail_after is not None:
            _wait(lambda: bool(errors))
        else:
            _wait(lambda: (ctx.state.get_device_state("VM-1") or {}).get("events") == until_events)
    finally:
        stop.set()
        t.join(10)
        ctx.close()


def test_projection_is_exactly_once_across_restart_and_crash(data_dir: Path) -> None:
    with running(data_dir) as h:
        h.add_device("VM-1", "SITE-1")
        first = [event("VM-1", "telemetry", {"cabinet_temp_c": 4.0 + i / 10}, occurred_at=ago(minutes=60 - i), seq=i)
                 for i in range(30)]
        assert h.post("VM-1", first).json()["accepted"] == 30
        _run_projector(data_dir, 30)
        more = [event("VM-1", "heartbeat", {"uptime_s": i}, occurred_at=ago(minutes=20 - i / 10), seq=30 + i)
                for i in range(25)]
        assert h.post("VM-1", more).json()["accepted"] == 25
        _run_projector(data_dir, 55, fail_after=2)  # dies after two committed batches
        _run_projector(data_dir, 55)  # the restart replays exactly what was not committed
        st = h.ctx.state.get_device_state("VM-1")
        assert st is not None
        assert st["events"] == 55
        assert st["last_seq"] == 54
        assert st["site_id"] == "SITE-1"
        assert st["health"]["uptime_s"] == 24
        assert st["health"]["cabinet_temp_c"] == pytest.approx(6.9)

        # the operator API and the CLI show it
        tok = h.ctx.state.add_operator_token("viewer", "viewer")
        r = h.client.get("/v1/devices/VM-1", headers={"authorization": f"Bearer {tok}"})
        assert r.json()["state"]["events"] == 55
        listing = h.client.get("/v1/devices", headers={"authorization": f"Bearer {tok}"}).json()
        assert [d["device_id"] for d in listing["devices"]] == ["VM-1"]
        assert h.log.end_offsets(EVENTS)  # log is intact


# --- hostile input: one accepted event must never freeze the stage ----------------------------

@pytest.mark.parametrize("value", [b"1e400", b"-1e400", b"9" * 400, b"[" + b"9" * 20 + b"]"],
                         ids=["1e400", "-1e400", "400-digit-int", "20-digit-int-in-a-list"])
def test_the_collector_refuses_what_a_stage_could_not_decode(data_dir: Path, value: bytes) -> None:
    with running(data_dir) as h:
        h.add_device("VM-1", "SITE-1")
        ok = event("VM-1", "telemetry", {"cabinet_temp_c": 4.0})
        bad = msgspec.json.encode(event("VM-1", "telemetry", {"cabinet_temp_c": 4.0}))
        bad = bad.replace(b'"cabinet_temp_c":4.0', b'"cabinet_temp_c":4.0,"x_extra":' + value)
        body = b'{"events":[' + bad + b"," + msgspec.json.encode(ok) + b"]}"
        r = h.post("VM-1", body=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["accepted"] == 1
        assert [x["code"] for x in out["rejected"]] == ["schema"]
        _run_projector(data_dir, 1)  # the accepted one is folded


def test_a_record_the_stage_cannot_process_is_dead_lettered_and_the_stage_moves_on(data_dir: Path) -> None:
    from vendwatch.state.deadletters import DeadLetters

    with running(data_dir) as h:
        h.add_device("VM-1", "SITE-1")
        h.add_device("VM-2", "SITE-1")
        assert h.post("VM-1", [event("VM-1", "telemetry", {"cabinet_temp_c": 4.0})]).json()["accepted"] == 1
        # a record written before the collector enforced the decoding contract
        poison = msgspec.json.encode(event("VM-1", "telemetry", {"cabinet_temp_c": 4.0})).replace(
            b'"data":{', b'"received_at":"2026-01-01T00:00:00Z","site_id":"SITE-1","data":{"x":1e400,')
        [(part, off)] = h.log.append(EVENTS, [("VM-1", poison)])
        assert h.post("VM-2", [event("VM-2", "heartbeat")]).json()["accepted"] == 1
        assert h.post("VM-1", [event("VM-1", "heartbeat")]).json()["accepted"] == 1
        _run_projector(data_dir, 2)  # no crash loop: VM-1's later event and VM-2's are folded
        assert (h.ctx.state.get_device_state("VM-2") or {}).get("events") == 1
        [dl] = DeadLetters(h.ctx.state.db).list(stage="device-state")
        assert (dl.topic, dl.partition, dl.offset) == (EVENTS, part, off)
        assert "out of range" in dl.reason.lower()
        assert dl.event_id is not None


def test_a_stuck_stage_shows_in_healthz_and_its_lag_gauge(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from prometheus_client import REGISTRY

    def broken(self: DeviceStateProjector, tx: Any, records: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")  # the machinery, not a record: never set aside

    monkeypatch.setattr(DeviceStateProjector, "apply", broken)
    with running(data_dir, roles=("collector", "console", "device-state"), **{"server.role_processes": False}) as h:
        h.add_device("VM-1", "SITE-1")
        assert h.post("VM-1", [event("VM-1") for _ in range(5)]).json()["accepted"] == 5
        _wait(lambda: h.client.get("/healthz").status_code == 503, timeout=30)
        body = h.client.get("/healthz").json()
        assert "device-state" in body["stages"] and "disk I/O error" in body["stages"]["device-state"]
        assert REGISTRY.get_sample_value("vendwatch_stage_lag_records", {"stage": "device-state"}) == 5
        assert REGISTRY.get_sample_value("vendwatch_stage_consecutive_failures", {"stage": "device-state"}) >= 3
        from vendwatch.state.deadletters import DeadLetters

        assert DeadLetters(h.ctx.state.db).count() == 0


def _metric(h: Any, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(h.client.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_a_stuck_stage_in_its_own_process_shows_in_the_parents_healthz_and_metrics(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.ingest_support import inject_into_role_processes

    inject_into_role_processes(monkeypatch, tmp_path / "inject", (
        "import sqlite3\n"
        "from vendwatch.state.projector import DeviceStateProjector\n"
        "def broken(self, tx, records):\n"
        "    raise sqlite3.OperationalError('disk I/O error')\n"
        "DeviceStateProjector.apply = broken\n"))
    with running(data_dir, roles=("collector", "console", "device-state"), **{"server.role_processes": True}) as h:
        procs = h.ctx.extras["role_processes"]
        h.add_device("VM-1", "SITE-1")
        assert h.post("VM-1", [event("VM-1") for _ in range(5)]).json()["accepted"] == 5
        _wait(lambda: h.client.get("/healthz").status_code == 503, timeout=60)
        body = h.client.get("/healthz").json()
        assert "device-state" in body["stages"] and "disk I/O error" in body["stages"]["device-state"]
        assert procs.pids()["device-state"] != os.getpid()  # the stage ran in a process of its own
        _wait(lambda: _metric(h, "vendwatch_stage_lag_records", stage="device-state") == 5, timeout=30)
        assert (_metric(h, "vendwatch_stage_consecutive_failures", stage="device-state") or 0) >= 3
        from vendwatch.state.deadletters import DeadLetters

        assert DeadLetters(h.ctx.state.db).count() == 0


def test_state_keeps_known_fields_only_and_stays_bounded() -> None:
    doc: dict[str, Any] = {}
    big = "x" * 100_000
    for i in range(50):
        at = ago(minutes=60 - i)
        fold(doc, _stored("heartbeat", {"uptime_s": i, f"blob_{i}": big, "nested": {"k": [big]}}, at))
        fold(doc, _stored("telemetry", {"cabinet_temp_c": 4.0, f"extra_{i}": big}, at))
        fold(doc, _stored("connectivity", {"network": "4g", f"extra_{i}": big}, at))
        fold(doc, _stored("config", {"config_version": "c1", f"extra_{i}": big}, at))
        fold(doc, _stored("transaction", {"transaction_id": f"t{i}", "price_minor": 1, f"extra_{i}": big}, at))
        fold(doc, _stored("security", {"kind": "shock", f"extra_{i}": big}, at))
        fold(doc, _stored("inventory", {"slots": [{"slot": f"S{i}-{j}", "count": 1, "x": big} for j in range(40)]}, at))
        fold(doc, _stored("fault", {"code": f"code_{i}_{'y' * 50}"}, at))
    assert doc["health"]["uptime_s"] == 49 and doc["health"]["cabinet_temp_c"] == 4.0
    assert "nested" not in doc["health"] and not any(k.startswith(("blob_", "extra_")) for k in doc["health"])
    assert doc["connectivity"] == {"network": "4g", "at": doc["connectivity"]["at"]}
    assert doc["last_transaction"]["transaction_id"] == "t49"
    size = len(msgspec.json.encode(doc))
    assert size < 200_000, size  # 2,000 slots and 50 fault codes seen: the newest few hundred are kept


# --- bulk reads: one decode per partition run, the same state as record by record ----------

def _mixed(n: int = 600, devices: int = 7) -> list[tuple[str, bytes]]:
    from datetime import UTC, timedelta

    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    payloads: list[tuple[str, dict[str, Any]]] = [
        ("telemetry", {"cabinet_temp_c": 4.5, "door_open": False, "voltage_v": 229.0}),
        ("heartbeat", {"uptime_s": 100, "firmware_version": "1.2"}),
        ("transaction", {"transaction_id": "t", "product_id": "p", "slot": "A1", "price_minor": 150, "currency": "EUR",
                         "payment_method": "card", "payment_status": "success", "vend_status": "success"}),
        ("inventory", {"slots": [{"slot": "A1", "count": 3, "capacity": 10}, {"slot": "B2", "count": 0}]}),
        ("fault", {"code": "motor_jam", "state": "raised"}),
        ("fault", {"code": "motor_jam", "state": "cleared"}),
        ("connectivity", {"network": "4g", "signal_dbm": -80}),
        ("stock_alert", {"slot": "B2", "level": "out", "count": 0}),
        ("refund", {"refund_id": "r", "transaction_id": "t", "amount_minor": 150, "currency": "EUR"}),
        ("log", {"kind": "crash", "message": "boom"}),
    ]
    out = []
    for i in range(n):
        dev = f"VM-{i % devices}"
        type_, data = payloads[(i * 7 + i // devices) % len(payloads)]
        # arrival order is not event-time order: newest-wins must not depend on batching
        at = t0 + timedelta(seconds=(i * 37) % n)
        e = ev.StoredEvent(event_id=f"e-{i}", device_id=dev, type=type_, occurred_at=at, received_at=at,
                           data=msgspec.Raw(msgspec.json.encode(data)), seq=i, site_id="S1")
        out.append((dev, ev.encode(e)))
    return out


def _project(data_dir: Path, items: list[tuple[str, bytes]], bulk: bool) -> tuple[Any, ...]:
    from vendwatch.state.deadletters import DeadLetters

    ctx = Context(settings(data_dir))
    ctx.log.create_topic(EVENTS)
    for i in range(0, len(items), 90):
        ctx.log.append(EVENTS, items[i : i + 90])
    proj = DeviceStateProjector(ctx)
    proj.batch_size = 128
    c = proj._consumer = ctx.log.consumer(proj.group, proj.topics, on_assign=proj._on_assign)
    try:
        while recs := (proj.poll(c, 0.2) if bulk else c.poll(proj.batch_size, 0.2)):
            proj.process(recs)
    finally:
        c.close()
    states = ctx.state.db.query("SELECT * FROM device_state ORDER BY device_id")
    cps = ctx.state.db.query("SELECT name, data FROM checkpoints ORDER BY name")
    dead = [(d.partition, d.offset, d.reason) for d in DeadLetters(ctx.state.db).list(stage="device-state")]
    ctx.close()
    return states, [(n, bytes(d)) for n, d in cps], dead


def test_the_projector_reads_in_bulk_and_folds_what_record_by_record_folds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vendwatch.bus.sqlite import SqliteLog

    items = _mixed()
    poison = items[301][1].replace(b'"data":{', b'"data":{"x":1e400,', 1)  # does not decode
    items = [*items[:301], ("VM-1", poison), *items[301:]]
    reads: list[int] = []
    real_read = SqliteLog.read

    def counting_read(self: SqliteLog, topic: str, partition: int, *a: Any, **kw: Any) -> Any:
        if topic == EVENTS:
            reads.append(partition)
        return real_read(self, topic, partition, *a, **kw)

    monkeypatch.setattr(SqliteLog, "read", counting_read)
    (tmp_path / "bulk").mkdir()
    (tmp_path / "per-record").mkdir()
    bulk = _project(tmp_path / "bulk", items, bulk=True)
    # records were made only for the run that held the undecodable value (to set it aside)
    assert len(set(reads)) == 1 and len(reads) <= 2, reads
    per = _project(tmp_path / "per-record", items, bulk=False)
    states, cps, dead = bulk
    assert len(states) == 7 and sum(s[6] for s in states) == len(items) - 1
    assert bulk == per
    assert len(dead) == 1 and "out of range" in dead[0][2].lower()


def test_the_stage_reads_the_stored_event_fields_so_it_refuses_the_same_records() -> None:
    from vendwatch.state.projector import StateEvent

    assert issubclass(StateEvent, ev.StoredEvent)
    assert set(StateEvent.__struct_fields__) == set(ev.StoredEvent.__struct_fields__)
    assert StateEvent.__struct_config__.forbid_unknown_fields == ev.StoredEvent.__struct_config__.forbid_unknown_fields


def test_the_group_position_is_written_at_most_once_a_second_and_catches_up_when_idle(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vendwatch.bus.sqlite import SqliteLog

    commits: list[float] = []
    real = SqliteLog._commit_group

    def counting(self: SqliteLog, group: str, offsets: Any) -> None:
        commits.append(time.monotonic())
        real(self, group, offsets)

    monkeypatch.setattr(SqliteLog, "_commit_group", counting)
    ctx = Context(settings(data_dir))
    ctx.log.create_topic(EVENTS)
    ctx.log.append(EVENTS, _mixed(n=600))
    proj = DeviceStateProjector(ctx)
    proj.batch_size = 50  # a dozen transactions
    stop = threading.Event()
    t = threading.Thread(target=proj.run, args=(stop,))
    t.start()
    try:
        total = lambda: (ctx.state.db.one("SELECT coalesce(sum(events), 0) FROM device_state") or (0,))[0]  # noqa: E731
        _wait(lambda: total() == 600)
        ends = ctx.log.end_offsets(EVENTS)
        _wait(lambda: ctx.log.committed_offsets(proj.group, EVENTS) == ends)  # written once idle
    finally:
        stop.set()
        t.join(10)
        ctx.close()
    assert 1 <= len(commits) <= 3, commits


def test_a_caught_up_stage_polls_at_most_once_per_interval_and_a_backlog_at_once(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Live, each transaction carries what arrived over ``state.projector_poll_interval_s``
    (its fixed costs are shared by more events); a backlog or an idle log is not held back."""
    ctx = Context(settings(data_dir, **{"state.projector_poll_interval_s": 0.3}))
    proj = DeviceStateProjector(ctx)
    proj.batch_size = 10
    answers = [[1] * 3, [1] * 4, [1] * 10, [1] * 10, [], [1] * 2, [1]]
    started: list[float] = []

    def fake_read(c: Any, timeout_s: float) -> list[int]:
        started.append(time.monotonic())
        return answers[len(started) - 1]

    monkeypatch.setattr(proj, "_read", fake_read)
    for _ in answers:
        proj.poll(None, 0.0)  # type: ignore[arg-type]
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.3  # after a partial poll: the interval
    assert gaps[2] < 0.1 and gaps[3] < 0.1  # after a full poll (a backlog): at once
    assert gaps[4] < 0.1  # after an empty poll (the poll itself waited): at once
    assert gaps[5] >= 0.3
    ctx.close()


def test_a_poll_is_read_and_decoded_in_chunks_but_committed_in_one_transaction(data_dir: Path) -> None:
    """Decoding 2,000 events at once costs about twice as much per event as a few hundred
    (cache): a poll is read in runs of ``read_chunk``, one transaction for all of them."""
    ctx = Context(settings(data_dir, **{"state.projector_poll_interval_s": 0.0}))
    ctx.log.create_topic(EVENTS)
    items = _mixed(n=600)
    ctx.log.append(EVENTS, items)
    proj = DeviceStateProjector(ctx)
    proj.batch_size, proj.read_chunk = 500, 64
    c = proj._consumer = ctx.log.consumer(proj.group, proj.topics, on_assign=proj._on_assign)
    sizes: list[tuple[int, int]] = []
    try:
        while recs := proj.poll(c, 0.2):
            sizes.append((len(recs), max(len(j.offsets) for j in recs.runs)))  # type: ignore[attr-defined]
            proj.process(recs)
    finally:
        c.close()
    assert [n for n, _ in sizes] == [500, 100] and all(longest <= 64 for _, longest in sizes)
    assert (ctx.state.db.one("SELECT sum(events) FROM device_state") or (0,))[0] == 600
    ctx.close()
