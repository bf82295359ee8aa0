"""HTTP: ``POST /v1/sql`` (operator) and ``GET /v1/reports/{name}`` (viewer)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vendwatch.api.auth import error_response, json_response, require
from vendwatch.api.params import int_param
from vendwatch.config import Settings
from vendwatch.lake import formats
from vendwatch.lake.query import (
    QueryError,
    QueryRefused,
    QueryResult,
    QueryTimeout,
    QueryTooLarge,
    QueryUnavailable,
)
from vendwatch.runtime import Context

if TYPE_CHECKING:
    from vendwatch.lake.sandbox import QueryPool


class SqlRequest(msgspec.Struct, forbid_unknown_fields=True):
    sql: str
    as_of: str | int | None = None  # snapshot id or ISO 8601 timestamp
    limit: int | None = None
    timeout_s: float | None = None
    format: str = "json"


_MEDIA = {"json": "application/json", "csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def _respond(res: QueryResult, fmt: str, filename: str) -> Response:
    if fmt == "csv":
        body = formats.to_csv(res.table)
    elif fmt == "parquet":
        body = formats.to_parquet(res.table)
    else:
        return Response(formats.to_json(res.table, truncated=res.truncated, snapshots=res.snapshots),
                        media_type=_MEDIA["json"])
    headers = {"Content-Disposition": f'attachment; filename="{filename}.{fmt}"',
               "X-Vendwatch-Truncated": str(res.truncated).lower()}
    return Response(body, media_type=_MEDIA[fmt], headers=headers)


def _query_error(e: QueryError) -> Response:
    if isinstance(e, QueryRefused):
        return error_response(403, "refused", str(e))
    if isinstance(e, QueryTimeout):
        return error_response(408, "timeout", str(e))
    if isinstance(e, QueryTooLarge):
        return error_response(413, "too_large", str(e))
    if isinstance(e, QueryUnavailable):
        return error_response(503, "unavailable", str(e), headers={"retry-after": "5"})
    return error_response(400, "query_error", str(e))


class _Runner:
    """Where queries run: memory-capped worker processes (``lake.sql_worker_memory_mb`` > 0)
    or, when that is 0, this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: QueryPool | None = None
        if settings.lake.sql_worker_memory_mb > 0:
            from vendwatch.lake.sandbox import QueryPool

            self.pool = QueryPool(settings, settings.lake.sql_max_concurrent)

    def sql(self, sql: str, *, limit: int | None, timeout_s: float, as_of: Any) -> QueryResult:
        if self.pool is not None:
            return self.pool.sql(sql, limit=limit, timeout_s=timeout_s, as_of=as_of)
        from vendwatch.lake.query import LakeSQL

        return LakeSQL(self.settings).run(sql, limit=limit, timeout_s=timeout_s, as_of=as_of)

    def report(self, name: str, **kwargs: Any) -> QueryResult:
        if self.pool is not None:
            return self.pool.report(name, **kwargs)
        from vendwatch.lake.reports import run_report

        return run_report(self.settings, name, **kwargs)

    def dex_report(self, name: str, **kwargs: Any) -> QueryResult:
        if self.pool is not None:
            return self.pool.dex_report(name, **kwargs)
        from vendwatch.lake.dex_reports import run_dex_report

        return run_dex_report(self.settings, name, **kwargs)


def _as_of(v: str | int | None) -> Any:
    from datetime import datetime

    if v is None or isinstance(v, int):
        return v
    if v.isdigit():
        return int(v)
    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _dates(q: Any, *names: str) -> list[date | None] | Response:
    """The named query parameters as dates (absent: None), or the 400 to send."""
    try:
        return [date.fromisoformat(q[n]) if n in q else None for n in names]
    except ValueError as e:
        return error_response(400, "bad_request", f"query parameters: {e} (dates are YYYY-MM-DD)")


def routes(ctx: Context) -> list[Route]:
    """Routes of the lake API (mounted by the console role)."""
    # each query may take lake.sql_memory_limit: bound how many run at once
    slots = asyncio.Semaphore(ctx.settings.lake.sql_max_concurrent)
    runner = _Runner(ctx.settings)
    ctx.extras["sql_runner"] = runner

    @require(ctx, "operator")
    async def post_sql(request: Request) -> Response:
        try:
            req = msgspec.json.decode(await request.body(), type=SqlRequest)
        except msgspec.DecodeError as e:
            return error_response(400, "bad_request", f"body: {e}")
        if req.format not in _MEDIA:
            return error_response(400, "bad_request", f"format: one of {', '.join(_MEDIA)}, got {req.format!r}")
        if req.limit is not None and req.limit < 0:
            return error_response(400, "bad_request", "limit: must be >= 0")
        # a request may ask for fewer rows than lake.sql_row_limit, never more
        limit = min(req.limit, ctx.settings.lake.sql_row_limit) if req.limit is not None else None
        try:
            as_of = _as_of(req.as_of)
        except ValueError:
            return error_response(400, "bad_request", f"as_of: not a snapshot id or ISO 8601 timestamp: {req.as_of!r}")
        cfg = ctx.settings.lake
        timeout = min(req.timeout_s or cfg.sql_timeout_s, cfg.sql_timeout_s)  # a client may only shorten it
        try:
            async with slots:
                res = await run_in_threadpool(runner.sql, req.sql, limit=limit, timeout_s=timeout, as_of=as_of)
        except QueryError as e:
            return _query_error(e)
        return _respond(res, req.format, "query")

    @require(ctx, "viewer")
    async def get_report(request: Request) -> Response:
        from vendwatch.lake.dex_reports import DEX_REPORTS
        from vendwatch.lake.reports import REPORTS

        name = request.path_params["name"]
        if name in DEX_REPORTS:
            return await _dex_report(request, name)
        if name not in REPORTS:
            return error_response(404, "not_found", f"no report {name!r}; available: {', '.join([*REPORTS, *DEX_REPORTS])}")
        q = request.query_params
        fmt = q.get("format", "json")
        if fmt not in _MEDIA:
            return error_response(400, "bad_request", f"format: one of {', '.join(_MEDIA)}, got {fmt!r}")
        row_limit = ctx.settings.lake.sql_row_limit
        try:
            since = date.fromisoformat(q["since"]) if "since" in q else None
            until = date.fromisoformat(q["until"]) if "until" in q else None
            limit = int_param(q, "limit", row_limit, 1, row_limit)
        except ValueError as e:
            return error_response(400, "bad_request", f"query parameters: {e} (dates are YYYY-MM-DD)")
        try:
            async with slots:
                res = await run_in_threadpool(runner.report, name, since=since, until=until, limit=limit)
        except QueryError as e:
            return _query_error(e)
        return _respond(res, fmt, name)

    async def _dex_report(request: Request, name: str) -> Response:
        from vendwatch.lake.dex_reports import food_safety_limits

        q = request.query_params
        fmt = q.get("format", "json")
        if fmt not in _MEDIA:
            return error_response(400, "bad_request", f"format: one of {', '.join(_MEDIA)}, got {fmt!r}")
        dates = _dates(q, "since", "until", "visit")
        if isinstance(dates, Response):
            return dates
        since, until, visit = dates
        site = q.get("site") or None

        def run() -> QueryResult:
            limits = food_safety_limits(ctx.state) if name == "food-safety" else None  # the registry is here
            return runner.dex_report(name, since=since, until=until, site=site, limits=limits, visit=visit)

        try:
            async with slots:
                res = await run_in_threadpool(run)
        except QueryError as e:
            return _query_error(e)
        return _respond(res, fmt, name)

    async def list_reports(request: Request) -> Response:
        from vendwatch.lake.dex_reports import DEX_REPORTS
        from vendwatch.lake.reports import REPORTS

        return json_response({"reports": [{"name": r.name, "title": r.title} for r in REPORTS.values()]
                              + [{"name": n, "title": t[0][:1].upper() + t[0][1:]} for n, t in DEX_REPORTS.items()]})

    return [
        Route("/v1/sql", post_sql, methods=["POST"]),
        Route("/v1/reports", require(ctx, "viewer")(list_reports), methods=["GET"]),
        Route("/v1/reports/{name}", get_report, methods=["GET"]),
    ]
