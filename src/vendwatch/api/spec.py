"""OpenAPI paths of the operator API, health, metrics and console (merged into ``GET /openapi.json``).

Request bodies come from the same msgspec structs the handlers decode with; query
parameters carry the bounds the handlers enforce, so a fuzzer driven by this
document explores exactly the accepted space and its edges (CI runs schemathesis
against it: no request may get a 5xx).
"""

from __future__ import annotations

from typing import Any

import msgspec

REF = "#/components/schemas/"
_ERR = {"content": {"application/json": {"schema": {"$ref": REF + "ErrorBody"}}}}
_JSON_OK = {"content": {"application/json": {"schema": {"type": "object"}}}}
_TEXT = {"type": "string", "maxLength": 256}
_SEVERITIES = ["critical", "major", "minor", "warning", "info"]


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            **({"description": description} if description else {})}


def _path(name: str, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
            **({"description": description} if description else {})}


def _op(op_id: str, summary: str, role: str | None, *, params: list[dict[str, Any]] | None = None,
        body: str | None = None, ok: str = "200", ok_doc: dict[str, Any] | None = None,
        errors: tuple[str, ...] = ("400",)) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": "Success", **(ok_doc if ok_doc is not None else _JSON_OK)}}
    for status in errors:
        responses[status] = {"description": _ERROR_TEXT[status], **_ERR}
    if role is not None:
        responses["401"] = {"description": _ERROR_TEXT["401"], **_ERR}
        responses["403"] = {"description": f"The token's role is below {role}.", **_ERR}
        responses["429"] = {"description": _ERROR_TEXT["429"], **_ERR}
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": responses}
    if role is not None:
        out["security"] = [{"operatorToken": []}]
        out["description"] = f"Needs an operator token with role {role} or above."
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": REF + body}}}}
    return out


_ERROR_TEXT = {
    "400": "Invalid parameter or body; the message names it.",
    "401": "Missing, unknown or revoked operator token.",
    "404": "No such object.",
    "408": "The query ran past its timeout.",
    "409": "The incident is not in a state that allows this.",
    "413": "The query needs more memory than a query may use.",
    "503": "Not ready: the log or state store does not answer.",
    "429": "Too many failed authentications from this address; retry after Retry-After seconds.",
}


def schemas() -> dict[str, Any]:
    """Component schemas of the operator request bodies."""
    from vendwatch.incidents.api import ResolveIn, SilenceIn
    from vendwatch.lake.api import SqlRequest

    _, comps = msgspec.json.schema_components([SqlRequest, SilenceIn, ResolveIn], ref_template=REF + "{name}")
    return comps


def paths() -> dict[str, Any]:
    """Every HTTP endpoint besides ``POST /v1/events``."""
    limit = lambda hi, default: _q("limit", {"type": "integer", "minimum": 1, "maximum": hi, "default": default})  # noqa: E731
    html = {"content": {"text/html": {"schema": {"type": "string"}}}}
    return {
        "/livez": {"get": _op("liveness", "Liveness: the process answers (never refused for load)", None,
                              errors=())},
        "/healthz": {"get": _op("health", "Readiness: the log and state store answer", None, errors=("503",))},
        "/readyz": {"get": _op("readiness", "Readiness (same as /healthz)", None, errors=("503",))},
        "/metrics": {"get": _op("metrics", "Prometheus metrics", None, errors=(),
                                ok_doc={"content": {"text/plain": {"schema": {"type": "string"}}}})},
        "/openapi.json": {"get": _op("openapi", "This document", None, errors=())},
        "/v1/whoami": {"get": _op("whoami", "The calling operator token's name and role", "viewer", errors=())},
        "/v1/stats": {"get": _op("fleetStats", "Fleet summary: devices by connectivity class, event rates", "viewer",
                                 errors=())},
        "/v1/devices": {"get": _op("listDevices", "Registered devices with their live state", "viewer", params=[
            limit(1000, 100), _q("site_id", _TEXT), _q("after", _TEXT, "the last device_id of the previous page")])},
        "/v1/devices/{device_id}": {"get": _op("getDevice", "One device: registry entry and live state", "viewer",
                                               params=[_path("device_id")], errors=("404",))},
        "/v1/devices/{device_id}/events": {"get": _op(
            "deviceEvents", "A device's newest events from the log", "viewer", errors=("400", "404"),
            params=[_path("device_id"), limit(200, 50),
                    {"name": "type", "in": "query", "required": False, "style": "form", "explode": True,
                     "schema": {"type": "array", "items": {"type": "string", "maxLength": 64}}}])},
        "/v1/fleet/devices": {"get": _op("fleetDevices", "Console device list: filter by class, site, text", "viewer",
                                         params=[limit(500, 100), _q("status", {"type": "string", "maxLength": 32}),
                                                 _q("faulted", {"type": "string", "enum": ["0", "1", "true", "false"]}),
                                                 _q("q", {"type": "string", "maxLength": 200}), _q("site_id", _TEXT),
                                                 _q("after", _TEXT)])},
        "/v1/fleet/devices/{device_id}": {"get": _op("fleetDevice", "Console view of one device", "viewer",
                                                     params=[_path("device_id")], errors=("404",))},
        "/v1/incidents": {"get": _op("listIncidents", "Incidents, newest first", "viewer", params=[
            _q("status", {"type": "string", "maxLength": 32}),
            _q("severity", {"type": "string", "enum": _SEVERITIES}),
            *(_q(n, _TEXT) for n in ("device_id", "site_id", "rule_id", "dedupe_key")),
            limit(1000, 100), _q("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0})])},
        "/v1/incidents/{incident_id}": {"get": _op("getIncident", "One incident with timeline", "viewer",
                                                   params=[_path("incident_id")], errors=("404",))},
        "/v1/incidents/{incident_id}/ack": {"post": _op("ackIncident", "Acknowledge an incident", "operator",
                                                        params=[_path("incident_id")], errors=("404", "409"))},
        "/v1/incidents/{incident_id}/resolve": {"post": _op(
            "resolveIncident", "Resolve an incident", "operator", params=[_path("incident_id")], body="ResolveIn",
            errors=("400", "404", "409"))},
        "/v1/silences": {
            "get": _op("listSilences", "Active silences", "viewer", errors=()),
            "post": _op("addSilence", "Silence incidents of a device, site or rule for a while", "operator",
                        body="SilenceIn", ok="201"),
        },
        "/v1/silences/{silence_id}": {"delete": _op("removeSilence", "End a silence", "operator",
                                                    params=[_path("silence_id")], ok="204", ok_doc={},
                                                    errors=("404",))},
        "/v1/sql": {"post": _op("sql", "Read-only SQL over the lake (analyst)", "operator", body="SqlRequest",
                                errors=("400", "408", "413"))},
        "/v1/reports": {"get": _op("listReports", "Canned reports", "viewer", errors=())},
        "/v1/reports/{name}": {"get": _op("runReport", "Run a canned report", "viewer", errors=("400", "404", "408", "413"),
                                          params=[_path("name"),
                                                  _q("format", {"type": "string", "enum": ["json", "csv", "parquet"]}),
                                                  _q("since", {"type": "string", "format": "date"}),
                                                  _q("until", {"type": "string", "format": "date"}),
                                                  _q("limit", {"type": "integer", "minimum": 1})])},
        "/v1/deliveries": {"get": _op("listDeliveries", "Outbox deliveries to incident targets", "viewer")},
        "/v1/lake/jobs": {"get": _op("lakeJobs", "Lake writer, ETL and maintenance job status", "viewer")},
        "/v1/stats/history": {"get": _op("statsHistory", "Recent fleet statistics over time", "viewer")},
        "/v1/fleet/sites": {"get": _op("fleetSites", "Sites with their device counts", "viewer")},
        "/v1/fleet/map": {"get": _op("fleetMap", "Device positions for the console map", "viewer")},
        "/v1/fleet/thresholds": {"get": _op("fleetThresholds", "Thresholds the console colours values with",
                                            "viewer")},
        "/v1/fleet/incident-refs": {"get": _op("fleetIncidentRefs", "Open incidents per device", "viewer")},
        "/console/static/{path}": {"get": _op("consoleAsset", "A static asset of the console", None,
                                              params=[_path("path")], ok_doc=html, errors=("404",))},
        "/": {"get": _op("root", "Redirects to the console", None, ok="307", ok_doc={}, errors=())},
        "/console": {"get": _op("console", "Redirects to the console", None, ok="307", ok_doc={}, errors=())},
        "/console/{page}": {"get": _op("consolePage", "A console page (the same single-page shell) or a"
                                       " static asset under static/", None, params=[_path("page")], ok_doc=html,
                                       errors=("404",))},
    }
