"""Read-only SQL over the lake with DuckDB.

Each lake table a query names becomes a DuckDB view over exactly the Parquet data
files of the chosen Iceberg snapshot (pyiceberg plans the files; DuckDB reads them
natively, with projection and row-group pruning). We do not use DuckDB's iceberg
extension: its Python package is pinned to another DuckDB release, and it cannot
read a SQL catalog, only a metadata file (see docs/lake.md).

Read-only is enforced three ways: only a single query is accepted (its parse tree
is checked: a SELECT, or EXPLAIN [ANALYZE] of one, with no INSERT/UPDATE/DELETE
hidden in a CTE); after the views are made, DuckDB's file access is switched off
except for exactly the data files of the planned snapshots (``allowed_paths``; no
directory, so no other snapshot, no metadata and no file removed by retention can
be read), spilling to a temp directory is off (DuckDB would allow reading it),
extension installing and loading is off, and the configuration is locked so the
query cannot switch any of it back on. Answers are bounded in rows and bytes; the
HTTP API runs queries in memory-capped worker processes (``lake/sandbox.py``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.types import (
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
)

from vendwatch.config import Settings
from vendwatch.lake import metrics, schemas
from vendwatch.lake.catalog import NAMESPACES, local_warehouse, open_catalog, table_names
from vendwatch.lake.formats import normalize

_TABLE_REF = re.compile(r'"?\b(' + "|".join(NAMESPACES) + r')"?\s*\.\s*"?([A-Za-z_][A-Za-z0-9_]*)"?', re.I)
_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# query-node types of a read-only parse tree (json_serialize_sql); anything else, such as
# DELETE_QUERY_NODE inside a CTE, is refused
_READ_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
_BATCH_ROWS = 1024  # rows per Arrow batch read from DuckDB: bounds one batch's memory
_DUCK_TYPES: dict[type[IcebergType], str] = {
    StringType: "VARCHAR",
    LongType: "BIGINT",
    IntegerType: "INTEGER",
    DoubleType: "DOUBLE",
    FloatType: "FLOAT",
    BooleanType: "BOOLEAN",
    TimestamptzType: "TIMESTAMPTZ",
    TimestampType: "TIMESTAMP",
    DateType: "DATE",
}


class QueryError(Exception):
    """The query was refused or failed; the message is meant for the user."""


class QueryRefused(QueryError):
    """The statement is not allowed (not read-only, or touches files or extensions)."""


class QueryTimeout(QueryError):
    """The query ran longer than its timeout and was interrupted."""


class QueryTooLarge(QueryError):
    """The query needed more memory than it may use, or its answer cannot be represented."""


class QueryUnavailable(QueryError):
    """The server could not run the query now (no worker process); not the query's fault."""


@dataclass
class QueryResult:
    table: pa.Table
    truncated: bool
    snapshots: dict[str, int | None]  # table -> snapshot id read

    @property
    def columns(self) -> list[str]:
        return self.table.column_names

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()


AsOf = datetime | int | None


def referenced_tables(sql: str, known: Iterable[str]) -> list[str]:
    """Lake tables (``ns.table``) named in ``sql`` that exist."""
    known_set = set(known)
    found = {f"{m.group(1).lower()}.{m.group(2).lower()}" for m in _TABLE_REF.finditer(sql)}
    return sorted(found & known_set)


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT/EXPLAIN, with a message saying why."""
    try:
        stmts = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL syntax error: {e}") from None
    if not stmts:
        raise QueryError("the query is empty")
    if len(stmts) != 1:
        raise QueryRefused(f"exactly one statement is allowed, got {len(stmts)}")
    kind = stmts[0].type
    if kind not in _ALLOWED:
        raise QueryRefused(
            f"read-only: {kind.name} statements are not allowed; the lake is queried with SELECT only"
        )
    query = stmts[0].query
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: what follows must itself pass as a query
        query = _explained(query)
        inner = con.extract_statements(query)
        if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
            raise QueryRefused("read-only: EXPLAIN is allowed for SELECT queries only")
    _check_tree(con, query)


def _explained(sql: str) -> str:
    """The statement after ``EXPLAIN [ANALYZE]`` (comments skipped by DuckDB's own tokenizer)."""
    tokens = duckdb.tokenize(sql)
    words = [(pos, sql[pos:tokens[i + 1][0] if i + 1 < len(tokens) else len(sql)].strip().lower())
             for i, (pos, kind) in enumerate(tokens) if kind != duckdb.token_type.comment]
    i = 1  # words[0] is EXPLAIN
    if i < len(words) and words[i][1] in ("analyze", "analyse"):
        i += 1
    if i >= len(words) or words[i][1].startswith("("):
        raise QueryRefused("read-only: EXPLAIN is allowed for SELECT queries only (EXPLAIN or EXPLAIN ANALYZE,"
                           " without options)")
    return sql[words[i][0]:]


def _check_tree(con: duckdb.DuckDBPyConnection, query: str) -> None:
    # fetchall, not fetchone: an unfinished result blocks the connection's next query
    rows = con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()
    doc = json.loads(rows[0][0]) if rows else {"error": True}
    if doc.get("error"):
        raise QueryRefused("read-only: only SELECT queries are allowed"
                           f" ({doc.get('error_message', 'not a query')})")
    stack: list[Any] = [doc["statements"]]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            t = node.get("type")
            if isinstance(t, str) and t.endswith("_NODE") and t not in _READ_NODES:
                verb = t.removesuffix("_QUERY_NODE").removesuffix("_NODE")
                raise QueryRefused(f"read-only: {verb} is not allowed, not even inside a query")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class LakeSQL:
    """A DuckDB session over chosen lake tables, locked down after the views exist."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or open_catalog(settings)
        self.warehouse = local_warehouse(settings)

    def known_tables(self) -> list[str]:
        return sorted(set(table_names(self.catalog)) | set(schemas.TABLES))

    # -- snapshots -------------------------------------------------------------
    def _snapshot_for(self, table: Table, as_of: AsOf, as_of_ts_ms: int | None) -> int | None:
        if as_of is None:
            snap = table.current_snapshot()
            return snap.snapshot_id if snap else None
        if isinstance(as_of, int) and table.snapshot_by_id(as_of) is not None:
            return as_of
        if as_of_ts_ms is None:
            return None
        snap = table.snapshot_as_of_timestamp(as_of_ts_ms)
        return snap.snapshot_id if snap else None

    def _as_of_ms(self, tables: list[Table], as_of: AsOf) -> int | None:
        if as_of is None:
            return None
        if isinstance(as_of, datetime):
            dt = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
            return int(dt.timestamp() * 1000)
        for t in tables:
            snap = t.snapshot_by_id(as_of)
            if snap is not None:
                # other tables are read as of the same instant
                return snap.timestamp_ms
        raise QueryError(f"snapshot {as_of} belongs to none of the queried tables")

    # -- views -----------------------------------------------------------------
    def _view_sql(self, table: Table, snapshot_id: int | None, paths_out: list[str] | None = None) -> tuple[str, Any]:
        """SQL (or an Arrow object to register) that reads the table at ``snapshot_id``;
        the data files it reads are appended to ``paths_out``."""
        # read with the table's current schema: columns added later read as NULL
        cur = table.schema()
        cols = [(f.field_id, f.name, _duck_type(f.field_type)) for f in cur.fields]
        if snapshot_id is None:
            return _empty_select(cur.fields), None
        tasks = list(table.scan(snapshot_id=snapshot_id).plan_files())
        if not tasks:
            return _empty_select(cur.fields), None
        if any(t.delete_files for t in tasks) or self.warehouse is None:
            # merge-on-read deletes or remote storage: let pyiceberg/pyarrow do the reading
            return "", table.scan(snapshot_id=snapshot_id).to_arrow()
        present: set[int] = set()
        for t in tasks:
            present.update((t.file.value_counts or {}).keys())
            present.update((t.file.column_sizes or {}).keys())
        paths = [_local_path(t.file.file_path) for t in tasks]
        if paths_out is not None:
            paths_out.extend(paths)
        files = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
        select = ", ".join(
            f'CAST("{n}" AS {ty}) AS "{n}"' if fid in present else f'CAST(NULL AS {ty}) AS "{n}"'
            for fid, n, ty in cols
        )
        return f"SELECT {select} FROM read_parquet({files}, union_by_name=true)", None

    def connect(
        self, tables: Iterable[str], as_of: AsOf = None, lock: bool = True, pins: dict[str, int | None] | None = None
    ) -> tuple[duckdb.DuckDBPyConnection, dict[str, int | None]]:
        """A DuckDB connection with views for ``tables``; locked read-only when ``lock``.

        ``pins`` reads some tables at given snapshots whatever ``as_of`` says (the ETL
        pins raw.events so one run sees one consistent raw snapshot).
        """
        pins = pins or {}
        loaded: dict[str, Table] = {}
        not_yet: list[str] = []
        for name in tables:
            try:
                loaded[name] = self.catalog.load_table(name)
            except NoSuchTableError:
                if name not in schemas.TABLES:
                    raise QueryError(f"no lake table {name}") from None
                not_yet.append(name)  # defined but never written (no ETL run yet): empty
        as_of_ms = self._as_of_ms(list(loaded.values()), as_of)
        cfg = self.settings.lake
        con = duckdb.connect(":memory:", config={
            "threads": cfg.sql_threads, "memory_limit": cfg.sql_memory_limit,
            "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        })
        con.execute("SET TimeZone='UTC'")
        snapshots: dict[str, int | None] = {}
        files: list[str] = []
        for ns in NAMESPACES:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {ns}")
        for name, table in loaded.items():
            sid = pins[name] if name in pins else self._snapshot_for(table, as_of, as_of_ms)
            snapshots[name] = sid
            sql, arrow = self._view_sql(table, sid, files)
            ns, tname = name.split(".", 1)
            if arrow is not None:
                reg = f"__arrow_{ns}_{tname}"
                con.register(reg, arrow)
                sql = f"SELECT * FROM {reg}"
            con.execute(f'CREATE VIEW {ns}."{tname}" AS {sql}')
        for name in not_yet:
            ns, tname = name.split(".", 1)
            con.execute(f'CREATE VIEW {ns}."{tname}" AS {_empty_select(schemas.TABLES[name].schema.fields)}')
            snapshots[name] = None
        if lock:
            _lock_down(con, files)
        return con, snapshots

    def run(self, sql: str, *, limit: int | None = None, timeout_s: float | None = None, as_of: AsOf = None) -> QueryResult:
        """Run one read-only query; at most ``limit`` rows are returned (``truncated`` tells if more existed)."""
        cfg = self.settings.lake
        limit = cfg.sql_row_limit if limit is None else limit
        timeout_s = cfg.sql_timeout_s if timeout_s is None else timeout_s
        probe = duckdb.connect(":memory:")
        try:
            check_statement(probe, sql)
        finally:
            probe.close()
        con, snaps = self.connect(referenced_tables(sql, self.known_tables()), as_of)
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            reader = con.sql(sql).to_arrow_reader(min(max(limit, 1) + 1, _BATCH_ROWS))
            batches, n, size, cut = [], 0, 0, False
            for b in reader:
                if size + b.nbytes > cfg.sql_max_result_bytes:
                    # keep the rows that fit (an estimate from the batch's average row size)
                    room = cfg.sql_max_result_bytes - size
                    keep = int(b.num_rows * room / b.nbytes) if b.nbytes else b.num_rows
                    batches.append(b.slice(0, keep))
                    n += keep
                    cut = True
                    break
                batches.append(b)
                n += b.num_rows
                size += b.nbytes
                if n > limit:
                    break
            out = normalize(pa.Table.from_batches(batches, schema=reader.schema).slice(0, limit))
            metrics.SQL_QUERIES.labels("ok").inc()
            return QueryResult(out, cut or n > limit, snaps)
        except duckdb.InterruptException:
            metrics.SQL_QUERIES.labels("timeout").inc()
            raise QueryTimeout(f"query interrupted after the {timeout_s:g}s timeout") from None
        except duckdb.PermissionException as e:
            metrics.SQL_QUERIES.labels("refused").inc()
            raise QueryRefused(f"refused: {_first_line(e)} (only lake tables can be read)") from None
        except (duckdb.OutOfMemoryException, MemoryError, pa.ArrowCapacityError, pa.ArrowMemoryError) as e:
            metrics.SQL_QUERIES.labels("too_large").inc()
            raise QueryTooLarge(f"the query needs more memory than it may use ({_first_line(e)});"
                                " aggregate, filter or select fewer columns") from None
        except (pa.ArrowException, OSError) as e:  # DuckDB's Arrow export reports OOM as OSError
            if "memory" in str(e).lower():
                metrics.SQL_QUERIES.labels("too_large").inc()
                raise QueryTooLarge(f"the answer needs more memory than a query may use ({_first_line(e)});"
                                    " select fewer or smaller columns") from None
            metrics.SQL_QUERIES.labels("error").inc()
            raise QueryError(f"the answer cannot be returned: {_first_line(e)}") from None
        except duckdb.Error as e:
            metrics.SQL_QUERIES.labels("error").inc()
            raise QueryError(_first_line(e)) from None
        finally:
            timer.cancel()
            con.close()


def _duck_type(t: IcebergType) -> str:
    return _DUCK_TYPES.get(type(t), "VARCHAR")


def _empty_select(fields: Iterable[Any]) -> str:
    cols = ", ".join(f'CAST(NULL AS {_duck_type(f.field_type)}) AS "{f.name}"' for f in fields)
    return f"SELECT {cols} WHERE false"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _lock_down(con: duckdb.DuckDBPyConnection, files: list[str]) -> None:
    """No file, network or extension access beyond the planned data files; settings frozen."""
    if files:
        con.execute("SET allowed_paths=?", [sorted(set(files))])
    # DuckDB allows reading its temp directory (default <cwd>/.tmp) even with external
    # access off: no spilling, so no such directory (the memory limit holds instead)
    con.execute("SET temp_directory=''")
    con.execute("SET enable_external_access=false")
    con.execute("SET allow_community_extensions=false")
    con.execute("SET lock_configuration=true")
