"""ServiceNow Table API client (Basic auth or OAuth) on top of a rate-limited ``Gate``."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from vendwatch.delivery.dispatch import DeliveryFailed, Gate
from vendwatch.incidents.config import ServiceNowSettings


class ServiceNowClient:
    def __init__(self, cfg: ServiceNowSettings) -> None:
        self.cfg = cfg
        self.base = cfg.url.rstrip("/")
        self._token: str | None = None
        self._lock = threading.Lock()

    # -- auth -------------------------------------------------------------------------
    def _fetch_token(self, gate: Gate) -> str:
        o = self.cfg.oauth
        form = {"grant_type": o.grant_type, "client_id": o.client_id, "client_secret": o.client_secret}
        if o.grant_type == "password":
            form.update(username=self.cfg.username, password=self.cfg.password)
        resp = gate.request("POST", f"{self.base}/oauth_token.do", data=form, timeout=self.cfg.timeout_s)
        token = resp.json().get("access_token")
        if not token:
            raise DeliveryFailed("oauth_token.do answered without access_token", resp.status_code, retryable=False)
        return str(token)

    def _auth_kwargs(self, gate: Gate) -> dict[str, Any]:
        if self.cfg.auth == "basic":
            return {"auth": httpx.BasicAuth(self.cfg.username, self.cfg.password)}
        with self._lock:
            if self._token is None:
                self._token = self._fetch_token(gate)
            return {"headers": {"Authorization": f"Bearer {self._token}"}}

    def call(self, gate: Gate, method: str, path: str, *, params: dict[str, str] | None = None,
             json: Any = None) -> Any:
        """One Table API call; returns ``result``. An expired OAuth token is renewed once."""
        url = f"{self.base}{path}"
        for attempt in (1, 2):
            kw = self._auth_kwargs(gate)
            headers = {"Accept": "application/json", **kw.pop("headers", {})}
            try:
                resp = gate.request(method, url, params=params, json=json, headers=headers,
                                    timeout=self.cfg.timeout_s, **kw)
            except DeliveryFailed as e:
                if e.status == 401 and self.cfg.auth == "oauth" and attempt == 1:
                    with self._lock:
                        self._token = None
                    continue
                raise
            return resp.json().get("result")
        raise AssertionError("unreachable")

    # -- Table API ------------------------------------------------------------------------
    def find_active_by_correlation(self, gate: Gate, correlation_id: str) -> dict[str, Any] | None:
        rows = self.call(gate, "GET", "/api/now/table/incident", params={
            "sysparm_query": f"correlation_id={correlation_id}^active=true^ORDERBYDESCsys_created_on",
            "sysparm_limit": "1", "sysparm_fields": "sys_id,number,state,correlation_id"})
        return rows[0] if rows else None

    def create(self, gate: Gate, fields: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call(gate, "POST", "/api/now/table/incident", json=fields))

    def update(self, gate: Gate, sys_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call(gate, "PATCH", f"/api/now/table/incident/{sys_id}", json=fields))

    def cmdb_ci_by_serial(self, gate: Gate, serial: str) -> str | None:
        rows = self.call(gate, "GET", "/api/now/table/cmdb_ci", params={
            "sysparm_query": f"serial_number={serial}", "sysparm_limit": "1", "sysparm_fields": "sys_id,name"})
        return str(rows[0]["sys_id"]) if rows else None
