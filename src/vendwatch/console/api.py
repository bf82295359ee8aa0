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
* ``GET /v1/fleet/sites``: every site id with its device count (the site filter).
* ``GET /v1/fleet/map``: machines with a GPS fix (position, site, connectivity class) and
  the configured map tiles (none by default).
* ``GET /v1/fleet/thresholds``: telemetry thresholds of the loaded rules (chart lines).
* ``GET /v1/stats/history``: events/s samples taken by this server (every few seconds,
  the last hour) and incidents opened per hour over the last 24 hours.
* ``GET /v1/fleet/incident-refs?id=..&id=..``: the ServiceNow ticket (number, state) of
  each listed incident (<= 500 ids), for the incident list's ServiceNow column.
* ``GET /v1/lake/jobs``: the scheduled ETL and lake maintenance: interval, last run,
  last error, next run (what the reports page shows above the reports).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
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

log = logging.getLogger("vendwatch.console")

MAX_PAGE = 500
MAX_EVENTS = 200
MAX_SEARCH = 200
STATS_TTL_S = 3.0  # how long one fleet summary serves every console
HISTORY_SAMPLES = 720  # events/s samples kept in memory (an hour at one per 5 s)
HISTORY_EVERY_S = 5.0
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


class RateHistory:
    """Events/s over time, sampled by a small background thread of this server (not per
    console): the overview's chart has data even when nobody had it open."""

    def __init__(self, ctx: Context, clock: Callable[[], float], every_s: float = HISTORY_EVERY_S) -> None:
        self.ctx, self.clock, self.every_s = ctx, clock, every_s
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=HISTORY_SAMPLES)
        self.meters = {EVENTS: activity.RateMeter(), REJECTED: activity.RateMeter()}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vw-console-history", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self.ctx.stop.wait(self.every_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a missed sample is a gap in a chart, never a crash
                log.debug("rate sample failed", exc_info=True)

    def sample(self) -> None:
        rates = []
        for topic in (EVENTS, REJECTED):
            end, _ = activity.log_position(self.ctx.log, topic)
            rates.append(self.meters[topic].observe(end))
        if rates[0] is not None and rates[1] is not None:
            self.samples.append((self.clock(), rates[0], rates[1]))


def incidents_per_hour(ctx: Context, now: float, hours: int = 24) -> list[list[float]]:
    """[[hour start, incidents opened]] over the last ``hours`` (missing hours are 0)."""
    start = (now // 3600 - hours + 1) * 3600
    try:
        rows = ctx.state.db.query(
            "SELECT CAST(opened_at / 3600 AS INTEGER), count(*) FROM incidents WHERE opened_at >= ? GROUP BY 1",
            [start])
    except Exception:  # noqa: BLE001 - the incident tables are created on first use: none opened yet
        rows = []
    counts = {int(h) * 3600: int(n) for h, n in rows}
    return [[start + i * 3600, counts.get(int(start + i * 3600), 0)] for i in range(hours)]


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
    history = RateHistory(ctx, clock)
    history.start()
    cached_thresholds: list[list[dict[str, Any]]] = []

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
        now = clock()
        rows = await run_in_threadpool(fleet.list_devices, ctx.state.db, f, now)
        # the total is counted only on the first page: later pages reuse the one the page showed
        total = await run_in_threadpool(fleet.count_devices, ctx.state.db, f, now) if not f.after else None
        return _ok({"devices": rows, "total": total, "next": rows[-1]["device_id"] if len(rows) == limit else None})

    @require(ctx, "viewer")
    async def sites(request: Request) -> Response:
        return _ok({"sites": await run_in_threadpool(fleet.list_sites, ctx.state.db)})

    @require(ctx, "viewer")
    async def fleet_map(request: Request) -> Response:
        body = await run_in_threadpool(fleet.map_points, ctx.state.db, clock())
        c = ctx.settings.console
        body["tiles"] = {"url": c.map_tiles_url, "attribution": c.map_attribution} if c.map_tiles_url else None
        return _ok(body)

    @require(ctx, "viewer")
    async def thresholds(request: Request) -> Response:
        if not cached_thresholds:
            from vendwatch.console.thresholds import telemetry_thresholds

            cached_thresholds.append(await run_in_threadpool(telemetry_thresholds, ctx.settings))
        return _ok({"thresholds": cached_thresholds[0]})

    @require(ctx, "viewer")
    async def incident_refs(request: Request) -> Response:
        ids = request.query_params.getlist("id")
        if len(ids) > MAX_PAGE:
            return _bad("bad_id", f"at most {MAX_PAGE} ids")

        def read() -> dict[str, Any]:
            from vendwatch.incidents.store import IncidentStore

            store = IncidentStore(ctx.state)
            out = {}
            for iid in ids:
                ref = store.ref(None, iid, "servicenow")
                if ref is not None:
                    out[iid] = {"number": ref["number"], "ref_id": ref["ref_id"], "state": ref["state"]}
            return out

        try:
            refs = await run_in_threadpool(read)
        except Exception:  # noqa: BLE001 - no incident tables yet: no tickets either
            refs = {}
        return _ok({"refs": refs})

    @require(ctx, "viewer")
    async def stats_history(request: Request) -> Response:
        now = clock()
        opened = await run_in_threadpool(incidents_per_hour, ctx, now)
        return _ok({"events": [list(s) for s in history.samples], "every_s": history.every_s,
                    "incidents_opened": opened, "now": now})

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

    @require(ctx, "viewer")
    async def lake_jobs(request: Request) -> Response:
        from vendwatch.lake.jobs import JOBS, intervals, read_status

        status = await run_in_threadpool(read_status, ctx)
        every = intervals(ctx.settings)
        jobs = {name: msgspec.structs.asdict(status[name]) if name in status else
                {"interval_s": every[name], "runs": 0, "next_at": None} for name in JOBS}
        # the scheduler runs in the lake-jobs role: say so when this server does not run it
        return _ok({"jobs": jobs, "scheduled": "lake-jobs" in ctx.settings.server.roles, "now": clock()})

    return [
        Route("/v1/whoami", whoami, methods=["GET"]),
        Route("/v1/lake/jobs", lake_jobs, methods=["GET"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/v1/stats/history", stats_history, methods=["GET"]),
        Route("/v1/fleet/sites", sites, methods=["GET"]),
        Route("/v1/fleet/map", fleet_map, methods=["GET"]),
        Route("/v1/fleet/thresholds", thresholds, methods=["GET"]),
        Route("/v1/fleet/incident-refs", incident_refs, methods=["GET"]),
        Route("/v1/fleet/devices", devices, methods=["GET"]),
        # :path so ids containing "/" (allowed by the protocol) still route
        Route("/v1/fleet/devices/{device_id:path}", device, methods=["GET"]),
        Route("/v1/devices/{device_id:path}/events", device_events, methods=["GET"]),
    ]
