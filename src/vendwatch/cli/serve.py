"""``vendwatch serve`` and ``vendwatch run ROLE``."""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
import time

import click
import uvicorn

from vendwatch.cli.common import Env, data_dir_option, pass_env
from vendwatch.config import Settings
from vendwatch.observe.logs import set_identity
from vendwatch.runtime import (
    ROLES,
    Context,
    RoleConfigError,
    Supervisor,
    Unavailable,
    build_components,
    preflight,
)

log = logging.getLogger("vendwatch.cli")


def listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket first, so a busy port is an error before anything claims to serve.

    The socket is only bound here: uvicorn starts listening on it once the app is ready,
    so until then a client is refused (and retries) instead of waiting in the backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise click.ClickException(f"address {host}:{port} is already in use (another vendwatch?); "
                                       "stop it or pick another port with --port") from None
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def uvicorn_config(app: object, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn settings of every HTTP role: the connection guards of docs/security.md."""
    from vendwatch.api.protocol import GuardedHttpProtocol

    srv = settings.server
    protocol = GuardedHttpProtocol.configured(
        header_timeout_s=srv.header_timeout_s, max_header_bytes=srv.max_header_bytes,
        max_connections_per_client=srv.max_connections_per_client)
    # ws="none": no endpoint speaks WebSocket, so no upgrade path to guard
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, http=protocol, ws="none",
                          timeout_graceful_shutdown=5, limit_concurrency=srv.max_connections,
                          timeout_keep_alive=max(1, round(srv.keep_alive_s)))


def run_http(ctx: Context, roles: list[str], host: str, port: int, sock: socket.socket | None = None) -> None:
    from vendwatch.api.server import build_app

    app = build_app(ctx, roles)
    sock = sock or listen(host, port)
    uvicorn.Server(uvicorn_config(app, ctx.settings, host, port)).run(sockets=[sock])


def schedule_note(s: Settings) -> str:
    """One line saying when the analytics tables and the lake maintenance run."""
    def every(v: float) -> str:
        return "off" if v <= 0 else f"every {v / 60:g} min" if v >= 60 else f"every {v:g} s"

    return (f"analytics tables refresh {every(s.lake.etl_interval_s)} (lake.etl_interval_s), "
            f"lake maintenance {every(s.lake.maintain_interval_s)} (lake.maintain_interval_s)")


def open_backends(ctx: Context, roles: list[str]) -> None:
    """Open the log and the state store and check the roles' own settings now: a configuration
    error (a missing extra, a bad DSN, a rule file that does not load) stops the command with
    its message instead of making a role crash and restart forever."""
    try:
        preflight(ctx.settings, roles)
    except RoleConfigError as e:
        raise click.ClickException(str(e)) from None
    wait_for_backends(ctx)


def wait_for_backends(ctx: Context) -> None:
    """Wait up to ``server.startup_wait_s`` for the log and the state database to answer (a
    broker or a database started alongside may come up a little later), one line per
    attempt; then stop with the setting and the reason."""
    s = ctx.settings
    deadline = time.monotonic() + max(0.0, s.server.startup_wait_s)
    pause = 1.0
    while True:
        setting = "bus.kafka.bootstrap_servers"
        try:
            ctx.log.check(timeout_s=min(5.0, max(1.0, deadline - time.monotonic())))
            setting = "state.postgres_dsn"
            _ = ctx.state
            return
        except Unavailable as e:
            left = deadline - time.monotonic()
            if left <= 0:
                raise click.ClickException(f"{setting}: {e}") from None
            pause = min(pause, left)
            click.echo(f"waiting for {setting}: {e}; retrying in {pause:.0f}s "
                       f"(for {left:.0f}s more, server.startup_wait_s)", err=True)
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


@click.command()
@data_dir_option
@click.option("--host", default=None, help="Address to listen on [default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default 8080].")
@click.option("--roles", default=None, help="Comma-separated roles to run [default: all].")
@pass_env
def serve(env: Env, host: str | None, port: int | None, roles: str | None) -> None:
    """Run the platform: collector, operator API and every pipeline stage.

    The collector and the console serve HTTP from this process; each pipeline stage runs
    in a child process of its own (server.role_processes), restarted when it dies and
    stopped with this process."""
    s = env.settings(**{"server.host": host, "server.port": port})
    role_list = roles.split(",") if roles else list(s.server.roles)
    if "console" not in role_list:
        role_list.append("console")
    ctx = Context(s)
    open_backends(ctx, role_list)
    sock = listen(s.server.host, s.server.port)
    click.echo(f"vendwatch serving on http://{s.server.host}:{s.server.port} (data in {s.data_dir})", err=True)
    if "lake-jobs" in role_list:
        click.echo(schedule_note(s), err=True)
    run_http(ctx, role_list, s.server.host, s.server.port, sock)
    ctx.close()


@click.command()
@click.argument("role", type=click.Choice(sorted(ROLES)))
@data_dir_option
@click.option("--host", default=None, help="Listen address for HTTP roles (collector, console).")
@click.option("--port", type=int, default=None, help="Listen port for HTTP roles.")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus /metrics on this port (roles without HTTP; HTTP roles serve /metrics already).")
@pass_env
def run(env: Env, role: str, host: str | None, port: int | None, metrics_port: int | None) -> None:
    """Run one role (scale-out deployment: one role per process, many replicas)."""
    s = env.settings(**{"server.host": host, "server.port": port})
    set_identity(role=role)
    ctx = Context(s)
    open_backends(ctx, [role])
    if metrics_port is not None and ROLES[role] is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=s.server.host)  # 0.0.0.0 in a pod (server.host)
    if ROLES[role] is None:  # HTTP role
        run_http(ctx, [role], s.server.host, s.server.port)
        return
    components = build_components(ctx, [role])
    if not components:
        raise click.ClickException(f"role {role} is not available in this build")
    sup = Supervisor(ctx, components)
    done = threading.Event()

    def _stop(*_: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sup.start()
    click.echo(f"vendwatch running role {role} (data in {s.data_dir})", err=True)
    done.wait()
    sup.stop()
    ctx.close()


commands = [serve, run]
