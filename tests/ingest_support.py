"""Helpers for collector tests: a real app (Starlette + lifespan) over a fresh data dir."""

from __future__ import annotations

import gzip
import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvicorn

from vendwatch.api.server import build_app
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.sqlite import SqliteLog
from vendwatch.config import Settings, load_settings
from vendwatch.events import decode_stored
from vendwatch.runtime import Context

_seq = itertools.count()


def settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: defaults + dotted overrides, never the caller's environment."""
    return load_settings(overrides={"data_dir": str(data_dir), **overrides}, environ={})


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event(device_id: str, type_: str = "heartbeat", data: dict[str, Any] | None = None,
          *, event_id: str | None = None, occurred_at: datetime | str | None = None, **extra: Any) -> dict[str, Any]:
    """A valid device event (override any field)."""
    at = occurred_at or datetime.now(UTC)
    return {
        "event_id": event_id or f"e-{next(_seq)}-{uuid.uuid4().hex[:8]}",
        "device_id": device_id,
        "type": type_,
        "occurred_at": at if isinstance(at, str) else iso(at),
        "data": {"uptime_s": 10} if data is None and type_ == "heartbeat" else (data or {}),
        **extra,
    }


def ago(**kw: float) -> datetime:
    return datetime.now(UTC) - timedelta(**kw)


class Harness:
    """A running collector app with registered devices."""

    def __init__(self, ctx: Context, client: httpx.Client) -> None:
        self.ctx = ctx
        self.client = client
        self.tokens: dict[str, str] = {}

    def add_device(self, device_id: str, site_id: str | None = "SITE-1") -> str:
        self.tokens[device_id] = self.ctx.state.add_device(device_id, site_id)
        return self.tokens[device_id]

    def post(self, device_id: str | None, events: list[dict[str, Any]] | None = None, *, body: bytes | None = None,
             token: str | None = None, headers: dict[str, str] | None = None, gzip_body: bool = False) -> Any:
        h = {"content-type": "application/json", **(headers or {})}
        tok = token if token is not None else self.tokens.get(device_id or "", "")
        if tok:
            h["authorization"] = f"Bearer {tok}"
        raw = body if body is not None else msgspec.json.encode({"events": events or []})
        if gzip_body:
            raw = gzip.compress(raw)
            h["content-encoding"] = "gzip"
        return self.client.post("/v1/events", content=raw, headers=h)

    @property
    def log(self) -> SqliteLog:
        lg = self.ctx.log
        assert isinstance(lg, SqliteLog)
        return lg

    def stored(self, topic: str = EVENTS) -> list[bytes]:
        return read_all(self.log, topic)

    def stored_events(self) -> list[Any]:
        return [decode_stored(v) for v in self.stored(EVENTS)]

    def quarantine(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(v) for v in self.stored(REJECTED)]


def read_all(log: SqliteLog, topic: str) -> list[bytes]:
    out: list[bytes] = []
    begins = log.begin_offsets(topic)
    for p in range(log.partitions(topic)):
        off = begins[p]
        while True:
            recs = log.read(topic, p, off, 5000)
            if not recs:
                break
            out.extend(r.value for r in recs)
            off = recs[-1].offset + 1
    return out


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a free loopback port (in a thread); yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not t.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(15)


@contextmanager
def running(data_dir: Path, roles: tuple[str, ...] = ("collector", "console"), sink: Any = None,
            **overrides: Any) -> Iterator[Harness]:
    """Start the real app (lifespan included) under uvicorn; yields a Harness with an HTTP client.

    ``sink`` replaces the collector's log sink (to make the log fail on purpose).
    """
    ctx = Context(settings(data_dir, **overrides))
    app = build_app(ctx, list(roles))
    if sink is not None:
        ctx.extras["collector"].start(sink=sink)
    try:
        with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Harness(ctx, client)
    finally:
        ctx.close()


def inject_into_role_processes(monkeypatch: Any, where: Path, code: str) -> None:
    """Run ``code`` at the start of every Python process started from now on (the role
    processes of ``serve``): a ``sitecustomize`` module first on their PYTHONPATH. The
    child-process counterpart of ``monkeypatch.setattr`` for fault injection."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", str(where) + os.pathsep + os.environ.get("PYTHONPATH", ""))
