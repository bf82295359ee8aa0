"""Operator authentication: ``Authorization: Bearer vwo_...`` with a role check."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from vendwatch.api.authfail import AuthFailures
from vendwatch.runtime import Context
from vendwatch.state.store import OperatorPrincipal

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


MAX_TOKEN_CHARS = 256  # tokens are ~50 characters; anything far longer is refused unread


def principal(ctx: Context, request: Request) -> OperatorPrincipal | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return ctx.state.authenticate_operator(token)


def _failures(ctx: Context) -> AuthFailures:
    fails = ctx.extras.get("operator_auth_failures")
    if fails is None:
        s = ctx.settings.server
        fails = ctx.extras["operator_auth_failures"] = AuthFailures("operator", s.auth_failures_per_min,
                                                                    s.auth_failures_burst)
    return fails  # type: ignore[no-any-return]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def require(ctx: Context, role: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint so it needs an operator token of at least ``role``."""

    def deco(fn: Endpoint) -> Endpoint:
        @functools.wraps(fn)
        async def wrapper(request: Request) -> Response:
            fails, client = _failures(ctx), client_address(request)
            wait = fails.retry_after(client)
            if wait:
                return error_response(429, "too_many_auth_failures", f"too many failed authentications from"
                                      f" {client}; retry in {wait}s", {"Retry-After": str(wait)})
            # off the event loop: on PostgreSQL a round trip, and while it is away a timeout
            p = await run_in_threadpool(principal, ctx, request)
            if p is None:
                fails.failed(client, "missing or unknown operator token")
                return error_response(401, "unauthorized", "operator token required", {"WWW-Authenticate": "Bearer"})
            if not p.can(role):
                return error_response(403, "forbidden", f"needs role {role}; token {p.name} has {p.role}")
            request.state.principal = p
            return await fn(request)

        return wrapper

    return deco
