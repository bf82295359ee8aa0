"""OpenAPI 3.1 document of every HTTP endpoint (``GET /openapi.json``, ``vendwatch schema export --openapi``).

Built from the same msgspec definitions the collector validates with, so it cannot
drift from the code. OpenAPI 3.1 schemas are JSON Schema 2020-12, so the per-type
payload binding (``if type == X then data is X``) is carried over as is.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vendwatch import __version__, events
from vendwatch.api import spec

_REF = "#/components/schemas/"


class Rejection(msgspec.Struct):
    """One refused event of a batch."""

    index: int  # position in the request's `events` array
    event_id: str | None  # null when the event has no readable event_id
    code: str  # schema | device_mismatch | future | too_old | too_large
    reason: str  # human-readable, names the field


class IngestResult(msgspec.Struct):
    """The answer to a 200: every accepted event is durable."""

    accepted: int  # new events stored
    duplicates: int  # events whose event_id was already accepted from this device (not stored again)
    rejected: list[Rejection]


class DexResult(msgspec.Struct):
    """The answer to a 200 from ``POST /v1/dex``: the events the audit file became are durable."""

    read_id: str  # event_id of the read's dex_read summary (dex:<sha256 of the file>)
    accepted: int  # new events stored
    duplicates: int  # events already stored (the same file sent again)
    rejected: list[Rejection]
    flags: list[str]  # tolerated quirks: lf_line_ends, crc_byte_swapped
    findings: list[str]  # first_read, board_replaced, counter_reset, missed_reads


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct):
    """Any non-2xx answer."""

    error: ErrorDetail


_ERRORS = {
    "400": ("Unreadable body: invalid JSON (`invalid_json`), not `{\"events\": [...]}` (`invalid_body`),"
            " bad gzip (`bad_gzip`), bad Content-Length. Do not retry unchanged.", False),
    "401": ("Missing, unknown, expired or disabled device token (`unauthorized`).", False),
    "413": ("Body larger than the limit, also after gzip decompression (`body_too_large`), or more events"
            " than allowed in one batch (`too_many_events`). Split the batch.", False),
    "415": ("Content-Type is not application/json or Content-Encoding is not gzip/identity.", False),
    "429": ("The device is over its rate limit (`rate_limited`). Retry after `Retry-After` seconds"
            " with the same event ids.", True),
    "503": ("The log cannot take writes (`log_unavailable`). Nothing is acknowledged; retry after"
            " `Retry-After` seconds with the same event ids (already stored ones are reported as duplicates).", True),
}


def _as_one_of(event: dict[str, Any]) -> dict[str, Any]:
    """The event schema's ``if type == X then data is X`` binding as one variant per type.

    Both say the same; fuzzers and code generators handle ``oneOf`` of closed objects
    (each with its ``type`` constant), while ``allOf`` of ``if``/``then`` defeats them.
    """
    base = {k: v for k, v in event.items() if k not in ("allOf", "title", "description")}
    props = base.get("properties", {})
    if props.get("occurred_at", {}).get("type") == "string":  # RFC 3339, as the collector parses it
        base["properties"] = {**props, "occurred_at": {**props["occurred_at"], "format": "date-time"}}
    variants = []
    for rule in event.get("allOf", []):
        etype = rule["if"]["properties"]["type"]["const"]
        variant = {**base, "title": f"DeviceEvent ({etype})",
                   "properties": {**base["properties"], "type": {"const": etype},
                                  "data": rule["then"]["properties"]["data"]}}
        variants.append(variant)
    if not variants:
        return event
    return {"title": event.get("title", "DeviceEvent"), "description": event.get("description", ""), "oneOf": variants}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document as a dict."""
    body_schema = msgspec.json.decode(msgspec.json.encode(events.json_schema()).replace(b"#/$defs/", _REF.encode()))
    schemas: dict[str, Any] = body_schema.pop("$defs")
    for k in ("$schema", "$id"):
        body_schema.pop(k, None)
    schemas["EventBatch"] = body_schema
    schemas["DeviceEvent"] = _as_one_of(schemas["DeviceEvent"])
    _, more = msgspec.json.schema_components([IngestResult, DexResult, ErrorBody], ref_template=_REF + "{name}")
    schemas.update(more)
    schemas.update(spec.schemas())
    retry_after = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                   "schema": {"type": "integer", "minimum": 1}}}
    responses: dict[str, Any] = {
        "200": {"description": "Batch processed. Accepted events are durable in the log; refused ones are"
                               " listed with their reason and kept in quarantine.",
                "content": {"application/json": {"schema": {"$ref": _REF + "IngestResult"}}}},
    }
    for status, (text, retry) in _ERRORS.items():
        responses[status] = {"description": text,
                             "content": {"application/json": {"schema": {"$ref": _REF + "ErrorBody"}}},
                             **({"headers": retry_after} if retry else {})}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vendwatch HTTP API (device protocol and operator API)",
            "version": f"v{events.SCHEMA_VERSION} (vendwatch {__version__})",
            "description": "How vending machines send telemetry to the vendwatch collector (POST /v1/events;"
                           " docs/device-protocol.md), and the operator API behind the console"
                           " (docs/console.md, docs/security.md for roles).",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"deviceToken": {"type": "http", "scheme": "bearer",
                                                "description": "The device token from `vendwatch devices add`."},
                                "operatorToken": {"type": "http", "scheme": "bearer",
                                                  "description": "An operator token from `vendwatch tokens add`"
                                                                 " (role viewer, operator or admin)."}},
        },
        "paths": {
            "/v1/events": {
                "post": {
                    "operationId": "postEvents",
                    "summary": "Send a batch of events",
                    "description": "Identity comes from the token: an event whose device_id is another device's is"
                                   " refused. Retrying with the same event_id is always safe. The body may be"
                                   " gzip-compressed (Content-Encoding: gzip).",
                    "security": [{"deviceToken": []}],
                    "parameters": [{"name": "Content-Encoding", "in": "header", "required": False,
                                    "schema": {"type": "string", "enum": ["gzip", "identity"]}}],
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": {"$ref": _REF + "EventBatch"}}}},
                    "responses": responses,
                }
            },
            "/v1/dex": {
                "post": {
                    "operationId": "postDex",
                    "summary": "Upload one EVA-DTS (DEX) audit file",
                    "description": "The file as sent by the machine (one ST...SE transaction set, G85 CRC). Same"
                                   " token, limits, gzip and retry rules as /v1/events; sending the same file again"
                                   " stores nothing new. See docs/dex.md.",
                    "security": [{"deviceToken": []}],
                    "parameters": [{"name": "Content-Encoding", "in": "header", "required": False,
                                    "schema": {"type": "string", "enum": ["gzip", "identity"]}}],
                    "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "responses": {
                        **{k: v for k, v in responses.items() if k != "200"},
                        "200": {"description": "File accepted; the events it became are durable.",
                                "content": {"application/json": {"schema": {"$ref": _REF + "DexResult"}}}},
                        "422": {"description": "The file is refused as a whole (`dex_crc_mismatch`, `dex_frame`,"
                                               " `dex_segment_count`, ...) and kept in quarantine; nothing of it"
                                               " is counted. Read the machine again.",
                                "content": {"application/json": {"schema": {"$ref": _REF + "ErrorBody"}}}},
                    },
                }
            },
            **spec.paths(),
        },
    }
