"""ServiceNow Table API client (Basic auth or OAuth) on top of a rate-limited ``Gate``.

No device text ever reaches a ``sysparm_query``: tickets are found by an opaque
correlation id (checked here against its pattern), reference fields are resolved by
names from the settings (which refuse query syntax), and CIs by our own correlation id
or by a serial number only when it is plain alphanumerics. Results are re-checked for
an exact match, so a query that matched more than intended adopts nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import httpx

from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import DeliveryFailed, Gate
from vendwatch.incidents.config import ServiceNowSettings

log = logging.getLogger("vendwatch.incidents.servicenow")

CORRELATION_DISPLAY = "vendwatch"
OPAQUE_ID = re.compile(r"^vw-[a-z]*-?[0-9a-f]{16,64}$")
# serial numbers that cannot carry encoded-query syntax (no ^, no operator keywords glued to a field)
SAFE_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
TICKET_FIELDS = "sys_id,number,state,correlation_id,correlation_display,close_notes,sys_updated_on"
REFRESH_MARGIN_S = 60.0  # renew an OAuth token this long before it expires


class UnsafeQueryValue(ValueError):
    """A value that could change the meaning of an encoded query."""


def _opaque(value: str) -> str:
    if not OPAQUE_ID.match(value):
        raise UnsafeQueryValue(f"not an opaque vendwatch id: {value!r}")
    return value


class ServiceNowClient:
    def __init__(self, cfg: ServiceNowSettings, clock: Clock) -> None:
        self.cfg = cfg
        self.clock = clock
        self.base = cfg.url.rstrip("/")
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._refresh_token: str | None = None
        self._lock = threading.Lock()
        self._refs: dict[tuple[str, str], str] = {}

    # -- auth -------------------------------------------------------------------------
    def _token_request(self, gate: Gate, form: dict[str, str]) -> dict[str, Any]:
        resp = gate.request("POST", f"{self.base}/oauth_token.do", data=form, timeout=self.cfg.timeout_s)
        body = resp.json()
        if not body.get("access_token"):
            raise DeliveryFailed("oauth_token.do answered without access_token", resp.status_code, retryable=False)
        return dict(body)

    def _fetch_token(self, gate: Gate) -> None:
        o = self.cfg.oauth
        base = {"client_id": o.client_id, "client_secret": o.client_secret}
        body: dict[str, Any] | None = None
        if self._refresh_token:
            try:
                body = self._token_request(gate, {**base, "grant_type": "refresh_token",
                                                  "refresh_token": self._refresh_token})
            except DeliveryFailed as e:
                if e.status not in (400, 401):
                    raise
                self._refresh_token = None  # expired or revoked: fall back to the configured grant
        if body is None:
            form = {**base, "grant_type": o.grant_type}
            if o.grant_type == "password":
                form.update(username=self.cfg.username, password=self.cfg.password)
            body = self._token_request(gate, form)
        now = self.clock.now()
        self._token = str(body["access_token"])
        self._token_expires_at = now + float(body.get("expires_in") or 1799)
        self._refresh_token = str(body.get("refresh_token") or self._refresh_token or "") or None

    def ensure_auth(self, gate: Gate) -> dict[str, Any]:
        """Request arguments that authenticate; an OAuth token is renewed before it expires."""
        if self.cfg.auth == "basic":
            return {"auth": httpx.BasicAuth(self.cfg.username, self.cfg.password)}
        with self._lock:
            if self._token is None or self.clock.now() >= self._token_expires_at - REFRESH_MARGIN_S:
                self._fetch_token(gate)
            return {"headers": {"Authorization": f"Bearer {self._token}"}}

    def call(self, gate: Gate, method: str, path: str, *, params: dict[str, str] | None = None,
             json: Any = None, prepaid: bool = False) -> Any:
        """One Table API call; returns ``result``. A token refused early is renewed once."""
        url = f"{self.base}{path}"
        for attempt in (1, 2):
            kw = self.ensure_auth(gate)
            headers = {"Accept": "application/json", **kw.pop("headers", {})}
            try:
                resp = gate.request(method, url, params=params, json=json, headers=headers,
                                    timeout=self.cfg.timeout_s, prepaid=prepaid and attempt == 1, **kw)
            except DeliveryFailed as e:
                if e.status == 401 and self.cfg.auth == "oauth" and attempt == 1:
                    with self._lock:
                        self._token = None  # revoked before its time: one fresh token, then give up
                    continue
                raise
            return resp.json().get("result")
        raise AssertionError("unreachable")

    # -- incidents ----------------------------------------------------------------------
    def find_by_correlation(self, gate: Gate, correlation_id: str) -> dict[str, Any] | None:
        """The ticket vendwatch created with this correlation id, whatever its state; None if there is none."""
        q = f"correlation_id={_opaque(correlation_id)}^correlation_display={CORRELATION_DISPLAY}^ORDERBYsys_created_on"
        rows = self.call(gate, "GET", "/api/now/table/incident",
                         params={"sysparm_query": q, "sysparm_limit": "10", "sysparm_fields": TICKET_FIELDS})
        exact = [r for r in rows or [] if r.get("correlation_id") == correlation_id
                 and r.get("correlation_display") == CORRELATION_DISPLAY]
        return exact[0] if exact else None

    def get(self, gate: Gate, sys_id: str) -> dict[str, Any]:
        return dict(self.call(gate, "GET", f"/api/now/table/incident/{sys_id}",
                              params={"sysparm_fields": TICKET_FIELDS}))

    def create(self, gate: Gate, fields: dict[str, Any], *, prepaid: bool = False) -> dict[str, Any]:
        return dict(self.call(gate, "POST", "/api/now/table/incident", json=fields, prepaid=prepaid))

    def update(self, gate: Gate, sys_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call(gate, "PATCH", f"/api/now/table/incident/{sys_id}", json=fields))

    # -- references -----------------------------------------------------------------------
    def reference(self, gate: Gate, table: str, name_field: str, value: str) -> str:
        """The sys_id a reference field needs: ``value`` itself if it is one, else the record named so (cached)."""
        if re.fullmatch(r"[0-9a-f]{32}", value):
            return value
        key = (table, value)
        if key not in self._refs:
            # the settings refuse ^ in these names, so the value cannot add query terms
            rows = self.call(gate, "GET", f"/api/now/table/{table}", params={
                "sysparm_query": f"{name_field}={value}", "sysparm_limit": "2", "sysparm_fields": f"sys_id,{name_field}"})
            exact = [r for r in rows or [] if r.get(name_field) == value]
            if not exact:
                raise DeliveryFailed(f"no {table} record with {name_field} {value!r} (check the settings)", 400,
                                     retryable=False)
            self._refs[key] = str(exact[0]["sys_id"])
        return self._refs[key]

    # -- CMDB -----------------------------------------------------------------------------
    def ci_by_correlation(self, gate: Gate, table: str, correlation_id: str) -> dict[str, Any] | None:
        q = f"correlation_id={_opaque(correlation_id)}^correlation_display={CORRELATION_DISPLAY}"
        rows = self.call(gate, "GET", f"/api/now/table/{table}",
                         params={"sysparm_query": q, "sysparm_limit": "2", "sysparm_fields": "sys_id,name,correlation_id"})
        exact = [r for r in rows or [] if r.get("correlation_id") == correlation_id]
        return exact[0] if exact else None

    def ci_by_serial(self, gate: Gate, serial: str) -> str | None:
        """A CI found by serial number (e.g. by Discovery); only plain serials are ever put in a query."""
        if not SAFE_SERIAL.match(serial):
            log.info("not looking up CMDB serial %r: it contains characters a query would interpret", serial)
            return None
        rows = self.call(gate, "GET", "/api/now/table/cmdb_ci", params={
            "sysparm_query": f"serial_number={serial}", "sysparm_limit": "2", "sysparm_fields": "sys_id,serial_number"})
        exact = [r for r in rows or [] if r.get("serial_number") == serial]
        return str(exact[0]["sys_id"]) if exact else None

    def create_ci(self, gate: Gate, table: str, fields: dict[str, Any], *, prepaid: bool = False) -> dict[str, Any]:
        return dict(self.call(gate, "POST", f"/api/now/table/{table}", json=fields, prepaid=prepaid))

    def update_ci(self, gate: Gate, table: str, sys_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call(gate, "PATCH", f"/api/now/table/{table}/{sys_id}", json=fields))
