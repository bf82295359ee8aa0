"""A ServiceNow emulator built from ServiceNow's documentation, not from vendwatch's client.

It behaves like a base instance in the ways that hurt an integration; each behaviour
names the page it comes from:

- **Table API** (``/api/now/table/{table}`` GET/POST, ``/{sys_id}`` GET/PATCH/PUT/DELETE):
  records are ``{"result": ...}`` with string values, 32-hex ``sys_id``, numbers
  ``INC0010001`` upward, ``X-Total-Count`` on lists; ``sysparm_query``, ``sysparm_fields``,
  ``sysparm_limit``, ``sysparm_offset``, ``sysparm_display_value`` (``true``/``false``/
  ``all``) and ``sysparm_input_display_value``. Errors are ``{"error": {"message",
  "detail"}, "status": "failure"}``. (ServiceNow docs, "Table API"; KB0534905 "Table API
  FAQs"; IBM TADDM "Appendix C: error codes" for the 400/401/403/404 meanings.)
- **Encoded queries**: ``^`` AND, ``^OR`` (binds to the term before it), ``^NQ`` (a new
  query OR-ed with the others), ``ORDERBY``/``ORDERBYDESC``; operators ``=``, ``!=``,
  ``<``, ``<=``, ``>``, ``>=``, ``IN``, ``NOT IN``, ``STARTSWITH``, ``ENDSWITH``, ``LIKE``,
  ``NOT LIKE``, ``ISEMPTY``, ``ISNOTEMPTY``, ``ANYTHING``, ``EMPTYSTRING``. An empty term
  (a trailing ``^``) is ignored and a condition on a field the table does not have is
  dropped rather than refused, as a base instance does while
  ``glide.invalid_query.returns_no_rows`` is false. (ServiceNow SDK guide "Encoded
  Queries"; docs "Operators available for filters and queries".)
- **Incident state model**: 1 New, 2 In Progress, 3 On Hold, 6 Resolved, 7 Closed,
  8 Canceled. Resolved stays ``active=true`` until auto-close (``auto_close_s`` after
  the last update, one day on a base instance); Closed and Canceled are inactive.
  Resolving or closing needs ``close_code`` and ``close_notes`` (data policy, 403).
  Closed and Canceled incidents are read-only to a non-admin integration user (ACL,
  403). (Docs "Incident Management state model"; KB0552820 "How to customize incident
  autoclosure"; "Best Practice - Incident Resolution Workflow": close code and notes
  mandatory, closed incidents read-only for non-administrators.)
- **Field limits**: ``correlation_id`` and ``correlation_display`` hold 100 characters,
  ``short_description`` 160; longer values are cut silently, as string fields are.
  (Task table dictionary; servicenowguru "The Correlation ID / Display fields".)
- **Reference fields** (``assignment_group``, ``caller_id``, ``cmdb_ci``, ``location``)
  store a ``sys_id``. A value that is not the sys_id of a record in the referenced table
  is only resolved by display value when ``sysparm_input_display_value=true``; otherwise
  the reference stays empty. (Docs "Display values"; KB0534905.)
- **Auth**: Basic or ``Bearer``; a failure is 401 ``User Not Authenticated`` / ``Required
  to provide Auth information``. ``POST /oauth_token.do`` (form-encoded) serves the
  ``password``, ``client_credentials`` and ``refresh_token`` grants; access tokens live
  ``access_token_s`` (30 minutes by default, ``expires_in`` 1799), refresh tokens 100
  days; a password request within an access token's lifetime returns the same token.
  (Docs "OAuth API request parameters"; KB0791140 "Managing OAuth Tokens".)
- **Rate limiting** (optional ``rate_limit_per_hour``): every answer carries
  ``X-RateLimit-Limit``, ``X-RateLimit-Reset`` (epoch seconds) and ``X-RateLimit-Rule``;
  past the limit, 429 with ``Retry-After`` in seconds. (Docs "Inbound REST API rate
  limiting".)
- **CMDB**: ``cmdb_ci`` is the base table; class tables (``cmdb_ci_hardware``,
  ``cmdb_ci_computer``, ...) extend it, so a record created in a class table is listed
  by ``cmdb_ci`` with its ``sys_class_name``. (Docs "CMDB tables descriptions".)

Faults (see ``base``) and an ``on_create`` hook (called after a create is stored, before
it is answered) let tests break things on purpose; ``close_as_person`` changes a ticket
the way a service-desk agent would.
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
INACTIVE_STATES = ("7", "8")
READ_ONLY_STATES = ("7", "8")
_INCIDENT_DEFAULTS = {
    "state": "1", "impact": "3", "urgency": "3", "short_description": "", "description": "", "category": "inquiry",
    "subcategory": "", "assignment_group": "", "cmdb_ci": "", "correlation_id": "", "correlation_display": "",
    "caller_id": "", "close_code": "", "close_notes": "", "resolved_at": "", "closed_at": "", "work_notes": "",
    "comments": "", "active": "true", "opened_by": "", "location": "",
}
_CI_DEFAULTS = {
    "name": "", "serial_number": "", "model_number": "", "location": "", "firmware_version": "",
    "operational_status": "1", "install_status": "1", "correlation_id": "", "correlation_display": "",
    "discovery_source": "", "last_discovered": "", "asset_tag": "", "short_description": "",
}
MAX_LENGTH = {"correlation_id": 100, "correlation_display": 100, "short_description": 160, "name": 255,
              "serial_number": 255, "number": 40}
# reference field -> (table, field holding its display value)
REFERENCES = {
    "assignment_group": ("sys_user_group", "name"), "caller_id": ("sys_user", "user_name"),
    "opened_by": ("sys_user", "user_name"), "cmdb_ci": ("cmdb_ci", "name"), "location": ("cmn_location", "name"),
}
CI_CLASSES = ("cmdb_ci", "cmdb_ci_hardware", "cmdb_ci_computer", "cmdb_ci_server", "cmdb_ci_netgear",
              "cmdb_ci_vending_machine")
_OPERATORS = ("NOT LIKE", "NOT IN", "ISNOTEMPTY", "ISEMPTY", "STARTSWITH", "ENDSWITH", "EMPTYSTRING", "ANYTHING",
              "LIKE", "IN", "!=", "<=", ">=", "=", "<", ">")
_TERM = re.compile(r"^([A-Za-z0-9_.]+?)(" + "|".join(re.escape(o) for o in _OPERATORS) + r")(.*)$", re.S)
ACL_DENIED = ("Operation Failed", "ACL Exception Update Failed due to security constraints")


def _sn_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _parse_sn_time(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def _error(status: int, message: str, detail: str = "", headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return Response(msgspec.json.encode(body), status, media_type="application/json", headers=headers)


def _ok(result: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode({"result": result}), status, media_type="application/json", headers=headers)


def _json_object(raw: str) -> dict[str, Any] | None:
    try:
        body = msgspec.json.decode(raw or "{}")
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, dict) else None


def _bad_json() -> Response:
    return _error(400, "Exception while reading request", "The payload is not valid JSON.")


Cond = tuple[str, str, str]


@dataclass
class Query:
    """A parsed encoded query: OR-ed groups (``^NQ``) of AND-ed clauses, each clause an OR (``^OR``) of conditions."""

    groups: list[list[list[Cond]]]
    order: list[tuple[str, bool]]


def parse_query(q: str) -> Query:
    groups: list[list[list[Cond]]] = []
    order: list[tuple[str, bool]] = []
    for part in q.split("^NQ"):
        clauses: list[list[Cond]] = []
        for term in part.split("^"):
            is_or = term.startswith("OR") and not term.startswith("ORDERBY") and bool(_TERM.match(term[2:]))
            if is_or:
                term = term[2:]
            if not term or term == "EQ":
                continue  # an empty term (trailing ^) and the ^EQ terminator mean nothing
            if term.startswith("ORDERBYDESC"):
                order.append((term[len("ORDERBYDESC"):], True))
                continue
            if term.startswith("ORDERBY"):
                order.append((term[len("ORDERBY"):], False))
                continue
            mt = _TERM.match(term)
            if not mt:
                raise ValueError(f"unsupported query term {term!r}")
            cond = (mt.group(1), mt.group(2), mt.group(3))
            if is_or and clauses:
                clauses[-1].append(cond)
            else:
                clauses.append([cond])
        groups.append(clauses)
    return Query(groups, order)


def _cond_ok(have: str, op: str, val: str) -> bool:
    def num(x: str) -> float | str:
        try:
            return float(x)
        except ValueError:
            return x

    if op == "=":
        return have == val
    if op == "!=":
        return have != val
    if op in ("<", "<=", ">", ">="):
        a, b = num(have), num(val)
        if type(a) is not type(b):
            a, b = str(a), str(b)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]  # type: ignore[operator]
    if op == "IN":
        return have in val.split(",")
    if op == "NOT IN":
        return have not in val.split(",")
    if op == "STARTSWITH":
        return have.startswith(val)
    if op == "ENDSWITH":
        return have.endswith(val)
    if op == "LIKE":
        return val.lower() in have.lower()
    if op == "NOT LIKE":
        return val.lower() not in have.lower()
    if op in ("ISEMPTY", "EMPTYSTRING"):
        return have == ""
    if op == "ISNOTEMPTY":
        return have != ""
    return op == "ANYTHING"


def matches(rec: dict[str, str], q: Query) -> bool:
    """True if ``rec`` satisfies any ``^NQ`` group; conditions on unknown fields are dropped."""
    for clauses in q.groups:
        ok = True
        for alternatives in clauses:
            known = [c for c in alternatives if c[0] in rec]
            if known and not any(_cond_ok(str(rec.get(f, "")), op, v) for f, op, v in known):
                ok = False
                break
        if ok:
            return True
    return False


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
    access_token_s: float = 1800.0
    auto_close_s: float = 86_400.0
    # demo only: a serial number nobody seeded gets a CI on first lookup, as if discovery had found it
    auto_cmdb: bool = False
    faults: Faults = field(default_factory=Faults)
    incidents: dict[str, dict[str, str]] = field(default_factory=dict)
    journal: list[dict[str, str]] = field(default_factory=list)
    cmdb: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: dict[str, dict[str, str]] = field(default_factory=dict)
    users: dict[str, dict[str, str]] = field(default_factory=dict)
    locations: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry
    refresh_tokens: dict[str, float] = field(default_factory=dict)
    _next_number: int = 10001
    _window: tuple[int, int] = (0, 0)  # (hour, requests in it)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.faults.clock = self.clock
        self.add_user(self.username)
        self.app = Starlette(routes=[
            Route("/oauth_token.do", self._oauth, methods=["POST"]),
            Route("/api/now/table/{table}", self._collection, methods=["GET", "POST"]),
            Route("/api/now/table/{table}/{sys_id}", self._record, methods=["GET", "PATCH", "PUT", "DELETE"]),
            *control_routes(self.faults),
        ])

    # -- test helpers ---------------------------------------------------------------
    def add_ci(self, serial_number: str, name: str, sys_class_name: str = "cmdb_ci_hardware") -> str:
        sys_id = secrets.token_hex(16)
        self.cmdb[sys_id] = {**_CI_DEFAULTS, "sys_id": sys_id, "name": name, "serial_number": serial_number,
                             "sys_class_name": sys_class_name}
        return sys_id

    def add_group(self, name: str) -> str:
        sys_id = secrets.token_hex(16)
        self.groups[sys_id] = {"sys_id": sys_id, "name": name, "active": "true"}
        return sys_id

    def add_user(self, user_name: str) -> str:
        sys_id = secrets.token_hex(16)
        self.users[sys_id] = {"sys_id": sys_id, "user_name": user_name, "name": user_name, "active": "true"}
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

    def close_as_person(self, sys_id: str, state: str = "7", close_notes: str = "closed by the service desk",
                        close_code: str = "Solved (Permanently)") -> None:
        """What an agent does in the UI: set state (and the mandatory close fields), bypassing the API's ACLs."""
        with self._lock:
            rec = self.incidents[sys_id]
            rec.update(state=state, close_notes=close_notes, close_code=close_code)
            self._apply_state(rec, self.clock(), previous={**rec, "state": ""})
            rec["sys_mod_count"] = str(int(rec["sys_mod_count"]) + 1)
            rec["sys_updated_on"] = _sn_time(self.clock())

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
        headers = {"X-RateLimit-Limit": str(self.rate_limit_per_hour), "X-RateLimit-Reset": str(reset),
                   "X-RateLimit-Rule": "3fe2e8d0c0a8016b00ffd4d2a7a3b3a1"}
        if n > self.rate_limit_per_hour:
            headers["Retry-After"] = str(int(reset - now) + 1)
            return _error(429, f"Rate limit of {self.rate_limit_per_hour} requests per hour for this user exceeded",
                          "Too many requests", headers), headers
        return None, headers

    async def _guard(self, request: Request, body: str) -> tuple[Response | None, dict[str, str]]:
        fault = self.faults.take(request.method, request.url.path, body)
        if fault is not None:
            if fault.delay_s > 0:  # logged on arrival (status 0): a client that times out cancels the answer
                self.faults.log(request.method, request.url.path, request.url.query, 0, body or None)
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
        body = raw if request.method in ("POST", "PATCH", "PUT") else None
        if early is not None:
            self.faults.log(request.method, request.url.path, request.url.query, early.status_code, body)
            return early
        self._auto_close()
        resp = await handler(request, raw, *args)
        resp.headers.update(headers)
        self.faults.log(request.method, request.url.path, request.url.query, resp.status_code, body)
        return resp

    def _auto_close(self) -> None:
        """Resolved incidents not updated for ``auto_close_s`` become Closed (the base autoclose job)."""
        now = self.clock()
        with self._lock:
            for rec in self.incidents.values():
                if rec["state"] == "6" and now - _parse_sn_time(rec["sys_updated_on"]) >= self.auto_close_s:
                    rec["state"], rec["active"], rec["closed_at"] = "7", "false", _sn_time(now)
                    rec["sys_updated_on"] = _sn_time(now)

    async def _oauth(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        fault = self.faults.take("POST", "/oauth_token.do", "")
        if fault is not None and fault.status >= 400:
            self.faults.log("POST", "/oauth_token.do", "", fault.status)
            return Response(msgspec.json.encode({"error": "server_error"}), fault.status,
                            media_type="application/json")
        now = self.clock()
        grant = form.get("grant_type")
        ok_client = form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret
        if grant == "refresh_token":
            exp = self.refresh_tokens.get(form.get("refresh_token", ""))
            ok_user = exp is not None and exp > now
        else:
            ok_user = grant == "client_credentials" or (
                grant == "password" and form.get("username") == self.username
                and form.get("password") == self.password)
        if not (ok_client and ok_user):
            self.faults.log("POST", "/oauth_token.do", "", 401, grant)
            return Response(msgspec.json.encode({"error_description": "access_denied", "error": "server_error"}),
                            401, media_type="application/json")
        with self._lock:
            live = [(t, e) for t, e in self.tokens.items() if e > now]
            if live and grant != "refresh_token":
                token, exp = live[-1]  # "requests within the expiration time return the current access token"
            else:
                token, exp = secrets.token_urlsafe(24), now + self.access_token_s
                self.tokens[token] = exp
            out: dict[str, Any] = {"access_token": token, "scope": "useraccount", "token_type": "Bearer",
                                   "expires_in": int(exp - now) - 1}
            if grant == "refresh_token":
                out["refresh_token"] = form["refresh_token"]
            else:
                rt = secrets.token_urlsafe(24)
                self.refresh_tokens[rt] = now + 100 * 86_400
                out["refresh_token"] = rt
        self.faults.log("POST", "/oauth_token.do", "", 200, grant)
        return Response(msgspec.json.encode(out), media_type="application/json")

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
        if table in CI_CLASSES:
            return {k: r for k, r in self.cmdb.items() if r.get("sys_class_name") == table}
        if table == "sys_user_group":
            return self.groups
        if table == "sys_user":
            return self.users
        if table == "cmn_location":
            return self.locations
        if table == "sys_journal_field":
            return {j["sys_id"]: j for j in self.journal}
        return None

    def _display(self, rec: dict[str, str], mode: str) -> dict[str, Any]:
        """``sysparm_display_value``: choice labels and reference display values instead of (or with) values."""
        if mode not in ("true", "all"):
            return rec
        out: dict[str, Any] = {}
        for k, v in rec.items():
            disp = v
            if k == "state" and v in STATES:
                disp = STATES[v]
            elif k in REFERENCES and v:
                table, name_field = REFERENCES[k]
                ref = (self._rows(table) or {}).get(v)
                disp = ref.get(name_field, "") if ref else ""
            out[k] = {"value": v, "display_value": disp} if mode == "all" else disp
        return out

    def _resolve_refs(self, body: dict[str, str], display_input: bool) -> None:
        for k, (table, name_field) in REFERENCES.items():
            v = body.get(k)
            if not v:
                continue
            rows = self._rows(table) or {}
            if v in rows:
                continue
            hit = next((sid for sid, r in rows.items() if r.get(name_field) == v), None) if display_input else None
            body[k] = hit or ""  # not a sys_id (and no display value lookup asked for): an empty reference

    def _clean(self, raw: dict[str, Any], display_input: bool, skip: tuple[str, ...]) -> dict[str, str]:
        body = {k: str(v) for k, v in raw.items() if k not in skip}
        for k, n in MAX_LENGTH.items():
            if k in body:
                body[k] = body[k][:n]  # string fields are cut to their max length without an error
        self._resolve_refs(body, display_input)
        return body

    async def _collection_impl(self, request: Request, raw: str, table: str) -> Response:
        rows = self._rows(table)
        if rows is None:
            return _error(400, "Invalid table " + table, "")
        qp = request.query_params
        if request.method == "GET":
            try:
                q = parse_query(qp.get("sysparm_query", ""))
                limit = int(qp.get("sysparm_limit", "10000"))
                offset = int(qp.get("sysparm_offset", "0"))
            except ValueError as e:
                return _error(400, "Invalid query", str(e))
            with self._lock:
                found = [dict(r) for r in rows.values() if matches(r, q)]
                serial = next((v for g in q.groups for c in g for f, op, v in c if f == "serial_number" and op == "="),
                              None)
                if table == "cmdb_ci" and not found and self.auto_cmdb and serial:
                    found = [dict(self.cmdb[self.add_ci(serial, f"Vending machine {serial}")])]
                for fld, desc in reversed(q.order):
                    found.sort(key=lambda r, f=fld: r.get(f, ""), reverse=desc)
                total = len(found)
                found = [self._display(r, qp.get("sysparm_display_value", "false"))
                         for r in found[offset: offset + limit]]
            fields_ = qp.get("sysparm_fields")
            if fields_:
                keep = fields_.split(",")
                found = [{k: r.get(k, "") for k in keep} for r in found]
            return _ok(found, headers={"X-Total-Count": str(total)})
        body = _json_object(raw)
        if body is None:
            return _bad_json()
        display_input = qp.get("sysparm_input_display_value", "false") == "true"
        now = self.clock()
        if table == "incident":
            return await self._create_incident(request, body, display_input, now)
        if table in CI_CLASSES:
            with self._lock:
                sys_id = secrets.token_hex(16)
                rec = {**_CI_DEFAULTS, **self._clean(body, display_input, ("sys_id",)), "sys_id": sys_id,
                       "sys_class_name": table, "sys_created_on": _sn_time(now), "sys_updated_on": _sn_time(now),
                       "sys_mod_count": "0"}
                self.cmdb[sys_id] = rec
                return _ok(dict(rec), 201)
        return _error(403, "Operation Failed", f"Emulator does not allow inserts into {table}")

    async def _create_incident(self, request: Request, body: dict[str, Any], display_input: bool,
                               now: float) -> Response:
        with self._lock:
            sys_id = secrets.token_hex(16)
            rec = {**_INCIDENT_DEFAULTS, **self._clean(body, display_input, ("work_notes", "sys_id", "number"))}
            rec.update(sys_id=sys_id, number=f"INC{self._next_number:07d}", sys_created_on=_sn_time(now),
                       sys_updated_on=_sn_time(now), sys_mod_count="0", opened_at=_sn_time(now))
            denied = self._apply_state(rec, now)
            if denied:
                return denied
            self._next_number += 1
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
        qp = request.query_params
        with self._lock:
            rec = rows.get(sys_id)
            if rec is None:
                return _error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
            if request.method == "GET":
                out = self._display(dict(rec), qp.get("sysparm_display_value", "false"))
                fields_ = qp.get("sysparm_fields")
                if fields_:
                    out = {k: out.get(k, "") for k in fields_.split(",")}
                return _ok(out)
            if table == "incident" and rec["state"] in READ_ONLY_STATES:
                return _error(403, *ACL_DENIED)
            if request.method == "DELETE":
                return _error(403, *ACL_DENIED)
            body = _json_object(raw)
            if body is None:
                return _bad_json()
            display_input = qp.get("sysparm_input_display_value", "false") == "true"
            now = self.clock()
            new = {**rec, **self._clean(body, display_input, ("work_notes", "comments", "sys_id", "number",
                                                              "sys_class_name"))}
            if table == "incident":
                denied = self._apply_state(new, now, previous=rec)
                if denied:
                    return denied
                self._priority(new)
            new["sys_updated_on"] = _sn_time(now)
            new["sys_mod_count"] = str(int(rec.get("sys_mod_count", "0")) + 1)
            if table == "incident":
                self.incidents[sys_id] = new
                self._journal(sys_id, body, now)
            else:
                self.cmdb[sys_id] = new
            return _ok(self._display(dict(new), qp.get("sysparm_display_value", "false")))

    def _apply_state(self, rec: dict[str, str], now: float, previous: dict[str, str] | None = None) -> Response | None:
        if rec["state"] not in STATES:
            return _error(400, "Invalid state value", f"state {rec['state']!r} is not one of {sorted(STATES)}")
        if rec["state"] in ("6", "7") and (not rec["close_code"] or not rec["close_notes"]):
            return _error(403, "Operation Failed",
                          "Data Policy Exception: \n The following fields are mandatory: Resolution code, Resolution notes")
        was = previous["state"] if previous else ""
        if rec["state"] == "6" and was != "6":
            rec["resolved_at"] = _sn_time(now)
        if rec["state"] in ("7", "8") and was not in ("7", "8"):
            rec["closed_at"] = _sn_time(now)
        rec["active"] = "false" if rec["state"] in INACTIVE_STATES else "true"  # Resolved stays active
        if rec["state"] not in ("6", "7", "8"):
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
