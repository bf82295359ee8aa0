"""The Iceberg SQL catalog on PostgreSQL (what the lake uses in scale-out mode):
pyiceberg's SqlCatalog through SQLAlchemy's psycopg 3 dialect, a real server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
from tests.contract.pg_backend import postgres_dsn


def sqlalchemy_uri(dsn: str) -> str:
    """postgresql://... -> postgresql+psycopg://... (psycopg 3, already a vendwatch dependency)."""
    return "postgresql+psycopg://" + dsn.split("://", 1)[1]


def test_sql_catalog_on_postgres_roundtrip(tmp_path: Path) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    uri = sqlalchemy_uri(postgres_dsn())
    name = "vw_" + uuid.uuid4().hex[:8]  # catalogs share the iceberg_tables table, keyed by name
    cat = SqlCatalog(name, uri=uri, warehouse=f"file://{tmp_path}/warehouse")
    cat.create_namespace("raw")
    data = pa.table({"device_id": ["vm-1", "vm-2"], "n": pa.array([1, 2], pa.int64())})
    table = cat.create_table("raw.events", schema=data.schema)
    table.append(data)
    table.append(pa.table({"device_id": ["vm-3"], "n": pa.array([3], pa.int64())}))

    # a second process (another lake writer or the query side) sees the same tables
    other = SqlCatalog(name, uri=uri, warehouse=f"file://{tmp_path}/warehouse")
    assert ("raw", "events") in other.list_tables("raw")
    got = other.load_table("raw.events").scan().to_arrow().sort_by("n")
    assert got.column("device_id").to_pylist() == ["vm-1", "vm-2", "vm-3"]
    assert len(other.load_table("raw.events").snapshots()) == 2
    cat.drop_table("raw.events")
    cat.drop_namespace("raw")
