"""``POST /v1/dex``: a device (or its telemetry modem) uploads one EVA-DTS audit file.

Same rules as ``POST /v1/events``: bearer device token, body limit, gzip allowed, rate
limit, 2xx only once durable, 503 + ``Retry-After`` when the log cannot take it.
Idempotent: the events of a file have ids derived from its SHA-256, so resending the
same file answers ``accepted: 0`` with every event a duplicate. A file refused as a
whole (wrong CRC, broken frame) answers 422 with the reason and is kept in quarantine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from vendwatch import events as ev
from vendwatch.dex.intake import Judged, judge, remember
from vendwatch.dex.store import DexStore
from vendwatch.errors import Unavailable
from vendwatch.ingest.app import _Answer, _Disconnected, _error, _json, unavailable
from vendwatch.observe import metrics as m
from vendwatch.runtime import Context
from vendwatch.state.store import Device

if TYPE_CHECKING:
    from vendwatch.ingest.app import Collector

log = logging.getLogger("vendwatch.dex")
_TEXT_TYPES = ("text/plain", "application/octet-stream", "")


class DexEndpoint:
    def __init__(self, ctx: Context, collector: Collector) -> None:
        self.ctx = ctx
        self.collector = collector
        self._store: DexStore | None = None
        # a file is compared with the read stored before it: judge, append and remember one at a time
        # (uploads are a few per machine per week; replicas can still interleave, see docs/dex.md)
        self._serial = asyncio.Lock()

    @property
    def store(self) -> DexStore:
        if self._store is None:
            self._store = DexStore(self.ctx.state.db)
        return self._store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            client = scope.get("client")
            answer = await self._post(headers, receive, str(client[0]) if client else "unknown")
        except _Disconnected:
            return
        except Unavailable as e:
            answer = unavailable(e, "resend the same file")
        except Exception:
            log.exception("DEX upload failed")
            answer = _error(500, "internal", "unexpected error; resend the same file")
        await answer.send(send)
        m.INGEST_LATENCY.observe(time.perf_counter() - t0)

    async def _post(self, headers: dict[str, str], receive: Receive, client: str) -> _Answer:
        c = self.collector
        device = await c.authenticate(headers, client)
        if isinstance(device, _Answer):
            return device
        body = await c.read_body(headers, receive)
        if isinstance(body, _Answer):
            return body
        ctype = headers.get("content-type", "text/plain").split(";")[0].strip().lower()
        if ctype not in _TEXT_TYPES:
            return _error(415, "unsupported_media_type", f"Content-Type must be text/plain (a DEX file), got {ctype}")
        limited = c.over_limit(device.device_id, 1)
        if limited is not None:
            return limited
        if c.committer is None or not c.committer.alive():
            return _error(503, "log_unavailable", "the collector is not taking writes; resend the same file",
                          {"Retry-After": "5"})
        async with self._serial:
            return await self._store_file(body, device)

    async def _store_file(self, body: bytes, device: Device) -> _Answer:
        c = self.collector
        assert c.committer is not None
        j: Judged = await asyncio.to_thread(judge, body, device, c.s, self.store, ev.utcnow())
        fresh = await c.append(j.accepted, j.quarantine, "resend the same file")
        if isinstance(fresh, _Answer):
            return fresh
        if j.refused is not None:
            log.info("DEX file refused", extra={"device_id": device.device_id, "code": j.refused[0]})
            return _error(422, j.refused[0], j.refused[1])
        await asyncio.to_thread(remember, j, device, self.store)
        m.INGEST_REQUESTS.labels(status="200").inc()
        return _json(200, j.answer([bool(f) for f in fresh]))
