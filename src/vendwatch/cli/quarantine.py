"""``vendwatch quarantine list``: the events the collector refused, with their reasons."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from vendwatch.bus import REJECTED, Log
from vendwatch.cli.common import Env, data_dir_option, echo_json, pass_env, table


def newest_rejected(log: Log, limit: int, device_id: str | None = None, code: str | None = None) -> list[dict[str, Any]]:
    """The ``limit`` most recently refused events (newest first), optionally for one device or reason code."""
    found: list[tuple[int, int, int, dict[str, Any]]] = []
    begins, ends = log.begin_offsets(REJECTED), log.end_offsets(REJECTED)
    for p in range(log.partitions(REJECTED)):
        # walk each partition backwards in pages until it has given `limit` matches
        hi, matches, page = ends[p], 0, max(limit, 200)
        while hi > begins[p] and matches < limit:
            lo = max(begins[p], hi - page)
            for r in log.read(REJECTED, p, lo, hi - lo):
                if r.offset >= hi:
                    break
                doc = msgspec.json.decode(r.value)
                if (device_id and doc.get("device_id") != device_id) or (code and doc.get("code") != code):
                    continue
                found.append((r.timestamp_ms, p, r.offset, doc))
                matches += 1
            hi = lo
    found.sort(key=lambda x: (x[0], x[2]), reverse=True)
    return [{"partition": p, "offset": o, **doc} for _, p, o, doc in found[:limit]]


@click.group()
def quarantine() -> None:
    """Events the collector refused (kept for audit in the log's `rejected` topic)."""


@quarantine.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True, help="How many, newest first.")
@click.option("--device", "device_id", help="Only events sent by this device.")
@click.option("--code", help="Only this reason code (schema, device_mismatch, future, too_old, too_large).")
@click.option("--json", "as_json", is_flag=True, help="Full records (with the event as sent) as a JSON array.")
@data_dir_option
@pass_env
def list_(env: Env, limit: int, device_id: str | None, code: str | None, as_json: bool) -> None:
    """Show the most recently refused events with their reason."""
    ctx = env.context()
    try:
        rows = newest_rejected(ctx.log, limit, device_id, code)
    finally:
        ctx.close()
    if as_json:
        echo_json(rows)
        return
    table([{**r, "reason": _short(r.get("reason", ""))} for r in rows],
          ["received_at", "device_id", "event_id", "code", "reason"])


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


commands = [quarantine]
