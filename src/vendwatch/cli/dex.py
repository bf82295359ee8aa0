"""``vendwatch dex import``: audit files collected by handhelds, appended like a device upload."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.cli.common import Env, data_dir_option, echo_json, pass_env, table
from vendwatch.dex.intake import judge, remember
from vendwatch.dex.parser import DexError, parse, read_time
from vendwatch.dex.store import DexStore
from vendwatch.events import utcnow
from vendwatch.ingest.sink import open_sink


@click.group()
def dex() -> None:
    """EVA-DTS (DEX) audit files: import reads collected by handhelds or modems."""


def _taken(raw: bytes) -> datetime:
    try:
        t = read_time(parse(raw).read)
    except DexError:
        t = None
    return t.replace(tzinfo=UTC) if t is not None else datetime.max.replace(tzinfo=UTC)


@dex.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device", "device_id", required=True, help="The registered device the files were read from.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file instead of a table.")
@data_dir_option
@pass_env
def import_(env: Env, files: tuple[Path, ...], device_id: str, as_json: bool) -> None:
    """Import DEX FILES of one machine, oldest read first (the same checks and events as POST /v1/dex).

    A file already imported or uploaded is reported as a duplicate and stored once. A
    refused file (wrong CRC, broken frame) is kept in the quarantine with its reason;
    the exit status is then 1.
    """
    ctx = env.context()
    try:
        device = ctx.state.get_device(device_id)
        if device is None:
            raise click.ClickException(f"unknown device {device_id!r}; register it with `vendwatch devices add`")
        raws = sorted(((p, p.read_bytes()) for p in files), key=lambda x: _taken(x[1]))
        ctx.log.create_topic(EVENTS)
        ctx.log.create_topic(REJECTED)
        sink = open_sink(ctx.log, ctx.settings)
        sink.warm()
        store = DexStore(ctx.state.db)
        rows, refused = [], 0
        for path, raw in raws:
            j = judge(raw, device, ctx.settings.ingest, store, utcnow())
            fresh = sink.commit(j.accepted, j.quarantine)
            if j.refused is not None:
                refused += 1
                rows.append({"file": str(path), "verdict": "refused", "code": j.refused[0], "reason": j.refused[1]})
                continue
            remember(j, device, store)
            a = j.answer([bool(f) for f in fresh])
            verdict = "duplicate" if a["accepted"] == 0 and a["duplicates"] else "accepted"
            rows.append({"file": str(path), "verdict": verdict, "read_id": j.read_id, "events": a["accepted"],
                         "duplicates": a["duplicates"], "findings": ",".join(a["findings"]) or None,
                         "flags": ",".join(a["flags"]) or None})
    finally:
        ctx.close()
    if as_json:
        echo_json(rows)
    else:
        table(rows, ["file", "verdict", "events", "duplicates", "findings", "flags", "reason"])
    if refused:
        raise click.ClickException(f"{refused} of {len(raws)} file(s) refused; kept in the quarantine"
                                   " (`vendwatch quarantine list --code ...`)")


@dex.command("reconcile")
@click.option("--from", "since", type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC) of reads included.")
@click.option("--to", "until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC) of reads included.")
@click.option("--site", default=None, help="Only machines of this site.")
@click.option("--dry-run", is_flag=True, help="List the findings, append nothing.")
@data_dir_option
@pass_env
def reconcile(env: Env, since: datetime | None, until: datetime | None, site: str | None, dry_run: bool) -> None:
    """Compare audit reads with telemetry and cash collections; append each finding as a
    `dex_finding` event (the default rules open incidents from them).

    Safe to re-run: a finding already appended is not appended again. Reads the lake's
    raw tables, which the lake writer keeps current.
    """
    from vendwatch.dex.publish import publish_findings
    from vendwatch.lake.dex_reports import Window, findings
    from vendwatch.lake.query import LakeSQL, QueryError

    ctx = env.context()
    try:
        try:
            found = findings(LakeSQL(ctx.settings), Window(since.date() if since else None,
                                                           until.date() if until else None, site))
        except QueryError as e:
            raise click.ClickException(str(e)) from None
        table([{"device_id": f.device_id, "kind": f.kind, "slot": f.slot, "expected": f.expected,
                "actual": f.actual, "period_end": f.period_end.isoformat()} for f in found],
              ["device_id", "kind", "slot", "expected", "actual", "period_end"])
        if not dry_run:
            new, dup = publish_findings(ctx, found)
            click.echo(f"{new} new finding(s) appended, {dup} already there", err=True)
    finally:
        ctx.close()


commands = [dex]
