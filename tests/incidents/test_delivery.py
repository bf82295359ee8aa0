"""Delivery building blocks: token bucket, circuit breaker, retry hints, outbox ordering and coalescing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from incident_helpers import context

from vendwatch.delivery import breaker
from vendwatch.delivery.config import RetryPolicy
from vendwatch.delivery.outbox import Outbox
from vendwatch.delivery.ratelimit import Bucket
from vendwatch.delivery.retry import backoff_s, retry_at_from_headers, retryable_status
from vendwatch.incidents.store import IncidentStore


def test_bucket_never_exceeds_per_minute_in_any_window() -> None:
    b = Bucket(per_minute=30, burst=10)
    tokens, at, sent = b.capacity, 0.0, []
    t = 0.0
    while t < 600:  # try every 100 ms for ten minutes
        ok, tokens, _ = b.take(tokens, at, t)
        at = t
        if ok:
            sent.append(t)
        t += 0.1
    for i, s in enumerate(sent):
        assert sum(1 for x in sent[i:] if x < s + 60) <= 30
    assert len(sent) >= 10 * 20 * 0.95  # and it does let the sustained rate through


def test_bucket_tells_when_the_next_token_comes() -> None:
    b = Bucket(per_minute=70, burst=10)  # refills 1 token/s
    ok, left, nxt = b.take(0.5, 100.0, 100.0)
    assert not ok and nxt == pytest.approx(100.5)


def test_breaker_opens_half_opens_and_closes() -> None:
    s = breaker.BreakerState()
    for _ in range(3):
        s = breaker.on_failure(s, 0.0, threshold=3, open_s=30)
    assert s.circuit == "open"
    assert breaker.allow(s, 10.0, 30)[0] is False
    ok, trial = breaker.allow(s, 30.0, 30)
    assert ok and trial.circuit == "half-open"
    assert breaker.allow(trial, 31.0, 30)[0] is False  # one trial at a time
    assert breaker.on_failure(trial, 31.0, 3, 30).circuit == "open"
    assert breaker.on_success(trial).circuit == "closed"
    assert breaker.allow(trial, 61.0, 30)[0] is True  # a lost trial is retried after open_s


@pytest.mark.parametrize(("status", "retry"), [(429, True), (500, True), (503, True), (599, True), (400, False),
                                               (401, False), (403, False), (404, False), (409, False)])
def test_only_429_and_5xx_are_retryable(status: int, retry: bool) -> None:
    assert retryable_status(status) is retry


def test_retry_hints() -> None:
    now = 1_780_000_000.0
    assert retry_at_from_headers({"Retry-After": "30"}, now) == now + 30
    date = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    assert retry_at_from_headers({"retry-after": date}, now) == pytest.approx(now + 90)
    assert retry_at_from_headers({"X-RateLimit-Reset": str(int(now + 45))}, now) == now + 45
    assert retry_at_from_headers({"X-RateLimit-Reset": "12"}, now) == now + 12
    assert retry_at_from_headers({"Retry-After": "soon"}, now) is None
    assert retry_at_from_headers({}, now) is None


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    p = RetryPolicy(backoff_initial_s=1, backoff_multiplier=2, backoff_max_s=60, jitter=0.5)
    rng = random.Random(7)
    for attempts, base in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (20, 60)]:
        for _ in range(20):
            assert base * 0.5 <= backoff_s(p, attempts, rng) <= base


def test_outbox_delivers_in_order_per_key_and_coalesces(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    IncidentStore(ctx.state)
    ob = Outbox(ctx.state.db)
    with ctx.state.db.transaction() as tx:
        ob.enqueue(tx, "t", "op", "k1", {"n": 1}, idem_key="a", now=0)
        ob.enqueue(tx, "t", "op", "k1", {"n": 2}, idem_key="b", now=0)
        ob.enqueue(tx, "t", "op", "k2", {"n": 3}, idem_key="c", now=0)
        assert not ob.enqueue(tx, "t", "op", "k2", {"n": 3}, idem_key="c", now=0)  # exactly once
    items = ob.claim(["t"], 1, 10, 60, "w")
    assert sorted(i.payload["n"] for i in items) == [1, 3]  # heads of k1 and k2 only
    assert ob.claim(["t"], 1, 10, 60, "w") == []  # leased
    first = next(i for i in items if i.payload["n"] == 1)
    with ctx.state.db.transaction() as tx:
        ob.coalesce(tx, "t", "op", "k1", {"n": 1}, idem_key="a", now=1)  # changed while in flight
        ob.complete(tx, first, 1)
    again = ob.claim(["t"], 2, 10, 60, "w")
    assert [i.payload["n"] for i in again] == [1]  # kept for one more round
    with ctx.state.db.transaction() as tx:
        ob.complete(tx, again[0], 2)
    assert [i.payload["n"] for i in ob.claim(["t"], 3, 10, 60, "w")] == [2]
    assert ob.claim(["t"], 200, 10, 60, "w")  # leases expire
