"""Reading the log archive: the platform's lines (``raw.system_logs``) and the machines'
log events (``raw.events`` of type ``log``), filtered the way ``vendwatch logs`` asks.

The queries are plain SQL over the lake, so what ``vendwatch logs`` prints is what
``vendwatch sql`` (or a BI tool on the SQL endpoint) returns for the same filter:
``platform_sql``/``device_sql`` show the statement with ``--show-sql``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from vendwatch.observe.logs import LEVELS, escape

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class LogQueryError(ValueError):
    """A filter value cannot be used (the message says which and why)."""


@dataclass(frozen=True)
class LogFilter:
    role: str | None = None
    device: str | None = None
    level: str | None = None  # this level and above
    since: datetime | None = None
    limit: int = 200


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``15m``, ``2h``, ``7d`` (ago) or an ISO 8601 time (UTC when no offset is given)."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text.strip().lower())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise LogQueryError(f"--since: expected a duration (30m, 2h, 7d) or an ISO time, got {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def levels_from(level: str | None) -> list[str]:
    if level is None:
        return list(LEVELS)
    lv = level.lower()
    if lv not in LEVELS:
        raise LogQueryError(f"--level: one of {', '.join(LEVELS)}, got {level!r}")
    return list(LEVELS[LEVELS.index(lv):])


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _in(values: list[str]) -> str:
    return "(" + ", ".join(_lit(v) for v in values) + ")"


def platform_sql(f: LogFilter) -> str:
    """The newest ``f.limit`` platform lines matching ``f``, oldest first."""
    where = [f"level IN {_in(levels_from(f.level))}"]
    if f.role:
        where.append(f"role = {_lit(f.role)}")
    if f.device:
        where.append(f"device_id = {_lit(f.device)}")
    if f.since:
        where.append(f"ts >= TIMESTAMPTZ {_lit(f.since.astimezone(UTC).isoformat())}")
    return ("SELECT * FROM (SELECT ts, level, logger, role, replica, msg, device_id, event_id, signal_id,"
            " incident_id, ticket, exc, extra, log_partition, log_offset FROM raw.system_logs WHERE "
            + " AND ".join(where) + f" ORDER BY ts DESC, log_partition DESC, log_offset DESC LIMIT {int(f.limit)})"
            " ORDER BY ts, log_partition, log_offset")


def device_sql(f: LogFilter) -> str:
    """The newest ``f.limit`` machine log events matching ``f`` (crash dumps in full), oldest first."""
    level = "coalesce(lower(json_extract_string(payload, '$.level')), 'info')"
    where = ["type = 'log'", f"{level} IN {_in(levels_from(f.level))}"]
    if f.device:
        where.append(f"device_id = {_lit(f.device)}")
    if f.since:
        where.append(f"occurred_at >= TIMESTAMPTZ {_lit(f.since.astimezone(UTC).isoformat())}")
    return ("SELECT * FROM (SELECT occurred_at AS ts, received_at, device_id, site_id, event_id,"
            f" {level} AS level, json_extract_string(payload, '$.kind') AS kind,"
            " json_extract_string(payload, '$.message') AS message,"
            " json_extract_string(payload, '$.crash_dump') AS crash_dump, log_partition, log_offset"
            " FROM raw.events WHERE " + " AND ".join(where)
            + f" ORDER BY occurred_at DESC, event_id DESC LIMIT {int(f.limit)}) ORDER BY ts, event_id")


def _when(v: Any) -> str:
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return str(v)


def format_platform(row: dict[str, Any]) -> str:
    """One archived platform line as text (device text escaped; traceback lines marked)."""
    who = f"{row.get('role') or '-'}@{row.get('replica') or '-'}"
    ids = " ".join(f"{k}={escape(str(row[k]))}" for k in ("device_id", "event_id", "signal_id", "incident_id",
                                                           "ticket") if row.get(k))
    line = (f"{_when(row['ts'])} {str(row['level']).upper()} {escape(who)} {escape(str(row['logger']))}:"
            f" {escape(str(row['msg']))}" + (f" {ids}" if ids else ""))
    if row.get("exc"):
        line += "".join(f"\n  | {escape(t)}" for t in str(row["exc"]).splitlines())
    return line


def format_device(row: dict[str, Any]) -> str:
    """One machine log event as text; a crash dump follows in full, each line marked."""
    line = (f"{_when(row['ts'])} {str(row['level']).upper()} {escape(str(row['device_id']))}"
            f" [{escape(str(row.get('kind') or '-'))}]: {escape(str(row.get('message') or ''))}")
    if row.get("crash_dump"):
        line += "".join(f"\n  | {escape(t)}" for t in str(row["crash_dump"]).splitlines())
    return line


def platform_row_from_line(value: bytes) -> dict[str, Any] | None:
    """A live line from the system_logs topic in the archive's row shape (``--follow``)."""
    try:
        d = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
    if not isinstance(d, dict):
        return None
    ts = d.get("ts")
    try:
        when = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        when = datetime.now(UTC)
    return {**d, "ts": when, "level": str(d.get("level", "info")), "logger": d.get("logger", "-"),
            "msg": d.get("msg", "")}


def matches(row: dict[str, Any], f: LogFilter) -> bool:
    if str(row.get("level", "info")).lower() not in levels_from(f.level):
        return False
    if f.role and row.get("role") != f.role:
        return False
    if f.device and row.get("device_id") != f.device:
        return False
    return not (f.since and isinstance(row.get("ts"), datetime) and row["ts"] < f.since)
