"""Opening the Iceberg catalog and the lake's tables.

Embedded: the pyiceberg SQL catalog in ``<data_dir>/lake/catalog.db`` (SQLite in WAL
mode with a busy timeout, so the writer, the ETL and readers in other processes can
share it) and a warehouse directory ``<data_dir>/lake/warehouse``. Scale-out: the same
SQL catalog on PostgreSQL, or a REST / Glue catalog, with an ``s3://`` warehouse; only
settings change.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from vendwatch.config import Settings
from vendwatch.errors import Unavailable
from vendwatch.lake import schemas

_log = logging.getLogger("vendwatch.lake.catalog")
NAMESPACES = ("raw", "analytics")
_INIT_LOCK = threading.Lock()
_CATALOGS: dict[tuple[str, tuple[tuple[str, str], ...]], Catalog] = {}


class LakeError(Exception):
    """A lake operation cannot be done; the message says why."""


class CatalogUnavailable(LakeError, Unavailable):
    """The catalog's server does not answer; roles retry (one line each time, no traceback)."""


def _shown_uri(settings: Settings) -> str:
    """The configured catalog URI without its password (it goes into log lines)."""
    uri = settings.lake.catalog.uri or ""
    if settings.lake.catalog.type == "sql" and uri:
        try:
            from sqlalchemy.engine import make_url

            return make_url(uri).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - an unparsable URL is shown without its userinfo
            return uri.split("@")[-1]
    return uri


def _reason(e: BaseException) -> str:
    """The driver's own first line (SQLAlchemy wraps it in several lines of help text)."""
    inner = getattr(e, "orig", None) or e
    text = str(inner).strip() or type(inner).__name__
    return text.splitlines()[0].strip()


def local_problem(settings: Settings) -> str | None:
    """What makes a local catalog or warehouse impossible to open, naming the setting
    (checked before the lake roles start); None when nothing local is wrong."""
    c = settings.lake.catalog
    if c.type == "sql" and c.uri:
        try:
            from sqlalchemy.engine import make_url

            url = make_url(c.uri)
        except Exception as e:  # noqa: BLE001 - any parse failure is a setting to fix
            return f"lake.catalog.uri: not a database URL: {_reason(e)}"
        if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
            parent = Path(url.database).parent
            if not parent.is_dir():
                return f"lake.catalog.uri: the directory {parent} of the SQLite catalog does not exist"
            try:
                with sqlite3.connect(url.database) as db:
                    db.execute("PRAGMA user_version")
            except sqlite3.Error as e:
                return f"lake.catalog.uri: cannot open the SQLite catalog {url.database}: {e}"
    wh = local_warehouse(settings)
    if wh is not None:
        try:
            wh.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"lake.catalog.warehouse: cannot create {wh}: {e.strerror or e}"
    return None


def lake_dir(settings: Settings) -> Path:
    return settings.data_path.resolve() / "lake"


def warehouse_uri(settings: Settings) -> str:
    wh = settings.lake.catalog.warehouse
    if wh:
        return wh if "://" in wh else Path(wh).resolve().as_uri()
    return (lake_dir(settings) / "warehouse").as_uri()


def local_warehouse(settings: Settings) -> Path | None:
    """The warehouse directory when it is on local disk (DuckDB may read only there)."""
    u = urlparse(warehouse_uri(settings))
    return Path(u.path) if u.scheme == "file" else None


def _catalog_properties(settings: Settings) -> dict[str, str]:
    c = settings.lake.catalog
    props: dict[str, str] = {"type": c.type, "warehouse": warehouse_uri(settings)}
    if c.type == "sql":
        if c.uri:
            props["uri"] = c.uri
        else:
            path = lake_dir(settings) / "catalog.db"
            path.parent.mkdir(parents=True, exist_ok=True)
            # WAL lets readers run while the writer commits; set once, it persists in the file
            with sqlite3.connect(path) as db:
                db.execute("PRAGMA journal_mode=WAL")
            props["uri"] = f"sqlite:///{path}?timeout=30"
    elif c.uri:
        props["uri"] = c.uri
    props.update(c.properties)
    return props


def open_catalog(settings: Settings) -> Catalog:
    """The configured catalog, with the lake's namespaces; one object per process and configuration.

    Catalog objects are thread-safe (the SQL catalog is a SQLAlchemy engine with a
    connection pool); reusing one saves each query and report the catalog set-up.
    """
    wh = local_warehouse(settings)
    if wh is not None:
        wh.mkdir(parents=True, exist_ok=True)
    props = _catalog_properties(settings)
    key = (settings.lake.catalog.name, tuple(sorted(props.items())))
    with _INIT_LOCK:
        cached = _CATALOGS.get(key)
    if cached is not None:
        return cached
    cat = _open(settings, props)
    with _INIT_LOCK:
        return _CATALOGS.setdefault(key, cat)


def _open(settings: Settings, props: dict[str, str]) -> Catalog:
    try:
        return _open_once(settings, props)
    except Exception as e:
        if not _is_unreachable(e):
            raise
        # the catalog's server refused or did not answer: a state that may pass
        raise CatalogUnavailable(
            f"lake.catalog.uri: cannot reach the {settings.lake.catalog.type} catalog"
            f" {_shown_uri(settings) or '(default)'}: {_reason(e)}") from e


def _is_unreachable(e: BaseException) -> bool:
    """A refused or lost connection, or a database file that cannot be opened now (DB-API
    OperationalError, also as SQLAlchemy wraps it; socket and HTTP errors are OSErrors)."""
    return isinstance(e, OSError) or type(e).__name__ in ("OperationalError", "InterfaceError")


def _open_once(settings: Settings, props: dict[str, str]) -> Catalog:
    for attempt in range(3):
        try:
            with _INIT_LOCK:
                cat = load_catalog(settings.lake.catalog.name, **props)
            break
        except Exception as e:
            # two processes creating the catalog's own tables at once: the loser retries and finds them
            if "already exists" in str(e) and attempt < 2:
                continue
            if _is_unreachable(e):
                raise
            raise LakeError(f"lake.catalog: cannot open {settings.lake.catalog.type} catalog: {e}") from e
    engine = getattr(cat, "engine", None)
    if engine is not None and engine.dialect.name == "sqlite":
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=30000")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    existing = {ns[0] for ns in cat.list_namespaces()}
    for ns in NAMESPACES:
        if ns not in existing:
            try:
                cat.create_namespace(ns)
            except Exception:
                # another thread or process was first (SQLite reports that as an IntegrityError)
                if (ns,) not in cat.list_namespaces():
                    raise
    return cat


def ensure_table(cat: Catalog, name: str) -> Table:
    """Load a lake table, creating it from its definition in ``schemas`` when absent."""
    spec = schemas.TABLES.get(name)
    try:
        table = cat.load_table(name)
        if spec is not None:
            try:
                if evolve(table, spec) | set_properties(table, spec):
                    table.refresh()
            except CommitFailedException:
                # another process evolved it at the same moment; theirs is the same change
                table.refresh()
                if evolve(table, spec) | set_properties(table, spec):
                    table.refresh()
        return table
    except NoSuchTableError:
        pass
    if spec is None:
        raise LakeError(f"unknown lake table {name!r}; known: {', '.join(sorted(schemas.TABLES))}")
    try:
        return cat.create_table(
            name, schema=spec.schema, partition_spec=spec.partition_spec, properties=spec.properties
        )
    except Exception:
        # another process created it first
        return cat.load_table(name)


def ancestors(table: Table) -> Iterator[Snapshot]:
    """The current snapshot and its parents, newest first (stops where history was expired)."""
    snap = table.current_snapshot()
    while snap is not None:
        yield snap
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None


def newest_property(table: Table, key: str) -> str | None:
    """The newest value of a snapshot-summary property among the current snapshot's ancestors.

    Progress markers (log offsets, processed raw snapshot, content hash) live in snapshot
    summaries; commits by others (compaction, retention) carry none, hence the walk.
    """
    for snap in ancestors(table):
        props = snap.summary.additional_properties if snap.summary else {}
        if key in props:
            return props[key]
    return None


def evolve(table: Table, tdef: schemas.TableDef) -> bool:
    """Add columns the definition has and the table lacks (Iceberg schema evolution)."""
    have = {f.name for f in table.schema().fields}
    if all(f.name in have for f in tdef.schema.fields):
        return False
    with table.update_schema() as upd:
        upd.union_by_name(tdef.schema)
    _log.info("schema of %s evolved: %s", tdef.name, [f.name for f in tdef.schema.fields if f.name not in have])
    return True


def set_properties(table: Table, tdef: schemas.TableDef) -> bool:
    """Give a table made by an older release the properties its definition has now."""
    missing = {k: v for k, v in tdef.properties.items() if table.properties.get(k) != v}
    if not missing:
        return False
    with table.transaction() as tx:
        tx.set_properties(missing)
    _log.info("properties of %s set: %s", tdef.name, missing)
    return True


def table_names(cat: Catalog) -> list[str]:
    """Every table in the lake's namespaces, as ``namespace.table``."""
    out = []
    for ns in NAMESPACES:
        try:
            out.extend(".".join(ident) for ident in cat.list_tables(ns))
        except Exception:
            continue
    return sorted(out)
