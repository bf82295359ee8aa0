"""Delivery: drain the outbox through sinks, with rate limits, retries, a circuit
breaker and the DLQ. Shared by the orchestrator (ServiceNow) and the router (webhooks,
PagerDuty, Slack, log topic).

A sink turns one outbox item into one or more HTTP calls made through ``Gate.request``,
which spends a rate-limit token per call (state kept in the database so replicas share
it). A sink raises ``DeliveryFailed`` for an HTTP error, ``Throttled`` when no token is
left; the dispatcher decides: retry later (429, 5xx, network), dead-letter (other 4xx,
attempts or event age exhausted), or wait without counting an attempt (throttled,
circuit open).
"""

from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from vendwatch.delivery import breaker
from vendwatch.delivery import metrics as m
from vendwatch.delivery.clock import Clock
from vendwatch.delivery.config import CircuitBreaker, RateLimit, RetryPolicy
from vendwatch.delivery.outbox import Item, Outbox
from vendwatch.delivery.ratelimit import Bucket
from vendwatch.delivery.retry import backoff_s, retry_at_from_headers, retryable_status
from vendwatch.state.db import Database

log = logging.getLogger("vendwatch.delivery")
# httpx logs every request at INFO; deliveries are logged here with their ids instead
logging.getLogger("httpx").setLevel(logging.WARNING)


class DeliveryFailed(Exception):
    """A call failed. ``status`` None means a network error or timeout."""

    def __init__(self, message: str, status: int | None = None, retry_at: float | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_at = retry_at
        self.retryable = retryable if retryable is not None else (status is None or retryable_status(status))


class Throttled(Exception):
    """No rate-limit token (or the server told us to wait); try again at ``retry_at``."""

    def __init__(self, retry_at: float) -> None:
        super().__init__(f"throttled until {retry_at}")
        self.retry_at = retry_at


@dataclass(frozen=True)
class TargetPolicy:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: RateLimit | None = None
    circuit: CircuitBreaker = field(default_factory=CircuitBreaker)


class Sink(Protocol):
    target: str
    policy: TargetPolicy

    def deliver(self, item: Item, gate: Gate) -> None:
        """Deliver one item; raise DeliveryFailed or Throttled when it could not be."""


class Gate:
    """Rate-limited HTTP calls for one target; the token bucket lives in ``delivery_gates``."""

    def __init__(self, db: Database, target: str, policy: TargetPolicy, clock: Clock, client: httpx.Client) -> None:
        self.db, self.target, self.policy, self.clock, self.client = db, target, policy, clock, client
        self.calls = 0

    def _ensure(self, tx: Any, now: float) -> tuple[Any, ...]:
        row = tx.one("SELECT tokens, refilled_at, blocked_until, circuit, failures, opened_until FROM delivery_gates"
                     " WHERE target=?", (self.target,))
        if row is None:
            cap = Bucket(self.policy.rate_limit.per_minute, self.policy.rate_limit.burst).capacity \
                if self.policy.rate_limit else 0.0
            tx.execute("INSERT INTO delivery_gates(target, tokens, refilled_at) VALUES (?,?,?)"
                       " ON CONFLICT(target) DO NOTHING", (self.target, cap, now))
            row = (cap, now, 0.0, "closed", 0, 0.0)
        return row

    def take_token(self) -> None:
        now = self.clock.now()
        with self.db.transaction() as tx:
            tokens, refilled_at, blocked_until, *_ = self._ensure(tx, now)
            if blocked_until > now:
                raise Throttled(blocked_until)
            if self.policy.rate_limit is None:
                return
            b = Bucket(self.policy.rate_limit.per_minute, self.policy.rate_limit.burst)
            ok, left, next_at = b.take(tokens, refilled_at, now)
            tx.execute("UPDATE delivery_gates SET tokens=?, refilled_at=? WHERE target=?", (left, now, self.target))
        if not ok:
            m.THROTTLED.labels(self.target).inc()
            raise Throttled(next_at)

    def block_until(self, until: float) -> None:
        """The server said 429: hold every call to this target until ``until``."""
        with self.db.transaction() as tx:
            self._ensure(tx, self.clock.now())
            tx.execute("UPDATE delivery_gates SET blocked_until=MAX(blocked_until, ?) WHERE target=?"
                       if self.db.dialect == "sqlite" else
                       "UPDATE delivery_gates SET blocked_until=GREATEST(blocked_until, ?) WHERE target=?",
                       (until, self.target))

    def breaker_state(self) -> breaker.BreakerState:
        with self.db.transaction() as tx:
            row = self._ensure(tx, self.clock.now())
        return breaker.BreakerState(row[3], int(row[4]), float(row[5]))

    def save_breaker(self, s: breaker.BreakerState) -> None:
        self.db.execute("UPDATE delivery_gates SET circuit=?, failures=?, opened_until=? WHERE target=?",
                        (s.circuit, s.failures, s.opened_until, self.target))
        m.CIRCUIT.labels(self.target).set({"closed": 0, "half-open": 1, "open": 2}[s.circuit])

    def request(self, method: str, url: str, *, prepaid: bool = False, **kw: Any) -> httpx.Response:
        """One rate-limited call; HTTP errors become ``DeliveryFailed`` (with the server's retry hint).

        ``prepaid``: the caller already took this call's token with ``take_token`` (so it
        could record durably that the call is about to go out before sending it).
        """
        if not prepaid:
            self.take_token()
        self.calls += 1
        try:
            resp = self.client.request(method, url, **kw)
        except httpx.HTTPError as e:  # connect errors, timeouts, protocol errors
            raise DeliveryFailed(f"{method} {url}: {type(e).__name__}: {e}") from None
        if resp.status_code >= 400:
            retry_at = retry_at_from_headers(dict(resp.headers), self.clock.now())
            raise DeliveryFailed(f"{method} {url}: HTTP {resp.status_code}: {resp.text[:500]}",
                                 resp.status_code, retry_at)
        return resp


class Dispatcher:
    """Claims due outbox items for its sinks and delivers them."""

    def __init__(self, db: Database, outbox: Outbox, sinks: list[Sink], clock: Clock, *, batch: int = 50,
                 lease_s: float = 60.0, client: httpx.Client | None = None,
                 rng: random.Random | None = None) -> None:
        self.db, self.outbox, self.clock = db, outbox, clock
        self.sinks = {s.target: s for s in sinks}
        self.batch, self.lease_s = batch, lease_s
        self.client = client or httpx.Client(timeout=10.0)
        self.rng = rng or random.Random()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.gates = {s.target: Gate(db, s.target, s.policy, clock, self.client) for s in sinks}

    def run_once(self) -> int:
        """Deliver what is due now; returns how many items were handled."""
        now = self.clock.now()
        items = self.outbox.claim(list(self.sinks), now, self.batch, self.lease_s, self.worker)
        # stop well before the lease ends: past it another replica may claim the same rows
        deadline = now + self.lease_s / 2
        for i, it in enumerate(items):
            if self.clock.now() > deadline:
                with self.db.transaction() as tx:
                    for rest in items[i:]:
                        self.outbox.release(tx, rest, self.clock.now(), attempted=False)
                break
            self._handle(it)
        return len(items)

    def _handle(self, it: Item) -> None:
        sink, gate = self.sinks[it.target], self.gates[it.target]
        pol = sink.policy
        now = self.clock.now()
        if now - it.created_at > pol.retry.max_event_age_s:
            self._dead(it, None, f"max event age {pol.retry.max_event_age_s:.0f}s exceeded")
            return
        state = gate.breaker_state()
        allowed, state2 = breaker.allow(state, now, pol.circuit.open_s)
        if not allowed:
            with self.db.transaction() as tx:
                self.outbox.release(tx, it, state.opened_until, attempted=False)
            return
        if state2 != state:
            gate.save_breaker(state2)
        try:
            sink.deliver(it, gate)
        except Throttled as t:
            with self.db.transaction() as tx:
                self.outbox.release(tx, it, t.retry_at, attempted=False)
            if state2.circuit == "half-open":
                gate.save_breaker(state)  # the trial did not happen
            return
        except DeliveryFailed as e:
            self._failed(it, gate, state2, e)
            return
        except Exception as e:  # a bug in a sink must not wedge the queue: count it as a failed attempt
            log.exception("sink %s crashed on item %s", it.target, it.id)
            self._failed(it, gate, state2, DeliveryFailed(f"sink error: {type(e).__name__}: {e}", retryable=True))
            return
        with self.db.transaction() as tx:
            self.outbox.complete(tx, it, self.clock.now())
        if state2.circuit != "closed" or state2.failures:
            gate.save_breaker(breaker.on_success(state2))
        m.DELIVERIES.labels(it.target, "delivered").inc()

    def _failed(self, it: Item, gate: Gate, state: breaker.BreakerState, e: DeliveryFailed) -> None:
        now = self.clock.now()
        pol = self.sinks[it.target].policy
        log.warning("delivery to %s failed (item %s, key %s, attempt %d): %s", it.target, it.id, it.key,
                    it.attempts + 1, e)
        if e.status == 401:
            self._paused(it, gate, state, e)
            return
        if e.status == 429:
            gate.block_until(e.retry_at or now + backoff_s(pol.retry, it.attempts + 1, self.rng))
        elif e.retryable:  # 5xx and network errors count towards opening the circuit
            gate.save_breaker(breaker.on_failure(state, now, pol.circuit.failure_threshold, pol.circuit.open_s))
        elif state.circuit != "closed" or state.failures:  # a 4xx answer proves the service is up
            gate.save_breaker(breaker.on_success(state))
        if not e.retryable:
            m.DELIVERIES.labels(it.target, "rejected").inc()
            self._dead(it, e.status, str(e))
            return
        if it.attempts + 1 >= pol.retry.max_attempts:
            m.DELIVERIES.labels(it.target, "failed").inc()
            self._dead(it, e.status, f"gave up after {it.attempts + 1} attempts: {e}")
            return
        m.DELIVERIES.labels(it.target, "retry").inc()
        m.RETRIES.labels(it.target).inc()
        at = now + backoff_s(pol.retry, it.attempts + 1, self.rng)
        if e.retry_at is not None:
            at = max(at, e.retry_at)
        with self.db.transaction() as tx:
            self.outbox.release(tx, it, at, attempted=True, status=e.status, error=str(e)[:2000])

    def _paused(self, it: Item, gate: Gate, state: breaker.BreakerState, e: DeliveryFailed) -> None:
        """Credentials refused: an outage of ours, not a bad record. Open the circuit for the
        whole target and keep the item queued without counting an attempt; the breaker's
        trial call after ``open_s`` resumes delivery once the credentials work again."""
        now = self.clock.now()
        open_s = self.sinks[it.target].policy.circuit.open_s
        gate.save_breaker(breaker.BreakerState("open", state.failures + 1, now + open_s))
        m.AUTH_FAILURES.labels(it.target).inc()
        log.error("delivery to %s paused: credentials refused (HTTP 401); %d deliveries wait, next try in %.0fs",
                  it.target, sum(self.outbox.depth().values()), open_s,
                  extra={"target": it.target, "item": it.id, "key": it.key})
        with self.db.transaction() as tx:
            self.outbox.release(tx, it, now + open_s, attempted=False, status=401, error=str(e)[:2000])

    def _dead(self, it: Item, status: int | None, reason: str) -> None:
        with self.db.transaction() as tx:
            dlq_id = self.outbox.dead_letter(tx, it, self.clock.now(), status=status, reason=reason)
        m.DEAD_LETTERS.labels(it.target).inc()
        log.error("delivery to %s dead-lettered as %s (key %s): %s", it.target, dlq_id, it.key, reason)

    def close(self) -> None:
        self.client.close()
