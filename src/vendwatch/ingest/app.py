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
import time
import zlib
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vendwatch import events as ev
from vendwatch.bus.base import LogUnavailable
from vendwatch.ingest.committer import GroupCommitter
from vendwatch.ingest.limits import TokenBuckets
from vendwatch.ingest.sink import open_sink
from vendwatch.ingest.validate import validate_batch
from vendwatch.observe import metrics as m
from vendwatch.runtime import Context
from vendwatch.state.store import Device

log = logging.getLogger("vendwatch.ingest")
_batch_decoder = msgspec.json.Decoder(ev.Batch)
_enc = msgspec.json.Encoder()


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_enc.encode(body), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    m.INGEST_REQUESTS.labels(status=str(status)).inc()
    return _json(status, {"error": {"code": code, "message": message}}, headers)


class _AuthCache:
    """token -> device for a few seconds, so a busy device costs one DB lookup per TTL."""

    def __init__(self, ctx: Context, ttl_s: float = 5.0) -> None:
        self.ctx = ctx
        self.ttl = ttl_s
        self._c: dict[str, tuple[float, Device | None]] = {}

    def get(self, token: str) -> Device | None:
        now = time.monotonic()
        hit = self._c.get(token)
        if hit and hit[0] > now:
            return hit[1]
        dev = self.ctx.state.authenticate_device(token)
        if len(self._c) > 200_000:
            self._c.clear()
        self._c[token] = (now + self.ttl, dev)
        return dev


class Collector:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        s = ctx.settings.ingest
        self.s = s
        self.auth = _AuthCache(ctx)
        self.buckets = TokenBuckets(s.rate_limit_events_per_s, s.rate_limit_burst)
        self.committer: GroupCommitter | None = None

    def start(self) -> None:
        if self.committer is None:
            sink = open_sink(self.ctx.log, self.ctx.settings)
            self.committer = GroupCommitter(sink, self.s.group_commit_max_events, self.s.group_commit_max_wait_ms)
            self.committer.on_commit = lambda n, secs: m.LOG_APPEND_SECONDS.observe(secs)
            self.committer.start()

    def stop(self) -> None:
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
        except msgspec.DecodeError as e:
            return _error(400, "invalid_json", f"body is not valid JSON: {e}")
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
        v = validate_batch(batch.events, device, self.s, now)
        accepted, quarantine, rejected_out, in_batch_dups = v.accepted, v.quarantine, v.rejected, v.in_batch_duplicates

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
        if None in fresh:  # some events are being stored by another request right now
            m.INGEST_UNAVAILABLE.inc()
            return _error(503, "in_flight", "some events of this batch are being stored by another request;"
                          " retry with the same event ids", {"Retry-After": "2"})
        n_new = sum(1 for f in fresh if f)
        n_dup = len(fresh) - n_new + in_batch_dups
        m.INGEST_EVENTS.labels(outcome="accepted", reason="").inc(n_new)
        if n_dup:
            m.INGEST_EVENTS.labels(outcome="duplicate", reason="").inc(n_dup)
        m.INGEST_REQUESTS.labels(status="200").inc()
        return _json(200, {"accepted": n_new, "duplicates": n_dup, "rejected": rejected_out})


def routes(ctx: Context) -> list[Route]:
    collector = Collector(ctx)
    ctx.extras["collector"] = collector
    return [Route("/v1/events", collector.post_events, methods=["POST"])]
