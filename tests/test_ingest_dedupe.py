"""The embedded dedupe index: derived from the log, shared across processes, rebuilt after restart."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.ingest_support import read_all

from vendwatch import events as ev
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.base import partition_for
from vendwatch.bus.sqlite import SqliteLog
from vendwatch.ingest.dedupe import SeenIndex, dedupe_key
from vendwatch.ingest.sink import Pending, SqliteIngestSink


def _log(path: Path) -> SqliteLog:
    lg = SqliteLog(path / "bus.db", default_partitions=4)
    lg.create_topic(EVENTS)
    lg.create_topic(REJECTED)
    return lg


def _pending(device: str, event_id: str) -> Pending:
    stored = ev.StoredEvent(event_id=event_id, device_id=device, type="heartbeat", occurred_at=ev.utcnow(),
                            received_at=ev.utcnow(), data=msgspec.Raw(b"{}"))
    return Pending(device, event_id, ev.encode(stored))


def test_index_remembers_for_the_window_then_forgets() -> None:
    idx = SeenIndex(window_s=3600, bucket_s=60, key_bytes=1)
    idx.add(b"a", 1_000_000.0)
    idx.add(b"b", 1_000_100.0)
    idx.add(b"a", 1_000_200.0)  # the first sighting counts
    assert b"a" in idx and len(idx) == 2
    assert idx.expire(1_000_000.0 + 3600) == 0  # exactly one window later: still remembered
    assert idx.expire(1_000_000.0 + 3600 + 61) == 1
    assert b"a" not in idx and b"b" in idx
    assert idx.expire(1_000_100.0 + 3600 + 61) == 1
    assert len(idx) == 0


def test_dedupe_key_separates_device_and_event_id() -> None:
    assert dedupe_key("VM-1", "2") != dedupe_key("VM-12", "")
    assert dedupe_key("VM-1", "x") == dedupe_key("VM-1", "x")


def test_commit_reports_new_and_duplicate_and_stores_once(tmp_path: Path) -> None:
    lg = _log(tmp_path)
    sink = SqliteIngestSink(lg)
    sink.warm()
    assert sink.commit([_pending("VM-1", "a"), _pending("VM-1", "b"), _pending("VM-1", "a")], []) == [True, True, False]
    assert sink.commit([_pending("VM-1", "b"), _pending("VM-2", "b")], [("VM-1", b'{"r":1}')]) == [False, True]
    assert len(read_all(lg, EVENTS)) == 3
    assert read_all(lg, REJECTED) == [b'{"r":1}']


def test_index_is_rebuilt_from_the_log_after_restart(tmp_path: Path) -> None:
    lg = _log(tmp_path)
    first = SqliteIngestSink(lg)
    first.warm()
    first.commit([_pending(f"VM-{i % 7}", f"e{i}") for i in range(500)], [])
    lg.close()
    lg2 = _log(tmp_path)
    again = SqliteIngestSink(lg2)
    again.warm()
    assert len(again.index) == 500
    assert again.commit([_pending("VM-3", "e3"), _pending("VM-3", "e500")], []) == [False, True]


def test_two_writers_on_one_log_see_each_others_events(tmp_path: Path) -> None:
    # two collector processes sharing a data dir: each catches up inside the write lock
    a = SqliteIngestSink(_log(tmp_path))
    b = SqliteIngestSink(_log(tmp_path))
    a.warm()
    b.warm()
    assert a.commit([_pending("VM-1", "x")], []) == [True]
    assert b.commit([_pending("VM-1", "x"), _pending("VM-1", "y")], []) == [False, True]
    assert a.commit([_pending("VM-1", "y")], []) == [False]
    assert len(read_all(a.log, EVENTS)) == 2


def test_failed_append_leaves_nothing_in_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lg = _log(tmp_path)
    sink = SqliteIngestSink(lg)
    sink.warm()
    real = lg.append_in

    def fail(db, batches):  # type: ignore[no-untyped-def]
        real(db, batches)  # written, then the transaction fails: rolled back
        raise OSError("disk full")

    monkeypatch.setattr(lg, "append_in", fail)
    with pytest.raises(OSError):
        sink.commit([_pending("VM-1", "z")], [])
    monkeypatch.setattr(lg, "append_in", real)
    assert read_all(lg, EVENTS) == []
    assert sink.commit([_pending("VM-1", "z")], []) == [True]


def test_rebuild_skips_records_older_than_the_window(tmp_path: Path) -> None:
    lg = _log(tmp_path)
    now = [1_000_000.0]
    sink = SqliteIngestSink(lg, window_s=3600, clock=lambda: now[0])
    sink.warm()
    sink.commit([_pending("VM-1", "old")], [])
    # the log stamps records with the wall clock; a sink whose clock is two windows
    # later must not rebuild them
    later = SqliteIngestSink(lg, window_s=3600, clock=lambda: __import__("time").time() + 7200)
    later.warm()
    assert len(later.index) == 0
    fresh = SqliteIngestSink(lg, window_s=3600)
    fresh.warm()
    assert len(fresh.index) == 1


def test_retention_drops_old_records_but_keeps_offsets_growing(tmp_path: Path) -> None:
    lg = _log(tmp_path)
    lg.append(EVENTS, [("VM-1", b"1"), ("VM-1", b"2"), ("VM-1", b"3")])
    assert lg.enforce_retention(3600) == 0
    dropped = lg.enforce_retention(-1)  # everything is "old"; the newest record per partition stays
    assert dropped == 2
    (p,) = {pp for pp in range(4) if lg.read(EVENTS, pp, 0)}
    assert [r.value for r in lg.read(EVENTS, p, 0)] == [b"3"]
    pos = lg.append(EVENTS, [("VM-1", b"4")])
    assert pos[0][1] == 4


def test_retention_task_runs_retention_then_housekeeping(tmp_path: Path) -> None:
    from vendwatch.bus.retention import RetentionTask

    lg = _log(tmp_path)
    lg.append(EVENTS, [("VM-1", b"1"), ("VM-1", b"2")])
    calls: list[str] = []
    task = RetentionTask(lg, max_age_s=-1, interval_s=300, also=lambda: calls.append("expire"))
    assert task.run_once() == 1
    assert calls == ["expire"]


def test_housekeeping_runs_on_the_commit_thread(tmp_path: Path) -> None:
    import threading

    from vendwatch.ingest.committer import GroupCommitter

    sink = SqliteIngestSink(_log(tmp_path))
    sink.warm()
    committer = GroupCommitter(sink)
    committer.start()
    ran_on: list[str] = []
    done = threading.Event()

    def job() -> None:
        ran_on.append(threading.current_thread().name)
        done.set()

    committer.call(job)
    assert done.wait(10)
    committer.stop()
    assert ran_on == ["vw-group-commit"]


def test_a_foreign_record_in_the_events_topic_does_not_stop_ingest(tmp_path: Path) -> None:
    lg = _log(tmp_path)
    lg.append(EVENTS, [("VM-1", b"not json"), ("VM-1", b'{"no_event_id": 1}')])
    sink = SqliteIngestSink(lg)
    sink.warm()
    assert sink.commit([_pending("VM-1", "a")], []) == [True]


def test_the_index_holds_nothing_the_garbage_collector_walks() -> None:
    # a list per bucket made every full collection (about one a second under load) walk
    # every key of the window, a cost growing with events/s x the window
    idx = SeenIndex(window_s=3600, bucket_s=60)
    idx.add_many([dedupe_key("VM-1", f"e{i}") for i in range(1000)], 1_000_000.0)
    idx.add(dedupe_key("VM-2", "x"), 1_000_100.0)
    assert not gc.is_tracked(idx._bucket_of)
    assert not gc.is_tracked(idx._buckets)
    assert not any(gc.is_tracked(b) for b in idx._buckets.values())


def test_keys_added_together_expire_together_and_count_once() -> None:
    idx = SeenIndex(window_s=3600, bucket_s=60)
    keys = [dedupe_key("VM-1", f"e{i}") for i in range(50)]
    idx.add_many(keys[:30], 1_000_000.0)
    idx.add_many([*keys, keys[0]], 1_000_100.0)  # 30 already seen, one twice in the call
    assert len(idx) == 50
    assert idx.expire(1_000_000.0 + 3600 + 61) == 30
    assert keys[0] not in idx and keys[30] in idx
    assert idx.expire(1_000_100.0 + 3600 + 61) == 20
    assert len(idx) == 0


def test_a_key_of_the_wrong_width_is_refused() -> None:
    idx = SeenIndex(window_s=3600)
    with pytest.raises(ValueError, match="16 bytes"):
        idx.add(b"short", 1.0)
    with pytest.raises(ValueError, match="16 bytes"):
        idx.add_many([dedupe_key("VM-1", "a"), b"short"], 1.0)
    assert len(idx) == 0


def test_a_group_commit_settles_its_requests_with_one_hand_off_to_their_event_loop(tmp_path: Path) -> None:
    import asyncio

    from vendwatch.ingest.committer import GroupCommitter

    sink = SqliteIngestSink(_log(tmp_path))
    sink.warm()
    committer = GroupCommitter(sink)

    async def five_requests() -> tuple[list[list[bool]], int]:
        loop = asyncio.get_running_loop()
        hand_offs = 0
        plain = loop.call_soon_threadsafe

        def counted(*args: object) -> object:
            nonlocal hand_offs
            hand_offs += 1
            return plain(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        # queued before the writer starts: one group commit takes all five
        futures = [committer.enqueue([_pending("VM-1", f"e{i}"), _pending("VM-1", "same")], []) for i in range(5)]
        committer.start()
        return list(await asyncio.gather(*futures)), hand_offs

    try:
        results, hand_offs = asyncio.run(five_requests())
    finally:
        committer.stop()
    assert results == [[True, True], [True, False], [True, False], [True, False], [True, False]]
    assert hand_offs == 1


def test_catch_up_scans_the_log_only_after_another_connection_wrote(tmp_path: Path) -> None:
    lg = _log(tmp_path)
    sink = SqliteIngestSink(lg)
    sink.warm()
    scans: list[str] = []
    lg._conn().set_trace_callback(lambda sql: scans.append(sql) if sql.startswith("SELECT offset, ts") else None)
    assert sink.commit([_pending("VM-1", "a")], []) == [True]
    assert sink.commit([_pending("VM-1", "b")], []) == [True]
    assert sink.commit([_pending("VM-2", "c")], []) == [True]
    assert scans == []  # warmed on this connection, and only its own commits since: nothing to read
    other = SqliteIngestSink(_log(tmp_path))  # another process's collector
    other.warm()
    assert other.commit([_pending("VM-3", "d")], []) == [True]
    assert sink.commit([_pending("VM-3", "d"), _pending("VM-3", "e")], []) == [False, True]
    assert len(scans) == 4  # one read per partition, which found the other's event
    assert sink.commit([_pending("VM-3", "f")], []) == [True]
    assert len(scans) == 4


def test_an_append_of_interleaved_keys_keeps_item_order_within_each_partition(tmp_path: Path) -> None:
    # the embedded log sorts runs of one key (not items) into partitions
    lg = _log(tmp_path)
    lg.append(EVENTS, [("VM-0", b"old")])
    keys = ["VM-0", "VM-0", "VM-1", "VM-2", "VM-0", "VM-1", "VM-1", "VM-3", "VM-0"]
    items = [(k, f"{k}#{i}".encode()) for i, k in enumerate(keys)]
    positions = lg.append(EVENTS, items)
    n = lg.partitions(EVENTS)
    assert [p for p, _ in positions] == [partition_for(k, n) for k in keys]
    for part in set(p for p, _ in positions):
        mine = [(off, v) for (p, off), (_, v) in zip(positions, items, strict=True) if p == part]
        offs = [off for off, _ in mine]
        assert offs == list(range(offs[0], offs[0] + len(offs)))  # consecutive, in item order
        stored = {r.offset: r.value for r in lg.read(EVENTS, part, offs[0], 100)}
        assert [stored[off] for off in offs] == [v for _, v in mine]


def test_requests_waiting_too_long_for_their_commit_time_out_and_none_is_kept_after(tmp_path: Path) -> None:
    """The append timeout: a request whose commit is stuck fails with TimeoutError about its
    deadline (not much later, whatever else waits), one committed in time gets its answer,
    and the deadline book-keeping holds nothing once every request is settled."""
    import asyncio
    import threading
    import time

    from vendwatch.ingest.committer import GroupCommitter

    sink = SqliteIngestSink(_log(tmp_path))
    sink.warm()
    gate = threading.Event()
    real_commit = sink.commit

    def stuck_until_opened(accepted: Any, rejected: Any) -> list[bool]:
        gate.wait(10)
        return real_commit(accepted, rejected)

    committer = GroupCommitter(sink)
    committer.start()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fine = await committer.enqueue([_pending("VM-1", "first")], [], 0.3)
        assert fine == [True]
        sink.commit = stuck_until_opened  # type: ignore[method-assign]
        t0 = time.monotonic()
        waiting = [committer.enqueue([_pending("VM-1", f"e{i}")], [], 0.3) for i in range(200)]
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        took = time.monotonic() - t0
        assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes[:3]
        assert 0.25 <= took < 1.0, took
        gate.set()
        sink.commit = real_commit  # type: ignore[method-assign]
        assert await committer.enqueue([_pending("VM-1", "e0")], [], 5.0) == [False]  # stored after all
        await asyncio.sleep(0.6)
        d = committer._deadlines[loop]
        assert not d.waiting and not d.armed

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        committer.stop()
