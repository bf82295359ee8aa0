"""pytest plugin: run a test suite with the state store on PostgreSQL instead of SQLite.

    python -m pytest -p tests.scale.pg_state_plugin tests/incidents

Each test gets a fresh schema; every ``load_settings`` (in-process) and every spawned
``vendwatch`` process (environment) then uses ``state.backend = "postgres"``. This is
how suites written against the embedded store double as PostgreSQL contract tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from tests.contract.pg_backend import fresh_schema

from vendwatch import config

_used = {"tests": 0, "on_postgres": 0}


@pytest.fixture(autouse=True)
def _state_on_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = config.load_settings
    with fresh_schema() as dsn:
        pg = {"state.backend": "postgres", "state.postgres_dsn": dsn}

        def load_settings(config_file: Any = None, overrides: dict[str, Any] | None = None,
                          environ: dict[str, str] | None = None) -> config.Settings:
            return original(config_file, {**(overrides or {}), **pg}, environ)

        for mod in list(sys.modules.values()):
            if getattr(mod, "load_settings", None) is original:
                monkeypatch.setattr(mod, "load_settings", load_settings)
        monkeypatch.setenv("VENDWATCH_STATE__BACKEND", "postgres")
        monkeypatch.setenv("VENDWATCH_STATE__POSTGRES_DSN", dsn)
        yield
        import psycopg

        _used["tests"] += 1
        with psycopg.connect(dsn) as conn:  # did the test really put its state there?
            row = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").fetchone()
        _used["on_postgres"] += bool(row and row[0])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"pg_state_plugin: {_used['on_postgres']} of {_used['tests']} tests kept state in PostgreSQL")
