"""Reading history back out of the lake: ``iter_events`` and ``vendwatch replay``.

Replayed events are re-published on the ``events`` topic with ``"replayed": true``
added to the record (consumers that do not know the field ignore it); the lake
writer skips them, since they are already in ``raw.events``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec

from vendwatch import events as ev
from vendwatch.bus import EVENTS
from vendwatch.bus.base import Log
from vendwatch.config import Settings
from vendwatch.lake.query import LakeSQL

_COLS = "event_id, device_id, type, occurred_at, received_at, payload, seq, site_id, schema_version, late"


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def iter_events(
    settings: Settings, start: datetime, end: datetime, *, device_id: str | None = None, batch_rows: int = 10_000
) -> Iterator[ev.StoredEvent]:
    """Raw events with ``start <= occurred_at < end``, ordered by occurred_at (then event id), once each."""
    start, end = _utc(start), _utc(end)
    sql = LakeSQL(settings)
    con, _ = sql.connect(["raw.events"], lock=True)
    try:
        params: list[object] = [start, end]
        where = "occurred_at >= ? AND occurred_at < ?"
        if device_id:
            where += " AND device_id = ?"
            params.append(device_id)
        reader = con.sql(
            f"SELECT {_COLS} FROM raw.events WHERE {where} "
            "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY received_at) = 1 "
            "ORDER BY occurred_at, event_id",
            params=params,
        ).to_arrow_reader(batch_rows)
        for batch in reader:
            for r in batch.to_pylist():
                yield ev.StoredEvent(
                    event_id=r["event_id"], device_id=r["device_id"], type=r["type"],
                    occurred_at=r["occurred_at"], received_at=r["received_at"],
                    data=msgspec.Raw(r["payload"].encode()), seq=r["seq"], site_id=r["site_id"],
                    schema_version=r["schema_version"], late=r["late"],
                )
    finally:
        con.close()


def replay_record(e: ev.StoredEvent) -> bytes:
    """The log value of a replayed event: the StoredEvent JSON plus ``"replayed": true``."""
    return b'{"replayed":true,' + ev.encode(e)[1:]


def replay(settings: Settings, log: Log, start: datetime, end: datetime, *,
           device_id: str | None = None, topic: str = EVENTS, batch: int = 5000) -> int:
    """Re-publish raw events from the lake onto the log; returns how many."""
    log.create_topic(topic)
    n = 0
    pending: list[tuple[str, bytes]] = []
    for e in iter_events(settings, start, end, device_id=device_id):
        pending.append((e.device_id, replay_record(e)))
        if len(pending) >= batch:
            log.append(topic, pending)
            n += len(pending)
            pending = []
    if pending:
        log.append(topic, pending)
        n += len(pending)
    return n
