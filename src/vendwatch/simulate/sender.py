"""Posting batches to the collector like a well-behaved device.

One batch is retried until it is answered (or the run's give-up deadline passes) with
the *same body*, so the same event ids: a retry after a lost response is reported as
duplicates by the collector and stored once. Network errors, 429 (waiting at least
``Retry-After``), 500/502/503/504 are retried with exponential backoff and full
jitter; any other status refuses the batch for good and is counted as rejected.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

log = logging.getLogger("vendwatch.simulate")
# one line per request at INFO would drown the progress output
logging.getLogger("httpx").setLevel(logging.WARNING)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass
class RetryPolicy:
    base_s: float = 0.2
    cap_s: float = 10.0
    max_attempts: int | None = None  # None: until answered or the give-up deadline

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Full-jitter exponential backoff; never less than the server's Retry-After."""
        # 2**attempt stops fitting a float after ~1,000 attempts (a few hours of outage)
        backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2.0 ** min(attempt, 64)))
        if retry_after is not None:
            return retry_after + rng.uniform(0, self.base_s)
        return backoff


@dataclass
class SendStats:
    """Counts of one run. Every event id is counted at most once in each field."""

    events_generated: int = 0
    events_sent: int = 0  # distinct events posted at least once
    events_acked: int = 0  # answered 2xx and not rejected: stored now or earlier (duplicate)
    duplicates_reported: int = 0  # what the collector called duplicates (retries after lost answers)
    events_rejected: int = 0  # refused by the collector (per event, or a whole batch with a 4xx)
    events_unsent: int = 0  # generated but given up on when the run stopped
    requests: int = 0
    retries: int = 0
    network_errors: int = 0
    network_error_kinds: Counter[str] = field(default_factory=Counter)  # "connection refused", "timeout", ...
    statuses: Counter[int] = field(default_factory=Counter)
    reject_reasons: Counter[str] = field(default_factory=Counter)
    devices_acked: set[str] = field(default_factory=set)
    dex_files: Counter[int] = field(default_factory=Counter)  # DEX uploads by final HTTP status

    def as_dict(self) -> dict[str, Any]:
        return {
            "events_generated": self.events_generated,
            "events_sent": self.events_sent,
            "events_acked": self.events_acked,
            "duplicates_reported": self.duplicates_reported,
            "events_rejected": self.events_rejected,
            "events_unsent": self.events_unsent,
            "requests": self.requests,
            "retries": self.retries,
            "network_errors": self.network_errors,
            "network_error_kinds": dict(self.network_error_kinds.most_common()),
            "http_statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "reject_reasons": dict(self.reject_reasons.most_common(10)),
            "devices_acked": len(self.devices_acked),
            "dex_files": {str(k): v for k, v in sorted(self.dex_files.items())},
        }


def network_error_kind(e: httpx.TransportError) -> str:
    """A short, human name for why a request got no answer."""
    causes: list[BaseException] = []
    cause: BaseException | None = e
    while cause is not None and len(causes) < 10:  # httpx wraps the OS error a few levels down
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    text = " ".join(str(c) for c in causes).lower()
    if isinstance(e, httpx.TimeoutException):
        return "timeout"
    if isinstance(e, httpx.ConnectError):
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
            return "host name not found"
        return "cannot connect"
    return type(e).__name__


class _Answer(msgspec.Struct):
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = []


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class Sender:
    """Posts per-device batches over one keep-alive HTTP/1.1 connection pool."""

    def __init__(
        self,
        url: str,
        tokens: dict[str, str],
        *,
        concurrency: int = 8,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        seed: int = 0,
        stats: SendStats | None = None,
        on_acked: Callable[[str, list[str]], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/events" if not url.rstrip("/").endswith("/v1/events") else url
        self.tokens = tokens
        self.retry = retry or RetryPolicy()
        self.stats = stats or SendStats()
        self.rng = random.Random(f"vendwatch-sim-jitter:{seed}")
        self.on_acked = on_acked  # (device_id, acked event ids) after every 2xx
        self._sleep = sleep  # injectable: tests check the waits without waiting
        self.give_up_at: float | None = None  # time.monotonic() deadline once the run is draining
        self._sem = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(
            http1=True, http2=False, timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _giving_up(self) -> bool:
        return self.give_up_at is not None and time.monotonic() >= self.give_up_at

    async def send(self, device_id: str, events: list[bytes], event_ids: list[str] | None = None) -> bool:
        """Post one batch until answered; True when the collector answered 2xx.

        ``event_ids`` (the ids of ``events``, in order) are only needed for ``on_acked``.
        """
        st = self.stats
        n = len(events)
        body = b'{"events":[' + b",".join(events) + b"]}"
        headers = {"authorization": f"Bearer {self.tokens[device_id]}", "content-type": "application/json"}
        st.events_sent += n
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                async with self._sem:
                    st.requests += 1
                    resp = await self._client.post(self.url, content=body, headers=headers)
            except httpx.TransportError as e:
                st.network_errors += 1
                st.network_error_kinds[network_error_kind(e)] += 1
                log.debug("device %s: network error %s; will retry", device_id, type(e).__name__)
            else:
                st.statuses[resp.status_code] += 1
                if 200 <= resp.status_code < 300:
                    self._answered(device_id, n, resp.content, event_ids)
                    return True
                if resp.status_code not in RETRY_STATUSES:
                    st.events_rejected += n
                    reason = f"http {resp.status_code}: {resp.text[:200]}"
                    if reason not in st.reject_reasons:  # say it once, count it always
                        log.warning("device %s: batch of %d refused with %d: %s", device_id, n, resp.status_code, resp.text[:200])
                    st.reject_reasons[reason] += n
                    return False
                retry_after = _retry_after(resp)
            attempt += 1
            if self._giving_up() or (self.retry.max_attempts is not None and attempt >= self.retry.max_attempts):
                st.events_unsent += n
                return False
            st.retries += 1
            delay = self.retry.delay(attempt - 1, retry_after, self.rng)
            if self.give_up_at is not None:
                delay = min(delay, max(0.0, self.give_up_at - time.monotonic()))
            await self._sleep(delay)

    async def send_dex(self, device_id: str, raw: bytes) -> int | None:
        """Upload one DEX audit file to ``POST /v1/dex`` until answered; the final HTTP status
        (422 for a refused file), or None when given up."""
        url = self.url.removesuffix("/v1/events") + "/v1/dex"
        headers = {"authorization": f"Bearer {self.tokens[device_id]}", "content-type": "text/plain"}
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                async with self._sem:
                    self.stats.requests += 1
                    resp = await self._client.post(url, content=raw, headers=headers)
            except httpx.TransportError:
                self.stats.network_errors += 1
            else:
                self.stats.statuses[resp.status_code] += 1
                if resp.status_code not in RETRY_STATUSES:
                    self.stats.dex_files[resp.status_code] += 1
                    return resp.status_code
                retry_after = _retry_after(resp)
            attempt += 1
            if self._giving_up() or (self.retry.max_attempts is not None and attempt >= self.retry.max_attempts):
                return None
            self.stats.retries += 1
            await self._sleep(self.retry.delay(attempt - 1, retry_after, self.rng))

    def _answered(self, device_id: str, n: int, content: bytes, event_ids: list[str] | None) -> None:
        st = self.stats
        try:
            ans = msgspec.json.decode(content, type=_Answer)
        except msgspec.DecodeError:
            ans = _Answer(accepted=n)
        rejected = len(ans.rejected)
        st.events_acked += n - rejected
        st.duplicates_reported += ans.duplicates
        st.events_rejected += rejected
        for r in ans.rejected[:20]:
            st.reject_reasons[str(r.get("reason", "?"))[:200]] += 1
        if n - rejected > 0:
            st.devices_acked.add(device_id)
        if self.on_acked is not None and event_ids is not None:
            refused = {r.get("index") for r in ans.rejected}
            self.on_acked(device_id, [i for k, i in enumerate(event_ids) if k not in refused])
