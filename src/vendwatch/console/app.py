"""Serves the console: one HTML shell for every page, static assets, security headers.

The pages are client-side routes under ``/console/`` (the shell is returned for any of
them, so links and reloads work); ``/`` redirects there. The shell and its assets are
sent with a strict Content-Security-Policy: scripts and styles only from this origin,
no inline code, no frames, no outside connections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vendwatch.console import api
from vendwatch.runtime import Context

STATIC_DIR = Path(__file__).parent / "static"

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class _WithHeaders:
    """ASGI wrapper adding fixed headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.raw]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def csp_for(tiles_url: str) -> str:
    """The CSP, with the map tile server's origin allowed for images when one is configured."""
    if not tiles_url:
        return CSP
    parts = urlsplit(tiles_url)
    return CSP.replace("img-src 'self' data:", f"img-src 'self' data: {parts.scheme}://{parts.netloc}")


def _shell_for(ctx: Context) -> Callable[[Request], Awaitable[Response]]:
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": csp_for(ctx.settings.console.map_tiles_url),
               "Cache-Control": "no-cache"}  # revalidated on each load so an upgrade is picked up at once

    async def shell(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=headers)

    return shell


async def _to_console(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=307)


def routes(ctx: Context) -> list[BaseRoute]:
    """Console pages, assets and the console's read API."""
    assets = StaticFiles(directory=STATIC_DIR)
    return [
        *api.routes(ctx),
        Route("/", _to_console, methods=["GET"]),
        Route("/console", _to_console, methods=["GET"]),
        Mount("/console/static", app=_WithHeaders(assets, {**SECURITY_HEADERS, "Cache-Control": "no-cache"}),
              name="console-static"),
        Route("/console/{page:path}", _shell_for(ctx), methods=["GET"]),
    ]
