"""`vendwatch db migrate|status` and `vendwatch bus init` through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import vendwatch_cmd
from tests.contract.kafka_backend import kafka_settings
from tests.contract.pg_backend import fresh_schema


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vendwatch_cmd(*args), env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_db_migrate_on_postgres_is_idempotent() -> None:
    with fresh_schema() as dsn:
        env = {"VENDWATCH_STATE__BACKEND": "postgres", "VENDWATCH_STATE__POSTGRES_DSN": dsn}
        first = _run(["db", "migrate"], env)
        assert first.returncode == 0, first.stderr
        assert "applied core v1" in first.stdout
        second = _run(["db", "migrate"], env)
        assert second.returncode == 0, second.stderr
        assert second.stdout.startswith("0 migration(s) applied")
        st = _run(["db", "status"], env)
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        assert "core v1" in doc["applied"] and doc["pending"] == []


def test_db_migrate_on_sqlite(tmp_path: Path) -> None:
    r = _run(["db", "migrate", "--data-dir", str(tmp_path / "d")], {})
    assert r.returncode == 0, r.stderr
    assert "applied core v1" in r.stdout and (tmp_path / "d" / "state.db").exists()


def test_db_migrate_reports_unreachable_postgres() -> None:
    env = {"VENDWATCH_STATE__BACKEND": "postgres",
           "VENDWATCH_STATE__POSTGRES_DSN": "postgresql://vendwatch:s3cret-pw@127.0.0.1:1/vendwatch?connect_timeout=1"}
    r = _run(["db", "migrate"], env)
    assert r.returncode != 0
    assert "cannot connect to PostgreSQL" in r.stderr and "s3cret" not in r.stderr
    assert "Traceback" not in r.stderr


def test_bus_init_creates_topics_on_kafka() -> None:
    ks = kafka_settings()
    env = {"VENDWATCH_BUS__BACKEND": "kafka", "VENDWATCH_BUS__KAFKA__BOOTSTRAP_SERVERS": ks.bootstrap_servers,
           "VENDWATCH_BUS__KAFKA__TOPIC_PREFIX": ks.topic_prefix}
    r = _run(["bus", "init", "--partitions", "5"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["events:", "5", "partitions", "rejected:", "5", "partitions",
                                "signals:", "5", "partitions", "business:", "5", "partitions"]
