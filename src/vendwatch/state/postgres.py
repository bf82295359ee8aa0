"""The ``Database`` adapter on PostgreSQL (RDS/Aurora in production).

psycopg 3 with a ``psycopg_pool`` connection pool: each transaction borrows one
connection, so several threads (stages, HTTP handlers) work in parallel, unlike the
embedded SQLite store's single writer. Queries keep the portable ``?`` placeholders;
they are rewritten to psycopg's ``%s`` once per distinct statement (cached).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from vendwatch.errors import Unavailable
from vendwatch.state.db import Database, Params, Tx


class DatabaseUnavailable(Unavailable):
    """PostgreSQL cannot be reached (or the pool is exhausted) right now; retry later."""


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
    ddl_types = {"blob": "BYTEA", "serial_pk": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT"}

    def __init__(self, dsn: str, pool_size: int = 8, *, connect_timeout_s: float = 10.0) -> None:
        self.dsn = dsn
        self._local = threading.local()
        try:  # one direct attempt first: its error says why (the pool's only says "timeout")
            psycopg.connect(dsn, connect_timeout=max(1, int(connect_timeout_s))).close()
        except psycopg.Error as e:
            reason = " ".join(str(e).split())  # libpq's message spans lines (a hint on the second)
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({_redact(dsn)}): {reason}") from e
        self.pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=connect_timeout_s,
            open=False,
            name="vendwatch-state",
            kwargs={"autocommit": True},  # transactions are explicit (conn.transaction())
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as e:
            self.pool.close()
            reason = " ".join(str(e).split())  # libpq's message spans lines (a hint on the second)
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({_redact(dsn)}): {reason}") from e

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        current: _PgTx | None = getattr(self._local, "tx", None)
        if current is not None:  # nested use joins the outer transaction (as on SQLite)
            yield current
            return
        try:
            conn = self.pool.getconn()
        except PoolTimeout as e:
            raise DatabaseUnavailable(f"no PostgreSQL connection available: {e}") from e
        try:
            with conn.transaction():
                tx = self._local.tx = _PgTx(conn)
                try:
                    yield tx
                finally:
                    self._local.tx = None
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            if not conn.broken:
                raise  # the statement's own failure (a deadlock, a serialization failure, a timeout)
            reason = " ".join(str(e).split())
            raise DatabaseUnavailable(f"lost the connection to PostgreSQL ({_redact(self.dsn)}): {reason}") from e
        finally:
            self.pool.putconn(conn)  # a broken connection is discarded by the pool

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
