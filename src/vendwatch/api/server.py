"""The ASGI app and its lifecycle: HTTP routes of the roles + background components."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from vendwatch import __version__
from vendwatch.api.auth import error_response, json_response
from vendwatch.errors import Unavailable
from vendwatch.procs import MergedRegistry, RoleProcesses, child_roles
from vendwatch.runtime import Context, Supervisor, build_components, build_routes
from vendwatch.stage import stage_problems

log = logging.getLogger("vendwatch.server")


def build_app(ctx: Context, roles: list[str]) -> Starlette:
    routes = build_routes(ctx, roles)
    # server.role_processes: the stages run in child processes of their own (vendwatch.procs)
    in_children = child_roles(roles) if ctx.settings.server.role_processes else []
    components = build_components(ctx, [r for r in roles if r not in in_children], also_known=in_children)
    sup = Supervisor(ctx, components)
    procs = RoleProcesses(ctx.settings, in_children) if in_children else None
    if procs is not None:
        ctx.extras["role_processes"] = procs

    async def livez(request: Request) -> Response:
        # liveness: the process and its event loop answer; no dependency is checked, so a
        # supervisor never restarts a healthy process for an outage of the log or database
        return json_response({"status": "ok", "version": __version__})

    async def healthz(request: Request) -> Response:
        # readiness: route traffic here when the log and state store answer
        def backends() -> None:
            ctx.state.db.one("SELECT 1")
            ctx.log.partitions("events")

        try:  # off the event loop: a database that is away answers only after a timeout
            await run_in_threadpool(backends)
        except Exception as e:
            return json_response({"status": "unavailable", "error": str(e)}, 503)
        collector = ctx.extras.get("collector")
        if collector is not None and not collector.healthy():
            return json_response({"status": "unavailable", "error": "the collector's commit thread is not running"}, 503)
        if (problem := ctx.log.write_problem()) is not None:
            return json_response({"status": "unavailable", "error": problem}, 503)
        stuck = stage_problems(ctx)
        if stuck:
            return json_response({"status": "degraded", "error": "stages are stuck or behind", "stages": stuck}, 503)
        return json_response({"status": "ok", "version": __version__, "roles": roles})

    async def metrics(request: Request) -> Response:
        # with role processes: their samples merged in (counters summed, gauges by maximum)
        body = await run_in_threadpool(generate_latest, MergedRegistry(ctx))  # type: ignore[arg-type]
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.log.create_topic("events")
        ctx.log.create_topic("rejected")
        collector = ctx.extras.get("collector")
        if collector is not None:
            collector.start()
        sup.start()
        if procs is not None:
            procs.start()
        log.info("vendwatch %s serving roles %s", __version__, ", ".join(roles))
        try:
            yield
        finally:
            if collector is not None:
                collector.stop()
            if procs is not None:
                procs.stop()
            sup.stop()

    all_routes = [Route("/livez", livez), Route("/healthz", healthz), Route("/readyz", healthz),
                  Route("/metrics", metrics), *routes]
    app = Starlette(routes=all_routes, lifespan=lifespan, exception_handlers={Unavailable: _unavailable})
    collector = ctx.extras.get("collector")
    if collector is not None:
        return _DirectRoute(app, "POST", "/v1/events", collector)  # type: ignore[return-value]
    return app


async def _unavailable(request: Request, e: Exception) -> Response:
    """Any API call whose backend does not answer now (the state database cut off): 503 with
    the reason, not a 500 with a traceback in the log."""
    log.warning("%s %s: %s; answering 503", request.method, request.url.path, e)
    return error_response(503, "unavailable", f"{e}; retry shortly", {"Retry-After": "5"})


class _DirectRoute:
    """Sends one hot endpoint straight to its ASGI handler, past Starlette's routing and
    middleware (measured at ~30 µs per request on this machine); everything else,
    lifespan included, goes to the Starlette app."""

    def __init__(self, app: Starlette, method: str, path: str, handler: ASGIApp) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.handler = handler
        self.state = app.state
        self.routes = app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == self.method:
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)
