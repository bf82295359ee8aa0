"""What a statement sent over the wire does.

* a query naming lake tables (``raw.*``, ``analytics.*``) runs in the lake's SQL
  sandbox (``LakeSQL.run``: one read-only statement, row limit, timeout, memory cap);
* a query naming none (``SELECT 1``, ``version()``, the ``pg_catalog`` /
  ``information_schema`` queries psql and BI tools send on connect) runs against the
  *catalog*: an in-memory DuckDB holding empty tables shaped like the lake's, so
  listing tables and columns works without reading data;
* session statements clients send on their own (``BEGIN``, ``COMMIT``, ``SET``,
  ``SHOW``, ``DISCARD``) succeed without effect: every query reads the latest snapshot;
* anything else (``INSERT``, ``CREATE``, ``COPY``, ``CALL``...) is refused with
  SQLSTATE 25006 (read-only transaction).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from vendwatch.config import Settings
from vendwatch.lake import schemas
from vendwatch.lake.query import (
    LakeSQL,
    QueryError,
    QueryRefused,
    QueryTimeout,
    check_statement,
    referenced_tables,
)

SERVER_VERSION = "15.0"
VERSION_TEXT = f"PostgreSQL {SERVER_VERSION} (vendwatch lake, read-only, DuckDB)"
SHOW = {"server_version": SERVER_VERSION, "server_encoding": "UTF8", "client_encoding": "UTF8",
        "datestyle": "ISO, MDY", "timezone": "UTC", "standard_conforming_strings": "on",
        "transaction_isolation": "read committed", "transaction_read_only": "on",
        "default_transaction_read_only": "on", "integer_datetimes": "on", "max_identifier_length": "63",
        "search_path": "raw, analytics", "lc_collate": "C", "lc_ctype": "C", "is_superuser": "off"}
_COMMENT = re.compile(r"(--[^\n]*|/\*.*?\*/)", re.S)
_FIRST_WORD = re.compile(r"[\s(;]*([A-Za-z]+)")
_SESSION = {"begin": "BEGIN", "start": "BEGIN", "commit": "COMMIT", "end": "COMMIT", "rollback": "ROLLBACK",
            "abort": "ROLLBACK", "set": "SET", "reset": "RESET", "discard": "DISCARD ALL",
            "deallocate": "DEALLOCATE", "close": "CLOSE CURSOR", "unlisten": "UNLISTEN", "savepoint": "SAVEPOINT",
            "release": "RELEASE"}
_QUERY = {"select", "with", "values", "table", "explain", "from", "describe", "summarize"}
# functions psql/BI catalog queries call that DuckDB lacks (macros never show in pg_class)
_MACROS = {
    "pg_get_userbyid": "CREATE MACRO pg_get_userbyid(x) AS 'vendwatch'",
    "pg_encoding_to_char": "CREATE MACRO pg_encoding_to_char(x) AS 'UTF8'",
    "quote_ident": "CREATE MACRO quote_ident(x) AS '\"' || replace(x, '\"', '\"\"') || '\"'",
    "pg_get_function_result": "CREATE MACRO pg_get_function_result(x) AS NULL",
    "pg_get_function_arguments": "CREATE MACRO pg_get_function_arguments(x) AS NULL",
}
_PG_QUALIFIED = re.compile(r"\bpg_catalog\.(" + "|".join([*_MACROS, "pg_am"]) + r")\b", re.I)
_OPERATOR = re.compile(r"OPERATOR\s*\(\s*pg_catalog\.([~!=<>*]+)\s*\)", re.I)
_VERSION = re.compile(r"\b(pg_catalog\.)?version\s*\(\s*\)", re.I)
_DATABASE = re.compile(r"\b(pg_catalog\.)?current_database\s*\(\s*\)", re.I)


class SqlFailure(Exception):
    """A statement failed; ``code`` is the SQLSTATE the client gets."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Result:
    table: pa.Table | None  # None: a command without rows
    tag: str
    notices: list[str] = field(default_factory=list)


def first_word(sql: str) -> str:
    m = _FIRST_WORD.match(_COMMENT.sub(" ", sql))
    return m.group(1).lower() if m else ""


class CatalogShadow:
    """Empty tables shaped like the lake's, in an in-memory DuckDB, for catalog queries."""

    def __init__(self, lake: LakeSQL, refresh_s: float = 60.0) -> None:
        self.lake, self.refresh_s = lake, refresh_s
        self._con: duckdb.DuckDBPyConnection | None = None
        self._at = -float("inf")
        self._lock = threading.Lock()

    def _build(self) -> duckdb.DuckDBPyConnection:
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                 "autoload_known_extensions": False})
        con.execute("SET TimeZone='UTC'")
        for name in self.lake.known_tables():
            try:
                arrow_schema = schema_to_pyarrow(self.lake.catalog.load_table(name).schema())
            except Exception:  # noqa: BLE001 - not written yet (or unreadable): its declared schema
                if name not in schemas.TABLES:
                    continue
                arrow_schema = schema_to_pyarrow(schemas.TABLES[name].schema)
            ns, tname = name.split(".", 1)
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{ns}"')
            con.register("__shape", arrow_schema.empty_table())
            con.execute(f'CREATE TABLE "{ns}"."{tname}" AS SELECT * FROM __shape')
            con.unregister("__shape")
        for ddl in _MACROS.values():
            con.execute(ddl)
        # a view, not a table: listings of tables (relkind 'r', BASE TABLE) leave it out
        con.execute("CREATE VIEW pg_am AS SELECT NULL::BIGINT AS oid, NULL::VARCHAR AS amname,"
                    " NULL::BIGINT AS amhandler, NULL::VARCHAR AS amtype WHERE false")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            now = time.monotonic()
            if self._con is None or now - self._at >= self.refresh_s:
                old, self._con = self._con, self._build()
                self._at = now
                if old is not None:
                    old.close()
            return self._con.cursor()


def rewrite_catalog_sql(sql: str) -> str:
    """PostgreSQL spellings DuckDB does not read, in the queries clients send on their own."""
    sql = _OPERATOR.sub(r"\1", sql)
    sql = _PG_QUALIFIED.sub(r"\1", sql)
    sql = _DATABASE.sub("'vendwatch'", sql)
    return _VERSION.sub("'" + VERSION_TEXT + "'", sql)


class LakeBackend:
    """Runs statements for wire sessions; ``max_concurrent`` queries at a time (like POST /v1/sql)."""

    def __init__(self, settings: Settings, lake: LakeSQL | None = None) -> None:
        self.settings = settings
        self.lake = lake or LakeSQL(settings)
        self.catalog = CatalogShadow(self.lake)
        self._slots = threading.BoundedSemaphore(settings.lake.sql_max_concurrent)
        self._known: tuple[float, list[str]] = (-float("inf"), [])

    def known_tables(self) -> list[str]:
        at, names = self._known
        if time.monotonic() - at > 30.0:
            names = self.lake.known_tables()
            self._known = (time.monotonic(), names)
        return names

    def execute(self, sql: str) -> Result:
        word = first_word(sql)
        if not word:
            return Result(None, "")
        if word in _SESSION:
            return Result(None, _SESSION[word])
        if word == "show":
            return self._show(sql)
        if word not in _QUERY:
            raise SqlFailure("25006", f"cannot execute {word.upper()} in a read-only transaction: "
                                      "the lake is queried with SELECT only")
        with self._slots:
            if referenced_tables(sql, self.known_tables()):
                return self._lake(sql)
            return self._catalog(sql)

    def _lake(self, sql: str) -> Result:
        try:
            res = self.lake.run(sql)
        except QueryRefused as e:
            raise SqlFailure("25006", str(e)) from None
        except QueryTimeout as e:
            raise SqlFailure("57014", str(e)) from None
        except QueryError as e:
            raise SqlFailure("42000", str(e)) from None
        notices = []
        if res.truncated:
            notices.append(f"result truncated to {res.table.num_rows} rows (lake.sql_row_limit)")
        return Result(res.table, f"SELECT {res.table.num_rows}", notices)

    def _catalog(self, sql: str) -> Result:
        sql = rewrite_catalog_sql(sql)
        cfg = self.settings.lake
        cur = self.catalog.cursor()
        try:
            check_statement(cur, sql)
            timer = threading.Timer(cfg.sql_timeout_s, cur.interrupt)
            timer.start()
            try:
                reader = cur.sql(sql).to_arrow_reader(cfg.sql_row_limit + 1)
                batches, n = [], 0
                for b in reader:
                    batches.append(b)
                    n += b.num_rows
                    if n > cfg.sql_row_limit:
                        break
                table = pa.Table.from_batches(batches, schema=reader.schema).slice(0, cfg.sql_row_limit)
            finally:
                timer.cancel()
        except QueryRefused as e:
            raise SqlFailure("25006", str(e)) from None
        except QueryError as e:
            raise SqlFailure("42601", str(e)) from None
        except duckdb.InterruptException:
            raise SqlFailure("57014", f"query interrupted after the {cfg.sql_timeout_s:g}s timeout") from None
        except duckdb.Error as e:
            raise SqlFailure("42000", str(e).splitlines()[0]) from None
        finally:
            cur.close()
        return Result(table, f"SELECT {table.num_rows}")

    @staticmethod
    def _show(sql: str) -> Result:
        name = _COMMENT.sub(" ", sql).strip().rstrip(";").split(None, 1)
        key = name[1].strip().strip('"').lower() if len(name) > 1 else ""
        if key == "all":
            table = pa.table({"name": list(SHOW), "setting": list(SHOW.values())})
            return Result(table, f"SHOW {len(SHOW)}")
        if key not in SHOW:
            raise SqlFailure("42704", f'unrecognized configuration parameter "{key}"')
        return Result(pa.table({key: [SHOW[key]]}), "SHOW")
