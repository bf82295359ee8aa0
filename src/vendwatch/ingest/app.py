"""The collector: ``POST /v1/events`` (device protocol v1).

A 2xx answer means every accepted event is durable in the log. Bad events are refused
one by one with a reason and kept in quarantine (the ``rejected`` topic); an unreadable
or oversized request is refused whole with a 4xx; if the log cannot take the batch in
time the answer is 503 with ``Retry-After`` and the device retries with the same ids.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from vendwatch import events as ev
from vendwatch.api.auth import MAX_TOKEN_CHARS
from vendwatch.api.authfail import AuthFailures
from vendwatch.bus.base import LogUnavailable
from vendwatch.bus.retention import RetentionTask
from vendwatch.errors import Unavailable
from vendwatch.ingest import metrics as im
from vendwatch.ingest.committer import GroupCommitter
from vendwatch.ingest.limits import TokenBuckets
from vendwatch.ingest.openapi import openapi
from vendwatch.ingest.sink import IngestSink, Pending, open_sink
from vendwatch.ingest.validate import BodyError, Validator, parse
from vendwatch.observe import metrics as m
from vendwatch.runtime import Context
from vendwatch.state.store import Device

log = logging.getLogger("vendwatch.ingest")
# label lookups resolved once: they are on the per-request path
_OK = m.INGEST_REQUESTS.labels(status="200")
_ACCEPTED = m.INGEST_EVENTS.labels(outcome="accepted", reason="")
_DUPLICATE = m.INGEST_EVENTS.labels(outcome="duplicate", reason="")
_enc = msgspec.json.Encoder()


class _Answer:
    """A JSON answer sent straight over ASGI (the collector bypasses Starlette's request
    machinery: it is the per-request cost that dominates small batches)."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    async def send(self, send: Send) -> None:
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        if self.headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})


class _Disconnected(Exception):
    pass


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> _Answer:
    return _Answer(status, _enc.encode(body), headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> _Answer:
    m.INGEST_REQUESTS.labels(status=str(status)).inc()
    return _json(status, {"error": {"code": code, "message": message}}, headers)


def unavailable(e: Exception, then: str) -> _Answer:
    """The 503 for a backend that does not answer now (the state database cut off, its pool
    exhausted): the device keeps its data and retries; one log line, no traceback."""
    log.warning("collector: %s; answering 503", e)
    return _error(503, "state_unavailable", f"the device registry cannot be reached right now; {then}",
                  {"Retry-After": "5"})


class _TooLarge(Exception):
    pass


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress every gzip member of ``data``, never producing more than ``limit`` bytes."""
    out: list[bytes] = []
    size = 0
    while True:
        d = zlib.decompressobj(wbits=31)
        chunk = d.decompress(data, limit - size + 1)  # bounded: a gzip bomb stops here
        size += len(chunk)
        if size > limit or d.unconsumed_tail:
            raise _TooLarge
        if not d.eof:
            raise EOFError("gzip stream is truncated")
        out.append(chunk)
        data = d.unused_data
        if not data:
            return b"".join(out)


_MISS = object()


def _token_key(token: str) -> bytes:
    return hashlib.blake2b(token.encode("utf-8", "surrogateescape"), digest_size=16).digest()


class _AuthCache:
    """Successful device authentications for ``ttl_s``: a busy device costs one registry
    lookup per TTL.

    Only successes are kept, keyed by a digest of the token (never the token itself),
    within ``max_bytes``: made-up tokens, however many and however long, cost no memory
    here (they are counted and throttled per client by ``api.authfail``). The price of
    caching: a disabled device or an expired token keeps working up to ``ttl_s``
    (``ingest.auth_cache_s``; 0 disables the cache).
    """

    max_bytes = 32 * 1024 * 1024
    _ENTRY_OVERHEAD = 240  # dict slot, key bytes, tuple, float: measured with sys.getsizeof

    def __init__(self, ctx: Context, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.ttl = ttl_s
        self.clock = clock
        self._c: OrderedDict[bytes, tuple[float, Device, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._c)

    def get(self, token: str) -> Device | None:
        """The token's device, looked up in the registry on a miss (blocking)."""
        dev = self.cached(token)
        return self.lookup(token) if dev is _MISS else dev  # type: ignore[return-value]

    def cached(self, token: str) -> Device | None | object:
        """The token's device, None for a token refused unread, or ``_MISS`` when only the
        registry can tell (``lookup``, which may block: call it off the event loop)."""
        if len(token) > MAX_TOKEN_CHARS:
            return None  # no token we issue is this long: not even worth a lookup
        hit = self._c.get(_token_key(token))
        if hit is not None:
            if hit[0] > self.clock():
                return hit[1]
            self._drop(_token_key(token))
        return _MISS

    def lookup(self, token: str) -> Device | None:
        now = self.clock()
        key = _token_key(token)
        dev = self.ctx.state.authenticate_device(token)
        if dev is not None and self.ttl > 0:
            size = self._ENTRY_OVERHEAD + sum(len(v) for v in (dev.device_id, dev.site_id, dev.serial, dev.model,
                                                               dev.location) if isinstance(v, str))
            size += len(repr(dev.meta)) if dev.meta else 0
            self._c[key] = (now + self.ttl, dev, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self._c)))  # oldest first
        return dev

    def _drop(self, key: bytes) -> None:
        entry = self._c.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]


class Collector:
    """The ``POST /v1/events`` endpoint and the machinery behind it (group commit, housekeeping)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        s = ctx.settings.ingest
        self.s = s
        self.auth = _AuthCache(ctx, s.auth_cache_s)
        srv = ctx.settings.server
        self.auth_failures = AuthFailures("device", srv.auth_failures_per_min, srv.auth_failures_burst)
        self.buckets = TokenBuckets(s.rate_limit_events_per_s, s.rate_limit_burst)
        self.validator = Validator(s)
        self.committer: GroupCommitter | None = None
        self.sink: IngestSink | None = None
        self._housekeeping_stop = threading.Event()
        self._housekeeping: threading.Thread | None = None

    def start(self, sink: IngestSink | None = None) -> None:
        """Open the sink (rebuilding the dedupe index), start group commit and housekeeping."""
        if self.committer is not None:
            return
        self.sink = sink or open_sink(self.ctx.log, self.ctx.settings)
        self.sink.warm()
        self.committer = GroupCommitter(self.sink, self.s.group_commit_max_events, self.s.group_commit_max_wait_ms)
        self.committer.on_commit = _observe_commit
        self.committer.start()
        index = getattr(self.sink, "index", None)
        if index is not None:
            im.DEDUPE_KEYS.set_function(index.__len__)
        bus = self.ctx.settings.bus
        task = RetentionTask(self.ctx.log, bus.retention_hours * 3600, bus.retention_check_s, also=self._maintain)
        self._housekeeping = threading.Thread(target=task.run, args=(self._housekeeping_stop,),
                                              name="vw-ingest-housekeeping", daemon=True)
        self._housekeeping.start()

    def _maintain(self) -> None:
        if self.committer is not None and self.sink is not None:
            self.committer.call(self.sink.maintain)  # the index belongs to the commit thread

    def healthy(self) -> bool:
        """False when events could not become durable (the commit thread is gone)."""
        return self.committer is not None and self.committer.alive()

    def stop(self) -> None:
        self._housekeeping_stop.set()
        if self.committer is not None:
            self.committer.stop()

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes | _Answer:
        limit = self.s.max_body_bytes
        cl = headers.get("content-length")
        if cl is not None:
            try:
                if int(cl) > limit:
                    return _error(413, "body_too_large", f"body is {cl} bytes; the limit is {limit}")
            except ValueError:
                return _error(400, "bad_content_length", "Content-Length is not a number")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _error(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        enc = headers.get("content-encoding", "identity").lower()
        if enc == "gzip":
            try:
                body = _gunzip(body, limit)
            except _TooLarge:
                return _error(413, "body_too_large", f"decompressed body exceeds {limit} bytes")
            except (zlib.error, gzip.BadGzipFile, EOFError) as e:
                return _error(400, "bad_gzip", f"body is not valid gzip: {e}")
        elif enc not in ("identity", ""):
            return _error(415, "unsupported_encoding", f"Content-Encoding {enc} is not supported; use gzip or none")
        return body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point of ``POST /v1/events``."""
        t0 = time.perf_counter()
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            client = scope.get("client")
            answer = await self._post_events(headers, receive, str(client[0]) if client else "unknown")
        except _Disconnected:
            return  # the device went away; nothing was stored for this request
        except Unavailable as e:
            answer = unavailable(e, "retry with the same event ids")
        except Exception:
            log.exception("collector request failed")
            answer = _error(500, "internal", "unexpected error; retry with the same event ids")
        await answer.send(send)
        m.INGEST_LATENCY.observe(time.perf_counter() - t0)

    async def authenticate(self, headers: dict[str, str], client: str) -> Device | _Answer:
        """The device of the request's bearer token, or the 401/429 to send (every device endpoint).

        On PostgreSQL a token that is not cached is looked up in a worker thread: a round
        trip, and while the database is away a wait for its timeout, would otherwise hold up
        every other device's request on the event loop. An embedded lookup stays inline."""
        wait = self.auth_failures.retry_after(client)
        if wait:
            return _error(429, "too_many_auth_failures", f"too many failed authentications from {client};"
                          f" retry in {wait}s", {"Retry-After": str(wait)})
        authz = headers.get("authorization", "")
        scheme, _, token = authz.partition(" ")
        if scheme.lower() != "bearer" or not token:
            self.auth_failures.failed(client, "missing bearer token")
            return _error(401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"})
        token = token.strip()
        device = self.auth.cached(token)
        if device is _MISS:
            if self.ctx.state.db.remote:
                device = await asyncio.to_thread(self.auth.lookup, token)
            else:
                device = self.auth.lookup(token)
        if device is None:
            self.auth_failures.failed(client, "unknown, expired or disabled device token")
            return _error(401, "unauthorized", "unknown, expired or disabled device token", {"WWW-Authenticate": "Bearer"})
        return cast(Device, device)

    async def read_body(self, headers: dict[str, str], receive: Receive) -> bytes | _Answer:
        """The request body within the size limit, gunzipped; or the 4xx to send."""
        return await self._body(headers, receive)

    def over_limit(self, device_id: str, n: int) -> _Answer | None:
        """The 429 to send when ``device_id`` has no room for ``n`` more events in its rate limit."""
        wait = self.buckets.take(device_id, max(n, 1))
        if wait <= 0:
            return None
        m.INGEST_RATE_LIMITED.inc()
        retry = max(1, int(wait + 0.999))
        return _error(429, "rate_limited", f"device {device_id} is over its rate limit; retry in {retry}s",
                      {"Retry-After": str(retry)})

    async def append(self, accepted: list[Pending], quarantine: list[tuple[str, bytes]],
                     retry_hint: str) -> list[bool] | _Answer:
        """Make events durable (True: new, False: duplicate), or the 503 to send (``retry_hint`` ends it)."""
        assert self.committer is not None
        try:
            fresh = await self.committer.enqueue(accepted, quarantine, self.s.append_timeout_s)
        except (LogUnavailable, TimeoutError) as e:
            m.INGEST_UNAVAILABLE.inc()
            return _error(503, "log_unavailable", f"the event log cannot take writes right now ({e}); {retry_hint}",
                          {"Retry-After": "5"})
        except Exception as e:  # disk full, corruption: never 2xx
            log.exception("append failed")
            m.INGEST_UNAVAILABLE.inc()
            return _error(503, "log_unavailable", f"append failed: {type(e).__name__}", {"Retry-After": "5"})
        if None in fresh:  # scale-out dedupe: another request is storing some of these events right now
            m.INGEST_UNAVAILABLE.inc()
            return _error(503, "in_flight", f"some events are being stored by another request; {retry_hint}",
                          {"Retry-After": "2"})
        return fresh

    async def _post_events(self, headers: dict[str, str], receive: Receive, client: str) -> _Answer:
        device = await self.authenticate(headers, client)
        if isinstance(device, _Answer):
            return device
        body = await self._body(headers, receive)
        if isinstance(body, _Answer):
            return body
        ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", ""):
            return _error(415, "unsupported_media_type", f"Content-Type must be application/json, got {ctype}")
        try:
            parsed = parse(body)
        except BodyError as e:
            return _error(e.status, e.code, e.message)
        n = len(parsed)
        if n > self.s.max_batch_events:
            return _error(413, "too_many_events", f"{n} events in one batch; the limit is {self.s.max_batch_events}")
        limited = self.over_limit(device.device_id, n)
        if limited is not None:
            return limited
        received = ev.utcnow()
        out = self.validator.validate(parsed, device.device_id, device.site_id, received)
        for r in out.rejected:
            m.INGEST_EVENTS.labels(outcome="rejected", reason=r["code"]).inc()
        im.BATCH_EVENTS.observe(n)
        accepted, quarantine, rejected_out = out.accepted, out.quarantine, out.rejected
        in_batch_dups = out.in_batch_duplicates

        assert self.committer is not None
        if not self.committer.alive():  # shutting down (or broken): nothing could become durable
            m.INGEST_UNAVAILABLE.inc()
            return _error(503, "log_unavailable", "the collector is not taking writes; retry with the same event ids",
                          {"Retry-After": "5"})
        if not accepted and not quarantine:
            _OK.inc()
            return _json(200, {"accepted": 0, "duplicates": in_batch_dups, "rejected": []})
        fresh = await self.append(accepted, quarantine, "retry with the same event ids")
        if isinstance(fresh, _Answer):
            return fresh
        n_new = sum(1 for f in fresh if f)
        n_dup = len(fresh) - n_new + in_batch_dups
        if n_new:
            _observe_hops(parsed, received.timestamp())
        _ACCEPTED.inc(n_new)
        if n_dup:
            _DUPLICATE.inc(n_dup)
        _OK.inc()
        return _json(200, {"accepted": n_new, "duplicates": n_dup, "rejected": rejected_out})


def _observe_hops(parsed: Any, received: float) -> None:
    """occurred -> received -> durable, one sample per request (its first event): a histogram
    observation per event would cost a measurable share of the collector's throughput."""
    durable = time.time()
    m.observe_hop("durable", durable - received)
    first = parsed.typed[0] if parsed.typed else None
    if first is not None:
        occurred = first.occurred_at.timestamp()
        m.observe_hop("received", received - occurred)
        m.observe_age("received", received - occurred)
        m.observe_age("durable", durable - occurred)


def _observe_commit(events: int, requests: int, seconds: float) -> None:
    m.LOG_APPEND_SECONDS.observe(seconds)
    im.GROUP_COMMIT_EVENTS.observe(events)
    im.GROUP_COMMIT_REQUESTS.observe(requests)


def routes(ctx: Context) -> list[Route]:
    collector = Collector(ctx)
    ctx.extras["collector"] = collector
    spec: list[bytes] = []

    async def openapi_json(request: Request) -> Response:
        if not spec:  # built on first use: it imports the operator API's modules
            spec.append(_enc.encode(openapi()))
        return Response(spec[0], media_type="application/json")

    # an ASGI app as the endpoint (not a function): Starlette routes to it without wrapping;
    # api/server.py also dispatches POST /v1/events to it before Starlette's middleware
    from vendwatch.dex.http import DexEndpoint  # noqa: PLC0415 - the DEX front door builds on this module

    return [Route("/v1/events", collector, methods=["POST"]),
            Route("/v1/dex", DexEndpoint(ctx, collector), methods=["POST"]),
            Route("/openapi.json", openapi_json, methods=["GET"])]
