"""A minimal SQL adapter so one set of queries serves SQLite and PostgreSQL.

Queries are written with ``?`` placeholders and portable SQL (``INSERT ... ON CONFLICT
DO UPDATE`` works on both). DDL may use ``{blob}``, ``{serial_pk}`` and ``{bigint}``,
which each dialect fills in.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vendwatch.files import private_dir

if TYPE_CHECKING:
    from vendwatch.config import Settings

Params = Sequence[Any]


class Tx(ABC):
    """An open transaction."""

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the affected row count."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...

    @abstractmethod
    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]: ...

    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None


class Database(ABC):
    dialect: str
    #: a statement is a network round trip (and, while the server is away, a wait for a
    #: timeout): callers on an event loop run it in a worker thread. An embedded SQLite
    #: lookup (20–50 µs) is cheaper than that hand-off (~130 µs of CPU on 2 cores).
    remote: bool = False
    ddl_types: dict[str, str]

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A read-write transaction, committed on normal exit."""

    # conveniences: one statement, own transaction
    def execute(self, sql: str, params: Params = ()) -> int:
        with self.transaction() as tx:
            return tx.execute(sql, params)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self.transaction() as tx:
            return tx.query(sql, params)

    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def ddl(self, sql: str) -> str:
        return sql.format(**self.ddl_types)

    def lock_migrations(self, tx: Tx) -> None:  # noqa: B027 - SQLite's BEGIN IMMEDIATE already serialises
        """Hold a lock for the rest of ``tx`` so concurrent migrators run one at a time."""

    def close(self) -> None:  # noqa: B027
        pass


class _SqliteTx(Tx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Params = ()) -> int:
        return self.db.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self.db.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, params).fetchall()


class SqliteDatabase(Database):
    dialect = "sqlite"
    ddl_types = {"blob": "BLOB", "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER"}

    def __init__(self, path: str | Path, busy_timeout_ms: int = 15_000) -> None:
        self.path = str(path)
        self._busy_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.RLock()  # one writer per process; SQLite serialises processes
        self._conn().execute("PRAGMA journal_mode=WAL")

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000)
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        db = self._conn()
        if db.in_transaction:  # nested use joins the outer transaction
            yield _SqliteTx(db)
            return
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        # reads need no write lock in WAL mode
        db = self._conn()
        return db.execute(sql, params).fetchall()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def open_database(settings: Settings) -> Database:
    if settings.state.backend == "postgres":
        from vendwatch.state.postgres import PostgresDatabase  # type: ignore[import-not-found]

        return PostgresDatabase(settings.state.postgres_dsn, pool_size=settings.state.pool_size)
    private_dir(settings.data_path)
    return SqliteDatabase(settings.data_path / "state.db")
