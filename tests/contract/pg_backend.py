"""PostgreSQL for the contract suites: a real server (scripts/services.sh up).

``fresh_schema()`` gives each test its own schema (selected through the DSN's
``options=-csearch_path=...``), so tests never see each other's tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from tests.conftest import service_missing

DEFAULT_DSN = "postgresql://vendwatch:vendwatch@127.0.0.1:5432/vendwatch"


def postgres_dsn() -> str:
    """The test server's DSN, or a test skip/failure when it does not answer."""
    import psycopg

    dsn = os.environ.get("VENDWATCH_TEST_POSTGRES", DEFAULT_DSN)
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.OperationalError as e:
        service_missing("postgres", f"cannot connect to {dsn.split('@')[-1]} ({e}); run scripts/services.sh up")
    return dsn


def with_search_path(dsn: str, schema: str) -> str:
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A DSN whose default schema is new and empty; dropped afterwards."""
    import psycopg

    dsn = postgres_dsn()
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(dsn, schema)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
