"""Read endpoints the console needs (all need a viewer token).

* ``GET /v1/whoami``: the token's name and role (the login page checks a token with it).
* ``GET /v1/stats``: fleet summary: devices by connectivity class, sites, event and
  rejection rates, stage lag.
* ``GET /v1/fleet/devices``: registered devices joined with live state, filtered by
  ``site_id``, ``status`` (connectivity class), ``q`` (search), ``faulted=1``; paged by
  ``after`` (the ``next`` of the previous page) and ``limit`` (<= 500).
* ``GET /v1/fleet/devices/{device_id}``: one device with its state document, stock
  levels per slot and connectivity class.
* ``GET /v1/devices/{device_id}/events``: its newest events from the log (``limit`` <=
  200, ``type`` repeatable), scanning a bounded part of its partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vendwatch import events as ev
from vendwatch.api.auth import error_response, json_response, require
from vendwatch.api.params import ParamError, check_text, int_param, text_param
from vendwatch.bus.base import EVENTS, REJECTED
from vendwatch.console import activity, fleet
from vendwatch.runtime import Context

MAX_PAGE = 500
MAX_EVENTS = 200
MAX_SEARCH = 200
STATS_TTL_S = 3.0  # how long one fleet summary serves every console
_BOOLS = {"1": True, "true": True, "0": False, "false": False, "": False}

# API answers describe live state: never cache them, never sniff them as HTML
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _ok(body: Any) -> Response:
    return json_response(body, headers=_NO_STORE)


def _bad(code: str, message: str) -> Response:
    return error_response(400, code, message, _NO_STORE)


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    return int_param(request.query_params, name, default, lo, hi)


class _SummaryCache:
    """The fleet summary is one scan of the registry (~1 µs per device): several consoles
    polling at once share one scan per ``ttl_s`` instead of each paying for it."""

    def __init__(self, ttl_s: float = STATS_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._at = float("-inf")
        self._value: dict[str, Any] = {}

    def get(self, ctx: Context, now: float) -> dict[str, Any]:
        if not 0 <= now - self._at < self.ttl_s:
            self._value, self._at = fleet.site_summary(ctx.state.db, now), now
        return dict(self._value)


def fleet_stats(ctx: Context, meters: dict[str, activity.RateMeter], now: float,
                summary: _SummaryCache | None = None) -> dict[str, Any]:
    """The overview's numbers: connectivity counts, sites, rates, lag."""
    out = summary.get(ctx, now) if summary is not None else fleet.site_summary(ctx.state.db, now)
    for topic in (EVENTS, REJECTED):
        end, retained = activity.log_position(ctx.log, topic)
        out[f"{topic}_retained"] = retained
        out[f"{topic}_per_s"] = meters[topic].observe(end)
    rows = ctx.state.db.query("SELECT name, data FROM checkpoints WHERE name LIKE 'offsets:%' ORDER BY name")
    out["stages"] = activity.stage_lag(ctx.log, [(n, bytes(d)) for n, d in rows])
    out["generated_at"] = now
    # how the classes are judged, so a page can explain its numbers
    out["rules"] = {"online_intervals": fleet.ONLINE_INTERVALS, "stale_intervals": fleet.STALE_INTERVALS,
                    "default_heartbeat_s": fleet.DEFAULT_HEARTBEAT_S}
    return out


def routes(ctx: Context, clock: Callable[[], float] = time.time) -> list[Route]:
    """The console's read endpoints; ``clock`` gives "now" for connectivity classes."""
    meters = {EVENTS: activity.RateMeter(), REJECTED: activity.RateMeter()}
    summary = _SummaryCache()

    @require(ctx, "viewer")
    async def whoami(request: Request) -> Response:
        p = request.state.principal
        return _ok({"name": p.name, "role": p.role})

    @require(ctx, "viewer")
    async def stats(request: Request) -> Response:
        return _ok(await run_in_threadpool(fleet_stats, ctx, meters, clock(), summary))

    @require(ctx, "viewer")
    async def devices(request: Request) -> Response:
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in fleet.CLASSES:
            return _bad("bad_status", f"status must be one of {', '.join(fleet.CLASSES)}, got {status!r}")
        try:
            limit = _int_param(request, "limit", 100, 1, MAX_PAGE)
        except ParamError as e:
            return _bad("bad_limit", str(e))
        faulted = q.get("faulted", "0")
        if faulted not in _BOOLS:
            return _bad("bad_faulted", f"faulted must be 1, 0, true or false, got {faulted!r}")
        text = q.get("q") or None
        try:
            if text is not None:
                check_text("q", text, MAX_SEARCH)
        except ParamError as e:
            return _bad("bad_q", str(e))
        try:
            site_id, after = text_param(q, "site_id"), text_param(q, "after", "")
        except ParamError as e:
            return _bad("bad_request", str(e))
        f = fleet.DeviceFilter(site_id=site_id or None, status=status, q=text,
                               faulted=_BOOLS[faulted], after=after or "", limit=limit)
        rows = await run_in_threadpool(fleet.list_devices, ctx.state.db, f, clock())
        return _ok({"devices": rows, "next": rows[-1]["device_id"] if len(rows) == limit else None})

    @require(ctx, "viewer")
    async def device(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        view = await run_in_threadpool(fleet.get_device, ctx.state.db, device_id, clock())
        if view is None:
            return error_response(404, "not_found", f"no device {device_id}", _NO_STORE)
        return _ok(view)

    @require(ctx, "viewer")
    async def device_events(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        try:
            limit = _int_param(request, "limit", 50, 1, MAX_EVENTS)
        except ParamError as e:
            return _bad("bad_limit", str(e))
        types = frozenset(request.query_params.getlist("type"))
        unknown = types - set(ev.PAYLOADS)
        if unknown:
            return _bad("bad_type", f"unknown event type(s) {', '.join(sorted(unknown))}; known: {', '.join(ev.PAYLOADS)}")
        exists = await run_in_threadpool(ctx.state.get_device, device_id)
        if exists is None:
            return error_response(404, "not_found", f"no device {device_id}", _NO_STORE)
        body = await run_in_threadpool(lambda: activity.recent_events(ctx.log, device_id, limit=limit, types=types))
        return _ok(body)

    return [
        Route("/v1/whoami", whoami, methods=["GET"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/v1/fleet/devices", devices, methods=["GET"]),
        # :path so ids containing "/" (allowed by the protocol) still route
        Route("/v1/fleet/devices/{device_id:path}", device, methods=["GET"]),
        Route("/v1/devices/{device_id:path}/events", device_events, methods=["GET"]),
    ]
