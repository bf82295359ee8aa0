"""The lake's PostgreSQL-protocol endpoint with real clients: psql and psycopg.

A lake with a day of events (raw) and its ETL output (analytics) is served by the
``sql-server`` role; clients log in with an operator token as the password.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import service_missing
from tests.lake.conftest import drain, make_settings
from tests.lake.factory import day_of_events, publish

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.config import ConfigError
from vendwatch.lake.etl import run_etl
from vendwatch.lake.pgwire.server import SqlServer
from vendwatch.lake.pgwire.session import bind_params
from vendwatch.runtime import Context


@dataclass
class Endpoint:
    ctx: Context
    server: SqlServer
    port: int
    token: str
    viewer: str
    events: int

    def dsn(self, password: str | None = None, sslmode: str = "disable") -> str:
        return (f"host=127.0.0.1 port={self.port} dbname=vendwatch user=analyst sslmode={sslmode}"
                f" password={password or self.token} connect_timeout=10")


def _psql() -> str:
    exe = shutil.which("psql")
    if exe is None:
        service_missing("psql", "install Debian's postgresql-client")
    return exe  # type: ignore[return-value]


def psql(ep: Endpoint, *args: str, password: str | None = None, sslmode: str = "disable") -> subprocess.CompletedProcess:
    env = {**os.environ, "PGPASSWORD": password or ep.token, "PGSSLMODE": sslmode, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run([_psql(), "-h", "127.0.0.1", "-p", str(ep.port), "-U", "analyst", "-d", "vendwatch",
                           "-X", "-v", "ON_ERROR_STOP=1", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def _start(ctx: Context) -> tuple[SqlServer, threading.Event, threading.Thread]:
    server = SqlServer(ctx)
    stop = threading.Event()
    th = threading.Thread(target=server.run, args=(stop,), daemon=True)
    th.start()
    assert server.ready.wait(20), "sql endpoint did not start"
    return server, stop, th


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    data = tmp_path_factory.mktemp("sqlwire") / "data"
    ctx = Context(make_settings(data, **{"sql_server.port": 0}))
    ctx.log.create_topic(EVENTS)
    ctx.log.create_topic(REJECTED)
    events = day_of_events("dev-1") + day_of_events("dev-2", site="site-b")
    publish(ctx.log, events)
    drain(ctx)
    run_etl(ctx.settings, ctx.state)
    token = ctx.state.add_operator_token("bi", "operator")
    viewer = ctx.state.add_operator_token("wall", "viewer")
    server, stop, th = _start(ctx)
    assert server.port is not None
    yield Endpoint(ctx, server, server.port, token, viewer, len(events))
    stop.set()
    th.join(10)
    ctx.close()


def test_psql_selects_over_raw_and_analytics_tables(endpoint: Endpoint) -> None:
    out = psql(endpoint, "-At", "-c", "SELECT count(*) FROM raw.events")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == endpoint.events
    out = psql(endpoint, "-At", "-F", ",", "-c",
               "SELECT device_id, count(*) FROM analytics.transactions GROUP BY 1 ORDER BY 1")
    assert out.returncode == 0, out.stderr
    rows = [line.split(",") for line in out.stdout.splitlines()]
    assert [r[0] for r in rows] == ["dev-1", "dev-2"] and all(int(r[1]) > 0 for r in rows)


def test_psql_lists_the_lake_tables_with_dt(endpoint: Endpoint) -> None:
    out = psql(endpoint, "-c", r"\dt")
    assert out.returncode == 0, out.stderr
    listed = {tuple(c.strip() for c in line.split("|")[:2]) for line in out.stdout.splitlines() if "|" in line}
    assert ("raw", "events") in listed and ("analytics", "transactions") in listed, out.stdout
    assert not any(name.startswith("pg_") for _, name in listed)
    schemas = psql(endpoint, "-c", r"\dn")
    assert schemas.returncode == 0 and "analytics" in schemas.stdout and "raw" in schemas.stdout, schemas.stderr


@pytest.mark.parametrize("statement", [
    "INSERT INTO raw.events (event_id) VALUES ('x')",
    "UPDATE raw.events SET device_id = 'x'",
    "DELETE FROM analytics.transactions",
    "CREATE TABLE raw.mine (a INTEGER)",
    "CREATE VIEW v AS SELECT 1",
    "DROP TABLE raw.events",
    "ALTER TABLE raw.events ADD COLUMN x INTEGER",
    "TRUNCATE raw.events",
    "COPY raw.events TO '/tmp/vendwatch-leak.csv'",
    "EXPLAIN ANALYZE DELETE FROM raw.events",
    "ATTACH '/tmp/vendwatch-leak.duckdb' AS leak",
    "INSTALL httpfs",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT 1; DELETE FROM raw.events",
    "CALL pragma_version()",
])
def test_every_write_and_file_access_is_refused(endpoint: Endpoint, statement: str) -> None:
    out = psql(endpoint, "-c", statement)
    assert out.returncode != 0, f"{statement!r} was accepted: {out.stdout}"
    assert "ERROR" in out.stderr
    after = psql(endpoint, "-At", "-c", "SELECT count(*) FROM raw.events")
    assert int(after.stdout) == endpoint.events
    assert not Path("/tmp/vendwatch-leak.csv").exists()


def test_psycopg_extended_protocol_parameters_transactions_and_refusals(endpoint: Endpoint) -> None:
    with psycopg.connect(endpoint.dsn()) as conn:  # not autocommit: psycopg sends BEGIN first
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM raw.events WHERE device_id = %s AND type = %s", ("dev-1", "transaction"))
            (n,) = cur.fetchone()  # type: ignore[misc]
            assert n > 0
            cur.execute("SELECT %s::INTEGER + 1 AS two, %s AS quote", (1, "it's; DROP TABLE x --"))
            assert cur.fetchone() == (2, "it's; DROP TABLE x --")
            cur.execute("SELECT device_id, occurred_at FROM raw.events ORDER BY occurred_at LIMIT 2")
            rows = cur.fetchall()
            assert len(rows) == 2 and rows[0][1].tzinfo is not None  # timestamptz arrives as aware datetimes
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), conn.cursor() as cur:
            cur.execute("DELETE FROM raw.events WHERE device_id = %s", ("dev-1",))
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT version()")
            assert "vendwatch" in cur.fetchone()[0]  # type: ignore[index]
            cur.execute("SHOW transaction_read_only")
            assert cur.fetchone() == ("on",)


def test_catalog_queries_bi_tools_send_on_connect(endpoint: Endpoint) -> None:
    with psycopg.connect(endpoint.dsn(), autocommit=True) as conn, conn.cursor() as cur:
        # Grafana's PostgreSQL data source: table picker, then column picker
        cur.execute("SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) AS \"table\""
                    " FROM information_schema.tables WHERE table_schema NOT IN ('information_schema', 'pg_catalog')"
                    " AND table_type = 'BASE TABLE' ORDER BY 1")
        tables = [r[0] for r in cur.fetchall()]
        assert '"raw"."events"' in tables and '"analytics"."transactions"' in tables
        cur.execute("SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", ("raw", "events"))
        cols = dict(cur.fetchall())
        assert "event_id" in cols and "occurred_at" in cols
        # Metabase / DBeaver: schemas and the current database
        cur.execute("SELECT nspname FROM pg_catalog.pg_namespace ORDER BY 1")
        assert {"raw", "analytics"} <= {r[0] for r in cur.fetchall()}
        cur.execute("SELECT current_database(), current_schema()")
        assert cur.fetchone()[0] == "vendwatch"  # type: ignore[index]


def test_a_wrong_or_weak_token_is_refused(endpoint: Endpoint) -> None:
    out = psql(endpoint, "-c", "SELECT 1", password="vwo_not-a-token")
    assert out.returncode != 0 and "password authentication failed" in out.stderr
    out = psql(endpoint, "-c", "SELECT 1", password=endpoint.viewer)
    assert out.returncode != 0 and "needs operator" in out.stderr


def test_row_limit_of_the_sandbox_applies(tmp_path: Path) -> None:
    ctx = Context(make_settings(tmp_path / "data", **{"sql_server.port": 0, "lake.sql_row_limit": 3}))
    ctx.log.create_topic(EVENTS)
    ctx.log.create_topic(REJECTED)
    publish(ctx.log, day_of_events("dev-1"))
    drain(ctx)
    token = ctx.state.add_operator_token("bi", "operator")
    server, stop, th = _start(ctx)
    try:
        ep = Endpoint(ctx, server, server.port or 0, token, "", 0)
        with psycopg.connect(ep.dsn(), autocommit=True) as conn:
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            rows = conn.execute("SELECT event_id FROM raw.events").fetchall()
            assert len(rows) == 3 and any("truncated" in n for n in notices)
    finally:
        stop.set()
        th.join(10)
        ctx.close()


def _self_signed(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "server.crt", tmp / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_tls_is_offered_and_can_be_required(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    ctx = Context(make_settings(tmp_path / "data", **{"sql_server.port": 0, "sql_server.tls_cert": cert,
                                                      "sql_server.tls_key": key, "sql_server.require_tls": True}))
    token = ctx.state.add_operator_token("bi", "operator")
    server, stop, th = _start(ctx)
    try:
        ep = Endpoint(ctx, server, server.port or 0, token, "", 0)
        with psycopg.connect(ep.dsn(sslmode="require"), autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        out = psql(ep, "-At", "-c", "SELECT 'over tls'", sslmode="require")
        assert out.returncode == 0 and out.stdout.strip() == "over tls", out.stderr
        refused = psql(ep, "-c", "SELECT 1", sslmode="disable")
        assert refused.returncode != 0 and "TLS" in refused.stderr
    finally:
        stop.set()
        th.join(10)
        ctx.close()


def test_a_remote_listener_without_tls_does_not_start(tmp_path: Path) -> None:
    ctx = Context(make_settings(tmp_path / "data", **{"sql_server.host": "0.0.0.0"}))
    try:
        with pytest.raises(ConfigError, match="tls_cert"):
            SqlServer(ctx)
    finally:
        ctx.close()


def _startup(token: str) -> bytes:
    body = struct.pack("!I", 196608) + b"user\x00fuzz\x00database\x00vendwatch\x00\x00"
    pw = token.encode() + b"\x00"
    return struct.pack("!I", len(body) + 4) + body + b"p" + struct.pack("!I", len(pw) + 4) + pw


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def test_fuzzed_protocol_input_never_takes_the_endpoint_down(endpoint: Endpoint) -> None:
    """Mutated startup and query streams (lengths, kinds, truncation, garbage): each connection
    ends with an error or a close, and the endpoint keeps serving real clients."""
    rng = random.Random(12)
    valid = [
        _msg(b"Q", b"SELECT 1\x00"),
        _msg(b"P", b"s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17") + _msg(b"B", b"\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x017"
                                                                          b"\x00\x00") + _msg(b"E", b"\x00\x00\x00\x00\x00") + _msg(b"S", b""),
        _msg(b"D", b"Snope\x00") + _msg(b"S", b""),
    ]
    for i in range(150):
        stream = bytearray(_startup(endpoint.token) + b"".join(rng.choice(valid) for _ in range(rng.randint(1, 4))))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(stream))
            if op < 0.4:
                stream[pos] = rng.randrange(256)
            elif op < 0.7:
                del stream[pos:pos + rng.randint(1, 8)]
            else:
                stream[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if i % 10 == 0:
            stream = bytearray(rng.randbytes(rng.randint(1, 64)))
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
            s.sendall(bytes(stream))
            s.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if not s.recv(65536):
                        break
                except (ConnectionResetError, TimeoutError):
                    break
            else:
                raise AssertionError(f"connection {i} was left hanging")
    out = psql(endpoint, "-At", "-c", "SELECT count(*) FROM raw.events")
    assert out.returncode == 0 and int(out.stdout) == endpoint.events


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_bound_text_parameters_are_data_never_syntax(value: str) -> None:
    import duckdb

    sql = bind_params("SELECT $1 AS v, '$1' AS literal -- $1\n", [value.encode()], [0])
    (row,) = duckdb.sql(sql).fetchall()
    assert row == (value.replace("\x00", ""), "$1")
