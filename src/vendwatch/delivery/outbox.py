"""The durable outbox and dead-letter queue (the SQS part), in the state store.

A delivery is enqueued in the same transaction as the state change that causes it,
so nothing is sent that was not decided and nothing decided is forgotten. Rows are
delivered in ``id`` order per (target, key); ``claim`` leases the heads of those
queues. ``coalesce`` enqueues at most one pending row per ``idem_key``: a change made
while that row is in flight marks it dirty, and ``complete`` then keeps it for one more
round instead of deleting it (so a storm of updates becomes a few calls).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from vendwatch.state import migrations
from vendwatch.state.db import Database, Tx

# registered as "incidents" v2: the outbox began in the incident package and existing
# databases have recorded it under that name
migrations.register(
    "incidents",
    2,
    """CREATE TABLE outbox(
        id {serial_pk},
        target TEXT NOT NULL,
        op TEXT NOT NULL,
        key TEXT NOT NULL,
        idem_key TEXT NOT NULL UNIQUE,
        payload TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        dirty INTEGER NOT NULL DEFAULT 0,
        last_status INTEGER,
        last_error TEXT,
        claimed_by TEXT,
        claimed_until DOUBLE PRECISION)""",
    "CREATE INDEX outbox_due ON outbox(target, next_attempt_at)",
    "CREATE INDEX outbox_key ON outbox(target, key, id)",
    """CREATE TABLE dlq(
        dlq_id TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        op TEXT NOT NULL,
        key TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        failed_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL,
        last_status INTEGER,
        reason TEXT NOT NULL)""",
    "CREATE INDEX dlq_target ON dlq(target, failed_at)",
    """CREATE TABLE delivery_gates(
        target TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        refilled_at DOUBLE PRECISION NOT NULL,
        blocked_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        circuit TEXT NOT NULL DEFAULT 'closed',
        failures INTEGER NOT NULL DEFAULT 0,
        opened_until DOUBLE PRECISION NOT NULL DEFAULT 0)""",
)


@dataclass(frozen=True)
class Item:
    id: int
    target: str
    op: str
    key: str
    idem_key: str
    payload: dict[str, Any]
    created_at: float
    attempts: int


_ITEM_COLS = "id, target, op, key, idem_key, payload, created_at, attempts"


def _item(r: tuple[Any, ...]) -> Item:
    return Item(int(r[0]), r[1], r[2], r[3], r[4], msgspec.json.decode(r[5]), float(r[6]), int(r[7]))


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- producing ------------------------------------------------------------------
    def enqueue(self, tx: Tx, target: str, op: str, key: str, payload: dict[str, Any], *, idem_key: str,
                now: float) -> bool:
        """Add a delivery unless one with ``idem_key`` exists; True if added (exactly-once enqueue)."""
        n = tx.execute(
            "INSERT INTO outbox(target, op, key, idem_key, payload, created_at, next_attempt_at)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT(idem_key) DO NOTHING",
            (target, op, key, idem_key, msgspec.json.encode(payload).decode(), now, now))
        return n > 0

    def coalesce(self, tx: Tx, target: str, op: str, key: str, payload: dict[str, Any], *, idem_key: str,
                 now: float, not_before: float | None = None) -> None:
        """Enqueue, or mark the pending row with this ``idem_key`` dirty (deliver once more).

        ``not_before``: a new row is not delivered before then (a pending row keeps its time).
        """
        self.coalesce_many(tx, [(target, op, key, payload, idem_key, now, not_before)])

    def coalesce_many(self, tx: Tx,
                      rows: Sequence[tuple[str, str, str, dict[str, Any], str, float, float | None]]) -> None:
        """``coalesce`` for each (target, op, key, payload, idem_key, now, not_before), in order, in one statement."""
        enc = msgspec.json.encode
        tx.executemany(
            "INSERT INTO outbox(target, op, key, idem_key, payload, created_at, next_attempt_at)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT(idem_key) DO UPDATE SET dirty=1, payload=excluded.payload",
            [(target, op, key, idem, enc(payload).decode(), now, max(now, not_before or now))
             for target, op, key, payload, idem, now, not_before in rows])

    def cancel(self, tx: Tx, idem_key: str) -> bool:
        """Drop the pending row with ``idem_key`` unless a worker holds it; True if dropped."""
        return tx.execute("DELETE FROM outbox WHERE idem_key=? AND (claimed_until IS NULL)", (idem_key,)) > 0

    # -- consuming ------------------------------------------------------------------
    def claim(self, targets: list[str], now: float, limit: int, lease_s: float, worker: str) -> list[Item]:
        """Lease up to ``limit`` due head-of-queue deliveries for ``targets``.

        On PostgreSQL the candidate rows are locked with ``FOR UPDATE SKIP LOCKED`` so
        concurrent orchestrator replicas never claim the same row; SQLite serialises
        writers, so the plain select inside the write transaction is enough.
        """
        if not targets:
            return []
        marks = ",".join("?" * len(targets))
        base = (
            f"SELECT {_ITEM_COLS} FROM outbox o WHERE o.target IN ({marks}) AND o.next_attempt_at<=?"
            " AND (o.claimed_until IS NULL OR o.claimed_until<=?)"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.target=o.target AND p.key=o.key AND p.id<o.id)"
            " ORDER BY o.next_attempt_at, o.id LIMIT ?"
        )
        if self.db.dialect == "postgres":
            base += " FOR UPDATE SKIP LOCKED"
        with self.db.transaction() as tx:
            rows = tx.query(base, (*targets, now, now, limit))
            items = [_item(r) for r in rows]
            tx.executemany("UPDATE outbox SET claimed_by=?, claimed_until=?, dirty=0 WHERE id=?",
                           [(worker, now + lease_s, it.id) for it in items])
        return items

    def complete(self, tx: Tx, item: Item, now: float) -> None:
        """Delivered: delete, unless it was marked dirty meanwhile (then deliver once more, as a new event)."""
        if tx.execute("DELETE FROM outbox WHERE id=? AND dirty=0", (item.id,)) == 0:
            tx.execute("UPDATE outbox SET dirty=0, attempts=0, created_at=?, claimed_by=NULL, claimed_until=NULL"
                       " WHERE id=?", (now, item.id))

    def release(self, tx: Tx, item: Item, next_attempt_at: float, *, attempted: bool, status: int | None = None,
                error: str | None = None) -> None:
        """Give the row back for a later attempt (counted only if a call was actually made)."""
        tx.execute(
            "UPDATE outbox SET next_attempt_at=?, attempts=attempts+?, last_status=COALESCE(?, last_status),"
            " last_error=COALESCE(?, last_error), claimed_by=NULL, claimed_until=NULL WHERE id=?",
            (next_attempt_at, 1 if attempted else 0, status, error, item.id))

    def dead_letter(self, tx: Tx, item: Item, now: float, *, status: int | None, reason: str) -> str:
        """Move a delivery to the DLQ (it stops blocking its key's queue)."""
        dlq_id = "dlq_" + secrets.token_hex(6)
        row = tx.one("SELECT payload, attempts FROM outbox WHERE id=?", (item.id,))
        payload, attempts = (row[0], int(row[1])) if row else (msgspec.json.encode(item.payload).decode(), item.attempts)
        tx.execute("INSERT INTO dlq VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (dlq_id, item.target, item.op, item.key, item.idem_key, payload, item.created_at, now,
                    attempts + 1, status, reason[:2000]))
        tx.execute("DELETE FROM outbox WHERE id=?", (item.id,))
        return dlq_id

    # -- operating ------------------------------------------------------------------
    def depth(self) -> dict[str, int]:
        return {t: int(n) for t, n in self.db.query("SELECT target, count(*) FROM outbox GROUP BY target")}

    def dlq_depth(self) -> dict[str, int]:
        return {t: int(n) for t, n in self.db.query("SELECT target, count(*) FROM dlq GROUP BY target")}

    def pending(self, target: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, target, op, key, attempts, next_attempt_at, last_status, last_error FROM outbox"
        rows = self.db.query(sql + (" WHERE target=? ORDER BY id" if target else " ORDER BY id"),
                             (target,) if target else ())
        keys = ("id", "target", "op", "key", "attempts", "next_attempt_at", "last_status", "last_error")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def dlq_list(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = "SELECT dlq_id, target, op, key, attempts, last_status, reason, failed_at FROM dlq"
        params: tuple[Any, ...] = ()
        if target:
            sql += " WHERE target=?"
            params = (target,)
        rows = self.db.query(sql + " ORDER BY failed_at LIMIT ?", (*params, limit))
        keys = ("dlq_id", "target", "op", "key", "attempts", "last_status", "reason", "failed_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def dlq_show(self, dlq_id: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT dlq_id, target, op, key, idem_key, payload, created_at, failed_at, attempts,"
                          " last_status, reason FROM dlq WHERE dlq_id=?", (dlq_id,))
        if row is None:
            return None
        keys = ("dlq_id", "target", "op", "key", "idem_key", "payload", "created_at", "failed_at", "attempts",
                "last_status", "reason")
        out = dict(zip(keys, row, strict=True))
        out["payload"] = msgspec.json.decode(out["payload"])
        return out

    def _select_dlq(self, tx: Tx, dlq_id: str | None, target: str | None) -> list[tuple[Any, ...]]:
        sql = "SELECT dlq_id, target, op, key, idem_key, payload, created_at FROM dlq"
        if dlq_id:
            return tx.query(sql + " WHERE dlq_id=?", (dlq_id,))
        if target:
            return tx.query(sql + " WHERE target=? ORDER BY failed_at", (target,))
        return tx.query(sql + " ORDER BY failed_at")

    def redrive(self, now: float, *, dlq_id: str | None = None, target: str | None = None) -> int:
        """Put dead letters back in the outbox (attempts reset); returns how many."""
        n = 0
        with self.db.transaction() as tx:
            for r in self._select_dlq(tx, dlq_id, target):
                # a fresh idem key: the original may be pending again for newer changes
                tx.execute(
                    "INSERT INTO outbox(target, op, key, idem_key, payload, created_at, next_attempt_at)"
                    " VALUES (?,?,?,?,?,?,?) ON CONFLICT(idem_key) DO UPDATE SET dirty=1",
                    (r[1], r[2], r[3], r[4], r[5], now, now))
                tx.execute("DELETE FROM dlq WHERE dlq_id=?", (r[0],))
                n += 1
        return n

    def purge(self, *, dlq_id: str | None = None, target: str | None = None) -> int:
        with self.db.transaction() as tx:
            rows = self._select_dlq(tx, dlq_id, target)
            tx.executemany("DELETE FROM dlq WHERE dlq_id=?", [(r[0],) for r in rows])
        return len(rows)
