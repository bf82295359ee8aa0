"""A 2xx means durable; when the log cannot take writes the answer is 503, never 2xx."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.ingest_support import event, running

from vendwatch.bus.base import LogUnavailable
from vendwatch.ingest.sink import IngestSink, Pending


class _FailingSink(IngestSink):
    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        raise LogUnavailable("disk full")


class _BrokenSink(IngestSink):
    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        raise OSError("I/O error")


class _HangingSink(IngestSink):
    def __init__(self) -> None:
        self.release = threading.Event()

    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        self.release.wait(10)
        raise LogUnavailable("gave up")


@pytest.mark.parametrize("sink_cls", [_FailingSink, _BrokenSink])
def test_log_failure_answers_503_with_retry_after(data_dir: Path, sink_cls: type[IngestSink]) -> None:
    with running(data_dir, sink=sink_cls()) as h:
        h.add_device("VM-1")
        r = h.post("VM-1", [event("VM-1")])
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "log_unavailable"


def test_log_too_slow_answers_503(data_dir: Path) -> None:
    sink = _HangingSink()
    with running(data_dir, sink=sink, **{"ingest.append_timeout_s": 0.3}) as h:
        h.add_device("VM-1")
        r = h.post("VM-1", [event("VM-1")])
        sink.release.set()
        assert r.status_code == 503
        assert "retry-after" in r.headers


def test_locked_log_gives_503_then_the_retry_is_stored_once(data_dir: Path) -> None:
    with running(data_dir, **{"ingest.append_timeout_s": 0.4}) as h:
        h.add_device("VM-1")
        evs = [event("VM-1") for _ in range(5)]
        # another process holds SQLite's write lock on the log
        other = sqlite3.connect(data_dir / "bus.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            r = h.post("VM-1", evs)
            assert r.status_code == 503
        finally:
            other.execute("ROLLBACK")
            other.close()
        # the device retries with the same ids: whether or not the timed-out attempt
        # eventually committed, each event is stored exactly once
        r = h.post("VM-1", evs)
        assert r.status_code == 200
        body = r.json()
        assert body["accepted"] + body["duplicates"] == 5
        assert sorted(e.event_id for e in h.stored_events()) == sorted(e["event_id"] for e in evs)


def test_healthz_fails_when_the_commit_thread_is_gone(data_dir: Path) -> None:
    with running(data_dir) as h:
        assert h.client.get("/healthz").status_code == 200
        h.ctx.extras["collector"].committer.stop()
        r = h.client.get("/healthz")
        assert r.status_code == 503 and "commit thread" in r.json()["error"]
        h.add_device("VM-1")
        r = h.post("VM-1", [event("VM-1")])
        assert r.status_code == 503 and r.headers["retry-after"] == "5"  # at once, not after a timeout
