"""The ``sql-server`` role: a PostgreSQL-protocol listener in front of the lake's SQL sandbox.

    vendwatch run sql-server            # scale-out: its own Deployment
    [server] roles = [..., "sql-server"] # embedded: part of `vendwatch serve`

Clients log in with any user name and an operator token (role ``sql_server.role``,
``operator`` by default, like ``POST /v1/sql``) as the password. With
``sql_server.tls_cert``/``tls_key`` the server offers TLS (``sslmode=require``);
``require_tls`` refuses clients that do not use it. The password travels in clear
inside the connection, so a listener on a non-loopback address needs TLS unless
``allow_plaintext`` says the network is trusted (a service mesh encrypting for us).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import threading
from typing import Any

from vendwatch.config import ConfigError, Settings
from vendwatch.lake.pgwire import messages as m
from vendwatch.lake.pgwire.backend import LakeBackend
from vendwatch.lake.pgwire.session import handle
from vendwatch.observe.logs import subject
from vendwatch.runtime import Context

log = logging.getLogger("vendwatch.lake.pgwire")
_FAILED_AUTH_DELAY_S = 0.5  # slows token guessing; successful logins are not delayed


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    cfg = settings.sql_server
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"sql_server.tls_cert/tls_key: cannot load ({e})") from None
    return ctx


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def too_many_connections() -> bytes:
    return m.error("53300", "too many connections to the SQL endpoint (sql_server.max_connections)", "FATAL")


class SqlServer:
    """Listens until stopped; each connection is one asyncio task, queries run in threads."""

    name = "sql-server"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg = ctx.settings.sql_server
        self.tls = tls_context(ctx.settings)
        if self.tls is None and (self.cfg.require_tls or not (_loopback(self.cfg.host) or self.cfg.allow_plaintext)):
            raise ConfigError(
                f"sql_server: listening on {self.cfg.host} without TLS would send operator tokens in clear;"
                " set sql_server.tls_cert and tls_key, or sql_server.allow_plaintext = true on a trusted network")
        self.backend = LakeBackend(ctx.settings)
        self.port: int | None = None  # the bound port (0 in the settings picks a free one)
        self.ready = threading.Event()

    async def _authenticate(self, user: str, password: str) -> str | None:
        p = await asyncio.to_thread(self.ctx.state.authenticate_operator, password)
        if p is None:
            log.warning("sql login refused: unknown, expired or disabled token", extra=subject(user=user))
            await asyncio.sleep(_FAILED_AUTH_DELAY_S)
            return "password authentication failed: the password must be a valid operator token"
        if not p.can(self.cfg.role):
            return f"token {p.name} has role {p.role}; the SQL endpoint needs {self.cfg.role}"
        return None

    async def _serve(self, stop: threading.Event) -> None:
        active: set[Any] = set()
        slots = asyncio.Semaphore(self.cfg.max_connections)

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if slots.locked():  # at max_connections: refuse rather than queue
                writer.write(too_many_connections())
                writer.close()
                return
            async with slots:
                task = asyncio.current_task()
                active.add(task)
                try:
                    await handle(reader, writer, self.backend, self._authenticate, self.tls, self.cfg.require_tls,
                                 self.cfg.idle_timeout_s)
                finally:
                    active.discard(task)

        server = await asyncio.start_server(on_client, self.cfg.host, self.cfg.port, limit=1 << 20)
        self.port = server.sockets[0].getsockname()[1]
        log.info("sql endpoint listening on %s:%s (tls %s)", self.cfg.host, self.port,
                 "on" if self.tls else "off")
        self.ready.set()
        try:
            while not stop.is_set():
                await asyncio.sleep(0.2)
        finally:
            server.close()
            for t in list(active):
                t.cancel()
            await server.wait_closed()

    def run(self, stop: threading.Event) -> None:
        asyncio.run(self._serve(stop))


def build(ctx: Context) -> SqlServer:
    """The ``sql-server`` role."""
    return SqlServer(ctx)
