"""The collector: ``POST /v1/events`` (device protocol v1).

A 2xx answer means every accepted event is durable in the log. Bad events are refused
one by one with a reason and kept in quarantine (the ``rejected`` topic); an unreadable
or oversized request is refused whole with a 4xx; if the log cannot take the batch in
time the answer is 503 with ``Retry-After`` and the device retries with the same ids.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
import zlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vendwatch import events as ev
from vendwatch.bus.base import LogUnavailable
from vendwatch.bus.retention import RetentionTask
from vendwatch.ingest import metrics as im
from vendwatch.ingest.committer import GroupCommitter
from vendwatch.ingest.limits import TokenBuckets
from vendwatch.ingest.sink import IngestSink, Pending, open_sink
from vendwatch.observe import metrics as m
from vendwatch.runtime import Context
from vendwatch.state.store import Device

log = logging.getLogger("vendwatch.ingest")
_batch_decoder = msgspec.json.Decoder(ev.Batch)
_enc = msgspec.json.Encoder()
_QUARANTINE_MAX = 65_536  # larger rejected events are kept as reason + ids only


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_enc.encode(body), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    m.INGEST_REQUESTS.labels(status=str(status)).inc()
    return _json(status, {"error": {"code": code, "message": message}}, headers)


class _AuthCache:
    """token -> device for ``ttl_s``, so a busy device costs one registry lookup per TTL.

    The price: a disabled device or an expired token keeps working up to ``ttl_s``
    (``ingest.auth_cache_s``; 0 disables the cache).
    """

    max_entries = 200_000

    def __init__(self, ctx: Context, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.ttl = ttl_s
        self.clock = clock
        self._c: dict[str, tuple[float, Device | None]] = {}

    def get(self, token: str) -> Device | None:
        now = self.clock()
        hit = self._c.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        dev = self.ctx.state.authenticate_device(token)
        if self.ttl > 0:
            if len(self._c) >= self.max_entries:
                self._c.clear()  # bounded memory, also against floods of made-up tokens
            self._c[token] = (now + self.ttl, dev)
        return dev


class Collector:
    """The ``POST /v1/events`` endpoint and the machinery behind it (group commit, housekeeping)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        s = ctx.settings.ingest
        self.s = s
        self.auth = _AuthCache(ctx, s.auth_cache_s)
        self.buckets = TokenBuckets(s.rate_limit_events_per_s, s.rate_limit_burst)
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

    def stop(self) -> None:
        self._housekeeping_stop.set()
        if self.committer is not None:
            self.committer.stop()

    async def _body(self, request: Request) -> bytes | Response:
        limit = self.s.max_body_bytes
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                if int(cl) > limit:
                    return _error(413, "body_too_large", f"body is {cl} bytes; the limit is {limit}")
            except ValueError:
                return _error(400, "bad_content_length", "Content-Length is not a number")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return _error(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        enc = request.headers.get("content-encoding", "identity").lower()
        if enc == "gzip":
            try:
                d = zlib.decompressobj(wbits=31)
                body = d.decompress(body, limit + 1)
                if len(body) > limit or d.unconsumed_tail:
                    return _error(413, "body_too_large", f"decompressed body exceeds {limit} bytes")
                if not d.eof:
                    return _error(400, "bad_gzip", "gzip stream is truncated")
            except (zlib.error, gzip.BadGzipFile) as e:
                return _error(400, "bad_gzip", f"body is not valid gzip: {e}")
        elif enc not in ("identity", ""):
            return _error(415, "unsupported_encoding", f"Content-Encoding {enc} is not supported; use gzip or none")
        return body

    async def post_events(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            return await self._post_events(request)
        finally:
            m.INGEST_LATENCY.observe(time.perf_counter() - t0)

    async def _post_events(self, request: Request) -> Response:
        authz = request.headers.get("authorization", "")
        scheme, _, token = authz.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"})
        device = self.auth.get(token.strip())
        if device is None:
            return _error(401, "unauthorized", "unknown, expired or disabled device token", {"WWW-Authenticate": "Bearer"})
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", ""):
            return _error(415, "unsupported_media_type", f"Content-Type must be application/json, got {ctype}")
        try:
            batch = _batch_decoder.decode(body)
        except msgspec.ValidationError as e:
            return _error(400, "invalid_body", f"body must be {{\"events\": [...]}}: {e}")
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            return _error(400, "invalid_json", f"body is not valid JSON: {e}")
        except RecursionError:
            return _error(400, "invalid_json", "body is nested too deeply")
        n = len(batch.events)
        if n > self.s.max_batch_events:
            return _error(413, "too_many_events", f"{n} events in one batch; the limit is {self.s.max_batch_events}")
        wait = self.buckets.take(device.device_id, max(n, 1))
        if wait > 0:
            m.INGEST_RATE_LIMITED.inc()
            retry = max(1, int(wait + 0.999))
            return _error(429, "rate_limited", f"device {device.device_id} is over its rate limit; retry in {retry}s",
                          {"Retry-After": str(retry)})

        now = ev.utcnow()
        future_limit = now + timedelta(seconds=self.s.max_future_skew_s)
        late_limit = now - timedelta(seconds=self.s.late_after_s)
        oldest = now - timedelta(days=self.s.max_age_days)
        accepted: list[Pending] = []
        acc_index: list[int] = []
        rejected_out: list[dict[str, Any]] = []
        quarantine: list[tuple[str, bytes]] = []
        seen_in_batch: set[str] = set()
        in_batch_dups = 0

        def reject(i: int, raw: msgspec.Raw, reason: str, code: str, event_id: str | None) -> None:
            rejected_out.append({"index": i, "event_id": event_id, "code": code, "reason": reason})
            m.INGEST_EVENTS.labels(outcome="rejected", reason=code).inc()
            quarantine.append((device.device_id, _enc.encode(ev.RejectedEvent(
                received_at=now, reason=reason, code=code, device_id=device.device_id, event_id=event_id, index=i,
                raw=_quarantine_copy(raw)))))

        max_event = self.s.max_event_bytes
        for i, raw in enumerate(batch.events):
            if len(raw) > max_event:
                reject(i, raw, f"event is {len(raw)} bytes; the limit is {max_event}", "too_large", _peek_event_id(raw))
                continue
            try:
                e = ev.decode_device_event(raw)
            except msgspec.ValidationError as err:
                reject(i, raw, str(err), "schema", _peek_event_id(raw))
                continue
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
                reject(i, raw, f"not a valid JSON event: {err}", "schema", _peek_event_id(raw))
                continue
            if e.device_id != device.device_id:
                reject(i, raw, f"device_id {e.device_id!r} does not match the authenticated device {device.device_id!r}",
                       "device_mismatch", e.event_id)
                continue
            if e.occurred_at > future_limit:
                reject(i, raw, f"occurred_at {e.occurred_at.isoformat()} is more than {self.s.max_future_skew_s:g}s in the future",
                       "future", e.event_id)
                continue
            if e.occurred_at < oldest:
                reject(i, raw, f"occurred_at {e.occurred_at.isoformat()} is older than {self.s.max_age_days:g} days",
                       "too_old", e.event_id)
                continue
            if e.event_id in seen_in_batch:
                in_batch_dups += 1
                continue
            seen_in_batch.add(e.event_id)
            stored = ev.StoredEvent(
                event_id=e.event_id, device_id=e.device_id, type=e.type, occurred_at=e.occurred_at,
                received_at=now, data=e.data, seq=e.seq, site_id=device.site_id,
                late=e.occurred_at < late_limit,
            )
            accepted.append(Pending(e.device_id, e.event_id, _enc.encode(stored)))
            acc_index.append(i)

        assert self.committer is not None
        try:
            fresh = await asyncio.wait_for(self.committer.submit(accepted, quarantine), self.s.append_timeout_s)
        except (LogUnavailable, TimeoutError) as e:
            m.INGEST_UNAVAILABLE.inc()
            return _error(503, "log_unavailable", f"the event log cannot take writes right now ({e}); retry with the same event ids",
                          {"Retry-After": "5"})
        except Exception as e:  # disk full, corruption: never 2xx
            log.exception("append failed")
            m.INGEST_UNAVAILABLE.inc()
            return _error(503, "log_unavailable", f"append failed: {type(e).__name__}", {"Retry-After": "5"})
        n_new = sum(fresh)
        n_dup = len(fresh) - n_new + in_batch_dups
        m.INGEST_EVENTS.labels(outcome="accepted", reason="").inc(n_new)
        if n_dup:
            m.INGEST_EVENTS.labels(outcome="duplicate", reason="").inc(n_dup)
        m.INGEST_REQUESTS.labels(status="200").inc()
        return _json(200, {"accepted": n_new, "duplicates": n_dup, "rejected": rejected_out})


def _observe_commit(events: int, requests: int, seconds: float) -> None:
    m.LOG_APPEND_SECONDS.observe(seconds)
    im.GROUP_COMMIT_EVENTS.observe(events)
    im.GROUP_COMMIT_REQUESTS.observe(requests)


def _quarantine_copy(raw: msgspec.Raw) -> msgspec.Raw | None:
    """The event as sent, for audit; a JSON string with escapes when it is not valid UTF-8."""
    if len(raw) > _QUARANTINE_MAX:
        return None
    data = bytes(raw)
    try:
        data.decode()
    except UnicodeDecodeError:
        return msgspec.Raw(_enc.encode(data.decode("utf-8", "backslashreplace")))
    return raw


def _peek_event_id(raw: msgspec.Raw) -> str | None:
    try:
        obj = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    eid = obj.get("event_id") if isinstance(obj, dict) else None
    return eid[:128] if isinstance(eid, str) else None


def routes(ctx: Context) -> list[Route]:
    collector = Collector(ctx)
    ctx.extras["collector"] = collector
    return [Route("/v1/events", collector.post_events, methods=["POST"])]
