"""A PagerDuty Events API v2 emulator (``POST /v2/enqueue``).

Validates like the real endpoint (routing_key of 32 characters, event_action,
trigger payload summary/source/severity) and answers 202 ``{"status": "success",
"message": "Event processed", "dedup_key": ...}`` or 400 ``{"status": "invalid event",
"message": "Event object is invalid", "errors": [...]}``. Keeps one alert per dedup_key
(triggered / acknowledged / resolved). Faults as in ``vendwatch.emulators.base``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vendwatch.emulators.base import Faults, ThreadedServer, apply_delay, control_routes

_SEVERITIES = ("critical", "error", "warning", "info")


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status, media_type="application/json", headers=headers)


@dataclass
class PagerDutyEmulator:
    clock: Callable[[], float] = time.time
    faults: Faults = field(default_factory=Faults)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.faults.clock = self.clock
        self.app = Starlette(routes=[Route("/v2/enqueue", self._enqueue, methods=["POST"]),
                                     *control_routes(self.faults)])

    @staticmethod
    def validate(ev: Any) -> list[str]:
        if not isinstance(ev, dict):
            return ["Event object must be a JSON object"]
        errs = []
        if not isinstance(ev.get("routing_key"), str) or len(ev["routing_key"]) != 32:
            errs.append("'routing_key' must be 32 characters")
        action = ev.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errs.append("'event_action' must be one of trigger, acknowledge, resolve")
        if action in ("acknowledge", "resolve") and not ev.get("dedup_key"):
            errs.append("'dedup_key' is required for acknowledge and resolve")
        if action == "trigger":
            p = ev.get("payload")
            if not isinstance(p, dict):
                errs.append("'payload' is missing or not an object")
            else:
                if not p.get("summary"):
                    errs.append("'payload.summary' is missing or blank")
                if not p.get("source"):
                    errs.append("'payload.source' is missing or blank")
                if p.get("severity") not in _SEVERITIES:
                    errs.append("'payload.severity' must be one of critical, error, warning, info")
        if isinstance(ev.get("dedup_key"), str) and len(ev["dedup_key"]) > 255:
            errs.append("'dedup_key' is too long")
        return errs

    async def _enqueue(self, request: Request) -> Response:
        raw = await request.body()
        fault = self.faults.take("POST", "/v2/enqueue", raw.decode(errors="replace"))
        if fault is not None:
            await apply_delay(fault)
            if fault.status >= 400:
                headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else None
                self.faults.log("POST", "/v2/enqueue", "", fault.status)
                return _json({"status": "throttle event" if fault.status == 429 else "error",
                              "message": fault.message}, fault.status, headers)
        try:
            ev = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            self.faults.log("POST", "/v2/enqueue", "", 400)
            return _json({"status": "invalid event", "message": "Event object is invalid",
                          "errors": ["Request body is not valid JSON"]}, 400)
        errs = self.validate(ev)
        if errs:
            self.faults.log("POST", "/v2/enqueue", "", 400, ev)
            return _json({"status": "invalid event", "message": "Event object is invalid", "errors": errs}, 400)
        key = ev.get("dedup_key") or secrets.token_hex(16)
        with self._lock:
            self.events.append({**ev, "dedup_key": key, "received_at": self.clock()})
            alert = self.alerts.get(key)
            if ev["event_action"] == "trigger":
                if alert is None or alert["status"] == "resolved":
                    self.alerts[key] = {"dedup_key": key, "status": "triggered", "summary": ev["payload"]["summary"],
                                        "severity": ev["payload"]["severity"], "events": 1}
                else:
                    alert["events"] += 1
            elif alert is not None and alert["status"] != "resolved":
                alert["status"] = "acknowledged" if ev["event_action"] == "acknowledge" else "resolved"
        self.faults.log("POST", "/v2/enqueue", "", 202, ev)
        return _json({"status": "success", "message": "Event processed", "dedup_key": key}, 202)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> ThreadedServer:
        return ThreadedServer(self.app, host, port).start()
