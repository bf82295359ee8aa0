"""The reads already received per machine: what the next read is compared with.

Kept in the state store (SQLite embedded, PostgreSQL scale-out), one row per accepted
file. The previous read of a file is the latest one taken before it, so a handheld
uploading a week of files in any order still gets each period right.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from vendwatch.dex import model as dm
from vendwatch.state import migrations
from vendwatch.state.db import Database

migrations.register(
    "dex",
    1,
    """CREATE TABLE dex_reads(
        device_id TEXT NOT NULL,
        file_sha256 TEXT NOT NULL,
        taken_at TEXT NOT NULL,
        read {blob} NOT NULL,
        PRIMARY KEY(device_id, file_sha256))""",
    "CREATE INDEX dex_reads_taken ON dex_reads(device_id, taken_at)",
)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(dm.DexRead)


@dataclass(frozen=True, slots=True)
class StoredRead:
    sha256: str
    taken_at: datetime
    read: dm.DexRead


class DexStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        migrations.apply(db)

    def previous(self, device_id: str, sha256: str, taken_at: datetime) -> StoredRead | None:
        """The latest read of ``device_id`` taken before ``taken_at`` (other than this file)."""
        row = self.db.one(
            "SELECT file_sha256, taken_at, read FROM dex_reads WHERE device_id=? AND taken_at<? AND file_sha256<>?"
            " ORDER BY taken_at DESC LIMIT 1", (device_id, _key(taken_at), sha256))
        if row is None:
            return None
        return StoredRead(row[0], datetime.fromisoformat(row[1]), _dec.decode(bytes(row[2])))

    def record(self, device_id: str, sha256: str, taken_at: datetime, read: dm.DexRead) -> None:
        with self.db.transaction() as tx:
            if tx.one("SELECT 1 FROM dex_reads WHERE device_id=? AND file_sha256=?", (device_id, sha256)):
                return
            tx.execute("INSERT INTO dex_reads(device_id, file_sha256, taken_at, read) VALUES (?, ?, ?, ?)",
                       (device_id, sha256, _key(taken_at), _enc.encode(read)))


def _key(t: datetime) -> str:
    """Sortable text (the same on SQLite and PostgreSQL)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
