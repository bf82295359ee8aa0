"""Lake commands: ``sql``, ``report``, ``etl run``, ``lake maintain|tables|snapshots``, ``replay``."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from typing import Any

import click

from vendwatch.cli.common import Env, data_dir_option, echo_json, pass_env, table


def _as_of(value: str | None) -> datetime | int | None:
    """--as-of: a snapshot id (digits) or an ISO 8601 timestamp (UTC when no offset)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a snapshot id nor an ISO 8601 timestamp", param_hint="--as-of") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _write(result: Any, fmt: str, output: str | None) -> None:
    from vendwatch.lake import formats

    t = result.table
    if fmt == "table":
        rows = formats.to_json_rows(t)
        table(rows, t.column_names)
        if result.truncated:
            click.echo(f"(truncated to {t.num_rows} rows; raise --limit)", err=True)
        return
    if fmt == "parquet":
        if not output:
            raise click.UsageError("--format parquet needs --output FILE")
        data = formats.to_parquet(t)
    elif fmt == "csv":
        data = formats.to_csv(t)
    else:
        data = formats.to_json(t, truncated=result.truncated)
    if output:
        with open(output, "wb") as f:
            f.write(data)
        click.echo(f"wrote {t.num_rows} rows to {output}", err=True)
    else:
        sys.stdout.buffer.write(data)
        if fmt == "json":
            sys.stdout.write("\n")


_format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table", show_default=True,
    help="Output format (parquet needs --output).",
)
_output_option = click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")


@click.command()
@click.argument("query")
@data_dir_option
@click.option("--as-of", help="Time travel: a snapshot id or an ISO 8601 timestamp (tables as they were then).")
@click.option("--limit", type=int, default=None, help="Maximum rows returned [default lake.sql_row_limit, 10000].")
@click.option("--timeout", type=float, default=None, help="Seconds before the query is interrupted [default 30].")
@_format_option
@_output_option
@pass_env
def sql(env: Env, query: str, as_of: str | None, limit: int | None, timeout: float | None, fmt: str, output: str | None) -> None:
    """Run one read-only SQL query (DuckDB) over the lake tables.

    Tables are named as in the catalog: raw.events, raw.rejected, analytics.transactions,
    ... (`vendwatch lake tables` lists them). Only SELECT is allowed; files outside the
    lake, extensions and settings cannot be touched.

    Example: vendwatch sql "SELECT type, count(*) FROM raw.events GROUP BY 1"
    """
    from vendwatch.lake.query import LakeSQL, QueryError

    try:
        res = LakeSQL(env.settings()).run(query, limit=limit, timeout_s=timeout, as_of=_as_of(as_of))
    except QueryError as e:
        raise click.ClickException(str(e)) from None
    _write(res, fmt, output)


def _report_names() -> list[str]:
    from vendwatch.lake.dex_reports import DEX_REPORTS
    from vendwatch.lake.reports import REPORTS

    return [*REPORTS, *DEX_REPORTS]


@click.command()
@click.argument("name", type=click.Choice(_report_names()))
@data_dir_option
@click.option("--since", "--from", "since", type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC) included.")
@click.option("--until", "--to", "until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC) included.")
@click.option("--site", default=None, help="Only this site, or a route: SITE-01,SITE-02 (DEX, cash, food-safety"
              " and refill-planning reports).")
@click.option("--visit", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="refill-plan, pick-list: the visit date (09:00 UTC) [default: 24 h from now].")
@click.option("--limit", type=int, default=None, help="Maximum rows [default 1,000,000].")
@_format_option
@_output_option
@pass_env
def report(env: Env, name: str, since: datetime | None, until: datetime | None, site: str | None,
           visit: datetime | None, limit: int | None, fmt: str, output: str | None) -> None:
    """Run a canned report.

    device-last-seen reads raw.events; the others read the analytics tables, which
    `vendwatch etl run` brings up to date.

    \b
    device-last-seen  last event per device and whether it is stale
    incident-history  incidents per rule/severity with MTTA and MTTR
    sla-uptime        uptime % per device and site
    revenue           revenue by day, site, product, payment method
    failure-rates     failed-vend and failed-payment rates
    stockouts         stock-out intervals with estimated lost sales
    refill-picklist   units to load per site and product
    dex-files            every DEX audit file received, accepted or refused
    dex-reconciliation   DEX sales per read period and slot vs telemetry
    cash-accountability  cash the audit put in the box vs cash collected
    food-safety          every episode above 5 °C (or the machine's limit)
    refill-plan          per slot: velocity, days to empty, units to load at --visit
    pick-list            units per site and product for --visit, and the route total
    stockout-lost-sales  each stock-out with the sales it lost
    """
    from vendwatch.lake.dex_reports import DEX_REPORTS, run_dex_report
    from vendwatch.lake.query import QueryError
    from vendwatch.lake.reports import run_report

    try:
        if name in DEX_REPORTS:
            limits = _food_safety_limits(env) if name == "food-safety" else None
            res = run_dex_report(env.settings(), name, since=_d(since), until=_d(until), site=site, limits=limits,
                                 visit=_d(visit))
        else:
            if site is not None or visit is not None:
                raise click.UsageError(f"--site and --visit apply to the reports listed after refill-picklist, not {name}")
            res = run_report(env.settings(), name, since=_d(since), until=_d(until), limit=limit)
    except QueryError as e:
        raise click.ClickException(str(e)) from None
    _write(res, fmt, output)


def _food_safety_limits(env: Env) -> dict[str, float]:
    from vendwatch.lake.dex_reports import food_safety_limits

    ctx = env.context()
    try:
        return food_safety_limits(ctx.state)
    finally:
        ctx.close()


def _d(v: datetime | None) -> date | None:
    return v.date() if v else None


@click.group()
def etl() -> None:
    """Build the analytics zone from the raw zone (the Glue part)."""


@etl.command("run")
@data_dir_option
@click.option("--full", is_flag=True, help="Rebuild every day from all of raw, not only what is new.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@pass_env
def etl_run(env: Env, full: bool, as_json: bool) -> None:
    """Incremental, idempotent ETL: only raw rows new since the last run are folded in; a re-run changes nothing."""
    from vendwatch.lake.etl import run_etl

    ctx = env.context()
    try:
        rep = run_etl(ctx.settings, state=ctx.state, full=full)
    finally:
        ctx.close()
    if as_json:
        echo_json(rep.to_dict())
        return
    new = "" if rep.new_events is None else f"new raw rows: {rep.new_events}; "
    click.echo(f"raw snapshot {rep.raw_snapshot}; {new}days touched: {len(rep.days)}"
               f" (rebuilt whole: {len(rep.rebuilt)}); {rep.seconds:.2f}s")
    table([{"table": k, "result": v} for k, v in rep.tables.items()], ["table", "result"])


@click.group()
def lake() -> None:
    """Lake administration: maintenance, tables, snapshots."""


@lake.command("maintain")
@data_dir_option
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable) [default: all].")
@pass_env
def lake_maintain(env: Env, tables: tuple[str, ...]) -> None:
    """Compact small files, apply retention, expire and thin snapshots, delete orphan files.

    Safe while the lake writer runs. Thresholds: lake.small_file_mb, lake.compact_min_files,
    lake.retention_days, lake.snapshot_retention_hours, lake.snapshot_keep_all_hours (older
    snapshots are thinned to the newest of each hour for a day, then of each day),
    lake.orphan_min_age_hours.
    """
    from vendwatch.lake.maintain import maintain

    out = maintain(env.settings(), tables=list(tables) or None)
    table([{"table": k, **v, "retention_deleted": ", ".join(v["retention_deleted"]) or None} for k, v in out.items()],
          ["table", "compacted_files", "compacted_into", "retention_deleted", "expired_snapshots", "orphans_deleted"])


@lake.command("tables")
@data_dir_option
@pass_env
def lake_tables(env: Env) -> None:
    """List lake tables with rows, files and current snapshot."""
    from vendwatch.lake.catalog import open_catalog, table_names

    cat = open_catalog(env.settings())
    rows = []
    for name in table_names(cat):
        t = cat.load_table(name)
        snap = t.current_snapshot()
        props = snap.summary.additional_properties if snap and snap.summary else {}
        rows.append({"table": name, "rows": props.get("total-records", 0), "files": props.get("total-data-files", 0),
                     "snapshots": len(t.metadata.snapshots), "snapshot": snap.snapshot_id if snap else None})
    table(rows, ["table", "rows", "files", "snapshots", "snapshot"])


@lake.command("snapshots")
@click.argument("name")
@data_dir_option
@pass_env
def lake_snapshots(env: Env, name: str) -> None:
    """Snapshot history of one table (ids usable with `vendwatch sql --as-of`)."""
    from pyiceberg.exceptions import NoSuchTableError

    from vendwatch.lake.catalog import open_catalog

    try:
        t = open_catalog(env.settings()).load_table(name)
    except NoSuchTableError:
        raise click.ClickException(f"no lake table {name}") from None
    rows = []
    for s in t.metadata.snapshots:
        props = s.summary.additional_properties if s.summary else {}
        rows.append({
            "snapshot": s.snapshot_id,
            "at": datetime.fromtimestamp(s.timestamp_ms / 1000, UTC).isoformat(timespec="seconds"),
            "operation": s.summary.operation.value if s.summary else None,
            "added": props.get("added-records"), "total": props.get("total-records"),
            "by": props.get("vendwatch.maintenance") or ("writer" if "vendwatch.log-offsets" in props else
                                                        "etl" if any(k.startswith("vendwatch.etl") for k in props) else None),
        })
    table(rows, ["snapshot", "at", "operation", "added", "total", "by"])


@click.command()
@data_dir_option
@click.option("--from", "start", required=True, type=click.DateTime(), help="Start (UTC), inclusive, by occurred_at.")
@click.option("--to", "end", required=True, type=click.DateTime(), help="End (UTC), exclusive.")
@click.option("--device", default=None, help="Only this device.")
@click.option("--dry-run", is_flag=True, help="Count the events, publish nothing.")
@pass_env
def replay(env: Env, start: datetime, end: datetime, device: str | None, dry_run: bool) -> None:
    """Re-publish raw events from the lake onto the events topic, in occurred_at order.

    For reprocessing after a logic change: the detector and other consumers see them
    again; the lake writer skips them (they are marked replayed), so raw.events does
    not grow.
    """
    from vendwatch.lake import replay as rp

    s, e = start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)
    if e <= s:
        raise click.BadParameter("--to must be after --from", param_hint="--to")
    if dry_run:
        n = sum(1 for _ in rp.iter_events(env.settings(), s, e, device_id=device))
        click.echo(f"{n} events would be replayed")
        return
    ctx = env.context()
    try:
        n = rp.replay(ctx.settings, ctx.log, s, e, device_id=device)
    finally:
        ctx.close()
    click.echo(f"replayed {n} events onto the events topic")


commands = [sql, report, etl, lake, replay]
