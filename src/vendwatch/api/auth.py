"""Operator authentication: ``Authorization: Bearer vwo_...`` with a role check."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from vendwatch.runtime import Context
from vendwatch.state.store import OperatorPrincipal

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def principal(ctx: Context, request: Request) -> OperatorPrincipal | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return ctx.state.authenticate_operator(token.strip())


def require(ctx: Context, role: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint so it needs an operator token of at least ``role``."""

    def deco(fn: Endpoint) -> Endpoint:
        @functools.wraps(fn)
        async def wrapper(request: Request) -> Response:
            p = principal(ctx, request)
            if p is None:
                return error_response(401, "unauthorized", "operator token required", {"WWW-Authenticate": "Bearer"})
            if not p.can(role):
                return error_response(403, "forbidden", f"needs role {role}; token {p.name} has {p.role}")
            request.state.principal = p
            return await fn(request)

        return wrapper

    return deco
