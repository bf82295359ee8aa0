"""The collector's whole request path in one process, without sockets: CPU per request.

    python bench/collector_asgi.py                          # 4,000 requests of 1 event, 64 at a time
    python bench/collector_asgi.py --requests 4000 --batch 10

Builds the real server app (``vendwatch serve --roles collector``: authentication and its
cache, rate limits, parsing, validation, group commit with fsync to a fresh embedded
log, metrics, the response) and calls it as uvicorn would, ``--concurrency`` requests at
a time on uvloop, from ``--devices`` registered devices (their tokens cached after the
warm-up, as for a device posting more often than ``ingest.auth_cache_s``). What HTTP
parsing and the socket add is what ``bench/ingest.py`` measures beside a parse-only app;
this measures what is vendwatch's own per request, the fixed cost that dominates when
machines post one or a few events at a time.

Printed: process CPU and wall time per request over the measured requests (after a
warm-up of one request per device). On a shared machine CPU time swings; for a figure
that does not, count instructions with valgrind for two request counts and divide the
difference (the start-up cancels out)::

    valgrind --tool=callgrind python bench/collector_asgi.py --requests 1000
    valgrind --tool=callgrind python bench/collector_asgi.py --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vendwatch.api.server import build_app  # noqa: E402
from vendwatch.config import load_settings  # noqa: E402
from vendwatch.runtime import Context  # noqa: E402

Scope = dict[str, Any]


def _scope(token: str, size: int) -> Scope:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/events", "raw_path": b"/v1/events", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"collector"), (b"content-type", b"application/json"),
                        (b"authorization", b"Bearer " + token.encode()), (b"content-length", str(size).encode())],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}


def _bodies(tag: str, n: int, batch: int, devices: int, tokens: list[str]) -> list[tuple[str, bytes]]:
    now = time.time()
    out = []
    for k in range(n):
        d = k % devices
        evs = [{"event_id": f"{tag}{k}-{j}", "device_id": f"VM-{d:05d}", "type": "telemetry",
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now)),
                "data": {"cabinet_temp_c": 4.0 + j % 3, "door_open": False}} for j in range(batch)]
        out.append((tokens[d], msgspec.json.encode({"events": evs})))
    return out


async def _lifespan(app: Any, kind: str, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
    await inbox.put({"type": f"lifespan.{kind}"})
    msg = await outbox.get()
    if not msg["type"].endswith(".complete"):
        raise SystemExit(f"app {kind} failed: {msg}")


async def run(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="vw-asgi-"))
    ctx = Context(load_settings(overrides={"data_dir": str(data)}, environ={}))
    app = build_app(ctx, ["collector"])
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    life = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    await _lifespan(app, "startup", inbox, outbox)
    with ctx.state.db.transaction() as tx:
        tokens = [ctx.state.add_device(f"VM-{i:05d}", f"SITE-{i % 20:02d}", tx=tx) for i in range(args.devices)]
    statuses: dict[int, int] = {}

    async def one(token: str, body: bytes) -> None:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                statuses[msg["status"]] = statuses.get(msg["status"], 0) + 1

        await app(_scope(token, len(body)), receive, send)

    async def worker(items: list[tuple[str, bytes]]) -> None:
        for token, body in items:
            await one(token, body)

    c = args.concurrency
    warm = _bodies("warm-", args.devices, args.batch, args.devices, tokens)
    await asyncio.gather(*(worker(warm[i::c]) for i in range(c)))
    todo = _bodies("run-", args.requests, args.batch, args.devices, tokens)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(todo[i::c]) for i in range(c)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = len(todo)
    print(f"{n} requests of {args.batch} event(s), {c} at a time, {args.devices} devices:"
          f" CPU {cpu / n * 1e6:.1f} µs per request ({cpu / n / args.batch * 1e6:.1f} per event),"
          f" wall {wall / n * 1e6:.1f} µs per request; answers {statuses}")
    await _lifespan(app, "shutdown", inbox, outbox)
    await life


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=4000, help="measured requests [4000]")
    p.add_argument("--batch", type=int, default=1, help="events per request [1]")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight [64]")
    p.add_argument("--devices", type=int, default=200, help="registered devices [200]")
    uvloop.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
