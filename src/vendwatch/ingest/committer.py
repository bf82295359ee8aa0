"""Group commit: many concurrent requests share one durable log write.

Request handlers (on the event loop) submit their accepted events and await a future;
one writer thread drains the queue, commits everything waiting in one transaction (one
fsync), and resolves every future. Throughput grows with concurrency instead of being
capped by fsyncs per second.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from vendwatch.ingest.sink import IngestSink, Pending

log = logging.getLogger("vendwatch.ingest")


@dataclass
class _Job:
    accepted: Sequence[Pending]
    rejected: Sequence[tuple[str, bytes]]
    future: asyncio.Future[list[bool]]
    loop: asyncio.AbstractEventLoop


class GroupCommitter:
    def __init__(self, sink: IngestSink, max_events: int = 20_000, max_wait_ms: float = 2.0) -> None:
        self.sink = sink
        self.max_events = max_events
        self.max_wait_s = max_wait_ms / 1000
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="vw-group-commit", daemon=True)
        self._started = False
        self.on_commit = None  # optional callback(events, seconds) for metrics

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        if self._started:
            self._q.put(None)
            self._thread.join(10)

    async def submit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[bool]] = loop.create_future()
        self._q.put(_Job(accepted, rejected, fut, loop))
        return await fut

    def _run(self) -> None:
        stopping = False
        while not stopping:
            job = self._q.get()
            if job is None:
                return
            jobs = [job]
            n = len(job.accepted) + len(job.rejected)
            deadline = time.monotonic() + self.max_wait_s
            while n < self.max_events:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic())) if self.max_wait_s else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                jobs.append(nxt)
                n += len(nxt.accepted) + len(nxt.rejected)
            self._commit(jobs)

    def _commit(self, jobs: list[_Job]) -> None:
        accepted = [p for j in jobs for p in j.accepted]
        rejected = [r for j in jobs for r in j.rejected]
        t0 = time.perf_counter()
        try:
            fresh = self.sink.commit(accepted, rejected)
        except Exception as e:
            log.error("log append failed: %s", e)
            for j in jobs:
                j.loop.call_soon_threadsafe(_set_exc, j.future, e)
            return
        if self.on_commit is not None:
            self.on_commit(len(accepted), time.perf_counter() - t0)
        i = 0
        for j in jobs:
            part = fresh[i : i + len(j.accepted)]
            i += len(j.accepted)
            j.loop.call_soon_threadsafe(_set_result, j.future, part)


def _set_result(f: asyncio.Future[list[bool]], v: list[bool]) -> None:
    if not f.done():
        f.set_result(v)


def _set_exc(f: asyncio.Future[list[bool]], e: BaseException) -> None:
    if not f.done():
        f.set_exception(e)
