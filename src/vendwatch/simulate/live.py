"""Driving a ``Fleet`` in real time against a collector: generate, batch, send, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from vendwatch.simulate.clock import SimClock
from vendwatch.simulate.fleet import Fleet, encode_event
from vendwatch.simulate.sender import Sender, SendStats

log = logging.getLogger("vendwatch.simulate")


class LiveRun:
    """Advance the fleet with the simulated clock; post each machine's events in batches.

    A machine has at most one batch in flight, so its events reach the collector in
    order; a batch leaves when it holds ``batch_max`` events or its oldest event has
    waited ``flush_s`` seconds.
    """

    def __init__(
        self,
        fleet: Fleet,
        clock: SimClock,
        sender: Sender,
        *,
        duration_s: float | None = None,
        batch_max: int = 100,
        flush_s: float = 1.0,
        tick_s: float = 0.2,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.fleet = fleet
        self.clock = clock
        self.sender = sender
        self.duration_s = duration_s
        self.batch_max = batch_max
        self.flush_s = flush_s
        self.tick_s = tick_s
        self.drain_timeout_s = drain_timeout_s
        self._buf: dict[str, list[tuple[str, bytes]]] = {d: [] for d in fleet.device_ids}  # (event_id, JSON)
        self._oldest: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[bool]] = {}
        self._dex: list[tuple[str, bytes]] = []  # audit files read at visits, sent one at a time, in order
        self._dex_task: asyncio.Task[None] | None = None

    @property
    def stats(self) -> SendStats:
        return self.sender.stats

    def _generate(self, sim_now: float) -> None:
        for dev, evs in self.fleet.advance_by_device(sim_now):
            if not evs:
                continue
            buf = self._buf[dev.device_id]
            if not buf:
                self._oldest[dev.device_id] = time.monotonic()
            buf.extend((e.event_id, encode_event(e)) for e in evs)
            self.stats.events_generated += len(evs)
        self._dex += [(did, raw) for did, _, raw in self.fleet.audit_files()]

    async def _send_dex(self) -> None:
        while self._dex:
            did, raw = self._dex.pop(0)
            await self.sender.send_dex(did, raw)

    def _flush(self, force: bool) -> None:
        now = time.monotonic()
        if self._dex and (self._dex_task is None or self._dex_task.done()):
            self._dex_task = asyncio.create_task(self._send_dex())
        for did, buf in self._buf.items():
            if not buf or did in self._inflight:
                continue
            if force or len(buf) >= self.batch_max or now - self._oldest.get(did, now) >= self.flush_s:
                batch, self._buf[did] = buf[: self.batch_max], buf[self.batch_max :]
                self._oldest[did] = now
                task = asyncio.create_task(self.sender.send(did, [b for _, b in batch], [i for i, _ in batch]))
                self._inflight[did] = task
                task.add_done_callback(lambda _t, d=did: self._inflight.pop(d, None))

    async def run(self, stop: asyncio.Event | None = None, on_tick: Callable[[], None] | None = None) -> SendStats:
        """Run until ``duration_s`` passes or ``stop`` is set, then send what is left."""
        stop = stop or asyncio.Event()
        end = time.monotonic() + self.duration_s if self.duration_s is not None else float("inf")
        while not stop.is_set() and time.monotonic() < end:
            self._generate(self.clock.now())
            self._flush(force=False)
            if on_tick is not None:
                on_tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(self.tick_s, max(0.0, end - time.monotonic())))
        self._generate(self.clock.now())
        await self.drain()
        return self.stats

    async def drain(self) -> None:
        """Send every buffered event; give up on retries after ``drain_timeout_s``."""
        self.sender.give_up_at = time.monotonic() + self.drain_timeout_s
        self._flush(force=True)
        if self._dex_task is not None:
            await self._dex_task
        while any(self._buf.values()) or self._inflight:
            self._flush(force=True)
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()), return_when=asyncio.FIRST_COMPLETED)
            if time.monotonic() >= self.sender.give_up_at and not self._inflight:
                left = sum(len(b) for b in self._buf.values())
                self.stats.events_unsent += left
                for d in self._buf:
                    self._buf[d] = []
                break
