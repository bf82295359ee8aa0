"""Stage dead letters: a record a stage cannot process is set aside with the checkpoint,
listed and redriven from the CLI, counted in a metric; the stage never stops behind it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from tests.ingest_support import event, running, settings

from vendwatch.bus import EVENTS
from vendwatch.bus.base import Record
from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.runtime import Context
from vendwatch.state.deadletters import DeadLetters
from vendwatch.state.projector import DeviceStateProjector


def _vw(data_dir: Path, *args: str, code: int = 0) -> str:
    r = CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir)], obj=Env(None, {}), catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r.output


def _drain(data_dir: Path, bug: str | None = None, *, error: type[Exception] = ValueError,
           redrive: bool = False) -> DeviceStateProjector:
    """Run the device-state stage over everything in the log (with ``bug``: it fails on that event id)."""
    ctx = Context(settings(data_dir))
    proj = DeviceStateProjector(ctx)
    proj.batch_size = 4  # the poison record sits in the middle of a batch
    if bug is not None:
        real = proj.apply

        def buggy(tx: Any, records: list[Record]) -> None:
            if any(bug.encode() in r.value for r in records):
                raise error(f"cannot handle {bug}")
            real(tx, records)

        proj.apply = buggy  # type: ignore[method-assign]
    c = proj._consumer = ctx.log.consumer(proj.group, proj.topics, on_assign=proj._on_assign)
    try:
        while recs := c.poll(proj.batch_size, 0.2):
            proj.process(recs)
        if redrive:
            proj.redrive()
    finally:
        c.close()
    return proj


def _metric(stage: str) -> float:
    return REGISTRY.get_sample_value("vendwatch_stage_dead_letters_total", {"stage": stage}) or 0.0


def test_dead_letter_list_show_redrive(data_dir: Path) -> None:
    with running(data_dir) as h:
        h.add_device("VM-1", "SITE-1")
        evs = [event("VM-1", "heartbeat", {"uptime_s": i}) for i in range(10)]
        assert h.post("VM-1", evs).json()["accepted"] == 10
        poison = evs[5]["event_id"]
        before = _metric("device-state")
        _drain(data_dir, bug=poison)
        assert h.ctx.state.get_device_state("VM-1")["events"] == 9  # type: ignore[index]
        assert _metric("device-state") == before + 1
        [row] = json.loads(_vw(data_dir, "stage-dlq", "list", "--json"))
        assert row["stage"] == "device-state" and row["event_id"] == poison and row["topic"] == EVENTS
        assert row["reason"] == f"ValueError: cannot handle {poison}"
        assert poison in _vw(data_dir, "stage-dlq", "list")
        shown = json.loads(_vw(data_dir, "stage-dlq", "show", str(row["dl_id"])))
        assert json.loads(shown["value"])["event_id"] == poison

        # replaying the same records (a restart) neither applies nor sets aside anything twice
        _drain(data_dir, bug=poison)
        assert h.ctx.state.get_device_state("VM-1")["events"] == 9  # type: ignore[index]
        assert len(json.loads(_vw(data_dir, "stage-dlq", "list", "--json"))) == 1

        # redrive while the bug is still there: it stays, with one more attempt
        _vw(data_dir, "stage-dlq", "redrive", str(row["dl_id"]))
        _drain(data_dir, bug=poison, redrive=True)
        [again] = json.loads(_vw(data_dir, "stage-dlq", "list", "--json"))
        assert again["attempts"] == 2 and not again["redrive_requested"]

        # the cause is fixed: redrive applies it once and removes it
        _vw(data_dir, "stage-dlq", "redrive", "--stage", "device-state")
        _drain(data_dir, redrive=True)
        assert h.ctx.state.get_device_state("VM-1")["events"] == 10  # type: ignore[index]
        assert json.loads(_vw(data_dir, "stage-dlq", "list", "--json")) == []
        assert "no stage dead letter 999" in _vw(data_dir, "stage-dlq", "show", "999", code=1)


def test_an_unclassified_failure_is_retried_before_the_record_is_set_aside(data_dir: Path) -> None:
    with running(data_dir) as h:
        h.add_device("VM-1", "SITE-1")
        evs = [event("VM-1", "heartbeat", {"uptime_s": i}) for i in range(6)]
        assert h.post("VM-1", evs).json()["accepted"] == 6
        poison = evs[2]["event_id"]
        ctx = Context(settings(data_dir))
        for attempt in (1, 2):
            with pytest.raises(RuntimeError):
                _drain(data_dir, bug=poison, error=RuntimeError)
            assert json.loads(_vw(data_dir, "stage-dlq", "list", "--json")) == [], attempt
        # a new process forgets attempts: the third try in one process sets it aside
        proj = DeviceStateProjector(ctx)
        real = proj.apply

        def buggy(tx: Any, records: list[Record]) -> None:
            if any(poison.encode() in r.value for r in records):
                raise RuntimeError("flaky bug")
            real(tx, records)

        proj.apply = buggy  # type: ignore[method-assign]
        c = proj._consumer = ctx.log.consumer(proj.group, proj.topics, on_assign=proj._on_assign)
        for _ in range(proj.max_attempts):
            recs = c.poll(100, 0.5)
            try:
                proj.process(recs)
                break
            except RuntimeError:
                proj._on_assign(c.assignment())  # what a restart does: seek back to the checkpoint
                for tp, pos in proj.positions.items():
                    c.seek(tp[0], tp[1], pos)
        c.close()
        [row] = json.loads(_vw(data_dir, "stage-dlq", "list", "--json"))
        assert row["event_id"] == poison and "flaky bug" in row["reason"]
        assert ctx.state.get_device_state("VM-1")["events"] == 5  # type: ignore[index]
        ctx.close()


def test_the_detector_sets_aside_what_it_cannot_decode(data_dir: Path) -> None:
    from vendwatch.detect.role import Detector

    ctx = Context(settings(data_dir))
    try:
        ctx.log.create_topic(EVENTS)
        good = json.dumps({"event_id": "ok-1", "device_id": "VM-1", "type": "heartbeat", "data": {},
                           "occurred_at": "2026-03-01T12:00:00Z", "received_at": "2026-03-01T12:00:00Z"}).encode()
        bad = good.replace(b'"data": {}', b'"data": {"x": 1e400}').replace(b"ok-1", b"bad-1")
        nested = good.replace(b'"data": {}', b'"data": {"x": ' + b"[" * 2000 + b"]" * 2000 + b"}")
        [(_, off_bad), (_, off_nested), _] = ctx.log.append(EVENTS, [("VM-1", bad), ("VM-1", nested), ("VM-1", good)])
        before = _metric("detector")
        det = Detector(ctx)
        idle = 0
        while idle < 2:
            idle = idle + 1 if det.step() == 0 else 0
        rows = DeadLetters(ctx.state.db).list(stage="detector")
        assert [(d.offset, d.event_id) for d in rows] == [(off_bad, "bad-1"), (off_nested, None)]
        assert "out of range" in rows[0].reason.lower() and "RecursionError" in rows[1].reason
        assert _metric("detector") == before + 2
        assert "cannot apply a dead letter later" in _vw(data_dir, "stage-dlq", "redrive", str(rows[0].dl_id), code=1)
    finally:
        ctx.close()


def test_the_lake_writer_sets_aside_what_it_cannot_decode(tmp_path: Path) -> None:
    from tests.lake.conftest import drain, make_settings

    from vendwatch.bus import REJECTED
    from vendwatch.lake.query import LakeSQL

    ctx = Context(make_settings(tmp_path / "data"))
    try:
        ctx.log.create_topic(EVENTS)
        ctx.log.create_topic(REJECTED)
        good = json.dumps({"event_id": "ok-1", "device_id": "VM-1", "type": "heartbeat", "data": {},
                           "occurred_at": "2026-03-01T12:00:00Z", "received_at": "2026-03-01T12:00:00Z"}).encode()
        [_, (_, off_bad), _] = ctx.log.append(EVENTS, [("VM-1", good), ("VM-1", b'{"event_id": 12, "not": "an event"}'),
                                                       ("VM-1", good.replace(b"ok-1", b"ok-2"))])
        drain(ctx)
        rows = LakeSQL(ctx.settings).run("SELECT event_id FROM raw.events ORDER BY 1").rows()
        assert [r["event_id"] for r in rows] == ["ok-1", "ok-2"]
        [dl] = DeadLetters(ctx.state.db).list(stage="lake-writer")
        assert dl.offset == off_bad and "Expected `str`" in dl.reason
    finally:
        ctx.close()


def test_a_component_that_keeps_crashing_is_reported(data_dir: Path) -> None:
    import time

    from vendwatch.runtime import Supervisor
    from vendwatch.stage import stage_problems

    class Broken:
        name = "lake-writer"

        def run(self, stop: object) -> None:
            raise RuntimeError("catalog unreachable")

    ctx = Context(settings(data_dir))
    sup = Supervisor(ctx, [Broken()])
    sup.start()
    try:
        deadline = time.monotonic() + 30
        while "lake-writer" not in stage_problems(ctx) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "crashed 3 times in a row: RuntimeError: catalog unreachable" in stage_problems(ctx)["lake-writer"]
    finally:
        sup.stop()
        ctx.close()


def test_a_batch_rolled_back_by_a_deadlock_is_applied_again_not_set_aside(data_dir: Path) -> None:
    """A transaction PostgreSQL aborted to break a deadlock with another replica wrote
    nothing: the stage runs it again at once. No record is set aside for it, none is
    applied twice, and the stage does not stop (a restart would rejoin the consumer group)."""
    from vendwatch.errors import TransactionConflict

    with running(data_dir) as h:
        h.add_device("VM-1", "SITE-1")
        evs = [event("VM-1", "heartbeat", {"uptime_s": i}) for i in range(10)]
        assert h.post("VM-1", evs).json()["accepted"] == 10
        ctx = Context(settings(data_dir))
        proj = DeviceStateProjector(ctx)
        proj.batch_size = 4
        real, conflicts = proj.apply, [6]

        def deadlocked_again_and_again(tx: Any, records: list[Record]) -> None:
            real(tx, records)  # written, then rolled back with the transaction
            if conflicts[0]:
                conflicts[0] -= 1
                raise TransactionConflict("PostgreSQL rolled the transaction back: deadlock detected")

        proj.apply = deadlocked_again_and_again  # type: ignore[method-assign]
        c = proj._consumer = ctx.log.consumer(proj.group, proj.topics, on_assign=proj._on_assign)
        try:
            while recs := c.poll(proj.batch_size, 0.2):
                proj.process(recs)
        finally:
            c.close()
        assert conflicts == [0]
        assert h.ctx.state.get_device_state("VM-1")["events"] == 10  # type: ignore[index]
        assert json.loads(_vw(data_dir, "stage-dlq", "list", "--json")) == []
