"""``vendwatch serve`` and ``vendwatch run ROLE``."""

from __future__ import annotations

import logging
import signal
import threading

import click

from vendwatch.cli.common import Env, data_dir_option, pass_env
from vendwatch.observe.logs import set_identity
from vendwatch.runtime import ROLES, Context, Supervisor, build_components

log = logging.getLogger("vendwatch.cli")


def run_http(ctx: Context, roles: list[str], host: str, port: int) -> None:
    import uvicorn

    from vendwatch.api.server import build_app

    app = build_app(ctx, roles)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, limit_concurrency=4096)
    uvicorn.Server(config).run()


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
    set_identity(role=role)
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
