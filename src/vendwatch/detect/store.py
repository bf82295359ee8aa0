"""Durable detector state: device rows and per-partition checkpoints in the state store.

One transaction writes the devices changed since the last checkpoint, the position of
every assigned partition of the events topic, the event-time clock of each partition,
the end offsets of the signals topic at that moment, and site-correlation state.
Recovery therefore resumes from a consistent cut; signals appended after that cut are
recognised by id (see ``role.Detector._recover``) and not emitted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from vendwatch.state import migrations
from vendwatch.state.db import Tx
from vendwatch.state.store import StateStore

migrations.register(
    "detect",
    1,
    """CREATE TABLE detect_devices(
        device_id TEXT PRIMARY KEY,
        part INTEGER NOT NULL,
        data {blob} NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX detect_devices_part ON detect_devices(part)",
)


class PartitionCheckpoint(msgspec.Struct, kw_only=True):
    """What a detector knew about one events partition at a checkpoint."""

    offset: int  # next events offset to read
    clock: float | None = None  # newest event time seen in the partition
    signals_end: dict[int, int] = {}  # end offsets of the signals topic when this was written


def checkpoint_name(group: str, topic: str, part: int) -> str:
    return f"detect:{group}:{topic}/{part}"


def sites_name(group: str) -> str:
    return f"detect:{group}:sites"


def load_partition(store: StateStore, group: str, topic: str, part: int) -> PartitionCheckpoint | None:
    raw = store.load_checkpoint(checkpoint_name(group, topic, part))
    return msgspec.msgpack.decode(raw, type=PartitionCheckpoint) if raw else None


def iter_devices(store: StateStore, part: int, page: int = 5000) -> Iterator[tuple[str, bytes]]:
    """Saved device states of one events partition."""
    after = ""
    while True:
        rows = store.db.query(
            "SELECT device_id, data FROM detect_devices WHERE part=? AND device_id>? ORDER BY device_id LIMIT ?",
            (part, after, page),
        )
        for device_id, data in rows:
            yield device_id, bytes(data)
        if len(rows) < page:
            return
        after = rows[-1][0]


def save(tx: Tx, store: StateStore, group: str, topic: str, devices: list[tuple[str, int, bytes]],
         parts: dict[int, PartitionCheckpoint], sites: bytes | None, now: float) -> None:
    """Write one checkpoint inside ``tx``."""
    if devices:
        tx.executemany(
            "INSERT INTO detect_devices VALUES (?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET"
            " part=excluded.part, data=excluded.data, updated_at=excluded.updated_at",
            [(d, p, blob, now) for d, p, blob in devices],
        )
    for part, cp in parts.items():
        store.save_checkpoint(checkpoint_name(group, topic, part), msgspec.msgpack.encode(cp), tx=tx)
    if sites is not None:
        store.save_checkpoint(sites_name(group), sites, tx=tx)


def registry(store: StateStore) -> tuple[list[tuple[str, str | None, int | None, dict[str, Any]]], dict[str, int]]:
    """Registry view the detector needs: (device, site, heartbeat interval, meta) and machines per site."""
    rows = store.db.query("SELECT device_id, site_id, heartbeat_interval_s, meta FROM devices WHERE status='active'")
    out = []
    sizes: dict[str, int] = {}
    for device_id, site_id, hb, meta in rows:
        try:
            m = msgspec.json.decode(meta or "{}")
        except msgspec.DecodeError:
            m = {}
        out.append((device_id, site_id, hb, m if isinstance(m, dict) else {}))
        if site_id:
            sizes[site_id] = sizes.get(site_id, 0) + 1
    return out, sizes
