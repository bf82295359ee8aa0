"""Operator API: the device registry and live device state."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vendwatch.api.auth import error_response, json_response, require
from vendwatch.api.params import ParamError, int_param, text_param
from vendwatch.runtime import Context


def device_view(ctx: Context, device_id: str) -> dict | None:  # type: ignore[type-arg]
    dev = ctx.state.get_device(device_id)
    if dev is None:
        return None
    st = ctx.state.get_device_state(device_id) or {}
    return {
        "device_id": dev.device_id,
        "site_id": dev.site_id,
        "status": dev.status,
        "serial": dev.serial,
        "model": dev.model,
        "location": dev.location,
        "state": {k: v for k, v in st.items() if k not in ("device_id", "site_id")},
    }


def routes(ctx: Context) -> list[Route]:
    @require(ctx, "viewer")
    async def list_devices(request: Request) -> Response:
        q = request.query_params
        try:
            limit = int_param(q, "limit", 100, 1, 1000)
            site = text_param(q, "site_id")
            after = text_param(q, "after", "") or ""
        except ParamError as e:
            return error_response(400, "bad_request", str(e))
        states = await run_in_threadpool(ctx.state.list_device_states, site, limit, after)
        return json_response({"devices": states, "next": states[-1]["device_id"] if len(states) == limit else None})

    @require(ctx, "viewer")
    async def get_device(request: Request) -> Response:
        view = await run_in_threadpool(device_view, ctx, request.path_params["device_id"])
        if view is None:
            return error_response(404, "not_found", f"no device {request.path_params['device_id']}")
        return json_response(view)

    return [
        Route("/v1/devices", list_devices, methods=["GET"]),
        Route("/v1/devices/{device_id}", get_device, methods=["GET"]),
    ]
