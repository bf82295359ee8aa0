"""Baseline for bench/ingest.py: an ASGI app that only parses the batch with msgspec and answers 200.

The parse-only ceiling of the machine (the limits this project is measured against):
no auth, no validation of payloads, no storage. Run under the same uvicorn as the collector.
"""

from typing import Any

import msgspec


class Event(msgspec.Struct):
    event_id: str
    device_id: str
    type: str
    occurred_at: str
    data: dict[str, Any]


class Batch(msgspec.Struct):
    events: list[Event]


_dec = msgspec.json.Decoder(Batch)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    b = _dec.decode(body)
    out = b'{"accepted":%d}' % len(b.events)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
