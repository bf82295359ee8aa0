"""Shared helpers for incident tests: signals, a context on a temp data dir, an orchestrator in virtual time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vendwatch.bus import SIGNALS
from vendwatch.config import load_settings
from vendwatch.delivery.clock import VirtualClock
from vendwatch.runtime import Context
from vendwatch.signals import Signal, encode_signal, signal_id


def make_signal(clock: VirtualClock, key: str = "offline/VM-0001", *, status: str = "firing",
                severity: str = "major", rule_id: str = "offline", device_id: str | None = "VM-0001",
                site_id: str | None = "SITE-1", kind: str = "incident", scope: str = "device",
                caused_by: str | None = None, summary: str = "no heartbeat", seq: int = 0) -> Signal:
    at = datetime.fromtimestamp(clock.now(), UTC)
    return Signal(signal_id=signal_id(rule_id, key, status, at) + (f"-{seq}" if seq else ""), rule_id=rule_id,
                  status=status, severity=severity, dedupe_key=key, scope=scope, kind=kind,  # type: ignore[arg-type]
                  summary=summary, occurred_at=at, emitted_at=at, device_id=device_id, site_id=site_id,
                  caused_by=caused_by)


def context(data_dir: Path, **overrides: Any) -> Context:
    s = load_settings(None, {"data_dir": str(data_dir), "bus.partitions": 2, **overrides}, environ={})
    return Context(s)


def publish(ctx: Context, *signals: Signal) -> None:
    ctx.log.create_topic(SIGNALS)
    ctx.log.append(SIGNALS, [(s.dedupe_key, encode_signal(s)) for s in signals])


def tickets(emu: Any, ctx: Context, key: str) -> list[dict[str, str]]:
    """The emulator's tickets for every incident of a dedupe key (any correlation generation), oldest first."""
    from vendwatch.incidents.servicenow.mapping import correlation_id

    ids = [r[0] for r in ctx.state.db.query("SELECT incident_id FROM incidents WHERE dedupe_key=?", (key,))]
    wanted = {correlation_id(i, g) for i in ids for g in range(5)}
    with emu._lock:
        rows = [dict(r) for r in emu.incidents.values() if r["correlation_id"] in wanted]
    return sorted(rows, key=lambda r: r["number"])
