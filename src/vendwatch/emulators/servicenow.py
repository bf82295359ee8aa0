"""A ServiceNow emulator: the Table API subset vendwatch uses, with ServiceNow's shapes.

Implemented: ``POST/GET /api/now/table/incident``, ``GET/PATCH
/api/now/table/incident/{sys_id}``, ``GET /api/now/table/cmdb_ci`` and
``/api/now/table/sys_journal_field`` (work notes), ``sysparm_query`` (``=``, ``!=``,
``IN``, ``NOT IN``, ``STARTSWITH``, ``ISEMPTY``, ``ISNOTEMPTY``, ``^`` and,
``ORDERBY``/``ORDERBYDESC``), ``sysparm_limit``/``sysparm_offset``/``sysparm_fields``,
Basic auth and OAuth (``POST /oauth_token.do``, password and client_credentials
grants). Records are ``{"result": ...}`` with string values, numbers ``INC0010001``
upward, 32-hex ``sys_id``; errors are ``{"error": {"message", "detail"}, "status":
"failure"}``. Resolving (state 6) without ``close_code``/``close_notes`` fails with the
data-policy 403 a default instance gives. An optional per-hour rate limit sends
``X-RateLimit-*`` headers and 429 with ``Retry-After``. Faults (see ``emulation``) and
an ``on_create`` hook (called after a create is stored, before it is answered) let
tests break things on purpose.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vendwatch.emulators.base import Fault, Faults, ThreadedServer, apply_delay, control_routes

STATES = {"1": "New", "2": "In Progress", "3": "On Hold", "6": "Resolved", "7": "Closed", "8": "Canceled"}
_INCIDENT_DEFAULTS = {
    "state": "1", "impact": "3", "urgency": "3", "short_description": "", "description": "", "category": "inquiry",
    "subcategory": "", "assignment_group": "", "cmdb_ci": "", "correlation_id": "", "correlation_display": "",
    "caller_id": "", "close_code": "", "close_notes": "", "resolved_at": "", "closed_at": "", "work_notes": "",
    "comments": "", "active": "true", "opened_by": "",
}
_QUERY_TERM = re.compile(r"^([A-Za-z0-9_.]+?)(NOT IN|ISNOTEMPTY|ISEMPTY|STARTSWITH|IN|!=|=)(.*)$")


def _sn_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _error(status: int, message: str, detail: str = "", headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return Response(msgspec.json.encode(body), status, media_type="application/json", headers=headers)


def _ok(result: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode({"result": result}), status, media_type="application/json", headers=headers)


def _json_object(raw: str) -> dict[str, Any] | None:
    """A request body that is a JSON object, or None."""
    try:
        body = msgspec.json.decode(raw or "{}")
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, dict) else None


def _bad_json() -> Response:
    return _error(400, "Exception while reading request", "The payload is not valid JSON.")


def parse_query(q: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, bool]]]:
    """``sysparm_query`` -> (conditions, order by)."""
    conds, order = [], []
    for term in filter(None, q.split("^")):
        if term.startswith("ORDERBYDESC"):
            order.append((term[len("ORDERBYDESC"):], True))
        elif term.startswith("ORDERBY"):
            order.append((term[len("ORDERBY"):], False))
        else:
            mt = _QUERY_TERM.match(term)
            if not mt:
                raise ValueError(f"unsupported query term {term!r}")
            conds.append((mt.group(1), mt.group(2), mt.group(3)))
    return conds, order


def _matches(rec: dict[str, str], conds: list[tuple[str, str, str]]) -> bool:
    for fld, op, val in conds:
        have = str(rec.get(fld, ""))
        ok = {
            "=": have == val, "!=": have != val, "IN": have in val.split(","), "NOT IN": have not in val.split(","),
            "STARTSWITH": have.startswith(val), "ISEMPTY": have == "", "ISNOTEMPTY": have != "",
        }[op]
        if not ok:
            return False
    return True


@dataclass
class ServiceNowEmulator:
    """In-memory ServiceNow instance; ``app`` is the ASGI application."""

    username: str = "vendwatch"
    password: str = "vendwatch"
    client_id: str = "vendwatch-client"
    client_secret: str = "vendwatch-secret"
    clock: Callable[[], float] = time.time
    rate_limit_per_hour: int | None = None
    on_create: Callable[[dict[str, str]], None] | None = None
    # demo only: a serial number nobody seeded gets a CI on first lookup, as if discovery had found it
    auto_cmdb: bool = False
    faults: Faults = field(default_factory=Faults)
    incidents: dict[str, dict[str, str]] = field(default_factory=dict)
    journal: list[dict[str, str]] = field(default_factory=list)
    cmdb: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry
    _next_number: int = 10001
    _window: tuple[int, int] = (0, 0)  # (hour, requests in it)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.faults.clock = self.clock
        self.app = Starlette(routes=[
            Route("/oauth_token.do", self._oauth, methods=["POST"]),
            Route("/api/now/table/{table}", self._collection, methods=["GET", "POST"]),
            Route("/api/now/table/{table}/{sys_id}", self._record, methods=["GET", "PATCH", "PUT", "DELETE"]),
            *control_routes(self.faults),
        ])

    # -- test helpers ---------------------------------------------------------------
    def add_ci(self, serial_number: str, name: str, sys_class_name: str = "cmdb_ci_vending_machine") -> str:
        sys_id = secrets.token_hex(16)
        self.cmdb[sys_id] = {"sys_id": sys_id, "name": name, "serial_number": serial_number,
                             "sys_class_name": sys_class_name}
        return sys_id

    def inject(self, **kw: Any) -> Fault:
        f = Fault(**kw)
        self.faults.add(f)
        return f

    def by_correlation(self, correlation_id: str) -> list[dict[str, str]]:
        with self._lock:
            return [dict(r) for r in self.incidents.values() if r["correlation_id"] == correlation_id]

    def notes(self, sys_id: str) -> list[str]:
        with self._lock:
            return [j["value"] for j in self.journal if j["element_id"] == sys_id and j["element"] == "work_notes"]

    # -- HTTP -----------------------------------------------------------------------
    def _auth(self, request: Request) -> Response | None:
        h = request.headers.get("authorization", "")
        scheme, _, cred = h.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, pw = base64.b64decode(cred).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, pw = "", ""
            if user == self.username and pw == self.password:
                return None
        elif scheme.lower() == "bearer":
            exp = self.tokens.get(cred.strip())
            if exp is not None and exp > self.clock():
                return None
        return _error(401, "User Not Authenticated", "Required to provide Auth information")

    def _rate(self) -> tuple[Response | None, dict[str, str]]:
        if not self.rate_limit_per_hour:
            return None, {}
        now = self.clock()
        hour = int(now // 3600)
        with self._lock:
            h, n = self._window
            n = n + 1 if h == hour else 1
            self._window = (hour, n)
        reset = (hour + 1) * 3600
        headers = {"X-RateLimit-Limit": str(self.rate_limit_per_hour),
                   "X-RateLimit-Remaining": str(max(0, self.rate_limit_per_hour - n)),
                   "X-RateLimit-Reset": str(reset)}
        if n > self.rate_limit_per_hour:
            headers["Retry-After"] = str(int(reset - now) + 1)
            return _error(429, f"Rate limit of {self.rate_limit_per_hour} requests per hour for this user exceeded",
                          "Too many requests", headers), headers
        return None, headers

    async def _guard(self, request: Request, body: str) -> tuple[Response | None, dict[str, str]]:
        fault = self.faults.take(request.method, request.url.path, body)
        if fault is not None:
            await apply_delay(fault)
            if fault.status < 400:  # a pure delay
                return None, {}
            headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else {}
            msg = {429: "Too many requests", 500: "Internal server error", 503: "Service Unavailable",
                   401: "User Not Authenticated", 400: "Invalid request"}.get(fault.status, fault.message)
            return _error(fault.status, msg, fault.message, headers), headers
        denied = self._auth(request)
        if denied is not None:
            return denied, {}
        return self._rate()

    async def _respond(self, request: Request, handler: Callable[..., Any], *args: Any) -> Response:
        raw = (await request.body()).decode(errors="replace")
        early, headers = await self._guard(request, raw)
        if early is not None:
            self.faults.log(request.method, request.url.path, request.url.query, early.status_code)
            return early
        resp = await handler(request, raw, *args)
        resp.headers.update(headers)
        self.faults.log(request.method, request.url.path, request.url.query, resp.status_code,
                        raw if request.method in ("POST", "PATCH", "PUT") else None)
        return resp

    async def _oauth(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        fault = self.faults.take("POST", "/oauth_token.do", "")
        if fault is not None and fault.status >= 400:
            return Response(msgspec.json.encode({"error": "server_error"}), fault.status,
                            media_type="application/json")
        ok_client = form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret
        grant = form.get("grant_type")
        ok_user = grant == "client_credentials" or (
            grant == "password" and form.get("username") == self.username and form.get("password") == self.password)
        if not (ok_client and ok_user):
            self.faults.log("POST", "/oauth_token.do", "", 401)
            return Response(msgspec.json.encode({"error_description": "access_denied", "error": "server_error"}),
                            401, media_type="application/json")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.clock() + 1799
        self.faults.log("POST", "/oauth_token.do", "", 200)
        return Response(msgspec.json.encode({"access_token": token, "refresh_token": secrets.token_urlsafe(24),
                                             "scope": "useraccount", "token_type": "Bearer", "expires_in": 1799}),
                        media_type="application/json")

    async def _collection(self, request: Request) -> Response:
        return await self._respond(request, self._collection_impl, request.path_params["table"])

    async def _record(self, request: Request) -> Response:
        return await self._respond(request, self._record_impl, request.path_params["table"],
                                   request.path_params["sys_id"])

    def _rows(self, table: str) -> dict[str, dict[str, str]] | None:
        if table == "incident":
            return self.incidents
        if table == "cmdb_ci":
            return self.cmdb
        if table == "sys_journal_field":
            return {j["sys_id"]: j for j in self.journal}
        return None

    async def _collection_impl(self, request: Request, raw: str, table: str) -> Response:
        rows = self._rows(table)
        if rows is None:
            return _error(400, "Invalid table " + table, "")
        if request.method == "GET":
            qp = request.query_params
            try:
                conds, order = parse_query(qp.get("sysparm_query", ""))
                limit = int(qp.get("sysparm_limit", "10000"))
                offset = int(qp.get("sysparm_offset", "0"))
            except ValueError as e:
                return _error(400, "Invalid query", str(e))
            with self._lock:
                found = [dict(r) for r in rows.values() if _matches(r, conds)]
                serial = next((v for f, op, v in conds if f == "serial_number" and op == "="), None)
                if table == "cmdb_ci" and not found and self.auto_cmdb and serial:
                    found = [dict(self.cmdb[self.add_ci(serial, f"Vending machine {serial}")])]
            for fld, desc in reversed(order):
                found.sort(key=lambda r, f=fld: r.get(f, ""), reverse=desc)
            total = len(found)
            found = found[offset: offset + limit]
            fields_ = qp.get("sysparm_fields")
            if fields_:
                keep = fields_.split(",")
                found = [{k: r.get(k, "") for k in keep} for r in found]
            return _ok(found, headers={"X-Total-Count": str(total)})
        if table != "incident":
            return _error(403, "Operation Failed", f"Emulator does not allow inserts into {table}")
        body = _json_object(raw)
        if body is None:
            return _bad_json()
        now = self.clock()
        with self._lock:
            sys_id = secrets.token_hex(16)
            rec = {**_INCIDENT_DEFAULTS, **{k: str(v) for k, v in body.items() if k != "work_notes"}}
            rec.update(sys_id=sys_id, number=f"INC{self._next_number:07d}", sys_created_on=_sn_time(now),
                       sys_updated_on=_sn_time(now), sys_mod_count="0", opened_at=_sn_time(now))
            self._next_number += 1
            denied = self._apply_state(rec, now)
            if denied:
                return denied
            self._priority(rec)
            self.incidents[sys_id] = rec
            self._journal(sys_id, body, now)
            out = dict(rec)
        if self.on_create is not None:
            await run_in_threadpool(self.on_create, out)
        return _ok(out, 201, headers={"Location": f"{request.base_url}api/now/table/incident/{sys_id}"})

    async def _record_impl(self, request: Request, raw: str, table: str, sys_id: str) -> Response:
        rows = self._rows(table)
        if rows is None:
            return _error(400, "Invalid table " + table, "")
        with self._lock:
            rec = rows.get(sys_id)
            if rec is None:
                return _error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
            if request.method == "GET":
                return _ok(dict(rec))
            if request.method == "DELETE":
                del rows[sys_id]
                return Response(status_code=204)
            if table != "incident":
                return _error(403, "Operation Failed", f"Emulator does not allow updates to {table}")
            body = _json_object(raw)
            if body is None:
                return _bad_json()
            now = self.clock()
            new = {**rec, **{k: str(v) for k, v in body.items() if k not in ("work_notes", "sys_id", "number")}}
            denied = self._apply_state(new, now, previous=rec)
            if denied:
                return denied
            self._priority(new)
            new["sys_updated_on"] = _sn_time(now)
            new["sys_mod_count"] = str(int(rec["sys_mod_count"]) + 1)
            rows[sys_id] = new
            self._journal(sys_id, body, now)
            return _ok(dict(new))

    def _apply_state(self, rec: dict[str, str], now: float, previous: dict[str, str] | None = None) -> Response | None:
        if rec["state"] not in STATES:
            return _error(400, "Invalid state value", f"state {rec['state']!r} is not one of {sorted(STATES)}")
        if rec["state"] == "6" and (not rec["close_code"] or not rec["close_notes"]):
            return _error(403, "Operation Failed",
                          "Data Policy Exception: \n The following fields are mandatory: Resolution code, Resolution notes")
        was = previous["state"] if previous else ""
        if rec["state"] == "6" and was != "6":
            rec["resolved_at"] = _sn_time(now)
        if rec["state"] == "7" and was != "7":
            rec["closed_at"] = _sn_time(now)
        rec["active"] = "false" if rec["state"] in ("6", "7", "8") else "true"
        if rec["active"] == "true":
            rec["resolved_at"] = rec["closed_at"] = ""
        return None

    @staticmethod
    def _priority(rec: dict[str, str]) -> None:
        try:
            rec["priority"] = str(min(5, max(1, int(rec["impact"]) + int(rec["urgency"]) - 1)))
        except ValueError:
            rec["priority"] = "5"

    def _journal(self, sys_id: str, body: dict[str, Any], now: float) -> None:
        for element in ("work_notes", "comments"):
            if body.get(element):
                jid = secrets.token_hex(16)
                self.journal.append({"sys_id": jid, "element_id": sys_id, "element": element, "name": "incident",
                                     "value": str(body[element]), "sys_created_on": _sn_time(now)})

    # -- running --------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> ThreadedServer:
        return ThreadedServer(self.app, host, port).start()


def start_for_demo(settings: Any) -> tuple[str, Callable[[], None], dict[str, Any]]:
    """Start an emulator on a free loopback port for ``vendwatch demo --servicenow-emulator``.

    Returns the base URL, a stop function and dotted settings overrides that point
    vendwatch's ServiceNow connector at it.
    """
    emu = ServiceNowEmulator(auto_cmdb=True)  # the demo fleet is provisioned after the emulator starts
    server = emu.serve()
    overrides = {
        "incidents.servicenow.url": server.url,
        "incidents.servicenow.auth": "basic",
        "incidents.servicenow.username": emu.username,
        "incidents.servicenow.password": emu.password,
    }
    return server.url, server.stop, overrides
