"""Group commit: many concurrent requests share one durable log write.

Request handlers (on the event loop) submit their accepted events and await a future;
one writer thread drains the queue, commits everything waiting in one transaction (one
fsync), and resolves every future. Throughput grows with concurrency instead of being
capped by fsyncs per second. The writer thread is also the only one that touches the
sink's dedupe index, so the index needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vendwatch.ingest.sink import IngestSink, Pending

log = logging.getLogger("vendwatch.ingest")


@dataclass(slots=True)
class _Job:
    accepted: Sequence[Pending]
    rejected: Sequence[tuple[str, bytes]]
    future: asyncio.Future[list[bool]]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class _Deadlines:
    """A loop's futures waiting for a commit, oldest first, each with its deadline."""

    loop: asyncio.AbstractEventLoop
    waiting: deque[tuple[float, asyncio.Future[list[bool]]]] = field(default_factory=deque)
    armed: bool = False


class GroupCommitter:
    """One writer thread committing queued jobs together (up to ``max_events`` per commit)."""

    def __init__(self, sink: IngestSink, max_events: int = 20_000, max_wait_ms: float = 2.0) -> None:
        self.sink = sink
        self.max_events = max_events
        self.max_wait_s = max_wait_ms / 1000
        self._q: queue.SimpleQueue[_Job | Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="vw-group-commit", daemon=True)
        self._started = False
        # optional callback(events, requests, seconds) for metrics
        self.on_commit: Callable[[int, int, float], None] | None = None
        self._deadlines: dict[asyncio.AbstractEventLoop, _Deadlines] = {}

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def alive(self) -> bool:
        """The writer thread is running (requests can become durable)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Commit what is queued, then end the writer thread."""
        if self._started:
            self._q.put(None)
            self._thread.join(10)

    def enqueue(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]],
                timeout_s: float | None = None) -> asyncio.Future[list[bool]]:
        """Queue a request's events (from the event loop); the future resolves once they are
        durable, with True for a new event and False for a duplicate, or fails with the log's
        error, or with ``TimeoutError`` when that takes longer than ``timeout_s`` (give or take
        a quarter of a second: a commit that finishes later is still made, and then each
        event is a duplicate on the device's retry)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[bool]] = loop.create_future()
        self._q.put(_Job(accepted, rejected, fut, loop))
        if timeout_s is not None:
            self._watch(loop, fut, timeout_s)
        return fut

    # One timer per event loop and quarter second for every waiting request, instead of
    # asyncio.wait_for's timer, extra future and callbacks per request (~5 µs each).
    _CHECK_EVERY_S = 0.25

    def _watch(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[list[bool]], timeout_s: float) -> None:
        d = self._deadlines.get(loop)
        if d is None:
            d = self._deadlines[loop] = _Deadlines(loop)
        d.waiting.append((time.monotonic() + timeout_s, fut))
        if not d.armed:
            d.armed = True
            loop.call_later(min(self._CHECK_EVERY_S, timeout_s), self._expire, d)

    def _expire(self, d: _Deadlines) -> None:
        now, waiting = time.monotonic(), d.waiting
        # oldest first: a request queued later never has an earlier deadline than one
        # before it with the same timeout; a longer timeout behind a shorter one just waits
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            _, fut = waiting.popleft()
            if not fut.done():
                fut.set_exception(TimeoutError("the log did not confirm the append in time"))
        if waiting:
            d.loop.call_later(self._CHECK_EVERY_S, self._expire, d)
        else:
            d.armed = False

    async def submit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        """``enqueue`` and wait."""
        return await self.enqueue(accepted, rejected)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the writer thread between commits (housekeeping of the sink)."""
        self._q.put(fn)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._q.get()
            if item is None:
                return
            if not isinstance(item, _Job):
                self._call(item)
                continue
            jobs = [item]
            n = len(item.accepted) + len(item.rejected)
            deadline = time.monotonic() + self.max_wait_s
            while n < self.max_events:
                try:
                    remaining = deadline - time.monotonic()
                    nxt = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                if not isinstance(nxt, _Job):
                    self._call(nxt)
                    continue
                jobs.append(nxt)
                n += len(nxt.accepted) + len(nxt.rejected)
            self._commit(jobs)

    @staticmethod
    def _call(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("housekeeping on the commit thread failed")

    def _commit(self, jobs: list[_Job]) -> None:
        accepted = [p for j in jobs for p in j.accepted]
        rejected = [r for j in jobs for r in j.rejected]
        t0 = time.perf_counter()
        try:
            fresh = self.sink.commit(accepted, rejected)
        except Exception as e:
            log.error("log append failed: %s", e)
            _resolve(jobs, [e] * len(jobs))
            return
        if self.on_commit is not None:
            self.on_commit(len(accepted) + len(rejected), len(jobs), time.perf_counter() - t0)
        outcomes: list[list[bool] | BaseException] = []
        i = 0
        for j in jobs:
            outcomes.append(fresh[i : i + len(j.accepted)])
            i += len(j.accepted)
        _resolve(jobs, outcomes)


def _resolve(jobs: list[_Job], outcomes: list[list[bool] | BaseException]) -> None:
    """Settle the jobs' futures: one hand-off per event loop, not one per job (each is a
    wake-up write and a callback on the loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[bool]], list[bool] | BaseException]]] = {}
    for j, outcome in zip(jobs, outcomes, strict=True):
        by_loop.setdefault(j.loop, []).append((j.future, outcome))
    for loop, settled in by_loop.items():
        loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[list[bool]], list[bool] | BaseException]]) -> None:
    for f, outcome in settled:
        if f.done():  # cancelled: the request timed out or the device went away
            continue
        if isinstance(outcome, BaseException):
            f.set_exception(outcome)
        else:
            f.set_result(outcome)
