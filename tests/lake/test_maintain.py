"""Maintenance: compaction, retention, snapshot expiry, orphans; safe beside a running writer."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from tests.lake.conftest import make_settings
from tests.lake.factory import T0, heartbeat, publish, stored

from vendwatch import events as ev
from vendwatch.bus import EVENTS
from vendwatch.lake.catalog import open_catalog
from vendwatch.lake.maintain import maintain, protected_snapshots
from vendwatch.lake.query import LakeSQL
from vendwatch.lake.role import LakeWriter
from vendwatch.lake.writer import OFFSETS_PROP, commit_batch, committed_offsets
from vendwatch.runtime import Context

from .conftest import drain


def _count(settings):
    return LakeSQL(settings).run("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM raw.events").rows()[0]


def _small_commits(ctx, n_commits, per=20, day=T0):
    ids = 0
    for c in range(n_commits):
        publish(ctx.log, [heartbeat(day + timedelta(minutes=c * per + i), event_id=f"hb-{day.date()}-{c}-{i}") for i in range(per)])
        drain(ctx)
        ids += per
    return ids


def test_compaction_merges_small_files_and_keeps_rows(tmp_path):
    s = make_settings(tmp_path / "d", **{"lake.compact_min_files": 3})
    ctx = Context(s)
    n = _small_commits(ctx, 5)
    raw = open_catalog(s).load_table("raw.events")
    assert len(list(raw.scan().plan_files())) == 5
    out = maintain(s, tables=["raw.events"])
    assert out["raw.events"]["compacted_files"] == 5 and out["raw.events"]["compacted_into"] == 1
    raw.refresh()
    assert len(list(raw.scan().plan_files())) == 1
    assert _count(s) == {"n": n, "d": n}
    # the writer's progress survives: compaction snapshots carry no offsets, the walk finds them
    assert sum(committed_offsets(raw).values()) == sum(ctx.log.end_offsets(EVENTS).values())
    ctx.close()


def test_retention_per_table_and_type(tmp_path):
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    s = make_settings(tmp_path / "d", **{"lake.retention_days": {"raw.events:log": 30.0}})
    ctx = Context(s)
    old, recent = now - timedelta(days=40), now - timedelta(days=2)
    publish(ctx.log, [
        stored("log", ev.Log(kind="application", message="old"), at=old, event_id="log-old"),
        stored("log", ev.Log(kind="application", message="new"), at=recent, event_id="log-new"),
        heartbeat(old, event_id="hb-old"),
    ])
    drain(ctx)
    out = maintain(s, now=now, tables=["raw.events"])
    assert out["raw.events"]["retention_deleted"]
    ids = [r["event_id"] for r in LakeSQL(s).run("SELECT event_id FROM raw.events ORDER BY 1").rows()]
    assert ids == ["hb-old", "log-new"]  # heartbeats are not under the log rule
    ctx.close()


def test_expiry_keeps_the_offsets_snapshot_and_orphans_are_removed(tmp_path):
    s = make_settings(tmp_path / "d", **{"lake.compact_min_files": 2, "lake.snapshot_retention_hours": 0.0,
                                          "lake.orphan_min_age_hours": 0.0})
    ctx = Context(s)
    n = _small_commits(ctx, 4)
    raw = open_catalog(s).load_table("raw.events")
    junk = os.path.join(raw.metadata.location.removeprefix("file://"), "data", "crashed-write.parquet")
    with open(junk, "wb") as f:
        f.write(b"PAR1 left by a writer killed before its commit")
    out = maintain(s, tables=["raw.events"])["raw.events"]
    assert out["expired_snapshots"] == 3 and out["orphans_deleted"] >= 1
    assert not os.path.exists(junk)
    raw.refresh()
    # newest writer snapshot (with offsets) and the compaction after it are what is left
    kept = raw.metadata.snapshots
    assert any(OFFSETS_PROP in (sn.summary.additional_properties or {}) for sn in kept)
    assert protected_snapshots(raw) == {sn.snapshot_id for sn in kept}
    assert _count(s) == {"n": n, "d": n}
    # the writer restarts from the surviving offsets: nothing is read twice
    publish(ctx.log, [heartbeat(T0 + timedelta(days=1), event_id="after")])
    drain(ctx)
    assert _count(s) == {"n": n + 1, "d": n + 1}
    ctx.close()


def test_young_unreferenced_files_are_left_alone(tmp_path):
    s = make_settings(tmp_path / "d")  # default orphan_min_age_hours = 1
    ctx = Context(s)
    _small_commits(ctx, 1)
    raw = open_catalog(s).load_table("raw.events")
    inflight = os.path.join(raw.metadata.location.removeprefix("file://"), "data", "in-flight.parquet")
    with open(inflight, "wb") as f:
        f.write(b"being written")
    assert maintain(s, tables=["raw.events"])["raw.events"]["orphans_deleted"] == 0
    assert os.path.exists(inflight)
    old = time.time() - 2 * 3600
    os.utime(inflight, (old, old))
    assert maintain(s, tables=["raw.events"])["raw.events"]["orphans_deleted"] == 1
    ctx.close()


def test_maintenance_while_the_writer_runs(tmp_path):
    """Compaction, expiry and orphan cleanup in a loop beside a live writer: every id exactly once."""
    s = make_settings(tmp_path / "d", **{"lake.batch_max_events": 150, "lake.batch_max_wait_s": 0.02,
                                          "lake.compact_min_files": 2, "lake.snapshot_retention_hours": 0.0,
                                          "lake.orphan_min_age_hours": 0.01})  # 36 s: in-flight writes are younger
    ctx = Context(s)
    ctx.log.create_topic(EVENTS)
    writer = LakeWriter(ctx)
    stop = threading.Event()
    th = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    th.start()
    total = 0
    runs = 0
    try:
        for b in range(12):
            publish(ctx.log, [heartbeat(T0 + timedelta(seconds=b * 1000 + i), event_id=f"c-{b}-{i}") for i in range(300)])
            total += 300
            maintain(s, tables=["raw.events"])
            runs += 1
        # one more batch after the last maintenance: however fast the writer was, its commit
        # leaves a snapshot beside the one the maintenance kept, for the final run to expire
        publish(ctx.log, [heartbeat(T0 + timedelta(seconds=20_000 + i), event_id=f"c-last-{i}") for i in range(300)])
        total += 300
        end = sum(ctx.log.end_offsets(EVENTS).values())
        deadline = time.monotonic() + 60
        raw = open_catalog(s).load_table("raw.events")
        caught_up = False
        while time.monotonic() < deadline and not caught_up:
            raw.refresh()
            caught_up = sum(committed_offsets(raw).values()) >= end
            time.sleep(0.05)
        assert th.is_alive(), "the writer died"
    finally:
        stop.set()
        th.join(30)
    assert caught_up and runs == 12
    assert len(raw.metadata.snapshots) > 1
    maintain(s, tables=["raw.events"])
    assert _count(s) == {"n": total, "d": total}
    ctx.close()


def test_snapshots_are_thinned_so_a_commit_does_not_cost_more_every_day(tmp_path):
    """Every commit copies the table's whole snapshot list (pyiceberg), so a writer that
    commits every few seconds for a week would spend most of its time on metadata. Within
    snapshot_retention_hours, maintenance keeps every snapshot of the last
    snapshot_keep_all_hours, then the newest of each hour for a day, then the newest of each
    day; a snapshot the writer or the ETL resumes from is always kept."""
    s = make_settings(tmp_path / "d", **{"lake.compact_min_files": 1000})
    ctx = Context(s)
    n = _small_commits(ctx, 12)
    raw = open_catalog(s).load_table("raw.events")
    before = len(raw.metadata.snapshots)
    assert before >= 12
    current = raw.current_snapshot().snapshot_id
    # an hour later nothing goes yet; three hours later the commits (all of one hour) become one
    assert maintain(s, now=datetime.now(UTC) + timedelta(minutes=50), tables=["raw.events"])["raw.events"][
        "expired_snapshots"] == 0
    out = maintain(s, now=datetime.now(UTC) + timedelta(hours=3), tables=["raw.events"])["raw.events"]
    raw.refresh()
    kept = raw.metadata.snapshots
    assert out["expired_snapshots"] == before - len(kept) and len(kept) <= 2, [sn.snapshot_id for sn in kept]
    assert current in {sn.snapshot_id for sn in kept}
    assert _count(s) == {"n": n, "d": n}
    publish(ctx.log, [heartbeat(T0 + timedelta(days=1), event_id="after")])
    drain(ctx)
    assert _count(s) == {"n": n + 1, "d": n + 1}
    ctx.close()


def test_thinning_keeps_one_snapshot_per_hour_then_per_day() -> None:
    from vendwatch.lake.maintain import thinned

    now_ms = int(datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp() * 1000)
    minute = 60_000
    # a commit every 10 minutes for 3 days
    snaps = [(i, now_ms - i * 10 * minute) for i in range(3 * 24 * 6)]
    gone = set(thinned(snaps, now_ms, keep=set(), keep_all_ms=60 * minute, cutoff_ms=now_ms - 7 * 24 * 60 * minute))
    kept = sorted(t for i, t in snaps if i not in gone)
    recent = [t for t in kept if now_ms - t <= 60 * minute]
    assert len(recent) == 7  # all of the last hour (0, 10, ..., 60 minutes ago)
    hourly = [t for t in kept if 60 * minute < now_ms - t <= 24 * 60 * minute]
    assert len({t // (60 * minute) for t in hourly}) == len(hourly) >= 22
    daily = [t for t in kept if now_ms - t > 24 * 60 * minute]
    assert len({t // (24 * 60 * minute) for t in daily}) == len(daily) <= 3
    assert len(kept) <= 7 + 24 + 3
    # each kept snapshot is the newest of its bucket: time travel to the end of an hour is exact
    for t in hourly:
        assert not any(t < u < (t // (60 * minute) + 1) * 60 * minute for _, u in snaps)
    # protected snapshots stay whatever their age; past the cutoff everything else goes
    assert 400 not in set(thinned(snaps, now_ms, keep={400}, keep_all_ms=60 * minute, cutoff_ms=now_ms - 7 * 24 * 60 * minute))
    assert set(thinned(snaps, now_ms, keep=set(), keep_all_ms=60 * minute, cutoff_ms=now_ms + 1)) == {i for i, _ in snaps}


def test_manifests_are_merged_so_commits_and_planning_do_not_slow_down(tmp_path):
    """With pyiceberg's fast append every commit adds a manifest that every later commit
    and every scan planning reads; the lake's tables merge them (as Java engines do by
    default), also a table an older release created without that property."""
    from pyiceberg.table import TableProperties

    from vendwatch.lake import schemas
    from vendwatch.lake.catalog import ensure_table

    s = make_settings(tmp_path / "d", **{"lake.compact_min_files": 1000})
    cat = open_catalog(s)
    spec = schemas.TABLES["raw.events"]
    cat.create_namespace_if_not_exists("raw")
    cat.create_table("raw.events", schema=spec.schema, partition_spec=spec.partition_spec)  # as before
    raw = ensure_table(cat, "raw.events")
    assert raw.properties.get(TableProperties.MANIFEST_MERGE_ENABLED) == "true"
    ctx = Context(s)
    _small_commits(ctx, 1, per=1)  # one row written by the lake writer, committed again below as the writer does
    raw.refresh()
    row = raw.scan().to_arrow()
    col = row.schema.get_field_index("log_offset")
    tp, done = max(committed_offsets(raw).items(), key=lambda kv: kv[1])
    for i in range(done, done + 104):
        commit_batch(raw, row.set_column(col, "log_offset", pa.array([i], pa.int64())).cast(row.schema),
                     {tp: i}, {tp: i + 1}, "test")
    raw.refresh()
    assert len(raw.metadata.snapshots) >= 105
    assert len(raw.current_snapshot().manifests(raw.io)) < 20
    assert _count(s) == {"n": 105, "d": 1}
    ctx.close()
