"""The console role's observability routes: fleet/incident gauges on ``/metrics`` and
``GET /v1/pipeline`` (the console's Pipeline page)."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vendwatch.api.auth import json_response, require
from vendwatch.observe.fleet import FleetCollector, IncidentCollector
from vendwatch.observe.pipeline import pipeline_view
from vendwatch.runtime import Context

_registered: dict[str, Any] = {}


def _register(ctx: Context) -> None:
    """One collector of each kind per process (the registry refuses duplicates); the newest
    context's database wins (tests build several apps in one process)."""
    if "fleet" not in _registered:
        _registered["fleet"] = FleetCollector(ctx.state.db)
        _registered["incidents"] = IncidentCollector(ctx.state.db)
        REGISTRY.register(_registered["fleet"])
        REGISTRY.register(_registered["incidents"])
    else:
        _registered["fleet"].db = ctx.state.db
        _registered["fleet"]._at = -float("inf")
        _registered["incidents"].db = ctx.state.db


def routes(ctx: Context) -> list[Route]:
    _register(ctx)

    @require(ctx, "viewer")
    async def pipeline(request: Request) -> Response:
        body = await run_in_threadpool(pipeline_view, ctx)
        return json_response(body, headers={"Cache-Control": "no-store"})

    return [Route("/v1/pipeline", pipeline, methods=["GET"])]
