"""``vendwatch logs``: the log archive (the platform's lines, the machines' log events)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import msgspec

from vendwatch.cli.common import Env, data_dir_option, pass_env


@click.command()
@data_dir_option
@click.option("--role", help="Only lines of this role (collector, detector, lake-writer, ...).")
@click.option("--device", help="Only lines about this machine; with --source device, its own log events.")
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error", "critical"]),
              help="This level and above.")
@click.option("--since", help="Newer than this: a duration (30m, 2h, 7d) or an ISO time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="The newest N lines.")
@click.option("--source", type=click.Choice(["platform", "device"]), default=None,
              help="platform: vendwatch's own lines (raw.system_logs); device: machines' log events with crash"
                   " dumps (raw.events). [default: platform, device when only --device is given]")
@click.option("--follow", "-f", is_flag=True, help="Then keep printing new lines as they are logged (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--show-sql", is_flag=True, help="Print the SQL that selects these lines (for vendwatch sql) and stop.")
@pass_env
def logs(env: Env, role: str | None, device: str | None, level: str | None, since: str | None, limit: int,
         source: str | None, follow: bool, as_json: bool, show_sql: bool) -> None:
    """Read the log archive in the lake.

    The platform's own lines (every role, every replica; at log_archive_level, default
    warning, and above) are archived in raw.system_logs;
    the machines' log events (application, system, crash, startup, shutdown; crash dumps
    in full) are in raw.events. Lines are printed oldest first; device text is escaped.

    Example: vendwatch logs --level error --since 1h
    """
    from vendwatch.lake.query import LakeSQL, QueryError
    from vendwatch.observe import logquery as lq

    src = source or ("device" if device and not role else "platform")
    try:
        f = lq.LogFilter(role=role, device=device, level=level, since=lq.parse_since(since) if since else None,
                         limit=limit)
        sql = lq.platform_sql(f) if src == "platform" else lq.device_sql(f)
    except lq.LogQueryError as e:
        raise click.UsageError(str(e)) from None
    if show_sql:
        click.echo(sql)
        return
    fmt = lq.format_platform if src == "platform" else lq.format_device
    s = env.settings()
    try:
        res = LakeSQL(s).run(sql, limit=limit)
    except QueryError as e:
        raise click.ClickException(str(e)) from None
    for row in res.rows():
        _print(row, fmt, as_json)
    if follow:
        _follow(env, src, f, fmt, as_json)


def _print(row: dict[str, Any], fmt: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(row, enc_hook=str).decode() + "\n")
    else:
        sys.stdout.write(fmt(row) + "\n")
    sys.stdout.flush()


def _follow(env: Env, src: str, f: Any, fmt: Any, as_json: bool) -> None:
    """Records after the lake's last commit of the topic (not archived yet), then new ones."""
    from vendwatch import events as ev
    from vendwatch.bus import EVENTS
    from vendwatch.lake.catalog import ensure_table, open_catalog
    from vendwatch.lake.system_logs import SYSTEM_LOGS
    from vendwatch.lake.writer import committed_offsets
    from vendwatch.observe import logquery as lq
    from vendwatch.runtime import Context

    ctx = Context(env.settings())
    topic = SYSTEM_LOGS if src == "platform" else EVENTS
    table = ensure_table(open_catalog(ctx.settings), "raw.system_logs" if src == "platform" else "raw.events")
    done = committed_offsets(table)
    ctx.log.create_topic(topic)
    begins = ctx.log.begin_offsets(topic)

    def on_assign(parts: list[tuple[str, int]]) -> None:
        for t, p in parts:
            consumer.seek(t, p, max(done.get((t, p), 0), begins.get(p, 0)))

    consumer = ctx.log.consumer(f"vendwatch-logs-follow-{time.time_ns()}", [topic], on_assign=on_assign)
    try:
        while True:
            for r in consumer.poll(1000, 0.5):
                if src == "platform":
                    row = lq.platform_row_from_line(r.value)
                else:
                    row = _device_row(ev, r.value)
                if row is not None and lq.matches(row, f):
                    _print(row, fmt, as_json)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        ctx.close()


def _device_row(ev: Any, value: bytes) -> dict[str, Any] | None:
    try:
        e = ev.decode_stored(value)
    except Exception:  # noqa: BLE001 - a record no stage can read is skipped here (the lake keeps it)
        return None
    if e.type != "log":
        return None
    data = msgspec.json.decode(e.data)
    data = data if isinstance(data, dict) else {}
    return {"ts": e.occurred_at, "device_id": e.device_id, "level": data.get("level", "info"),
            "kind": data.get("kind"), "message": data.get("message"), "crash_dump": data.get("crash_dump")}


commands = [logs]
