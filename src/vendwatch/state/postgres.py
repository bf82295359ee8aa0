"""The ``Database`` adapter on PostgreSQL (RDS/Aurora in production).

psycopg 3 with a ``psycopg_pool`` connection pool: each transaction borrows one
connection, so several threads (stages, HTTP handlers) work in parallel, unlike the
embedded SQLite store's single writer. Queries keep the portable ``?`` placeholders;
they are rewritten to psycopg's ``%s`` once per distinct statement (cached).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from vendwatch.errors import TransactionConflict, Unavailable
from vendwatch.state.db import Database, Params, Tx

log = logging.getLogger(__name__)

__all__ = ["DatabaseUnavailable", "PostgresDatabase", "TransactionConflict"]


class DatabaseUnavailable(Unavailable):
    """PostgreSQL cannot be reached (or the pool is exhausted) right now; retry later."""


@dataclass(slots=True)
class _Outage:
    since: float
    reason: str
    next_try: float
    delay: float
    pool_stuck: bool
    probing: bool = False
    failed_checks: int = 0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())  # libpq's message spans lines (a hint on the second)


@lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """``?`` placeholders -> ``%s``; literal ``%`` -> ``%%``. Text inside quotes
    ('...', "...") and comments is copied as-is except for ``%``, which psycopg would
    otherwise read as a placeholder anywhere in the statement."""
    out: list[str] = []
    i, n = 0, len(sql)
    quote: str | None = None
    while i < n:
        ch = sql[i]
        if ch == "%":
            out.append("%%")
        elif quote is not None:
            out.append(ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


class _PgTx(Tx):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> int:
        cur = self.conn.execute(translate(sql), tuple(params))
        return cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if not rows:
            return
        with self.conn.cursor() as cur:
            cur.executemany(translate(sql), [tuple(r) for r in rows])

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(translate(sql), tuple(params)).fetchall()


class PostgresDatabase(Database):
    """A pooled PostgreSQL database speaking the same portable SQL as SQLite."""

    dialect = "postgres"
    remote = True
    ddl_types = {"blob": "BYTEA", "serial_pk": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT"}

    #: while PostgreSQL is known to be unreachable, one caller at a time tries a direct
    #: connection this long after the last failed try (doubling up to the cap); the others
    #: are answered at once instead of each waiting out the pool's connect timeout
    PROBE_FIRST_S = 0.5
    PROBE_MAX_S = 5.0

    def __init__(self, dsn: str, pool_size: int = 8, *, connect_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dsn = dsn
        self._local = threading.local()
        self._pool_size = max(1, pool_size)
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._gate = threading.Lock()
        self._outage: _Outage | None = None
        # libpq waits for ever for a host that drops packets unless told otherwise; a DSN
        # that sets its own connect_timeout keeps it
        self._connect_kw: dict[str, Any] = {}
        try:  # one direct attempt first: its error says why (the pool's only says "timeout")
            if "connect_timeout" not in conninfo_to_dict(dsn):
                self._connect_kw["connect_timeout"] = max(2, int(connect_timeout_s))
            self._connect().close()
        except psycopg.Error as e:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({_redact(dsn)}): {_one_line(e)}") from e
        self.pool = self._new_pool()
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as e:
            self.pool.close()
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({_redact(dsn)}): {_one_line(e)}") from e

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, **self._connect_kw)

    def _new_pool(self) -> ConnectionPool:
        return ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self._pool_size,
            timeout=self._connect_timeout_s,
            open=False,
            name="vendwatch-state",
            kwargs={"autocommit": True, **self._connect_kw},  # transactions are explicit (conn.transaction())
        )

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        current: _PgTx | None = getattr(self._local, "tx", None)
        if current is not None:  # nested use joins the outer transaction (as on SQLite)
            yield current
            return
        if self._outage is not None:
            self._through_outage()
        pool = self.pool
        try:
            try:
                conn = pool.getconn()
            except PoolClosed:  # renewed by another thread after an outage, since we looked
                pool = self.pool
                conn = pool.getconn()
        except PoolTimeout as e:
            self._failed(f"no PostgreSQL connection available: {e}", pool_stuck=True)
            raise DatabaseUnavailable(f"no PostgreSQL connection available: {e}") from e
        except PoolClosed as e:  # the store itself is closing
            raise DatabaseUnavailable(f"the PostgreSQL connection pool is closed: {e}") from e
        try:
            with conn.transaction():
                tx = self._local.tx = _PgTx(conn)
                try:
                    yield tx
                finally:
                    self._local.tx = None
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            if not conn.broken:
                if (e.sqlstate or "").startswith("40"):  # class 40: deadlock, serialization failure
                    raise TransactionConflict(f"PostgreSQL rolled the transaction back: {_one_line(e)};"
                                              " nothing of it was written, it can run again") from e
                raise  # the statement's own failure (a timeout, a lock not available)
            reason = f"lost the connection to PostgreSQL ({_redact(self.dsn)}): {_one_line(e)}"
            self._failed(reason, pool_stuck=False)
            raise DatabaseUnavailable(reason) from e
        finally:
            pool.putconn(conn)  # a broken connection is discarded by the pool

    # -- outages ------------------------------------------------------------------
    # psycopg_pool reconnects a lost connection with a doubling delay (1, 2, 4 … s, up to
    # its reconnect timeout of 5 minutes), and meanwhile every borrower waits the pool's
    # whole timeout: through an outage each request took 10 s, and after one of two
    # minutes the pool could take another two to notice PostgreSQL was back.
    def _failed(self, reason: str, *, pool_stuck: bool) -> None:
        with self._gate:
            now = self._clock()
            if self._outage is None:
                # the first failure may be one stale connection: the next caller checks at once
                self._outage = _Outage(since=now, reason=reason, next_try=now, delay=self.PROBE_FIRST_S,
                                       pool_stuck=pool_stuck)
            else:
                self._outage.reason = reason
                self._outage.pool_stuck |= pool_stuck

    def _through_outage(self) -> None:
        """Answer at once while PostgreSQL is known to be unreachable; let one caller at a
        time check with a direct connection, and give the pool a fresh start once it answers."""
        with self._gate:
            o = self._outage
            if o is None:
                return
            now = self._clock()
            if o.probing or now < o.next_try:
                raise DatabaseUnavailable(f"PostgreSQL has been unreachable for {now - o.since:.0f}s ({o.reason});"
                                          f" next check in {max(0.0, o.next_try - now):.1f}s")
            o.probing = True
        try:
            self._connect().close()
        except BaseException as e:
            with self._gate:
                o.probing = False  # whatever happened, the next caller may check again
                if isinstance(e, psycopg.Error):
                    o.failed_checks += 1
                    o.reason = f"cannot connect to PostgreSQL ({_redact(self.dsn)}): {_one_line(e)}"
                    o.next_try = self._clock() + o.delay
                    o.delay = min(o.delay * 2, self.PROBE_MAX_S)
            if isinstance(e, psycopg.Error):
                raise DatabaseUnavailable(o.reason) from e
            raise
        with self._gate:
            stale = o.pool_stuck or o.failed_checks > 0
            if stale:  # the pool's own reconnection may be asleep for minutes: start a new one
                old, self.pool = self.pool, self._new_pool()
                self.pool.open(wait=False)
            self._outage = None
        if stale:
            log.warning("PostgreSQL answers again after %.1fs; connections renewed", self._clock() - o.since)
            threading.Thread(target=old.close, kwargs={"timeout": 1.0}, name="vendwatch-pool-close",
                             daemon=True).start()

    def lock_migrations(self, tx: Tx) -> None:
        """Serialise concurrent ``migrate`` runs (several processes starting at once)."""
        tx.execute("SELECT pg_advisory_xact_lock(?)", (0x76656E64,))  # 'vend'

    def close(self) -> None:
        self.pool.close()


def _redact(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<invalid dsn>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
