"""Console read endpoints behind the charts, the map, totals and the site filter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from tests.test_console_api import NOW, _auth, _project, _stored, ctx, fleet_ctx  # noqa: F401 - fixtures

from vendwatch.bus.base import EVENTS
from vendwatch.config import load_settings
from vendwatch.console import api, app
from vendwatch.console.thresholds import telemetry_thresholds
from vendwatch.runtime import Context


@pytest.fixture
def client(fleet_ctx: Context) -> Iterator[TestClient]:  # noqa: F811
    fleet_ctx.log.create_topic(EVENTS)
    fleet_ctx.log.create_topic("rejected")
    with TestClient(Starlette(routes=api.routes(fleet_ctx, clock=lambda: NOW) + app.routes(fleet_ctx)[-4:])) as c:
        yield c


def test_device_list_says_how_many_match_in_total(client: TestClient, fleet_ctx: Context) -> None:  # noqa: F811
    h = _auth(fleet_ctx)
    page = client.get("/v1/fleet/devices?limit=2", headers=h).json()
    assert len(page["devices"]) == 2 and page["total"] == 6
    assert client.get("/v1/fleet/devices?limit=2&site_id=s2", headers=h).json()["total"] == 3
    assert client.get("/v1/fleet/devices?limit=2&status=never", headers=h).json()["total"] == 1


def test_sites_lists_every_site(client: TestClient, fleet_ctx: Context) -> None:  # noqa: F811
    body = client.get("/v1/fleet/sites", headers=_auth(fleet_ctx)).json()
    assert body["sites"] == [{"site_id": "s1", "devices": 3}, {"site_id": "s2", "devices": 3}]


def test_map_has_positions_and_classes_and_no_tiles_by_default(client: TestClient, fleet_ctx: Context) -> None:  # noqa: F811
    _project(fleet_ctx, [_stored("m-online", "connectivity", {"network": "4g", "gps": {"lat": 48.85, "lon": 2.35}},
                                 NOW - 5, "s1")])
    body = client.get("/v1/fleet/map", headers=_auth(fleet_ctx)).json()
    assert body["points"] == [{"device_id": "m-online", "site_id": "s1", "connectivity": "online",
                               "lat": 48.85, "lon": 2.35}]
    assert body["tiles"] is None and body["truncated"] is False


def test_thresholds_come_from_the_rule_pack() -> None:
    found = telemetry_thresholds(load_settings(environ={}))
    fields = {(t["field"], t["op"], t["value"]) for t in found}
    assert ("refrigeration_temp_c", "gt", 5) in fields and ("cabinet_temp_c", "gt", 45) in fields


def test_history_has_incidents_per_hour_for_a_day(client: TestClient, fleet_ctx: Context) -> None:  # noqa: F811
    body = client.get("/v1/stats/history", headers=_auth(fleet_ctx)).json()
    assert isinstance(body["events"], list) and body["every_s"] > 0
    opened = body["incidents_opened"]
    assert len(opened) == 24 and opened[-1][0] <= NOW < opened[-1][0] + 3600


def test_lake_jobs_status_is_served(client: TestClient, fleet_ctx: Context) -> None:  # noqa: F811
    body = client.get("/v1/lake/jobs", headers=_auth(fleet_ctx)).json()
    assert set(body["jobs"]) == {"etl", "maintain", "reconcile"} and body["scheduled"] is True
    assert body["jobs"]["reconcile"]["interval_s"] == 3600
    assert body["jobs"]["etl"]["interval_s"] == 300


def test_tiles_url_must_be_a_tile_template() -> None:
    from vendwatch.config import ConfigError

    with pytest.raises(ConfigError, match="console.map_tiles_url"):
        load_settings(overrides={"console.map_tiles_url": "javascript:alert(1)"}, environ={})
