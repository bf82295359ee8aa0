"""Raw zone writer: batching, offsets in snapshot summaries, exactly once across restarts and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import timedelta

import msgspec
from tests.conftest import vendwatch_cmd
from tests.lake.conftest import drain, make_settings
from tests.lake.factory import T0, day_of_events, heartbeat, publish, publish_rejected, sale

from vendwatch import events as ev
from vendwatch.bus import EVENTS
from vendwatch.lake.catalog import open_catalog
from vendwatch.lake.query import LakeSQL
from vendwatch.lake.replay import replay_record
from vendwatch.lake.role import LakeWriter
from vendwatch.lake.writer import OFFSETS_PROP, committed_offsets, decode_offsets
from vendwatch.runtime import Context


def _count(settings, sql="SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM raw.events"):
    return LakeSQL(settings).run(sql).rows()[0]


def test_events_and_rejected_land_with_offsets(ctx):
    items = day_of_events()
    publish(ctx.log, items)
    publish_rejected(ctx.log, ["`type`: unknown event type", "body is not JSON"])
    drain(ctx)
    cat = open_catalog(ctx.settings)
    raw = cat.load_table("raw.events")
    rows = {r["event_id"]: r for r in raw.scan().to_arrow().to_pylist()}
    assert set(rows) == {e.event_id for e in items}
    one = rows[items[2].event_id]
    assert one["category"] == "sales" and one["type"] == "transaction" and one["site_id"] == "site-a"
    assert one["event_date"] == T0.date()
    # payload kept whole, byte for byte
    assert one["payload"] == bytes(items[2].data).decode()
    offsets = decode_offsets(raw.current_snapshot().summary.additional_properties[OFFSETS_PROP])
    assert offsets == {("events", p): o for p, o in ctx.log.end_offsets(EVENTS).items()}
    rejected = cat.load_table("raw.rejected").scan().to_arrow().to_pylist()
    assert sorted(r["reason"] for r in rejected) == ["`type`: unknown event type", "body is not JSON"]
    assert rejected[0]["raw"] == '{"bad":1}'


def test_partitioned_by_day_and_type_and_batched(ctx):
    # 3 types x 2 days, published in many small appends: still one commit, one file per partition
    items = day_of_events(n=30)
    for i in range(0, len(items), 5):
        publish(ctx.log, items[i:i + 5])
    drain(ctx)
    raw = open_catalog(ctx.settings).load_table("raw.events")
    files = list(raw.scan().plan_files())
    assert len(raw.metadata.snapshots) == 1
    assert len(files) == 6
    assert {(str(f.file.partition[1])) for f in files} == {"heartbeat", "telemetry", "transaction"}


def test_restart_resumes_from_lake_offsets_not_group_position(ctx):
    publish(ctx.log, day_of_events(n=5))
    drain(ctx)
    # the group position is only informational: rewind it, the lake's offsets win
    with ctx.log.consumer("vendwatch-lake-writer", [EVENTS]) as c:
        c.poll(1, 0.5)
        c.commit({tp: 0 for tp in c.assignment()})
    publish(ctx.log, day_of_events(start=T0 + timedelta(days=1), n=5))
    drain(ctx)
    assert _count(ctx.settings) == {"n": 30, "d": 30}


def test_replayed_copies_are_not_written_again(ctx):
    items = [sale(T0), heartbeat(T0)]
    publish(ctx.log, items)
    drain(ctx)
    ctx.log.append(EVENTS, [(e.device_id, replay_record(e)) for e in items])
    drain(ctx)
    assert _count(ctx.settings) == {"n": 2, "d": 2}
    # ...but the offsets moved past them
    raw = open_catalog(ctx.settings).load_table("raw.events")
    assert sum(committed_offsets(raw).values()) == sum(ctx.log.end_offsets(EVENTS).values())


def test_unknown_payload_fields_survive(ctx):
    e = heartbeat(T0)
    data = msgspec.json.decode(e.data)
    data["battery_pct"] = 88  # newer firmware
    newer = ev.StoredEvent(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "data": msgspec.Raw(msgspec.json.encode(data))})
    publish(ctx.log, [newer])
    drain(ctx)
    row = _count(ctx.settings, "SELECT json_extract(payload, '$.battery_pct') AS b FROM raw.events")
    assert row["b"] == "88"


def _wait_for(pred, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_sigkill_mid_batch_then_restart_is_exactly_once(tmp_path):
    """Kill -9 the lake-writer process while events keep arriving and batches are committed;
    restart it: raw.events holds every event id exactly once."""
    data = tmp_path / "data"
    settings = make_settings(data)
    env = {**os.environ, "VENDWATCH_LAKE__BATCH_MAX_EVENTS": "400", "VENDWATCH_LAKE__BATCH_MAX_WAIT_S": "0.05",
           "VENDWATCH_BUS__PARTITIONS": "2", "VENDWATCH_LOG_LEVEL": "warning"}
    ctx = Context(settings)
    ctx.log.create_topic(EVENTS)
    fed = [0]
    feeding = threading.Event()
    feeding.set()

    def feeder() -> None:
        # a steady stream, so the writer always has a batch open when it is killed
        while feeding.is_set():
            base = fed[0]
            publish(ctx.log, [heartbeat(T0 + timedelta(seconds=base + i), device=f"dev-{i % 7}", event_id=f"e-{base + i}")
                              for i in range(100)])
            fed[0] += 100
            time.sleep(0.005)

    cat = open_catalog(settings)

    def committed() -> int:
        try:
            t = cat.load_table("raw.events")
        except Exception:
            return 0
        return sum(o - 1 for o in committed_offsets(t).values())  # SQLite log offsets start at 1

    cmd = vendwatch_cmd("run", "lake-writer", "--data-dir", str(data))
    feed = threading.Thread(target=feeder, daemon=True)
    feed.start()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: committed() >= 1200), "no commits from the writer"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        at_kill = committed()
        assert at_kill < fed[0], "nothing was in flight when the writer died"
        assert _wait_for(lambda: fed[0] >= at_kill + 1000)  # more arrives while it is down
    finally:
        feeding.clear()
        feed.join()
        if p.poll() is None:
            p.kill()
            p.wait()
    total = fed[0]
    p2 = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: committed() >= total), f"{committed()} of {total} after restart"
    finally:
        p2.send_signal(signal.SIGTERM)
        p2.wait(30)
    assert _count(settings) == {"n": total, "d": total}
    ctx.close()


def test_a_batch_sealed_in_arrow_chunks_holds_the_rows_of_one_table(ctx):
    """The buffer turns every ``chunk_rows`` events into Arrow as it goes (memory): rows,
    their log positions and the skipping of replayed and undecodable records are the
    same as building the table at once, wherever the chunk boundaries fall."""
    from vendwatch.bus.base import Record
    from vendwatch.bus.sqlite import JoinedRecords
    from vendwatch.lake.writer import EventColumns

    items = day_of_events(n=14)[:40]
    values = [ev.encode(e) for e in items]
    values[7] = values[7][:-1] + b',"replayed":true}'  # as `vendwatch replay` publishes it
    values[23] = b"{not json"
    recs = [Record(EVENTS, i % 2, 100 + i, items[i].device_id, v, 0) for i, v in enumerate(values)]
    aside: list[int] = []

    def fill(cols: EventColumns) -> None:
        cols.add_many(recs[:5])
        # a clean run read in bulk, then runs that fall back to the per-record path
        run = recs[5:7]
        cols.add_joined(JoinedRecords(EVENTS, 0, run[0].offset, [r.offset for r in run],
                                      b",".join(r.value for r in run)), lambda: run)
        for i in range(7, 40, 6):
            part = recs[i:i + 6]
            cols.add_joined(JoinedRecords(EVENTS, 1, part[0].offset, [r.offset for r in part],
                                          b",".join(r.value for r in part)), lambda part=part: part)

    whole = EventColumns(lambda r, why: aside.append(r.offset), chunk_rows=10_000)
    fill(whole)
    for n in (1, 3, 7, 16):
        chunked = EventColumns(lambda r, why: None, chunk_rows=n)
        fill(chunked)
        assert len(chunked) == len(whole) == 38
        assert len(chunked.chunks) >= 2  # sealed as it went
        assert chunked.to_arrow().to_pylist() == whole.to_arrow().to_pylist(), n
    got = whole.to_arrow()
    assert 107 not in got.column("log_offset").to_pylist() and 123 not in got.column("log_offset").to_pylist()
    assert aside == [123]
    assert EventColumns().to_arrow().num_rows == 0


def test_a_burst_is_committed_when_the_log_goes_quiet_not_after_the_full_wait(tmp_path):
    """Before: the rows of a burst sat in memory for `lake.batch_max_wait_s` (30 s) after
    the burst ended. A buffer that filled fast (at a rate reaching
    `lake.batch_idle_min_events` within `batch_max_wait_s`; here the tail of a burst,
    below that count) goes to the lake as soon as a poll finds the log quiet, while
    events trickling in slower still wait: no snapshot and small file per poll."""
    settings = make_settings(tmp_path / "d", **{"lake.batch_max_wait_s": 120.0, "lake.batch_idle_min_events": 1200})
    ctx = Context(settings)  # a burst: >= 10 events/s (1200 per 120 s)
    try:
        ctx.log.create_topic(EVENTS)
        w = LakeWriter(ctx)
        stop = threading.Event()
        th = threading.Thread(target=w.run, args=(stop,), daemon=True)
        th.start()
        for h in range(3):  # 3 events, a second apart: a trickle
            publish(ctx.log, day_of_events(start=T0 + timedelta(hours=h), n=1)[:1])
            time.sleep(1)
        time.sleep(2)
        raw = open_catalog(settings).load_table("raw.events")
        assert raw.refresh().current_snapshot() is None, "a trickle waits for batch_max_wait_s"
        publish(ctx.log, day_of_events(start=T0 + timedelta(days=1), n=20))  # 60 at once: a burst's tail
        assert _wait_for(lambda: _count(settings)["n"] == 63 if raw.refresh().current_snapshot() else False, 10), \
            "the tail of the burst is in the lake seconds after the log went quiet"
        stop.set()
        th.join(30)
    finally:
        ctx.close()
