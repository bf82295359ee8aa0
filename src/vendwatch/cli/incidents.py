"""``vendwatch incidents|silences|dlq|routes|dev`` commands."""

from __future__ import annotations

import getpass
import re
import signal
import threading
import time
from datetime import datetime
from typing import Any

import click

from vendwatch.cli.common import Env, data_dir_option, echo_json, iso_times, pass_env, table


def _service(env: Env) -> Any:
    from vendwatch.incidents.service import IncidentService

    ctx = env.context()
    return IncidentService(ctx.state, ctx.settings.incidents)


def _when(t: float | None) -> str | None:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else None


def _duration(text: str) -> float:
    mt = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not mt:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 2h, 1d")
    return float(mt.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[mt.group(2)]


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


# -- incidents ------------------------------------------------------------------------------
@click.group()
def incidents() -> None:
    """List, inspect, acknowledge and resolve incidents."""


@incidents.command("list")
@data_dir_option
@click.option("--status", type=click.Choice(["open", "acknowledged", "resolved", "absorbed", "active"]),
              help="Only this status (active = open or acknowledged).")
@click.option("--severity", type=click.Choice(["critical", "major", "minor", "warning", "info"]))
@click.option("--device", "device_id", help="Only this device.")
@click.option("--site", "site_id", help="Only this site.")
@click.option("--rule", "rule_id", help="Only this rule.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_env
def incidents_list(env: Env, status: str | None, severity: str | None, device_id: str | None,
                   site_id: str | None, rule_id: str | None, limit: int, as_json: bool) -> None:
    """Incidents, newest first."""
    from vendwatch.incidents.api import incident_doc

    svc = _service(env)
    rows = [incident_doc(i) for i in svc.store.list(status=status, severity=severity, device_id=device_id,
                                                    site_id=site_id, rule_id=rule_id, limit=limit)]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        r["opened"] = _when(r["opened_at"])
        ref = svc.store.ref(None, r["incident_id"], "servicenow")
        r["servicenow"] = ref["number"] if ref else None
    table(rows, ["incident_id", "status", "severity", "dedupe_key", "occurrences", "opened", "servicenow"])


@incidents.command("show")
@click.argument("incident_id")
@data_dir_option
@pass_env
def incidents_show(env: Env, incident_id: str) -> None:
    """One incident with its timeline, severity history and external references (JSON)."""
    from vendwatch.incidents.api import detail_doc

    svc = _service(env)
    inc = svc.store.get(incident_id)
    if inc is None:
        raise click.ClickException(f"no incident {incident_id}")
    echo_json(iso_times(detail_doc(svc, inc)))


@incidents.command("ack")
@click.argument("incident_id")
@data_dir_option
@click.option("--actor", default=None, help="Who acknowledges [default cli:$USER].")
@pass_env
def incidents_ack(env: Env, incident_id: str, actor: str | None) -> None:
    """Acknowledge an open incident (ServiceNow: In Progress, with a work note)."""
    from vendwatch.incidents.service import IncidentNotFound

    try:
        d = _service(env).acknowledge(incident_id, actor or _default_actor())
    except IncidentNotFound:
        raise click.ClickException(f"no incident {incident_id}") from None
    if d.ignored:
        raise click.ClickException(f"cannot acknowledge {incident_id}: {d.ignored}")
    click.echo(f"acknowledged {incident_id}")


@incidents.command("resolve")
@click.argument("incident_id")
@data_dir_option
@click.option("--note", default="", help="Resolution note (sent as ServiceNow close notes).")
@click.option("--actor", default=None, help="Who resolves [default cli:$USER].")
@pass_env
def incidents_resolve(env: Env, incident_id: str, note: str, actor: str | None) -> None:
    """Resolve an active incident now (no flap damping)."""
    from vendwatch.incidents.service import IncidentNotFound

    try:
        d = _service(env).resolve(incident_id, actor or _default_actor(), note)
    except IncidentNotFound:
        raise click.ClickException(f"no incident {incident_id}") from None
    if d.ignored:
        raise click.ClickException(f"cannot resolve {incident_id}: {d.ignored}")
    click.echo(f"resolved {incident_id}")


# -- silences -------------------------------------------------------------------------------
@click.group()
def silences() -> None:
    """Maintenance windows: suppress new incidents for a device, site or rule until they expire."""


@silences.command("add")
@data_dir_option
@click.option("--device", "device_id", help="Silence this device.")
@click.option("--site", "site_id", help="Silence this site.")
@click.option("--rule", "rule_id", help="Silence this rule (combine with --device/--site to narrow).")
@click.option("--duration", default="1h", show_default=True, help="How long: 90s, 15m, 2h, 1d.")
@click.option("--reason", default="", help="Why (shown in listings).")
@click.option("--actor", default=None, help="Who [default cli:$USER].")
@pass_env
def silences_add(env: Env, device_id: str | None, site_id: str | None, rule_id: str | None, duration: str,
                 reason: str, actor: str | None) -> None:
    """Add a silence; prints its id."""
    if not (device_id or site_id or rule_id):
        raise click.UsageError("give at least one of --device, --site, --rule")
    now = time.time()
    sid = _service(env).store.add_silence(device_id=device_id, site_id=site_id, rule_id=rule_id,
                                          expires_at=now + _duration(duration), created_by=actor or _default_actor(),
                                          reason=reason, now=now)
    click.echo(sid)


@silences.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_env
def silences_list(env: Env, as_json: bool) -> None:
    """Silences, with whether each is active now and how many creations it suppressed."""
    rows = _service(env).store.list_silences(time.time())
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        r["expires"] = _when(r["expires_at"])
    table(rows, ["silence_id", "device_id", "site_id", "rule_id", "active", "expires", "suppressed", "reason"])


@silences.command("remove")
@click.argument("silence_id")
@data_dir_option
@pass_env
def silences_remove(env: Env, silence_id: str) -> None:
    """Remove a silence."""
    if not _service(env).store.remove_silence(silence_id):
        raise click.ClickException(f"no silence {silence_id}")
    click.echo(f"removed {silence_id}")


# -- dlq ------------------------------------------------------------------------------------
@click.group()
def dlq() -> None:
    """Dead-letter queue: deliveries that could not be made (per target)."""


def _outbox(env: Env) -> Any:
    return _service(env).outbox


@dlq.command("list")
@data_dir_option
@click.option("--target", default=None, help="Only this target (servicenow, or a routing target name).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_env
def dlq_list(env: Env, target: str | None, as_json: bool) -> None:
    """Dead letters, oldest first."""
    rows = _outbox(env).dlq_list(target, limit=10_000)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        r["failed"] = _when(r["failed_at"])
        r["reason"] = (r["reason"] or "")[:80]
    table(rows, ["dlq_id", "target", "op", "key", "attempts", "last_status", "failed", "reason"])


@dlq.command("show")
@click.argument("dlq_id")
@data_dir_option
@pass_env
def dlq_show(env: Env, dlq_id: str) -> None:
    """One dead letter with its payload and the last error (JSON)."""
    row = _outbox(env).dlq_show(dlq_id)
    if row is None:
        raise click.ClickException(f"no dead letter {dlq_id}")
    echo_json(iso_times(row))


def _selection(dlq_id: str | None, target: str | None, all_: bool) -> dict[str, Any]:
    if sum(bool(x) for x in (dlq_id, target, all_)) != 1:
        raise click.UsageError("give exactly one of DLQ_ID, --target or --all")
    return {"dlq_id": dlq_id, "target": target}


@dlq.command("redrive")
@click.argument("dlq_id", required=False)
@data_dir_option
@click.option("--target", default=None, help="Redrive every dead letter of this target.")
@click.option("--all", "all_", is_flag=True, help="Redrive every dead letter.")
@pass_env
def dlq_redrive(env: Env, dlq_id: str | None, target: str | None, all_: bool) -> None:
    """Put dead letters back in the outbox (attempts reset); the running orchestrator/router delivers them."""
    n = _outbox(env).redrive(time.time(), **_selection(dlq_id, target, all_))
    if dlq_id and n == 0:
        raise click.ClickException(f"no dead letter {dlq_id}")
    click.echo(f"redriven: {n}")


@dlq.command("purge")
@click.argument("dlq_id", required=False)
@data_dir_option
@click.option("--target", default=None, help="Purge every dead letter of this target.")
@click.option("--all", "all_", is_flag=True, help="Purge every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_env
def dlq_purge(env: Env, dlq_id: str | None, target: str | None, all_: bool, yes: bool) -> None:
    """Delete dead letters for good."""
    sel = _selection(dlq_id, target, all_)
    if not yes and not dlq_id:
        click.confirm("Delete these dead letters permanently?", abort=True)
    n = _outbox(env).purge(**sel)
    if dlq_id and n == 0:
        raise click.ClickException(f"no dead letter {dlq_id}")
    click.echo(f"purged: {n}")


# -- routes ---------------------------------------------------------------------------------
@click.group()
def routes() -> None:
    """Routing rules (EventBridge-style event patterns) of the business event bus."""


@routes.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def routes_check(path: str) -> None:
    """Validate a routing rules file; errors name the rule and field."""
    from vendwatch.route.rules import RulesError, load_rules

    try:
        rs = load_rules(path)
    except RulesError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"ok: {len(rs.rules)} rule(s), {len(rs.targets)} target(s)")


@routes.command("match")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.argument("event_json")
def routes_match(path: str, event_json: str) -> None:
    """Print the targets an event (JSON text, an envelope or a signal) would be routed to."""
    from vendwatch.route.envelope import EnvelopeError, from_record
    from vendwatch.route.rules import RulesError, load_rules

    try:
        rs = load_rules(path)
        event = from_record(event_json.encode(), "cli", 0, 0)
    except (RulesError, EnvelopeError) as e:
        raise click.ClickException(str(e)) from None
    echo_json({"event": event, "targets": rs.targets_for(event)})


# -- dev ------------------------------------------------------------------------------------
@click.group()
def dev() -> None:
    """Developer tools: SaaS emulators for local runs and tests."""


def _serve_forever(server: Any, what: str) -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    click.echo(f"{what} listening on {server.url} (Ctrl-C to stop)", err=True)
    done.wait()
    server.stop()


@dev.command("servicenow-emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8089, show_default=True, help="0 picks a free port.")
@click.option("--username", default="vendwatch", show_default=True, help="Basic auth / OAuth password-grant user.")
@click.option("--password", default="vendwatch", show_default=True)
@click.option("--client-id", default="vendwatch-client", show_default=True, help="OAuth client id.")
@click.option("--client-secret", default="vendwatch-secret", show_default=True, help="OAuth client secret.")
@click.option("--ci", "cis", multiple=True, metavar="SERIAL=NAME",
              help="Seed a CI (cmdb_ci_hardware) with this serial number (repeatable).")
@click.option("--group", "groups", multiple=True, metavar="NAME",
              help="Seed an assignment group (sys_user_group) with this name (repeatable).")
@click.option("--rate-limit-per-hour", type=click.IntRange(1), default=None,
              help="Answer 429 with Retry-After beyond this many requests per hour.")
def dev_servicenow(host: str, port: int, username: str, password: str, client_id: str, client_secret: str,
                   cis: tuple[str, ...], groups: tuple[str, ...], rate_limit_per_hour: int | None) -> None:
    """Run a ServiceNow emulator built from ServiceNow's documentation (development and tests only).

    Tables: incident (state model, Closed/Canceled read-only), cmdb_ci and its class
    tables, sys_user_group, sys_user, sys_journal_field; encoded queries; Basic auth and
    /oauth_token.do (password, client_credentials, refresh_token).

    Inject faults with POST /_emulator/faults, e.g. {"status": 503, "count": 5} or
    {"status": 429, "retry_after": 30}; see requests with GET /_emulator/requests.
    """
    from vendwatch.emulators.servicenow import ServiceNowEmulator

    emu = ServiceNowEmulator(username=username, password=password, client_id=client_id,
                             client_secret=client_secret, rate_limit_per_hour=rate_limit_per_hour)
    for spec in cis:
        serial, sep, name = spec.partition("=")
        if not sep or not serial:
            raise click.BadParameter(f"{spec!r} is not SERIAL=NAME", param_hint="--ci")
        emu.add_ci(serial, name)
    for group in groups:
        emu.add_group(group)
    _serve_forever(emu.serve(host, port), "ServiceNow emulator")


@dev.command("pagerduty-emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True, help="0 picks a free port.")
def dev_pagerduty(host: str, port: int) -> None:
    """Run the PagerDuty Events API v2 emulator (POST /v2/enqueue)."""
    from vendwatch.route.pagerduty.emulator import PagerDutyEmulator

    _serve_forever(PagerDutyEmulator().serve(host, port), "PagerDuty emulator")


commands = [incidents, silences, dlq, routes, dev]
