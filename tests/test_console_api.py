"""The console's read API and its pure parts: connectivity classes on a pinned clock,
stock levels, the rate meter, bounded event scans, and the HTTP surface (auth, errors,
security headers) over a real SQLite state store and log."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from vendwatch import events as ev
from vendwatch.bus.base import EVENTS, Record, partition_for
from vendwatch.bus.sqlite import SqliteLog
from vendwatch.config import load_settings
from vendwatch.console import activity, api, app, fleet
from vendwatch.runtime import Context
from vendwatch.state.projector import DeviceStateProjector

NOW = 1_800_000_000.0


def _stored(device_id: str, type_: str, data: dict, received_at: float, site: str | None = None) -> bytes:
    e = ev.StoredEvent(
        event_id=f"{device_id}-{type_}-{received_at}", device_id=device_id, type=type_,
        occurred_at=datetime.fromtimestamp(received_at - 1, UTC),
        received_at=datetime.fromtimestamp(received_at, UTC),
        data=msgspec.Raw(msgspec.json.encode(data)), site_id=site,
    )
    return ev.encode(e)


def _project(ctx: Context, values: list[bytes]) -> None:
    """Fold events into device_state with the real projector (received_at set by the test)."""
    records = [Record(EVENTS, 0, i, "", v, 0) for i, v in enumerate(values)]
    with ctx.state.db.transaction() as tx:
        DeviceStateProjector(ctx).apply(tx, records)


# the fleet SQL must run on both state stores (a missing PostgreSQL skips locally, fails in CI)
STATE_BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=STATE_BACKENDS)
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Context]:
    overrides = {"data_dir": str(tmp_path / "data")}
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            from tests.contract.pg_backend import fresh_schema

            overrides |= {"state.backend": "postgres", "state.postgres_dsn": stack.enter_context(fresh_schema())}
        c = Context(load_settings(overrides=overrides, environ={}))
        yield c
        c.close()


@pytest.fixture
def fleet_ctx(ctx: Context) -> Context:
    """Six machines, one per connectivity class (plus a slow-heartbeat one), seen at pinned times."""
    st = ctx.state
    st.add_device("m-online", "s1", serial="SN-100", model="Zeta")
    st.add_device("m-stale", "s1", location="Hall_B")
    st.add_device("m-slow", "s1", heartbeat_interval_s=600)  # 1,000 s silent is fine at 600 s
    st.add_device("m-offline", "s2")
    st.add_device("m-never", "s2")
    st.add_device("m-disabled", "s2")
    st.set_device_status("m-disabled", "disabled")
    hb = fleet.DEFAULT_HEARTBEAT_S
    _project(ctx, [
        _stored("m-online", "telemetry", {"cabinet_temp_c": 5.5}, NOW - fleet.ONLINE_INTERVALS * hb, "s1"),
        _stored("m-online", "fault", {"code": "motor_jam"}, NOW - 10, "s1"),
        _stored("m-stale", "heartbeat", {}, NOW - fleet.ONLINE_INTERVALS * hb - 1, "s1"),
        _stored("m-slow", "heartbeat", {}, NOW - 1000, "s1"),
        _stored("m-offline", "heartbeat", {}, NOW - fleet.STALE_INTERVALS * hb - 1, "s2"),
        _stored("m-offline", "fault", {"code": "cooling_failure"}, NOW - fleet.STALE_INTERVALS * hb - 1, "s2"),
        _stored("m-offline", "fault", {"code": "cooling_failure", "state": "cleared"}, NOW - fleet.STALE_INTERVALS * hb - 1, "s2"),
        _stored("m-disabled", "heartbeat", {}, NOW - 5, "s2"),
    ])
    return ctx


def _ids(rows: list[dict]) -> list[str]:
    return [r["device_id"] for r in rows]


# -- connectivity classes and the site summary ----------------------------------------
def test_site_summary_counts_each_class_on_a_pinned_clock(fleet_ctx: Context) -> None:
    s = fleet.site_summary(fleet_ctx.state.db, NOW)
    assert s["devices"] == 6
    assert s["connectivity"] == {"online": 2, "stale": 1, "offline": 1, "never": 1, "disabled": 1}
    by_site = {x["site_id"]: x for x in s["sites"]}
    assert (by_site["s1"]["online"], by_site["s1"]["stale"], by_site["s1"]["devices"]) == (2, 1, 3)
    assert (by_site["s2"]["offline"], by_site["s2"]["never"], by_site["s2"]["disabled"]) == (1, 1, 1)
    assert s["sites"][0]["site_id"] == "s2"  # two problem machines rank it first
    assert by_site["s1"]["last_seen_at"] == NOW - 10


def test_classes_move_as_time_passes(fleet_ctx: Context) -> None:
    later = fleet.site_summary(fleet_ctx.state.db, NOW + 3600)["connectivity"]
    assert later == {"online": 0, "stale": 1, "offline": 3, "never": 1, "disabled": 1}


def test_device_list_filters_by_class_site_search_and_faults(fleet_ctx: Context) -> None:
    db = fleet_ctx.state.db

    def ids(**kw: object) -> list[str]:
        return _ids(fleet.list_devices(db, fleet.DeviceFilter(**kw), NOW))  # type: ignore[arg-type]

    assert ids() == ["m-disabled", "m-never", "m-offline", "m-online", "m-slow", "m-stale"]
    assert ids(status="online") == ["m-online", "m-slow"]
    assert ids(status="never") == ["m-never"]
    assert ids(site_id="s2", status="offline") == ["m-offline"]
    assert ids(q="sn-1") == ["m-online"]  # serial, case-insensitive
    assert ids(q="hall_b") == ["m-stale"]
    assert ids(q="_") == ["m-stale"]  # LIKE wildcards in the search are literal characters
    assert ids(q="%") == []
    assert ids(faulted=True) == ["m-online"]  # the cleared fault does not count
    assert ids(limit=2) == ["m-disabled", "m-never"]
    assert ids(after="m-never", limit=2) == ["m-offline", "m-online"]


def test_device_view_has_state_and_derived_fields(fleet_ctx: Context) -> None:
    d = fleet.get_device(fleet_ctx.state.db, "m-online", NOW)
    assert d is not None
    assert d["connectivity"] == "online"
    assert d["cabinet_temp_c"] == 5.5
    assert d["faults"] == ["motor_jam"]
    assert d["state"]["active_faults"]["motor_jam"] == NOW - 11  # occurred_at
    assert fleet.get_device(fleet_ctx.state.db, "nope", NOW) is None


# -- stock levels ----------------------------------------------------------------------
@pytest.mark.parametrize(("slot", "level"), [
    ({"count": 0, "capacity": 10}, "out"),
    ({"count": 2, "low_threshold": 2}, "low"),
    ({"count": 3, "low_threshold": 2}, "ok"),
    ({"count": 3, "low_threshold": 2, "level": "low"}, "ok"),  # a count beats an old alert
    ({"count": 3, "level": "low"}, "low"),  # no threshold: the alert decides
    ({"level": "out"}, "out"),
    ({"level": "low"}, "low"),
    ({"product_id": "x"}, "unknown"),
])
def test_slot_level(slot: dict, level: str) -> None:
    assert fleet.slot_level(slot) == level


def test_stock_is_in_natural_slot_order_with_levels(ctx: Context) -> None:
    ctx.state.add_device("m1", "s")
    _project(ctx, [_stored("m1", "inventory", {"slots": [
        {"slot": "A10", "count": 0}, {"slot": "A2", "count": 1, "low_threshold": 2}, {"slot": "A1", "count": 9}]}, NOW)])
    d = fleet.get_device(ctx.state.db, "m1", NOW)
    assert d is not None
    assert [(s["slot"], s["level"]) for s in d["stock"]] == [("A1", "ok"), ("A2", "low"), ("A10", "out")]
    assert (d["slots_low"], d["slots_out"]) == (1, 1)


# -- rates, lag, recent events -----------------------------------------------------------
def test_rate_meter_slope_over_window() -> None:
    t = [0.0]
    m = activity.RateMeter(window_s=60, clock=lambda: t[0])
    assert m.observe(100) is None  # one sample: no rate yet
    t[0] = 10.0
    assert m.observe(600) == pytest.approx(50.0)
    t[0] = 100.0
    # the slope starts at the newest sample at or before the window start (t=10 here)
    assert m.observe(700) == pytest.approx(100 / 90)
    t[0] = 110.0
    assert m.observe(800) == pytest.approx(200 / 100)
    t[0] = 120.0
    assert m.observe(5) is None  # counter went back (log reset): start over


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqliteLog]:
    lg = SqliteLog(tmp_path / "bus.db", default_partitions=2)
    lg.create_topic(EVENTS)
    yield lg
    lg.close()


def _fill(log: SqliteLog, device: str, n: int, other: str | None = None) -> None:
    items = []
    for i in range(n):
        items.append((device, _stored(device, "heartbeat" if i % 2 else "telemetry", {"i": i}, NOW + i)))
        if other:
            items.append((other, _stored(other, "heartbeat", {"i": i}, NOW + i)))
    log.append(EVENTS, items)


def _same_partition_pair(parts: int) -> tuple[str, str]:
    a = "dev-a"
    b = next(f"dev-{i}" for i in range(1000) if partition_for(f"dev-{i}", parts) == partition_for(a, parts) and f"dev-{i}" != a)
    return a, b


def test_recent_events_newest_first_only_that_device(log: SqliteLog) -> None:
    a, b = _same_partition_pair(2)
    _fill(log, a, 30, other=b)
    res = activity.recent_events(log, a, limit=5)
    assert [e["data"]["i"] for e in res["events"]] == [29, 28, 27, 26, 25]
    assert {e["type"] for e in res["events"]} == {"heartbeat", "telemetry"}
    assert res["partition"] == partition_for(a, 2)
    only_hb = activity.recent_events(log, a, limit=100, types=frozenset({"heartbeat"}))
    assert [e["data"]["i"] for e in only_hb["events"]][:3] == [29, 27, 25]
    assert only_hb["complete"] is True
    assert len(only_hb["events"]) == 15


def test_recent_events_scan_is_bounded(log: SqliteLog) -> None:
    a, b = _same_partition_pair(2)
    _fill(log, a, 10)
    log.append(EVENTS, [(b, _stored(b, "heartbeat", {"i": i}, NOW)) for i in range(300)])
    res = activity.recent_events(log, a, limit=5, max_scan=100)
    assert res["events"] == [] and res["scanned"] == 100 and res["complete"] is False
    full = activity.recent_events(log, a, limit=5, max_scan=1000)
    assert [e["data"]["i"] for e in full["events"]] == [9, 8, 7, 6, 5]


def test_stage_lag_from_checkpoints(log: SqliteLog) -> None:
    _fill(log, "dev-a", 5)
    ends = log.end_offsets(EVENTS)
    p = partition_for("dev-a", 2)
    data = msgspec.json.encode({f"{EVENTS}/{p}": ends[p] - 3})
    assert activity.stage_lag(log, [("offsets:vendwatch-device-state", data), ("offsets:other", b'["x"]')]) == [
        {"stage": "device-state", "lag_records": 3}]  # a checkpoint in another format is not a stage


# -- HTTP --------------------------------------------------------------------------------
@pytest.fixture
def client(fleet_ctx: Context) -> Iterator[TestClient]:
    fleet_ctx.log.create_topic(EVENTS)
    fleet_ctx.log.create_topic("rejected")
    with TestClient(Starlette(routes=app.routes(fleet_ctx))) as c:
        yield c


def _auth(ctx: Context, role: str = "viewer") -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.state.add_operator_token(f'{role}-user', role)}"}


def test_fleet_summary_is_shared_for_a_few_seconds(fleet_ctx: Context) -> None:
    meters = {EVENTS: activity.RateMeter(), "rejected": activity.RateMeter()}
    cache = api._SummaryCache(ttl_s=3.0)
    fleet_ctx.log.create_topic(EVENTS)
    first = api.fleet_stats(fleet_ctx, meters, NOW, cache)
    fleet_ctx.state.add_device("m-new", "s3")
    assert api.fleet_stats(fleet_ctx, meters, NOW + 2.9, cache)["devices"] == first["devices"] == 6
    assert api.fleet_stats(fleet_ctx, meters, NOW + 3.0, cache)["devices"] == 7
    assert api.fleet_stats(fleet_ctx, meters, NOW + 1.0, cache)["devices"] == 7  # clock went back: recompute


def test_endpoints_need_a_token(client: TestClient) -> None:
    for path in ("/v1/whoami", "/v1/stats", "/v1/fleet/devices", "/v1/fleet/devices/m-online",
                 "/v1/devices/m-online/events"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/stats", headers={"Authorization": "Bearer vwo_wrong"}).status_code == 401


def test_whoami_stats_and_devices(client: TestClient, fleet_ctx: Context) -> None:
    h = _auth(fleet_ctx)
    assert client.get("/v1/whoami", headers=h).json() == {"name": "viewer-user", "role": "viewer"}
    stats = client.get("/v1/stats", headers=h)
    assert stats.headers["cache-control"] == "no-store"
    body = stats.json()
    assert body["devices"] == 6 and sum(body["connectivity"].values()) == 6
    assert body["events_per_s"] is None  # first sample
    assert body["rules"] == {"online_intervals": 2, "stale_intervals": 10, "default_heartbeat_s": 60}
    assert {s["stage"] for s in body["stages"]} == set()
    page = client.get("/v1/fleet/devices?limit=4", headers=h).json()
    assert len(page["devices"]) == 4 and page["next"] == page["devices"][-1]["device_id"]
    rest = client.get(f"/v1/fleet/devices?limit=4&after={page['next']}", headers=h).json()
    assert len(rest["devices"]) == 2 and rest["next"] is None
    assert client.get("/v1/fleet/devices/m-online", headers=h).json()["faults"] == ["motor_jam"]


@pytest.mark.parametrize(("path", "code"), [
    ("/v1/fleet/devices?status=sleepy", "bad_status"),
    ("/v1/fleet/devices?limit=abc", "bad_limit"),
    ("/v1/fleet/devices?limit=0", "bad_limit"),
    ("/v1/fleet/devices?limit=501", "bad_limit"),
    ("/v1/fleet/devices?faulted=yes", "bad_faulted"),
    ("/v1/fleet/devices?q=" + "x" * 201, "bad_q"),
    ("/v1/devices/m-online/events?limit=201", "bad_limit"),
    ("/v1/devices/m-online/events?type=nap", "bad_type"),
])
def test_bad_parameters_are_400_with_a_reason(client: TestClient, fleet_ctx: Context, path: str, code: str) -> None:
    r = client.get(path, headers=_auth(fleet_ctx))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_unknown_device_is_404(client: TestClient, fleet_ctx: Context) -> None:
    h = _auth(fleet_ctx)
    assert client.get("/v1/fleet/devices/ghost", headers=h).status_code == 404
    assert client.get("/v1/devices/ghost/events", headers=h).status_code == 404


def test_device_ids_with_a_slash_route(client: TestClient, fleet_ctx: Context) -> None:
    fleet_ctx.state.add_device("plant/7", "s9")
    h = _auth(fleet_ctx)
    assert client.get("/v1/fleet/devices/plant%2F7", headers=h).json()["device_id"] == "plant/7"
    assert client.get("/v1/devices/plant%2F7/events", headers=h).json()["events"] == []


def test_pages_and_assets_carry_security_headers(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/console/"
    for path in ("/console/", "/console/devices/m%2F1", "/console/static/js/main.js", "/console/static/style.css"):
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    shell = client.get("/console/incidents").text
    assert '<script type="module" src="/console/static/js/main.js">' in shell
    assert "<script>" not in shell and not re.search(r"\son[a-z]+=", shell)  # no inline code or handlers
    assert client.get("/console/static/nope.js").status_code == 404


def test_static_assets_have_no_outside_urls_or_html_sinks() -> None:
    """Everything ships in the package; data never goes through an HTML parser."""
    for f in app.STATIC_DIR.rglob("*"):
        if f.suffix not in (".js", ".css", ".html"):
            continue
        text = f.read_text().replace("'http://www.w3.org/2000/svg'", "")  # a namespace name, not a URL
        assert "http://" not in text and "https://" not in text, f
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{f.name} uses {sink}"
