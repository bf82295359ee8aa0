"""``vendwatch devices ...`` and ``vendwatch tokens ...``: registry and credentials."""

from __future__ import annotations

import csv
import sys
from typing import TextIO

import click

from vendwatch.api.devices import device_view
from vendwatch.cli.common import Env, data_dir_option, echo_json, iso_times, pass_env, table
from vendwatch.files import private_file
from vendwatch.state.store import MAX_ROTATION_GRACE_S, ROLES, RegistryError


@click.group()
def devices() -> None:
    """Register machines, issue and rotate their credentials, inspect their state."""


@devices.command("add")
@click.argument("device_id")
@click.option("--site", "site_id", help="Site (store, station) the machine is at.")
@click.option("--serial", help="Serial number (matches the ServiceNow CMDB item).")
@click.option("--model", help="Machine model.")
@click.option("--location", help="Free-text location.")
@click.option("--heartbeat-interval", type=int, help="Expected heartbeat interval in seconds (offline detection).")
@click.option("--json", "as_json", is_flag=True, help="Print {device_id, token} as JSON.")
@data_dir_option
@pass_env
def add(env: Env, device_id: str, site_id: str | None, serial: str | None, model: str | None,
        location: str | None, heartbeat_interval: int | None, as_json: bool) -> None:
    """Register DEVICE_ID and print its token (shown once; only a hash is stored)."""
    import msgspec

    from vendwatch.events import Id  # validate the id like the protocol does

    try:
        msgspec.convert(device_id, Id)
    except msgspec.ValidationError:
        raise click.BadParameter("use letters, digits and . _ : @ / - (max 128)", param_hint="DEVICE_ID") from None
    st = env.context().state
    try:
        token = st.add_device(device_id, site_id, serial=serial, model=model, location=location,
                              heartbeat_interval_s=heartbeat_interval)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        echo_json({"device_id": device_id, "site_id": site_id, "token": token})
    else:
        click.echo(f"device {device_id} registered; token (shown once):\n{token}")


@devices.command("import")
@click.argument("csv_file", type=click.File("r"))
@click.option("--tokens-out", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Where to write device_id,token CSV [default: stdout]; a file is created private (0600).")
@data_dir_option
@pass_env
def import_(env: Env, csv_file: click.utils.LazyFile, tokens_out: str) -> None:
    """Bulk-register devices from CSV with a header: device_id[,site_id,serial,model,location,heartbeat_interval_s].

    All rows are validated first; nothing is imported if any row is bad.
    """
    import msgspec

    from vendwatch.events import Id

    reader = csv.DictReader(csv_file)
    if not reader.fieldnames or "device_id" not in reader.fieldnames:
        raise click.ClickException("CSV needs a header row with at least a device_id column")
    allowed = {"device_id", "site_id", "serial", "model", "location", "heartbeat_interval_s"}
    extra = set(reader.fieldnames) - allowed
    if extra:
        raise click.ClickException(f"unknown CSV column(s): {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}")
    rows = []
    seen = set()
    problems: list[str] = []  # every bad row is reported, so one pass fixes the file
    for n, row in enumerate(reader, start=2):
        did = (row.get("device_id") or "").strip()
        try:
            msgspec.convert(did, Id)
        except msgspec.ValidationError:
            problems.append(f"line {n}: invalid device_id {did!r}")
            continue
        if did in seen:
            problems.append(f"line {n}: device {did} appears twice")
        seen.add(did)
        hb = (row.get("heartbeat_interval_s") or "").strip()
        if hb and not hb.isdigit():
            problems.append(f"line {n}: heartbeat_interval_s must be an integer, got {hb!r}")
            continue
        rows.append((did, row, int(hb) if hb else None))
    if problems:
        raise click.ClickException(
            f"{len(problems)} bad row(s); nothing was imported:\n  " + "\n  ".join(problems))
    st = env.context().state
    issued: list[tuple[str, str]] = []
    try:
        with st.db.transaction() as tx:
            for did, row, hb in rows:
                tok = st.add_device(did, (row.get("site_id") or None), serial=row.get("serial") or None,
                                    model=row.get("model") or None, location=row.get("location") or None,
                                    heartbeat_interval_s=hb, tx=tx)
                issued.append((did, tok))
    except RegistryError as e:
        raise click.ClickException(f"{e}; nothing was imported") from None
    # tokens are printed only once the import has committed: a failed import prints none
    if tokens_out == "-":
        _write_tokens(sys.stdout, issued)
    else:
        with private_file(tokens_out) as f:
            _write_tokens(f, issued)
    click.echo(f"imported {len(rows)} devices", err=True)


def _write_tokens(f: TextIO, issued: list[tuple[str, str]]) -> None:
    out = csv.writer(f)
    out.writerow(["device_id", "token"])
    out.writerows(issued)


@devices.command("list")
@click.option("--site", "site_id", help="Only this site.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@data_dir_option
@pass_env
def list_(env: Env, site_id: str | None, limit: int, as_json: bool) -> None:
    """List registered devices."""
    st = env.context().state
    devs = st.list_devices(site_id, limit)
    rows = [{"device_id": d.device_id, "site_id": d.site_id, "status": d.status, "serial": d.serial,
             "model": d.model} for d in devs]
    if as_json:
        echo_json(rows)
    else:
        table(rows, ["device_id", "site_id", "status", "serial", "model"])


@devices.command("show")
@click.argument("device_id")
@data_dir_option
@pass_env
def show(env: Env, device_id: str) -> None:
    """Registry entry and live state (last seen, health, firmware, connectivity, stock) as JSON."""
    view = device_view(env.context(), device_id)
    if view is None:
        raise click.ClickException(f"no device {device_id}")
    echo_json(iso_times(view))


@devices.command("disable")
@click.argument("device_id")
@data_dir_option
@pass_env
def disable(env: Env, device_id: str) -> None:
    """Refuse the device's events from now on (within ingest.auth_cache_s, 5 s by default)."""
    try:
        env.context().state.set_device_status(device_id, "disabled")
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"device {device_id} disabled")


@devices.command("enable")
@click.argument("device_id")
@data_dir_option
@pass_env
def enable(env: Env, device_id: str) -> None:
    """Accept a disabled device's events again."""
    try:
        env.context().state.set_device_status(device_id, "active")
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"device {device_id} enabled")


def _grace(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0 <= value <= MAX_ROTATION_GRACE_S:  # NaN and infinities fail this too
        raise click.BadParameter(f"must be 0 to {MAX_ROTATION_GRACE_S:g} seconds (30 days), got {value!r}")
    return value


@devices.command("rotate-secret")
@click.argument("device_id")
@click.option("--grace", type=float, default=86400, show_default=True, callback=_grace,
              help="Seconds the old token stays valid (0 revokes it now; at most 30 days).")
@click.option("--json", "as_json", is_flag=True)
@data_dir_option
@pass_env
def rotate(env: Env, device_id: str, grace: float, as_json: bool) -> None:
    """Issue a new token; the old one keeps working for --grace seconds."""
    try:
        token = env.context().state.rotate_device_token(device_id, grace)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        echo_json({"device_id": device_id, "token": token, "old_token_valid_s": grace})
    else:
        click.echo(f"new token for {device_id} (old one valid {grace:g}s more):\n{token}")


@click.group()
def tokens() -> None:
    """Operator API tokens (viewer < operator < admin)."""


@tokens.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@data_dir_option
@pass_env
def tokens_add(env: Env, name: str, role: str, as_json: bool) -> None:
    """Create an operator token NAME and print it (shown once)."""
    try:
        token = env.context().state.add_operator_token(name, role)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        echo_json({"name": name, "role": role, "token": token})
    else:
        click.echo(f"operator token {name} ({role}), shown once:\n{token}")


@tokens.command("list")
@data_dir_option
@pass_env
def tokens_list(env: Env) -> None:
    """List operator tokens (names and roles, never the secrets)."""
    rows = [{"name": n, "role": r, "disabled": d} for n, r, d in env.context().state.list_operator_tokens()]
    table(rows, ["name", "role", "disabled"])


@tokens.command("revoke")
@click.argument("name")
@data_dir_option
@pass_env
def tokens_revoke(env: Env, name: str) -> None:
    """Disable an operator token."""
    try:
        env.context().state.revoke_operator_token(name)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"operator token {name} revoked")


commands = [devices, tokens]
