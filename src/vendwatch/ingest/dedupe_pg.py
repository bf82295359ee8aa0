"""The shared "seen event ids" index for scale-out collectors, on PostgreSQL.

Every collector replica (HTTP or MQTT bridge) claims the dedupe keys of a batch here
before appending it to Kafka, so a device retrying through another replica is still
recognised. Like the embedded index, keys live in one table per UTC day
(``ingest_seen_<day>``): a claim inserts into today's table and checks the tables of
the window; expiry drops whole tables, which costs nothing per event.

Claims are atomic per key (``INSERT ... ON CONFLICT DO NOTHING RETURNING``): two
replicas claiming the same key at once get one True and one False. The only gap is a
retry that crosses midnight while the first attempt is still uncommitted; the event
is then stored twice (at-least-once), which downstream stages tolerate.
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
                    tx.execute(f"CREATE TABLE IF NOT EXISTS ingest_seen_{day}(k BYTEA PRIMARY KEY)")
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

    def claim(self, keys: Sequence[bytes]) -> list[bool]:
        """Mark keys seen; True for each key not seen before (first occurrence in ``keys``)."""
        if not keys:
            return []
        day = self._day()
        days = self._ensure(day)
        uniq = list(dict.fromkeys(keys))
        older = " UNION ALL ".join(f"SELECT k FROM ingest_seen_{d} WHERE k = ANY(?)" for d in days if d != day)
        params: list[object] = [uniq] * (len(days) - 1 if day in days else len(days))
        sql = (
            f"INSERT INTO ingest_seen_{day}(k) SELECT k FROM unnest(?::bytea[]) AS input(k)"
            + (f" WHERE k NOT IN ({older})" if older else "")
            + " ON CONFLICT DO NOTHING RETURNING k"
        )
        with self.db.transaction() as tx:
            fresh = {bytes(r[0]) for r in tx.query(sql, [uniq, *params])}
        out = []
        for k in keys:
            if k in fresh:
                fresh.discard(k)  # a later copy in the same batch is a duplicate
                out.append(True)
            else:
                out.append(False)
        return out

    def release(self, keys: Sequence[bytes]) -> None:
        """Forget claims whose append failed, so the device's retry is not a duplicate."""
        if not keys:
            return
        day = self._day()
        with self.db.transaction() as tx:
            for d in (day, day - 1):
                if d in self._tables:
                    tx.execute(f"DELETE FROM ingest_seen_{d} WHERE k = ANY(?)", (list(keys),))

    def close(self) -> None:
        self.db.close()
