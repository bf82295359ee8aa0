"""The shared "seen event ids" index for scale-out collectors, on PostgreSQL.

Every collector replica (HTTP or MQTT bridge) claims the dedupe keys of a batch here
before appending it to Kafka, so a device retrying through another replica is still
recognised. Like the embedded index, keys live in one table per UTC day
(``ingest_seen_<day>``): a claim inserts into today's table and checks the tables of
the window; expiry drops whole tables, which costs nothing per event.

A key goes through two states: *claimed* (a collector is appending it) and
*confirmed* (it is durable in the log). Claims are atomic per key (``INSERT ... ON
CONFLICT``): two replicas claiming one key at once get one True and one None
("being stored elsewhere, retry"), never two Trues.

A claim that is never confirmed expires after a lease. Its collector died, or its append
failed, somewhere between the claim and the confirm: the events may be in the log or
not. The next claim of such a key is ``Abandoned``: it carries when the first attempt
began and when the last one must have ended, and the sink looks for the events in the
log between those times before it appends (``LogIngestSink``). So the device's retry is
neither taken for a duplicate of an event that was lost, nor stored a second time when
the first append did reach the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vendwatch.ingest.sink import Abandoned, ClaimState, DedupeStore
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
                    # first_at: when the first, abandoned attempt to store the key began
                    tx.execute(f"CREATE TABLE IF NOT EXISTS ingest_seen_{day}(k BYTEA PRIMARY KEY,"
                               " claimed_at DOUBLE PRECISION NOT NULL, confirmed BOOLEAN NOT NULL DEFAULT FALSE,"
                               " first_at DOUBLE PRECISION) WITH (fillfactor = 70)")
                self._tables.add(day)
            if self._gc_day != day:
                self._gc_day = day
                self._refresh_and_expire(day)
            return sorted(d for d in self._tables if d >= day - self.window_days)

    def _refresh_and_expire(self, day: int) -> None:
        rows = self.db.query(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'ingest\\_seen\\_%'"
        )
        old = {name for (name,) in self.db.query(
            "SELECT table_name FROM information_schema.tables t WHERE table_schema = current_schema()"
            " AND table_name LIKE 'ingest\\_seen\\_%' AND NOT EXISTS (SELECT 1 FROM information_schema.columns c"
            " WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name AND c.column_name = 'first_at')")}
        for (name,) in rows:
            d = int(name.rsplit("_", 1)[1])
            if d < day - self.window_days:
                self.db.execute(f"DROP TABLE IF EXISTS {name}")
                self._tables.discard(d)
            else:
                if name in old:  # a day table made by a release before first_at
                    self.db.execute(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS first_at DOUBLE PRECISION")
                self._tables.add(d)

    def claim(self, keys: Sequence[bytes]) -> list[ClaimState]:
        """True: claimed now (store it); False: already stored; None: another request is
        storing it right now (retry later); ``Abandoned``: claimed now, but an earlier
        attempt was abandoned (look for it in the log first). The first copy of a key in
        ``keys`` decides; later copies are False."""
        if not keys:
            return []
        now = self._now()
        day = self._day()
        days = self._ensure(day)
        uniq = list(dict.fromkeys(keys))
        state: dict[bytes, ClaimState] = {}
        earlier: dict[bytes, tuple[float, float]] = {}  # claims abandoned on an earlier day: (first, until)
        lease_over = now - self.lease_s
        with self.db.transaction() as tx:
            # earlier days: confirmed keys are duplicates, live claims are in flight
            for d in days:
                if d == day:
                    continue
                for k, confirmed, claimed_at, first_at in tx.query(
                        f"SELECT k, confirmed, claimed_at, first_at FROM ingest_seen_{d} WHERE k = ANY(?)", (uniq,)):
                    k = bytes(k)
                    if confirmed:
                        state[k] = False
                    elif state.get(k) is not False:
                        if claimed_at > lease_over:
                            state[k] = None
                        else:
                            first = claimed_at if first_at is None else first_at
                            was = earlier.get(k, (first, 0.0))
                            earlier[k] = (min(first, was[0]), max(claimed_at + self.lease_s, was[1]))
            todo = [k for k in uniq if k not in state]
            if todo:
                firsts = [earlier[k][0] if k in earlier else None for k in todo]
                got = tx.query(
                    f"INSERT INTO ingest_seen_{day}(k, claimed_at, first_at)"
                    " SELECT k, ?, f FROM unnest(?::bytea[], ?::float8[]) AS input(k, f)"
                    " ON CONFLICT (k) DO NOTHING RETURNING k, first_at",
                    (now, todo, firsts),
                )
                for k, first_at in got:
                    k = bytes(k)
                    state[k] = True if first_at is None else Abandoned(first_at, earlier[k][1])
                rest = [k for k in todo if k not in state]
                if rest:
                    # abandoned claims of today (the lease is over) are taken over; the
                    # first attempt's time is kept through any number of takeovers
                    got = tx.query(
                        f"WITH old AS (SELECT k, claimed_at, first_at FROM ingest_seen_{day}"
                        "  WHERE k = ANY(?) AND NOT confirmed AND claimed_at < ? FOR UPDATE)"
                        f" UPDATE ingest_seen_{day} AS s SET claimed_at = ?,"
                        "  first_at = COALESCE(old.first_at, old.claimed_at)"
                        " FROM old WHERE s.k = old.k RETURNING s.k, s.first_at, old.claimed_at",
                        (rest, lease_over, now),
                    )
                    for k, first_at, last_claim in got:
                        state[bytes(k)] = Abandoned(first_at, last_claim + self.lease_s)
                    rest = [k for k in rest if k not in state]
                if rest:
                    for k, confirmed in tx.query(f"SELECT k, confirmed FROM ingest_seen_{day} WHERE k = ANY(?)", (rest,)):
                        state[bytes(k)] = False if confirmed else None
        out: list[ClaimState] = []
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
        """The append of these claims failed: it may still have stored some of them (a
        broker that wrote the records but whose answer was lost). End the lease now and
        remember when the attempt began, so the retry looks for them before appending."""
        self._set(keys, "UPDATE ingest_seen_{d} SET first_at = COALESCE(first_at, claimed_at),"
                        " claimed_at = LEAST(claimed_at, ?) WHERE k = ANY(?) AND NOT confirmed",
                  self._now() - self.lease_s - 1)

    def _set(self, keys: Sequence[bytes], sql: str, *params: object) -> None:
        if not keys:
            return
        day = self._day()
        with self.db.transaction() as tx:
            for d in (day, day - 1):  # a claim made just before midnight lives in yesterday's table
                if d in self._tables:
                    tx.execute(sql.format(d=d), (*params, list(keys)))

    def close(self) -> None:
        self.db.close()
