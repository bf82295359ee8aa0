"""The analyst's SQL sandbox (issue 10, item 6): read-only for real, only the planned
snapshot's files, no temp-dir escape, bounded answers, and a query that blows its
memory takes down its worker, never the server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from starlette.testclient import TestClient
from tests.lake.conftest import drain, make_settings
from tests.lake.factory import T0, day_of_events, publish, sale

from vendwatch.api.server import build_app
from vendwatch.lake.catalog import open_catalog
from vendwatch.lake.query import LakeSQL, QueryRefused, check_statement
from vendwatch.runtime import Context


@pytest.mark.parametrize("sql", [
    "EXPLAIN ANALYZE WITH x AS (SELECT 1) INSERT INTO raw.events SELECT * FROM raw.events",
    "EXPLAIN ANALYZE /* a comment */ INSERT INTO raw.events SELECT * FROM raw.events",
    "EXPLAIN ANALYZE -- a comment\n DELETE FROM raw.events",
    "EXPLAIN (ANALYZE) DELETE FROM raw.events",
    "EXPLAIN ANALYZE WITH d AS (DELETE FROM raw.events RETURNING *) SELECT * FROM d",
    "WITH d AS (DELETE FROM raw.events RETURNING *) SELECT * FROM d",
    "WITH d AS (UPDATE raw.events SET type = 'x' RETURNING *) SELECT count(*) FROM d",
    "SELECT * FROM (WITH d AS (INSERT INTO raw.events SELECT * FROM raw.events RETURNING *) SELECT * FROM d)",
])
def test_the_statement_gate_refuses_writes_however_wrapped(sql: str) -> None:
    with pytest.raises(QueryRefused, match="read-only"):
        check_statement(duckdb.connect(), sql)


@pytest.mark.parametrize("sql", ["SELECT 1", "EXPLAIN SELECT 1", "EXPLAIN ANALYZE SELECT 1", "FROM raw.events",
                                 "WITH a AS (SELECT 1) SELECT * FROM a", "(SELECT 1) UNION ALL (SELECT 2)",
                                 "EXPLAIN ANALYZE WITH a AS (SELECT 1) SELECT * FROM a", "VALUES (1), (2)"])
def test_the_statement_gate_lets_queries_through(sql: str) -> None:
    check_statement(duckdb.connect(), sql)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Context, int]]:
    """Two snapshots of raw.events: the first one's id is returned with the context."""
    c = Context(make_settings(tmp_path_factory.mktemp("sandbox") / "data"))
    publish(c.log, day_of_events(n=4))
    drain(c)
    first = open_catalog(c.settings).load_table("raw.events").current_snapshot()
    publish(c.log, [sale(T0 + timedelta(days=2))])
    drain(c)
    yield c, first.snapshot_id
    c.close()


def _files(ctx: Context) -> list[str]:
    wh = ctx.settings.data_path.resolve() / "lake"
    return sorted(str(p) for p in wh.rglob("*") if p.is_file() and p.suffix in (".parquet", ".json", ".avro"))


def test_file_functions_cannot_read_the_warehouse(lake: tuple[Context, int]) -> None:
    ctx, _ = lake
    wh = str(ctx.settings.data_path.resolve() / "lake")
    sql = LakeSQL(ctx.settings)
    for q in (f"SELECT count(*) FROM read_parquet('{wh}/**/*.parquet')", f"SELECT * FROM glob('{wh}/**')",
              *(f"SELECT size FROM read_blob('{f}')" for f in _files(ctx) if not f.endswith(".parquet"))):
        with pytest.raises(QueryRefused):
            sql.run(q)


def test_time_travel_reads_only_that_snapshots_files(lake: tuple[Context, int]) -> None:
    ctx, first = lake
    sql = LakeSQL(ctx.settings)
    assert sql.run("SELECT count(*) AS n FROM raw.events", as_of=first).rows() == [{"n": 12}]
    table = open_catalog(ctx.settings).load_table("raw.events")
    old = {t.file.file_path for t in table.scan(snapshot_id=first).plan_files()}
    newer = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files() if t.file.file_path not in old]
    assert newer
    with pytest.raises(QueryRefused):
        sql.run(f"SELECT count(*) FROM read_parquet('{newer[0]}') UNION ALL SELECT count(*) FROM raw.events",
                as_of=first)


def test_duckdb_temp_directory_is_not_readable(lake: tuple[Context, int], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _ = lake
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("s3cr3t")
    with pytest.raises(QueryRefused):
        LakeSQL(ctx.settings).run(f"SELECT * FROM read_text('{tmp_path}/.tmp/secret.txt') , raw.events")


def test_answers_are_bounded_in_bytes(lake: tuple[Context, int]) -> None:
    ctx, _ = lake
    res = LakeSQL(ctx.settings).run("SELECT repeat('x', 1000000) AS s FROM range(200)", limit=10_000)
    assert res.truncated and res.table.nbytes <= ctx.settings.lake.sql_max_result_bytes


@pytest.fixture(scope="module")
def api(lake: tuple[Context, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    ctx0, _ = lake
    # the same lake, a small memory budget for the query worker
    ctx = Context(make_settings(ctx0.settings.data_path, **{"lake.sql_memory_limit": "256MB",
                                                            "lake.sql_worker_memory_mb": 2048,
                                                            "lake.sql_max_result_bytes": 16 * 1024 * 1024}))
    token = ctx.state.add_operator_token(f"analyst-{os.getpid()}", "operator")
    with TestClient(build_app(ctx, ["console"]), raise_server_exceptions=False) as c:
        yield c, {"authorization": f"Bearer {token}"}
    ctx.close()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError


@pytest.mark.parametrize("sql", [
    "SELECT repeat('x', 3000000000) AS s",  # one 3 GB value: past Arrow's 2 GiB string offsets
    "SELECT list(range) AS l FROM range(400000000)",  # gigabytes in one list
])
def test_a_query_that_exhausts_memory_is_a_4xx_and_the_server_survives(
        api: tuple[TestClient, dict[str, str]], sql: str) -> None:
    c, auth = api
    before = _rss_mb()
    r = c.post("/v1/sql", headers=auth, json={"sql": sql})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text and r.json()["error"]["message"]
    assert _rss_mb() - before < 200
    ok = c.post("/v1/sql", headers=auth, json={"sql": "SELECT count(*) AS n FROM raw.events"})
    assert ok.status_code == 200, ok.text[:500]
    assert ok.json()["rows"] == [{"n": 13}]


def test_a_gigabyte_answer_is_truncated_without_growing_the_server(api: tuple[TestClient, dict[str, str]]) -> None:
    c, auth = api
    before = _rss_mb()
    r = c.post("/v1/sql", headers=auth, json={"sql": "SELECT repeat('x', 100000) AS s FROM range(5000)"})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["truncated"] is True and 0 < len(r.json()["rows"]) <= 170
    assert _rss_mb() - before < 200


def test_sql_api_still_refuses_writes_and_files(api: tuple[TestClient, dict[str, str]]) -> None:
    c, auth = api
    r = c.post("/v1/sql", headers=auth, json={"sql": "SELECT * FROM read_text('/etc/hostname')"})
    assert r.status_code == 403
    r = c.post("/v1/sql", headers=auth, json={"sql": "SELEC 1"})
    assert r.status_code == 400
    r = c.get("/v1/reports/device-last-seen", headers=auth)
    assert r.status_code == 200, r.text[:300]


_PROBE = """
import resource, sys
from vendwatch.lake.sandbox import _vm_size_kb, healthy
assert healthy()
room = (_vm_size_kb() + 64 * 1024) * 1024  # 64 MB above what it holds now: too little for a query
resource.setrlimit(resource.RLIMIT_AS, (room, room))
print("broken-looks-healthy" if healthy() else "broken-detected")
"""


def test_a_worker_left_without_room_is_found_broken_and_not_kept() -> None:
    """After a query fails, the worker checks it can still allocate and run DuckDB threads;
    one that cannot (what an earlier out-of-memory query can leave) reports itself broken
    and the pool re-runs the query in a fresh worker instead of answering 400."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "broken-detected"


def test_no_report_runs_in_the_server_process_when_queries_have_a_memory_cap(lake: tuple[Context, int]) -> None:
    """With ``lake.sql_worker_memory_mb`` set, every lake query, the DEX reports included, runs
    in a capped worker: here the cap is too small for a worker to start, so every report is
    a 503, never an answer computed in the server (whose memory the cap does not bound)."""
    ctx0, _ = lake
    ctx = Context(make_settings(ctx0.settings.data_path, **{"lake.sql_worker_memory_mb": 64}))
    token = ctx.state.add_operator_token(f"capped-{os.getpid()}", "operator")
    auth = {"authorization": f"Bearer {token}"}
    try:
        with TestClient(build_app(ctx, ["console"]), raise_server_exceptions=False) as c:
            for name in ("device-last-seen", "dex-reconciliation", "cash-accountability", "dex-files"):
                r = c.get(f"/v1/reports/{name}", headers=auth)
                assert r.status_code == 503, (name, r.status_code, r.text[:300])
                assert r.json()["error"]["code"] == "unavailable" and "Traceback" not in r.text
    finally:
        ctx.close()
