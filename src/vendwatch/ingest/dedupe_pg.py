"""The shared "seen event ids" index for scale-out collectors, on PostgreSQL.

Every collector replica (HTTP or MQTT bridge) claims the dedupe keys of a batch here
before appending it to Kafka, so a device retrying through another replica is still
recognised. Like the embedded index, keys live in one table per UTC day
(``ingest_seen_<day>``): a claim inserts into today's table and checks the tables of
the window; expiry drops whole tables, which costs nothing per event.

A key goes through two states: *claimed* (a collector is appending it) and
*confirmed* (it is durable in the log). Claims are atomic per key (``INSERT ... ON
CONFLICT``): two replicas claiming one key at once get one True and one None
("being stored elsewhere, retry"), never two Trues. A claim that is never confirmed
(the collector died between claim and append) expires after a lease, so the
device's retry stores the event instead of being told it is a duplicate of an event
that was lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vendwatch.ingest.sink import DedupeStore
from vendwatch.state.postgres import PostgresDatabase

if TYPE_CHECKING:
    from vendwatch.config import Settings

_DAY = 86_400


class PostgresDedupe(DedupeStore):
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time, pool_size: int = 4) -> None:
        if settings.state.backend != "postgres":
            raise ValueError(
                "scale-out collectors share their dedupe index in PostgreSQL: "
                "set state.backend = \"postgres\" (VENDWATCH_STATE__BACKEND=postgres) with bus.backend = \"kafka\""
            )
        self.db = PostgresDatabase(settings.state.postgres_dsn, pool_size=pool_size)
        self.window_days = max(1, int(settings.ingest.dedupe_window_s // _DAY) + 1)
        # an unconfirmed claim older than the longest possible append is abandoned
        self.lease_s = settings.bus.kafka.delivery_timeout_ms / 1000 + settings.ingest.append_timeout_s + 20
        self._now = clock
        self._tables: set[int] = set()
        self._lock = threading.Lock()
        self._gc_day = -1

    def _day(self) -> int:
        return int(self._now() // _DAY)

    def _ensure(self, day: int) -> list[int]:
        """Create today's table if needed, drop expired ones; returns the window's days."""
        with self._lock:
            if day not in self._tables:
                with self.db.transaction() as tx:
                    # concurrent CREATE TABLE IF NOT EXISTS can race on PostgreSQL's catalog
                    tx.execute("SELECT pg_advisory_xact_lock(?)", (0x73656E,))
                    # fillfactor leaves room in each page so the confirm UPDATE is a HOT update
                    # (same page, no new index entry)
                    tx.execute(f"CREATE TABLE IF NOT EXISTS ingest_seen_{day}(k BYTEA PRIMARY KEY,"
                               " claimed_at DOUBLE PRECISION NOT NULL, confirmed BOOLEAN NOT NULL DEFAULT FALSE)"
                               " WITH (fillfactor = 70)")
                self._tables.add(day)
            if self._gc_day != day:
                self._gc_day = day
                self._refresh_and_expire(day)
            return sorted(d for d in self._tables if d >= day - self.window_days)

    def _refresh_and_expire(self, day: int) -> None:
        rows = self.db.query(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'ingest\\_seen\\_%'"
        )
        for (name,) in rows:
            d = int(name.rsplit("_", 1)[1])
            if d < day - self.window_days:
                self.db.execute(f"DROP TABLE IF EXISTS {name}")
                self._tables.discard(d)
            else:
                self._tables.add(d)

    def claim(self, keys: Sequence[bytes]) -> list[bool | None]:
        """True: claimed now (store it); False: already stored; None: another request is
        storing it right now (retry later). The first copy of a key in ``keys`` decides."""
        if not keys:
            return []
        now = self._now()
        day = self._day()
        days = self._ensure(day)
        uniq = list(dict.fromkeys(keys))
        state: dict[bytes, bool | None] = {}
        with self.db.transaction() as tx:
            # earlier days: confirmed keys are duplicates, live claims are in flight
            for d in days:
                if d == day:
                    continue
                for k, confirmed, claimed_at in tx.query(
                        f"SELECT k, confirmed, claimed_at FROM ingest_seen_{d} WHERE k = ANY(?)", (uniq,)):
                    k = bytes(k)
                    if confirmed:
                        state[k] = False
                    elif claimed_at > now - self.lease_s and state.get(k) is not False:
                        state[k] = None
            todo = [k for k in uniq if k not in state]
            if todo:
                # new keys, or abandoned claims (lease over) taken over
                got = tx.query(
                    f"INSERT INTO ingest_seen_{day} AS s(k, claimed_at) SELECT k, ? FROM unnest(?::bytea[]) AS input(k)"
                    " ON CONFLICT (k) DO UPDATE SET claimed_at = excluded.claimed_at"
                    " WHERE NOT s.confirmed AND s.claimed_at < ? RETURNING k",
                    (now, todo, now - self.lease_s),
                )
                for (k,) in got:
                    state[bytes(k)] = True
                rest = [k for k in todo if k not in state]
                if rest:
                    for k, confirmed in tx.query(f"SELECT k, confirmed FROM ingest_seen_{day} WHERE k = ANY(?)", (rest,)):
                        state[bytes(k)] = False if confirmed else None
        out: list[bool | None] = []
        first: set[bytes] = set()
        for k in keys:
            if k in first:
                out.append(False)  # a later copy in the same batch is a duplicate
                continue
            first.add(k)
            out.append(state.get(k, False))
        return out

    def confirm(self, keys: Sequence[bytes]) -> None:
        """The events of these claims are durable in the log."""
        self._set(keys, "UPDATE ingest_seen_{d} SET confirmed = TRUE WHERE k = ANY(?)")

    def release(self, keys: Sequence[bytes]) -> None:
        """Forget claims whose append failed, so the device's retry is not a duplicate."""
        self._set(keys, "DELETE FROM ingest_seen_{d} WHERE k = ANY(?) AND NOT confirmed")

    def _set(self, keys: Sequence[bytes], sql: str) -> None:
        if not keys:
            return
        day = self._day()
        with self.db.transaction() as tx:
            for d in (day, day - 1):  # a claim made just before midnight lives in yesterday's table
                if d in self._tables:
                    tx.execute(sql.format(d=d), (list(keys),))

    def close(self) -> None:
        self.db.close()
