"""Scale-out backends for a benchmark run: a PostgreSQL schema (and Kafka topics) of the run's own."""

from __future__ import annotations

import atexit
import os
import time


def run_schema(postgres: str, prefix: str, kafka: str | None = None) -> tuple[str, str]:
    """Create a schema named after this run; return (its name, a DSN that uses it).

    The name also serves as the run's Kafka topic prefix, so runs never see each other's data.
    When the benchmark exits, the schema (state, dedupe index, Iceberg catalog) is dropped,
    and so are the Kafka topics of the run when ``kafka`` names the brokers: runs repeated
    against a shared PostgreSQL and Kafka leave nothing behind. Set VENDWATCH_BENCH_KEEP=1
    to keep them for a post-mortem."""
    import psycopg

    run = f"{prefix}_{int(time.time())}_{os.getpid()}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {run}")
    if not os.environ.get("VENDWATCH_BENCH_KEEP"):
        atexit.register(_drop, postgres, run, kafka)
    sep = "&" if "?" in postgres else "?"
    return run, f"{postgres}{sep}options=-csearch_path%3D{run}"


def _drop(postgres: str, run: str, kafka: str | None) -> None:
    import psycopg

    try:
        with psycopg.connect(postgres, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {run} CASCADE")
    except psycopg.Error as e:
        print(f"could not drop the run's schema {run}: {e}")
    if kafka is None:
        return
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka, "log_level": 2})
    try:
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{run}.")]
        for f in admin.delete_topics(topics, operation_timeout=30).values() if topics else ():
            f.result(timeout=60)
    except Exception as e:  # noqa: BLE001 - cleanup at exit: say what is left, never fail the run
        print(f"could not delete the run's Kafka topics {run}.*: {e}")
