"""Prometheus metrics of the lake (writer, ETL, SQL)."""

from __future__ import annotations

from prometheus_client import Counter

from vendwatch.observe.histogram import FastHistogram

RAW_ROWS = Counter("vendwatch_lake_raw_rows_total", "Rows committed to raw tables", ["table"])
COMMIT_SECONDS = FastHistogram(
    "vendwatch_lake_commit_seconds", "Raw-zone commit time (Arrow build + Parquet + catalog)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ETL_RUNS = Counter("vendwatch_lake_etl_runs_total", "ETL runs", ["outcome"])
SQL_QUERIES = Counter("vendwatch_lake_sql_queries_total", "SQL queries", ["outcome"])
