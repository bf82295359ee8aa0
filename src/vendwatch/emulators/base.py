"""Shared plumbing of the SaaS emulators: a threaded uvicorn server on a loopback port,
injectable faults, and a request log.

Faults are matched in order; each has an optional method/path filter, a status (with
``Retry-After`` for 429), an optional delay (a timeout when longer than the client's),
a remaining count, and an expiry on the emulator's clock (so tests can say "503 for
ten virtual minutes"). ``/_emulator/faults`` and ``/_emulator/requests`` expose them
over HTTP for out-of-process use (``vendwatch dev servicenow-emulator``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Fault:
    status: int = 503
    method: str | None = None  # None: any
    path_contains: str | None = None
    count: int | None = None  # None: until removed or expired
    until: float | None = None  # emulator clock
    retry_after: float | None = None
    delay_s: float = 0.0  # sleep before answering (timeouts)
    body_contains: str | None = None  # only requests whose body contains this text
    message: str = "Injected fault"

    def matches(self, method: str, path: str, body: str, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return False
        if self.count is not None and self.count <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.path_contains and self.path_contains not in path:
            return False
        return not (self.body_contains and self.body_contains not in body)


@dataclass
class Logged:
    at: float
    method: str
    path: str
    query: str
    status: int
    body: Any = None


@dataclass
class Faults:
    """Thread-safe list of active faults and a log of every request answered."""

    clock: Callable[[], float] = time.time
    faults: list[Fault] = field(default_factory=list)
    requests: list[Logged] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def take(self, method: str, path: str, body: str) -> Fault | None:
        now = self.clock()
        with self.lock:
            for f in self.faults:
                if f.matches(method, path, body, now):
                    if f.count is not None:
                        f.count -= 1
                    return f
        return None

    def log(self, method: str, path: str, query: str, status: int, body: Any = None) -> None:
        with self.lock:
            self.requests.append(Logged(self.clock(), method, path, query, status, body))

    def calls(self, method: str | None = None, path_contains: str = "") -> list[Logged]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method) and path_contains in r.path]


def control_routes(faults: Faults) -> list[Route]:
    """``/_emulator/faults`` (GET, POST a Fault as JSON, DELETE) and ``/_emulator/requests``."""

    async def faults_ep(request: Request) -> Response:
        if request.method == "POST":
            try:
                faults.add(msgspec.convert(msgspec.json.decode(await request.body()), Fault))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                return Response(msgspec.json.encode({"error": str(e)}), 400, media_type="application/json")
            return Response(status_code=204)
        if request.method == "DELETE":
            faults.clear()
            return Response(status_code=204)
        with faults.lock:
            body = [asdict(f) for f in faults.faults]
        return Response(msgspec.json.encode(body), media_type="application/json")

    async def requests_ep(request: Request) -> Response:
        with faults.lock:
            body = [asdict(r) for r in faults.requests]
        return Response(msgspec.json.encode(body), media_type="application/json")

    return [Route("/_emulator/faults", faults_ep, methods=["GET", "POST", "DELETE"]),
            Route("/_emulator/requests", requests_ep, methods=["GET"])]


async def apply_delay(fault: Fault) -> None:
    if fault.delay_s > 0:
        await asyncio.sleep(fault.delay_s)


class ThreadedServer:
    """Run an ASGI app with uvicorn in a daemon thread on a loopback port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=f"emulator-{self.port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()
