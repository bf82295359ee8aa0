"""``vendwatch db ...`` and ``vendwatch bus ...``: one-off operations for deployments
(a Kubernetes init Job runs ``db migrate`` and ``bus init`` before the roles start)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from vendwatch.bus.base import LogError
from vendwatch.cli.common import Env, data_dir_option, echo_json, pass_env


def _clear_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An unreachable database or broker is a one-line error, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from vendwatch.state.postgres import DatabaseUnavailable

        try:
            return fn(*args, **kwargs)
        except (DatabaseUnavailable, LogError) as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def load_all_components() -> list[str]:
    """Import every role and HTTP module of this build, so each registers its migrations."""
    from vendwatch.runtime import HTTP_ROUTES, ROLES, load

    loaded = []
    for ref in [r for r in ROLES.values() if r] + list(HTTP_ROUTES):
        if load(ref) is not None:
            loaded.append(ref.partition(":")[0])
    return loaded


@click.group()
def db() -> None:
    """State store (SQLite or PostgreSQL) maintenance."""


@db.command("migrate")
@data_dir_option
@pass_env
@_clear_errors
def migrate(env: Env) -> None:
    """Apply pending schema migrations of every component (safe to run concurrently).

    Roles also migrate at start; run this first when deploying so replicas start fast
    and a failing migration stops the rollout instead of the roles.
    """
    from vendwatch.state import migrations
    from vendwatch.state.db import open_database

    s = env.settings()
    load_all_components()
    database = open_database(s)
    try:
        applied = migrations.apply(database)
        total = database.one("SELECT count(*) FROM schema_migrations")
    finally:
        database.close()
    where = s.state.backend if s.state.backend == "postgres" else f"sqlite ({s.data_dir})"
    for component, version in applied:
        click.echo(f"applied {component} v{version}")
    click.echo(f"{len(applied)} migration(s) applied, {total[0] if total else 0} in total on {where}")


@db.command("status")
@data_dir_option
@pass_env
@_clear_errors
def status(env: Env) -> None:
    """List applied and pending migrations as JSON."""
    from vendwatch.state import migrations
    from vendwatch.state.db import open_database

    load_all_components()
    database = open_database(env.settings())
    try:
        database.execute("CREATE TABLE IF NOT EXISTS schema_migrations(component TEXT NOT NULL,"
                         " version INTEGER NOT NULL, PRIMARY KEY(component, version))")
        done = {tuple(r) for r in database.query("SELECT component, version FROM schema_migrations")}
    finally:
        database.close()
    known = sorted(migrations._REGISTRY)
    echo_json({
        "applied": [f"{c} v{v}" for c, v in sorted(done)],
        "pending": [f"{c} v{v}" for c, v in known if (c, v) not in done],
    })


@click.group()
def bus() -> None:
    """Event log (SQLite or Kafka) maintenance."""


@bus.command("init")
@click.option("--partitions", type=int, default=None,
              help="Partitions per topic [default: bus.kafka.partitions or bus.partitions].")
@data_dir_option
@pass_env
@_clear_errors
def bus_init(env: Env, partitions: int | None) -> None:
    """Create the vendwatch topics (events, rejected, signals, business) if missing.

    On Kafka the partition count bounds how many detector and lake-writer replicas can
    work in parallel; it cannot be lowered later (raising it moves devices to new
    partitions, so do it with the pipeline drained).
    """
    from vendwatch.bus import BUSINESS, EVENTS, REJECTED, SIGNALS, open_log

    if partitions is not None and partitions <= 0:
        raise click.BadParameter("must be > 0", param_hint="--partitions")
    log = open_log(env.settings())
    try:
        for t in (EVENTS, REJECTED, SIGNALS, BUSINESS):
            log.create_topic(t, partitions)
            click.echo(f"{t}: {log.partitions(t)} partitions")
    finally:
        log.close()


def _write_private(path: str, lines: list[str]) -> None:
    """Write atomically with mode 0600 (the broker re-reads it on SIGHUP)."""
    import os

    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    os.replace(tmp, path)


@click.command("export-mosquitto")
@click.option("--passwords", "passwords_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Mosquitto password_file to write (username = device id, password = device token).")
@click.option("--acl", "acl_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Mosquitto acl_file to write (a device may publish only to vendwatch/v1/<id>/events).")
@click.option("--bridge-user", default=None, help="The MQTT bridge's account [default: mqtt.username].")
@click.option("--bridge-password-file", type=click.File("r"), default=None,
              help="File holding the bridge's password [default: mqtt.password; without one, no bridge entry].")
@data_dir_option
@pass_env
@_clear_errors
def export_mosquitto(env: Env, passwords_path: str, acl_path: str, bridge_user: str | None,
                     bridge_password_file: click.utils.LazyFile | None) -> None:
    """Write Mosquitto's password file and ACL from the device registry.

    Active devices get an entry; disabled ones are left out (they can no longer
    connect once the broker reloads: `kill -HUP <mosquitto pid>`). Run it after adding,
    disabling or rotating devices. A device's MQTT password is its current token.
    """
    from vendwatch.state.mqtt_auth import export_mosquitto as export

    s = env.settings()
    user = bridge_user or s.mqtt.username
    password = bridge_password_file.read().strip() if bridge_password_file else s.mqtt.password
    out = export(env.context().state.db, user, password)
    _write_private(passwords_path, out.passwords)
    _write_private(acl_path, out.acl)
    for device_id, why in out.skipped:
        click.echo(f"skipped {device_id}: {why}", err=True)
    devices_n = len(out.passwords) - (1 if password else 0)
    click.echo(f"{devices_n} device(s) exported to {passwords_path}; ACL in {acl_path}"
               + (f"; {len(out.skipped)} skipped" if out.skipped else ""))


def _attach_device_commands() -> None:
    # `devices` is defined in cli/devices.py; this command belongs to the MQTT work
    from vendwatch.cli.devices import devices

    devices.add_command(export_mosquitto)


_attach_device_commands()

commands = [db, bus]
