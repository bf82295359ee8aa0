"""A small real HTTP/1.1 server speaking the collector's protocol, with scripted misbehaviour.

Used to test the simulator's sender over real sockets: it stores event ids per device
like the collector (so a replay is answered as duplicates), and for each request
follows the next step of a script: answer normally, 429 / 503 / 500 with
``Retry-After``, refuse with 400, or close the connection without answering (before
or after storing the batch, as a crashed collector or a lost response would).
DEX audit files posted to ``/v1/dex`` follow the same script and are stored once per
distinct file; a body that is not JSON is answered 400, as the collector does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field


@dataclass
class FakeCollector:
    script: list[str] = field(default_factory=list)  # steps; "ok" once the script runs out
    default: str = "ok"
    retry_after: str = "0"
    stored: dict[str, list[str]] = field(default_factory=dict)  # device -> event ids, in arrival order
    bodies: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    reject_indexes: set[int] = field(default_factory=set)  # answer these indexes as rejected (first time)
    dex_files: dict[bytes, str] = field(default_factory=dict)  # DEX file body -> machine (asset number in ID1)
    port: int = 0
    _server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def all_ids(self) -> list[str]:
        return [i for ids in self.stored.values() for i in ids]

    @property
    def dex(self) -> list[str]:
        """The machine of each distinct DEX file stored, in arrival order."""
        return list(self.dex_files.values())

    def _store_dex(self, body: bytes) -> None:
        for line in body.decode("latin-1").splitlines():
            if line.startswith("ID1*"):
                self.dex_files.setdefault(body, line.split("*")[6])

    def _store(self, body: bytes) -> tuple[int, int, list[dict[str, object]]]:
        events = json.loads(body)["events"]
        accepted = dup = 0
        rejected = []
        for i, e in enumerate(events):
            if i in self.reject_indexes:
                rejected.append({"index": i, "event_id": e["event_id"], "reason": "scripted rejection"})
                continue
            ids = self.stored.setdefault(e["device_id"], [])
            if e["event_id"] in ids:
                dup += 1
            else:
                ids.append(e["event_id"])
                accepted += 1
        return accepted, dup, rejected

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: many requests per connection
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                headers = {}
                for line in head.decode().split("\r\n")[1:]:
                    if ":" in line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.bodies.append(body)
                self.times.append(time.monotonic())
                step = self.script.pop(0) if self.script else self.default
                store = self._store_dex if path == "/v1/dex" else self._store
                if step == "drop_after_store":
                    with contextlib.suppress(ValueError):
                        store(body)
                    writer.close()
                    return
                if step == "drop":
                    writer.close()
                    return
                if step in ("429", "503", "500"):
                    await self._answer(writer, int(step), {"error": {"code": "scripted", "message": step}},
                                       {"Retry-After": self.retry_after})
                    continue
                if step == "400":
                    await self._answer(writer, 400, {"error": {"code": "invalid_body", "message": "scripted"}})
                    continue
                if path == "/v1/dex":
                    self._store_dex(body)
                    await self._answer(writer, 200, {"accepted": 1})
                    continue
                try:
                    accepted, dup, rejected = self._store(body)
                except (ValueError, KeyError, TypeError):
                    await self._answer(writer, 400, {"error": {"code": "invalid_json", "message": "not an event batch"}})
                    continue
                await self._answer(writer, 200, {"accepted": accepted, "duplicates": dup, "rejected": rejected})
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(obj).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n{extra}\r\n".encode() + payload)
        await writer.drain()
