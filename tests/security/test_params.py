"""Out-of-range query parameters are a 400 naming the parameter, never a 500 (issue 10, item 8)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient
from tests.ingest_support import settings

from vendwatch.api.server import build_app
from vendwatch.runtime import Context

HUGE = "9" * 30


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    d = tmp_path_factory.mktemp("params") / "data"
    d.mkdir()
    ctx = Context(settings(d))
    ctx.state.add_device("D1", "S1")
    token = ctx.state.add_operator_token("op", "operator")
    with TestClient(build_app(ctx, ["collector", "console"]), raise_server_exceptions=False) as c:
        yield c, {"authorization": f"Bearer {token}"}
    ctx.close()


@pytest.mark.parametrize("path", [
    "/v1/devices?limit=0", "/v1/devices?limit=-1", f"/v1/devices?limit={HUGE}", "/v1/devices?after=a%00b",
    "/v1/devices?site_id=" + "s" * 5000,
    f"/v1/incidents?limit={HUGE}", f"/v1/incidents?offset={HUGE}", "/v1/incidents?offset=-5",
    "/v1/incidents?device_id=a%00", f"/v1/reports/device-last-seen?limit={HUGE}", "/v1/reports/device-last-seen?limit=-1",
    "/v1/reports/device-last-seen?limit=0x10", "/v1/fleet/devices?limit=1e400", "/v1/fleet/devices?after=%00",
    f"/v1/devices/D1/events?limit={HUGE}",
])
def test_bad_parameters_are_400(client: tuple[TestClient, dict[str, str]], path: str) -> None:
    c, auth = client
    r = c.get(path, headers=auth)
    assert r.status_code == 400, (path, r.status_code, r.text[:300])
    assert r.json()["error"]["message"]


def test_devices_limit_in_range_pages(client: tuple[TestClient, dict[str, str]]) -> None:
    c, auth = client
    r = c.get("/v1/devices?limit=1", headers=auth)
    assert r.status_code == 200


@pytest.mark.parametrize("limit", [10**15, 2**62])
def test_sql_limit_never_exceeds_the_configured_row_limit(client: tuple[TestClient, dict[str, str]], limit: int) -> None:
    c, auth = client
    r = c.post("/v1/sql", headers=auth, json={"sql": "SELECT range AS n FROM range(20000)", "limit": limit})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert len(body["rows"]) == 10_000 and body["truncated"] is True
