"""Read-only SQL: refusals with clear errors, limits, timeout, time travel, output formats."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from tests.lake.conftest import drain, make_settings
from tests.lake.factory import T0, day_of_events, publish, sale

from vendwatch.lake import formats
from vendwatch.lake.catalog import open_catalog
from vendwatch.lake.query import LakeSQL, QueryError, QueryRefused, QueryTimeout, referenced_tables
from vendwatch.runtime import Context


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """A small lake shared by the read-only tests (they cannot change it: that is the point)."""
    c = Context(make_settings(tmp_path_factory.mktemp("sql") / "data"))
    publish(c.log, day_of_events(n=4))
    drain(c)
    yield LakeSQL(c.settings)
    c.close()


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("INSERT INTO raw.events SELECT * FROM raw.events", "INSERT statements are not allowed"),
        ("DELETE FROM raw.events", "DELETE statements are not allowed"),
        ("CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
        ("DROP VIEW raw.events", "DROP statements are not allowed"),
        ("COPY (SELECT 1) TO '/tmp/vw-out.csv'", "COPY statements are not allowed"),
        ("ATTACH '/tmp/vw.duckdb' AS x", "ATTACH statements are not allowed"),
        ("INSTALL httpfs", "not allowed"),
        ("LOAD httpfs", "LOAD statements are not allowed"),
        ("SET enable_external_access = true", "SET statements are not allowed"),
        ("PRAGMA version", "not allowed"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "EXPLAIN is allowed for SELECT queries only"),
        ("SELECT * FROM read_csv('/etc/passwd')", "Cannot access file \"/etc/passwd\""),
        ("SELECT * FROM read_text('/etc/hostname')", "Cannot access file"),
        ("SELECT * FROM read_parquet('/tmp/*.parquet')", "Cannot access file"),
        ("SELECT * FROM glob('/etc/*')", "disabled"),
    ],
)
def test_refused_with_clear_error(lake, sql, says):
    with pytest.raises(QueryRefused) as e:
        lake.run(sql)
    assert says in str(e.value)


def test_catalog_file_next_to_the_warehouse_is_not_readable(lake):
    catalog_db = lake.settings.data_path.resolve() / "lake" / "catalog.db"
    assert catalog_db.exists()
    with pytest.raises(QueryRefused):
        lake.run(f"SELECT * FROM read_blob('{catalog_db}')")


def test_syntax_error_is_a_query_error(lake):
    with pytest.raises(QueryError, match="syntax error"):
        lake.run("SELEC 1")


def test_explain_of_a_query_is_allowed(lake):
    assert lake.run("EXPLAIN SELECT count(*) FROM raw.events").table.num_rows >= 1


def test_select_reads_tables_by_name(lake):
    rows = lake.run("SELECT type, count(*) AS n FROM raw.events GROUP BY type ORDER BY type").rows()
    assert rows == [{"type": "heartbeat", "n": 4}, {"type": "telemetry", "n": 4}, {"type": "transaction", "n": 4}]


def test_analytics_tables_exist_before_the_first_etl(lake):
    assert lake.run("SELECT count(*) AS n FROM analytics.transactions").rows() == [{"n": 0}]


def test_row_limit_truncates_and_says_so(lake):
    res = lake.run("SELECT * FROM raw.events", limit=5)
    assert res.table.num_rows == 5 and res.truncated
    res = lake.run("SELECT * FROM raw.events", limit=100)
    assert res.table.num_rows == 12 and not res.truncated


def test_timeout_interrupts(lake):
    with pytest.raises(QueryTimeout, match="0.2s timeout"):
        lake.run("SELECT count(*) FROM range(1000000000000) a", timeout_s=0.2)


def test_time_travel_by_snapshot_and_timestamp(ctx):
    publish(ctx.log, day_of_events(n=4))
    drain(ctx)
    lake = LakeSQL(ctx.settings)
    raw = open_catalog(ctx.settings).load_table("raw.events")
    first = raw.current_snapshot()
    publish(ctx.log, [sale(T0 + timedelta(days=2))])
    drain(ctx)
    assert lake.run("SELECT count(*) AS n FROM raw.events").rows() == [{"n": 13}]
    by_id = lake.run("SELECT count(*) AS n FROM raw.events", as_of=first.snapshot_id)
    assert by_id.rows() == [{"n": 12}] and by_id.snapshots["raw.events"] == first.snapshot_id
    at = datetime.fromtimestamp(first.timestamp_ms / 1000, UTC) + timedelta(milliseconds=1)
    assert lake.run("SELECT count(*) AS n FROM raw.events", as_of=at).rows() == [{"n": 12}]
    before_anything = datetime(2000, 1, 1, tzinfo=UTC)
    assert lake.run("SELECT count(*) AS n FROM raw.events", as_of=before_anything).rows() == [{"n": 0}]
    with pytest.raises(QueryError, match="belongs to none"):
        lake.run("SELECT count(*) FROM raw.events", as_of=12345)


def test_output_formats(lake):
    res = lake.run("SELECT event_id, occurred_at, count(*) OVER () AS n FROM raw.events ORDER BY event_id LIMIT 2")
    csv = formats.to_csv(res.table).decode().splitlines()
    assert csv[0] == '"event_id","occurred_at","n"' and len(csv) == 3
    doc = json.loads(formats.to_json(res.table))
    assert doc["columns"] == ["event_id", "occurred_at", "n"] and doc["rows"][0]["n"] == 12
    back = pq.read_table(io.BytesIO(formats.to_parquet(res.table)))
    assert back.num_rows == 2 and back.schema.field("n").type == "int64"


def test_table_names_are_found_quoted_or_not():
    known = ["raw.events", "analytics.transactions", "analytics.faults"]
    sql = 'SELECT * FROM "raw"."events" e JOIN ANALYTICS.Transactions t ON true -- analytics.nope'
    assert referenced_tables(sql, known) == ["analytics.transactions", "raw.events"]
