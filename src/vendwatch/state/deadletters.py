"""Stage dead letters: log records a stage could not process, set aside with the reason.

A stage that cannot process a record (it fails alone, for a reason in the record) writes
it here and moves on, in the same transaction as its checkpoint: never a crash loop
behind one record, never a silent skip. The record's bytes are kept, so a redrive does
not depend on the log's retention. An operator lists them (``vendwatch stage-dlq``),
fixes the cause, and asks for a redrive; the stage then applies the record once, as if
it had just been read, and removes the row in the same transaction.

Rows are keyed by (stage, topic, partition, offset): a stage that replays the same
record after a crash finds its dead letter already there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from vendwatch.bus.base import Record
from vendwatch.state import migrations
from vendwatch.state.db import Database, Tx

migrations.register(
    "stage_dead_letters",
    1,
    """CREATE TABLE stage_dead_letters(
        dl_id {serial_pk},
        stage TEXT NOT NULL,
        topic TEXT NOT NULL,
        part INTEGER NOT NULL,
        log_offset {bigint} NOT NULL,
        record_key TEXT NOT NULL,
        value {blob} NOT NULL,
        event_id TEXT,
        reason TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1,
        redrive INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        UNIQUE(stage, topic, part, log_offset))""",
    "CREATE INDEX stage_dead_letters_redrive ON stage_dead_letters(stage, redrive)",
)

_REASON_MAX = 2000
_COLS = "dl_id, stage, topic, part, log_offset, record_key, event_id, reason, attempts, redrive, created_at, updated_at"


class DeadLetterNotFound(LookupError):
    """No dead letter with that id."""


@dataclass(frozen=True)
class DeadLetter:
    dl_id: int
    stage: str
    topic: str
    partition: int
    offset: int
    key: str
    event_id: str | None
    reason: str
    attempts: int
    redrive: bool
    created_at: float
    updated_at: float


class _Ids(msgspec.Struct):
    event_id: str | None = None
    signal_id: str | None = None


_ids = msgspec.json.Decoder(_Ids)


def _text(s: str, limit: int) -> str:
    # device text may hold NUL, which PostgreSQL TEXT refuses: the dead letter must still be written
    return s.replace("\x00", "\ufffd")[:limit]


def record_id(value: bytes) -> str | None:
    """The event (or signal) id of a record, when it can be read at all."""
    try:
        ids = _ids.decode(value)
    except (msgspec.DecodeError, RecursionError):
        return None
    found = ids.event_id or ids.signal_id
    return _text(found, 256) if found else None


def _row(r: tuple[object, ...]) -> DeadLetter:
    return DeadLetter(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]),  # type: ignore[call-overload]
                      str(r[5]), r[6], str(r[7]), int(r[8]), bool(r[9]), float(r[10]), float(r[11]))  # type: ignore[arg-type]


class DeadLetters:
    """The ``stage_dead_letters`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, tx: Tx, stage: str, record: Record, reason: str) -> bool:
        """Set ``record`` aside for ``stage``; False when it already was (a replay)."""
        now = time.time()
        n = tx.execute(
            "INSERT INTO stage_dead_letters(stage, topic, part, log_offset, record_key, value, event_id, reason,"
            " attempts, redrive, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,1,0,?,?)"
            " ON CONFLICT(stage, topic, part, log_offset) DO NOTHING",
            (stage, record.topic, record.partition, record.offset, _text(record.key, 1024), record.value,
             record_id(record.value), _text(reason, _REASON_MAX), now, now),
        )
        return n == 1

    def list(self, stage: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        sql, params = f"SELECT {_COLS} FROM stage_dead_letters", []
        if stage:
            sql += " WHERE stage=?"
            params.append(stage)
        rows = self.db.query(sql + " ORDER BY dl_id LIMIT ?", (*params, limit))
        return [_row(r) for r in rows]

    def count(self, stage: str | None = None) -> int:
        if stage:
            row = self.db.one("SELECT count(*) FROM stage_dead_letters WHERE stage=?", (stage,))
        else:
            row = self.db.one("SELECT count(*) FROM stage_dead_letters")
        return int(row[0]) if row else 0

    def get(self, dl_id: int) -> tuple[DeadLetter, bytes]:
        row = self.db.one(f"SELECT {_COLS}, value FROM stage_dead_letters WHERE dl_id=?", (dl_id,))
        if row is None:
            raise DeadLetterNotFound(f"no stage dead letter {dl_id}")
        return _row(row), bytes(row[12])

    def request_redrive(self, ids: list[int] | None = None, stage: str | None = None) -> int:
        """Mark dead letters for redrive (by id, or all of a stage); returns how many."""
        if ids:
            n = 0
            with self.db.transaction() as tx:
                for i in ids:
                    n += tx.execute("UPDATE stage_dead_letters SET redrive=1 WHERE dl_id=?", (i,))
            return n
        if stage:
            return self.db.execute("UPDATE stage_dead_letters SET redrive=1 WHERE stage=?", (stage,))
        return self.db.execute("UPDATE stage_dead_letters SET redrive=1")

    def due(self, stage: str, limit: int = 100) -> list[tuple[int, Record]]:
        """Dead letters of ``stage`` marked for redrive, as the records they were."""
        rows = self.db.query(
            "SELECT dl_id, topic, part, log_offset, record_key, value FROM stage_dead_letters"
            " WHERE stage=? AND redrive=1 ORDER BY dl_id LIMIT ?", (stage, limit))
        return [(int(r[0]), Record(str(r[1]), int(r[2]), int(r[3]), str(r[4]), bytes(r[5]), 0)) for r in rows]

    def done(self, tx: Tx, dl_id: int) -> None:
        tx.execute("DELETE FROM stage_dead_letters WHERE dl_id=?", (dl_id,))

    def failed_again(self, dl_id: int, reason: str) -> None:
        self.db.execute(
            "UPDATE stage_dead_letters SET redrive=0, attempts=attempts+1, reason=?, updated_at=? WHERE dl_id=?",
            (_text(reason, _REASON_MAX), time.time(), dl_id))

    def delete(self, dl_id: int) -> None:
        if self.db.execute("DELETE FROM stage_dead_letters WHERE dl_id=?", (dl_id,)) == 0:
            raise DeadLetterNotFound(f"no stage dead letter {dl_id}")
