"""Scale-out backends for a benchmark run: a PostgreSQL schema of the run's own."""

from __future__ import annotations

import os
import time


def run_schema(postgres: str, prefix: str) -> tuple[str, str]:
    """Create a schema named after this run; return (its name, a DSN that uses it).

    The name also serves as the run's Kafka topic prefix, so runs never see each other's data."""
    import psycopg

    run = f"{prefix}_{int(time.time())}_{os.getpid()}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {run}")
    sep = "&" if "?" in postgres else "?"
    return run, f"{postgres}{sep}options=-csearch_path%3D{run}"
