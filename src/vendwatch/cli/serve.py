"""``vendwatch serve`` and ``vendwatch run ROLE``."""

from __future__ import annotations

import logging
import signal
import threading

import click
import uvicorn

from vendwatch.cli.common import Env, data_dir_option, pass_env
from vendwatch.config import Settings
from vendwatch.runtime import ROLES, Context, Supervisor, build_components

log = logging.getLogger("vendwatch.cli")


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


def run_http(ctx: Context, roles: list[str], host: str, port: int) -> None:
    from vendwatch.api.server import build_app

    app = build_app(ctx, roles)
    uvicorn.Server(uvicorn_config(app, ctx.settings, host, port)).run()


@click.command()
@data_dir_option
@click.option("--host", default=None, help="Address to listen on [default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default 8080].")
@click.option("--roles", default=None, help="Comma-separated roles to run [default: all].")
@pass_env
def serve(env: Env, host: str | None, port: int | None, roles: str | None) -> None:
    """Run the platform in one process: collector, operator API and every pipeline stage."""
    s = env.settings(**{"server.host": host, "server.port": port})
    role_list = roles.split(",") if roles else list(s.server.roles)
    if "console" not in role_list:
        role_list.append("console")
    ctx = Context(s)
    click.echo(f"vendwatch serving on http://{s.server.host}:{s.server.port} (data in {s.data_dir})", err=True)
    run_http(ctx, role_list, s.server.host, s.server.port)
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
    ctx = Context(s)
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
