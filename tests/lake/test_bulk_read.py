"""The lake writer reads the embedded log in bulk (one string per partition, not one object
per record): the same records, offsets and partitions land, and the odd record still takes
the per-record path."""

from __future__ import annotations

import sqlite3

from tests.lake.conftest import drain
from tests.lake.factory import day_of_events, publish

from vendwatch.bus import EVENTS
from vendwatch.bus.sqlite import SqliteLog
from vendwatch.lake.catalog import open_catalog
from vendwatch.lake.replay import replay_record


def test_read_joined_returns_what_read_returns(tmp_path):
    log = SqliteLog(tmp_path / "bus.db", default_partitions=2)
    values = [b'{"a":"x,y"}', '{"b":"\u00e9\u2603"}'.encode(), b"[1,2]", b'"\\u0000 nul escaped"', b"{}", b"raw\x00nul"]
    log.append("t", [(f"k{i % 3}", v) for i, v in enumerate(values * 40)])
    log.enforce_retention(0)  # a gap at the start: offsets need not start at 1
    log.append("t", [("k1", b'{"late":true}')])
    for p in range(2):
        for start, n in ((0, 1000), (5, 7), (10**6, 10)):
            recs = log.read("t", p, start, n)
            j = log.read_joined("t", p, start, n)
            if not recs:
                assert j is None
                continue
            assert j is not None and j.offset == start and j.partition == p
            assert j.offsets == [r.offset for r in recs]
            assert j.values == b",".join(r.value for r in recs)


def test_read_joined_gives_the_offsets_of_a_run_with_a_gap(tmp_path):
    from vendwatch.bus.sqlite import _table

    log = SqliteLog(tmp_path / "bus.db", default_partitions=1)
    log.append("t", [("k", b"%d" % i) for i in range(20)])
    db = sqlite3.connect(tmp_path / "bus.db")
    with db:
        db.execute(f"DELETE FROM {_table('t', 0)} WHERE offset IN (5, 6, 12)")  # holes inside a run
    db.close()
    for start, n in ((0, 100), (3, 6), (7, 5), (13, 100)):
        recs = log.read("t", 0, start, n)
        j = log.read_joined("t", 0, start, n)
        assert j is not None and j.offsets == [r.offset for r in recs], (start, n)
        assert j.values == b",".join(r.value for r in recs)


def test_bulk_poll_keeps_positions_like_poll(tmp_path):
    log = SqliteLog(tmp_path / "bus.db", default_partitions=2)
    log.append("t", [(f"k{i}", b"%d" % i) for i in range(50)])
    c = log.consumer("g", ["t"])
    got = []
    while runs := c.poll_joined(7, 0.05):
        assert sum(len(j.offsets) for j in runs) <= 7
        got += [int(v) for j in runs for v in j.values.split(b",")]
    assert sorted(got) == list(range(50))
    assert c.position() == {("t", p): e for p, e in log.end_offsets("t").items()}


def test_undecodable_and_replayed_records_in_a_bulk_read(ctx):
    items = day_of_events(n=4)
    publish(ctx.log, items[:10])
    ctx.log.append(EVENTS, [(items[0].device_id, b'{"not": "an event"'), (items[1].device_id, replay_record(items[1]))])
    publish(ctx.log, items[10:])
    drain(ctx)
    raw = open_catalog(ctx.settings).load_table("raw.events").scan().to_arrow().to_pylist()
    assert sorted(r["event_id"] for r in raw) == sorted(e.event_id for e in items)
    # every row carries the partition and offset it has in the log
    db = sqlite3.connect(ctx.settings.data_path / "bus.db")
    for r in raw:
        (value,) = db.execute(f"SELECT value FROM log_events_p{r['log_partition']} WHERE offset=?",
                              (r["log_offset"],)).fetchone()
        assert r["event_id"].encode() in value


def test_a_run_longer_than_sqlites_string_limit_is_read_in_smaller_runs(tmp_path):
    # devices may send events up to ingest.max_event_bytes: 10,000 of them joined would pass
    # SQLite's 1 GB string limit; here the limit is lowered instead of writing gigabytes
    log = SqliteLog(tmp_path / "bus.db", default_partitions=1)
    log.append("t", [("k", b'{"n":%d,"pad":"%s"}' % (i, b"x" * 80)) for i in range(40)])
    log._conn().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    c = log.consumer("g", ["t"])
    got = []
    while runs := c.poll_joined(10_000, 0.05):
        for j in runs:
            assert len(j.values) < 1000
            got += j.offsets
    assert got == [r.offset for r in log.read("t", 0, 0, 100)]
