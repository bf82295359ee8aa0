"""The sender retries like a good device: same ids, backoff, Retry-After, and counts each event once."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from tests.simulate.fake_collector import FakeCollector

from vendwatch.simulate import Fleet, LiveRun, RetryPolicy, Sender, SimClock
from vendwatch.simulate.fleet import encode_event

FAST = RetryPolicy(base_s=0.01, cap_s=0.05)


def _batch(n: int = 5, device: str = "VM-00001") -> list[bytes]:
    fleet = Fleet(seed=1, devices=[(device, "SITE-01")], start=datetime(2026, 3, 3, tzinfo=UTC))
    return [encode_event(e) for e in fleet.run_for(3600)[:n]]


async def _send(server: FakeCollector, events: list[bytes], retry: RetryPolicy = FAST) -> tuple[Sender, bool]:
    url = await server.start()
    sender = Sender(url, {"VM-00001": "vwd_test"}, retry=retry)
    try:
        ok = await sender.send("VM-00001", events)
    finally:
        await sender.aclose()
        await server.stop()
    return sender, ok


def test_lost_answers_and_overload_are_retried_with_the_same_ids_and_counted_once() -> None:
    server = FakeCollector(script=["drop_after_store", "503", "429", "drop", "500", "ok"])
    events = _batch(5)
    sender, ok = asyncio.run(_send(server, events))
    st = sender.stats
    assert ok
    assert len(server.bodies) == 6 and len(set(server.bodies)) == 1  # every retry is the same batch
    assert len(server.all_ids()) == 5  # stored once
    assert st.events_sent == 5 and st.events_acked == 5  # not 10, although stored before the lost answer
    assert st.duplicates_reported == 5
    assert st.retries == 5 and st.network_errors == 2 and st.requests == 6
    assert st.statuses == {503: 1, 429: 1, 500: 1, 200: 1}


def test_retry_after_is_honoured() -> None:
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    async def go() -> Sender:
        server = FakeCollector(script=["429", "503", "drop", "ok"], retry_after="7")
        url = await server.start()
        sender = Sender(url, {"VM-00001": "t"}, retry=FAST, sleep=record)
        await sender.send("VM-00001", _batch(3))
        await sender.aclose()
        await server.stop()
        return sender

    sender = asyncio.run(go())
    assert sender.stats.events_acked == 3
    # at least what the collector asked twice, then our own short backoff after the dropped connection
    assert waits[0] >= 7 and waits[1] >= 7 and waits[2] <= FAST.cap_s


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    import random

    policy = RetryPolicy(base_s=0.1, cap_s=1.0)
    rng = random.Random(1)
    for attempt in range(6):
        draws = [policy.delay(attempt, None, rng) for _ in range(200)]
        bound = min(1.0, 0.1 * 2**attempt)
        assert all(0 <= d <= bound for d in draws)
        assert max(draws) > 0.8 * bound  # jitter spans the whole window
    assert policy.delay(0, 3.0, rng) >= 3.0


def test_backoff_after_hours_of_outage_stays_at_the_cap() -> None:
    # a device retrying for hours reaches attempt numbers where 2**attempt no longer fits a float
    import random

    policy = RetryPolicy(base_s=0.2, cap_s=10.0)
    rng = random.Random(2)
    for attempt in (1023, 1024, 5000, 10**6):
        assert 0 <= policy.delay(attempt, None, rng) <= 10.0


def test_a_refused_batch_is_rejected_not_retried() -> None:
    server = FakeCollector(script=["400"])
    sender, ok = asyncio.run(_send(server, _batch(4)))
    assert not ok
    assert sender.stats.events_rejected == 4 and sender.stats.events_acked == 0 and sender.stats.retries == 0
    assert len(server.bodies) == 1


def test_per_event_rejections_are_not_acked() -> None:
    events = _batch(5)
    ids = [json.loads(e)["event_id"] for e in events]
    acked: list[str] = []

    async def go() -> Sender:
        server = FakeCollector(script=["drop_after_store"], reject_indexes={1, 3})
        url = await server.start()
        sender = Sender(url, {"VM-00001": "t"}, retry=FAST, on_acked=lambda d, got: acked.extend(got))
        await sender.send("VM-00001", events, ids)
        await sender.aclose()
        await server.stop()
        return sender

    sender = asyncio.run(go())
    assert sender.stats.events_acked == 3 and sender.stats.events_rejected == 2
    assert acked == [ids[0], ids[2], ids[4]]  # reported once, although the first answer was lost


def test_gives_up_after_the_drain_deadline_and_says_so() -> None:
    async def go() -> Sender:
        server = FakeCollector(default="503")
        url = await server.start()
        sender = Sender(url, {"VM-00001": "t"}, retry=FAST)
        sender.give_up_at = time.monotonic() + 0.3
        await sender.send("VM-00001", _batch(4))
        await sender.aclose()
        await server.stop()
        return sender

    st = asyncio.run(go()).stats
    assert st.events_unsent == 4 and st.events_acked == 0 and st.retries >= 2


def test_live_run_against_a_flaky_collector_acks_each_stored_event_exactly_once() -> None:
    # The simulated clock is pinned to a morning in which technicians read two audit files,
    # so the run always sends DEX uploads as well as event batches (the outcome used to
    # depend on the time of day the test ran).
    t0 = datetime(2026, 11, 24, 7, 30, tzinfo=UTC).timestamp()
    m0 = time.monotonic()

    async def go() -> tuple[FakeCollector, LiveRun]:
        # a third of the requests fail in some way, some after storing the batch
        server = FakeCollector(script=["drop_after_store", "ok", "503", "ok", "429", "drop", "ok", "ok", "500"] * 40)
        url = await server.start()
        fleet = Fleet(seed=9, n_devices=6, start=t0 - 3000)
        sender = Sender(url, {d: f"tok-{d}" for d in fleet.device_ids}, concurrency=3, retry=FAST)
        clock = SimClock(speed=1500, duration_s=2.0, wall=lambda: t0 + time.monotonic() - m0)
        run = LiveRun(fleet, clock, sender, duration_s=2.0, batch_max=20, flush_s=0.1)
        await run.run()
        await sender.aclose()
        await server.stop()
        return server, run

    server, run = asyncio.run(go())
    st = run.stats
    stored = server.all_ids()
    assert len(stored) == len(set(stored))
    assert st.events_generated == st.events_sent > 100
    assert st.events_acked == len(stored) == st.events_sent  # nothing lost, nothing counted twice
    assert st.retries > 10 and st.duplicates_reported > 0 and st.events_unsent == 0
    # per device, events arrived in sequence order (one batch in flight per machine)
    for device, ids in server.stored.items():
        seqs = [int(i.rsplit("-", 1)[1]) for i in ids]
        assert seqs == sorted(seqs), device
    first = json.loads(server.bodies[0])["events"][0]
    assert first["event_id"].startswith("s9r0-")
    # both audit files arrived (retried through the same failures) and were answered once as a whole
    assert sorted(server.dex) == ["VM-00002", "VM-00004"]
    assert st.dex_files == {200: 2}


def test_simulated_clock_never_runs_ahead_of_the_wall_clock() -> None:
    wall = [1000.0]
    clock = SimClock(speed=60, duration_s=100, max_backlog_s=3000, wall=lambda: wall[0])
    assert clock.now() == 1000.0 - 3000
    for step in range(200):
        wall[0] = 1000.0 + step
        assert clock.now() <= wall[0]
    wall[0] = 1000.0 + 10
    assert clock.now() == 1000.0 - 3000 + 600
    short = SimClock(speed=10, duration_s=60, wall=lambda: wall[0])
    assert short.backlog_s == 540  # catches up with the present exactly at the end
