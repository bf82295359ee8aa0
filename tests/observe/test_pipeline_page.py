"""The console's Pipeline page and its API, on a real `vendwatch serve` (the console
browser tests' fleet: three machines, events posted, signals fired)."""

from __future__ import annotations

from typing import Any

import httpx
from tests.test_console_browser import Fleet, _css, _js_errors, _shot, _sign_in, _text, _wait


def test_pipeline_api_has_roles_hops_and_targets(fleet: Fleet) -> None:
    assert httpx.get(fleet.base + "/v1/pipeline", timeout=10).status_code == 401
    p = fleet.get("/v1/pipeline", token=fleet.viewer).json()
    roles = {r["role"]: r for r in p["roles"]}
    assert set(roles) == {"collector", "device-state", "detector", "router", "orchestrator", "lake-writer"}
    # the fleet fixture waited for device-state to fold the posted events: caught up
    _wait("device-state lag measured", lambda: fleet.get("/v1/pipeline").json()["roles"][1]["lag_records"] == 0)

    def hops_now() -> dict[str, Any]:
        return {x["hop"]: x for x in fleet.get("/v1/pipeline").json()["hops"]}

    # a stage's figures come from its role process's report, up to about a second old
    _wait("the state hop counted", lambda: hops_now()["state"]["count"] >= 1)
    hops = hops_now()
    assert list(hops) == ["received", "durable", "state", "evaluated", "signal", "incident", "ticket"]
    assert hops["durable"]["count"] >= 2 and hops["state"]["count"] >= 1  # two accepted requests, one batch
    assert hops["durable"]["p99_s"] is not None and hops["durable"]["p99_s"] < 60
    assert isinstance(p["last_errors"], list) and p["replica"]


def test_pipeline_page_shows_the_same_figures(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.viewer, "/console/pipeline")
    _wait("pipeline page", lambda: _css(drv, "[data-testid=pipeline-roles]"))
    roles = _text(drv, "[data-testid=pipeline-roles]")
    for role in ("collector", "device-state", "detector", "router", "orchestrator", "lake-writer"):
        assert role in roles
    hops = _text(drv, "[data-testid=pipeline-hops]")
    assert "durable" in hops and "ticket" in hops
    api = {x["hop"]: x for x in fleet.get("/v1/pipeline").json()["hops"]}
    row = next(r for r in _css(drv, "[data-testid=pipeline-hops] tbody tr") if r.text.startswith("durable"))
    assert str(int(api["durable"]["count"])) in row.text
    assert _css(drv, "#nav a.active")[0].text == "Pipeline"
    _shot(drv, "pipeline")
    assert _js_errors(drv) == []
