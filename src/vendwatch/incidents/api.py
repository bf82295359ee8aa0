"""Operator API for incidents and silences.

``GET /v1/incidents`` (filters: status (open, acknowledged, resolved, absorbed, active),
severity, device_id, site_id, rule_id, dedupe_key, limit, offset), ``GET
/v1/incidents/{id}`` (with timeline, severity history, external references),
``POST /v1/incidents/{id}/ack`` and ``/resolve`` (operator role), ``GET/POST
/v1/silences`` and ``DELETE /v1/silences/{id}`` (operator role to change).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vendwatch.api.auth import error_response, json_response, require
from vendwatch.api.params import MAX_OFFSET, ParamError, int_param, text_param
from vendwatch.incidents.lifecycle import STATUSES, Incident
from vendwatch.incidents.service import IncidentNotFound, IncidentService
from vendwatch.runtime import Context
from vendwatch.signals import SEVERITIES


class SilenceIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    device_id: str | None = None
    site_id: str | None = None
    rule_id: str | None = None
    duration_s: float | None = None
    expires_at: float | None = None
    reason: str = ""


class ResolveIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    note: str = ""


def incident_doc(inc: Incident) -> dict[str, Any]:
    d = asdict(inc)
    d.pop("version", None)
    return d


def detail_doc(svc: IncidentService, inc: Incident) -> dict[str, Any]:
    return {**incident_doc(inc), "timeline": svc.store.timeline(inc.incident_id),
            "severity_history": svc.store.severity_history(inc.incident_id),
            "external_refs": [_named_state(r) for r in svc.store.refs(inc.incident_id)]}


def _named_state(ref: dict[str, Any]) -> dict[str, Any]:
    """ServiceNow states are numbers ("6"); people read names ("Resolved")."""
    if ref.get("system") == "servicenow":
        from vendwatch.incidents.servicenow.mapping import state_name

        return {**ref, "state_name": state_name(ref.get("state"))}
    return ref


async def _body(request: Request, typ: type[Any]) -> Any:
    raw = await request.body()
    return msgspec.json.decode(raw or b"{}", type=typ)


def routes(ctx: Context) -> list[BaseRoute]:
    holder: dict[str, IncidentService] = {}

    def svc() -> IncidentService:
        if "svc" not in holder:
            holder["svc"] = IncidentService(ctx.state, ctx.settings.incidents)
        return holder["svc"]

    @require(ctx, "viewer")
    async def list_incidents(request: Request) -> Response:
        q = request.query_params
        unknown = set(q) - {"status", "severity", "device_id", "site_id", "rule_id", "dedupe_key", "limit", "offset"}
        if unknown:
            return error_response(400, "bad_request", f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        status, severity = q.get("status"), q.get("severity")
        if status and status not in (*STATUSES, "active"):
            return error_response(400, "bad_request", f"status must be one of {', '.join((*STATUSES, 'active'))}")
        if severity and severity not in SEVERITIES:
            return error_response(400, "bad_request", f"severity must be one of {', '.join(SEVERITIES)}")
        try:
            limit = int_param(q, "limit", 100, 1, 1000)
            offset = int_param(q, "offset", 0, 0, MAX_OFFSET)
            for name in ("device_id", "site_id", "rule_id", "dedupe_key"):
                text_param(q, name)
        except ParamError as e:
            return error_response(400, "bad_request", str(e))
        rows = await run_in_threadpool(
            svc().store.list, status=status, severity=severity, device_id=q.get("device_id"),
            site_id=q.get("site_id"), rule_id=q.get("rule_id"), dedupe_key=q.get("dedupe_key"),
            limit=limit, offset=offset)
        return json_response({"incidents": [incident_doc(i) for i in rows], "limit": limit, "offset": offset})

    @require(ctx, "viewer")
    async def get_incident(request: Request) -> Response:
        s = svc()
        inc = await run_in_threadpool(s.store.get, request.path_params["incident_id"])
        if inc is None:
            return error_response(404, "not_found", f"no incident {request.path_params['incident_id']}")
        return json_response(await run_in_threadpool(detail_doc, s, inc))

    async def _transition(request: Request, fn: str) -> Response:
        s = svc()
        actor = f"operator:{request.state.principal.name}"
        iid = request.path_params["incident_id"]
        try:
            body = await _body(request, ResolveIn) if fn == "resolve" else None
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return error_response(400, "bad_request", f"invalid body: {e}")
        try:
            if fn == "ack":
                d = await run_in_threadpool(s.acknowledge, iid, actor)
            else:
                d = await run_in_threadpool(s.resolve, iid, actor, body.note if body else "")
        except IncidentNotFound:
            return error_response(404, "not_found", f"no incident {iid}")
        if d.ignored:
            return error_response(409, "conflict", d.ignored)
        inc = await run_in_threadpool(s.store.get, iid)
        assert inc is not None
        return json_response(await run_in_threadpool(detail_doc, s, inc))

    @require(ctx, "operator")
    async def ack(request: Request) -> Response:
        return await _transition(request, "ack")

    @require(ctx, "operator")
    async def resolve(request: Request) -> Response:
        return await _transition(request, "resolve")

    @require(ctx, "viewer")
    async def deliveries(request: Request) -> Response:
        """Outbound targets (ServiceNow, webhooks, ...): queued, dead-lettered, paused and why."""
        from vendwatch.delivery.status import target_status

        return json_response({"targets": await run_in_threadpool(target_status, ctx.state.db, time.time())})

    @require(ctx, "viewer")
    async def list_silences(request: Request) -> Response:
        return json_response({"silences": await run_in_threadpool(svc().store.list_silences, time.time())})

    @require(ctx, "operator")
    async def add_silence(request: Request) -> Response:
        try:
            body = await _body(request, SilenceIn)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return error_response(400, "bad_request", f"invalid body: {e}")
        now = time.time()
        if (body.duration_s is None) == (body.expires_at is None):
            return error_response(400, "bad_request", "give exactly one of duration_s and expires_at")
        expires = body.expires_at if body.expires_at is not None else now + (body.duration_s or 0)
        try:
            sid = await run_in_threadpool(
                svc().store.add_silence, device_id=body.device_id, site_id=body.site_id, rule_id=body.rule_id,
                expires_at=expires, created_by=f"operator:{request.state.principal.name}", reason=body.reason,
                now=now)
        except ValueError as e:
            return error_response(400, "bad_request", str(e))
        return json_response({"silence_id": sid, "expires_at": expires}, 201)

    @require(ctx, "operator")
    async def remove_silence(request: Request) -> Response:
        sid = request.path_params["silence_id"]
        if not await run_in_threadpool(svc().store.remove_silence, sid):
            return error_response(404, "not_found", f"no silence {sid}")
        return Response(status_code=204)

    return [
        Route("/v1/incidents", list_incidents, methods=["GET"]),
        Route("/v1/incidents/{incident_id}", get_incident, methods=["GET"]),
        Route("/v1/incidents/{incident_id}/ack", ack, methods=["POST"]),
        Route("/v1/incidents/{incident_id}/resolve", resolve, methods=["POST"]),
        Route("/v1/deliveries", deliveries, methods=["GET"]),
        Route("/v1/silences", list_silences, methods=["GET"]),
        Route("/v1/silences", add_silence, methods=["POST"]),
        Route("/v1/silences/{silence_id}", remove_silence, methods=["DELETE"]),
    ]
