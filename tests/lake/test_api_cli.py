"""HTTP (/v1/sql, /v1/reports) and CLI (sql, report, etl, lake, replay) over a small lake."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.testclient import TestClient
from tests.lake.conftest import drain
from tests.lake.factory import T0, day_of_events, publish, sale

from vendwatch.bus import EVENTS
from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.lake.api import routes
from vendwatch.lake.replay import iter_events
from vendwatch.lake.summary import summary


@pytest.fixture
def filled(ctx):
    publish(ctx.log, day_of_events(n=6))
    drain(ctx)
    return ctx


@pytest.fixture
def client(filled):
    app = Starlette(routes=routes(filled))
    tokens = {r: filled.state.add_operator_token(f"t-{r}", r) for r in ("viewer", "operator")}
    with TestClient(app) as c:
        yield c, tokens


def _auth(tok):
    return {"Authorization": f"Bearer {tok}"}


def test_post_sql(client):
    c, tok = client
    r = c.post("/v1/sql", json={"sql": "SELECT count(*) AS n FROM raw.events"}, headers=_auth(tok["operator"]))
    assert r.status_code == 200 and r.json()["rows"] == [{"n": 18}]
    r = c.post("/v1/sql", json={"sql": "SELECT * FROM raw.events", "limit": 2, "format": "csv"}, headers=_auth(tok["operator"]))
    assert r.status_code == 200 and r.headers["x-vendwatch-truncated"] == "true" and len(r.text.splitlines()) == 3
    r = c.post("/v1/sql", json={"sql": "SELECT event_id FROM raw.events", "format": "parquet"}, headers=_auth(tok["operator"]))
    assert pq.read_table(io.BytesIO(r.content)).num_rows == 18


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"sql": "DELETE FROM raw.events"}, 403, "refused"),
        ({"sql": "SELECT * FROM read_csv('/etc/passwd')"}, 403, "refused"),
        ({"sql": "SELECT nope FROM raw.events"}, 400, "query_error"),
        ({"sql": "SELECT 1", "format": "xml"}, 400, "bad_request"),
        ({"sql": "SELECT 1", "as_of": "yesterday"}, 400, "bad_request"),
        ({"query": "SELECT 1"}, 400, "bad_request"),
        ({"sql": "SELECT count(*) FROM range(1000000000000)", "timeout_s": 0.2}, 408, "timeout"),
    ],
)
def test_post_sql_errors(client, body, status, code):
    c, tok = client
    r = c.post("/v1/sql", json=body, headers=_auth(tok["operator"]))
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text


def test_sql_needs_an_operator_token(client):
    c, tok = client
    assert c.post("/v1/sql", json={"sql": "SELECT 1"}).status_code == 401
    assert c.post("/v1/sql", json={"sql": "SELECT 1"}, headers=_auth(tok["viewer"])).status_code == 403


def test_reports_over_http(client):
    c, tok = client
    assert c.get("/v1/reports/revenue").status_code == 401
    names = [r["name"] for r in c.get("/v1/reports", headers=_auth(tok["viewer"])).json()["reports"]]
    assert "refill-picklist" in names
    r = c.get("/v1/reports/device-last-seen?format=csv", headers=_auth(tok["viewer"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0].startswith('"device_id","site_id","last_seen_at"')
    assert c.get("/v1/reports/nope", headers=_auth(tok["viewer"])).status_code == 404
    assert c.get("/v1/reports/revenue?since=last-week", headers=_auth(tok["viewer"])).status_code == 400


def run(settings, *args):
    res = CliRunner().invoke(cli, [*args, "--data-dir", settings.data_dir], obj=Env(None, {}), catch_exceptions=False)
    return res


def test_cli_sql_formats_and_refusal(filled):
    s = filled.settings
    res = run(s, "sql", "--format", "json", "SELECT type, count(*) AS n FROM raw.events GROUP BY 1 ORDER BY 1")
    assert res.exit_code == 0 and json.loads(res.output)["rows"][0] == {"type": "heartbeat", "n": 6}
    res = run(s, "sql", "COPY (SELECT 1) TO '/tmp/x.csv'")
    assert res.exit_code == 1 and "COPY statements are not allowed" in res.output
    res = run(s, "sql", "--as-of", "not-a-time", "SELECT 1")
    assert res.exit_code == 2 and "neither a snapshot id" in res.output


def test_cli_etl_report_lake(filled, tmp_path):
    s = filled.settings
    res = run(s, "etl", "run", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["tables"]["analytics.transactions"].startswith("6 rows")
    assert set(json.loads(run(s, "etl", "run", "--json").output)["tables"].values()) == {"unchanged"}
    out = tmp_path / "rev.csv"
    res = run(s, "report", "revenue", "--format", "csv", "--output", str(out))
    assert res.exit_code == 0 and out.read_text().splitlines()[1].startswith("2026-11-20,")
    res = run(s, "lake", "tables")
    assert "raw.events" in res.output and "analytics.device_daily" in res.output
    res = run(s, "lake", "maintain")
    assert res.exit_code == 0 and "raw.events" in res.output
    res = run(s, "lake", "snapshots", "raw.events")
    assert "writer" in res.output


def test_replay_republishes_in_order_and_lake_does_not_grow(filled):
    s = filled.settings
    publish(filled.log, [sale(T0 - timedelta(minutes=30), txid="early")])  # arrives last, happened first
    drain(filled)
    got = list(iter_events(s, T0 - timedelta(hours=1), T0 + timedelta(hours=2)))
    assert [e.occurred_at for e in got] == sorted(e.occurred_at for e in got)
    assert got[0].event_id.startswith("dev-1-transaction") and len(got) == 1 + 6
    end_before = sum(filled.log.end_offsets(EVENTS).values())
    res = run(s, "replay", "--from", "2026-11-20T07:00:00", "--to", "2026-11-20T10:00:00")
    assert res.exit_code == 0 and "replayed 7 events" in res.output
    assert sum(filled.log.end_offsets(EVENTS).values()) == end_before + 7
    drain(filled)
    assert summary(filled)["raw_events_rows"] == 19


def test_summary(filled):
    out = summary(filled)
    # one writer commit; raw.rejected and raw.system_logs exist but never got a row
    assert out["raw_events_rows"] == 18 and out["lake_snapshots"] == 1 and out["lake_tables"] == 3
