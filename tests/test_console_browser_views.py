"""The console's charts, map, sorting, totals, times and operator tools in headless Chromium,
against a real ``vendwatch serve`` with a fleet of 120 machines on three sites.

Set ``CONSOLE_SCREENSHOTS=DIR`` to save a PNG of each page (docs/img is made this way).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests import test_console_browser
from tests.conftest import vendwatch_cmd
from tests.test_console_browser import (
    _css,
    _event,
    _fire_signals,
    _js_errors,
    _shot,
    _sign_in,
    _text,
    _wait,
)

from vendwatch.config import load_settings
from vendwatch.state import open_state

browser = test_console_browser.browser  # the same headless Chromium fixture

SITES = {"site-north": (59.3293, 18.0686), "site-centre": (48.8566, 2.3522), "site-south": (41.9028, 12.4964)}
N_DEVICES = 120
# a 1x1 PNG: what the stand-in tile server answers for every tile
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e221bc330000000049454e44ae426082")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, base: str, operator: str, viewer: str, data: Path) -> None:
        self.base, self.operator, self.viewer, self.data = base, operator, viewer, data

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, headers={"Authorization": f"Bearer {self.operator}"}, timeout=10)


def _serve(data: Path, env: dict[str, str] | None = None, roles: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    args = ["serve", "--data-dir", str(data), "--port", str(port)] + (["--roles", roles] if roles else [])
    proc = subprocess.Popen(vendwatch_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "VENDWATCH_LOG_LEVEL": "warning", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("vendwatch serve", lambda: httpx.get(base + "/healthz", timeout=2).status_code == 200, timeout_s=120)
    except AssertionError:
        proc.terminate()
        raise AssertionError(f"serve did not start: {proc.communicate(timeout=10)[1].decode()[-2000:]}") from None
    return proc, base


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("console-views") / "data"
    st = open_state(load_settings(overrides={"data_dir": str(data)}, environ={}))
    tokens = {}
    for i in range(N_DEVICES):
        site = list(SITES)[i % 3]
        tokens[f"vm-{i:03d}"] = st.add_device(f"vm-{i:03d}", site, model="Zeta")
    operator = st.add_operator_token("noc", "operator")
    viewer = st.add_operator_token("wall", "viewer")
    st.close()
    _fire_signals(data, "m-001 fridge at 9.5 °C for 15 min")  # two incidents (m-001, m-002 are not in this fleet: fine)
    proc, base = _serve(data)
    try:
        with httpx.Client(timeout=10) as c:
            for i, (dev, tok) in enumerate(tokens.items()):
                if i >= 100:
                    continue  # twenty machines never report
                lat, lon = SITES[list(SITES)[i % 3]]
                evs = [_event(dev, "connectivity", {"network": "4g", "gps": {"lat": lat, "lon": lon}}),
                       _event(dev, "telemetry", {"refrigeration_temp_c": 3.0 + (i % 7), "cabinet_temp_c": 20.0})]
                if dev == "vm-000":
                    evs += [_event(dev, "telemetry", {"refrigeration_temp_c": 4.0, "cabinet_temp_c": 21.0}, ago_s=1800),
                            _event(dev, "telemetry", {"refrigeration_temp_c": 7.5, "cabinet_temp_c": 22.0}, ago_s=900),
                            _event(dev, "security", {"kind": "door_forced"}, ago_s=1000),
                            _event(dev, "refill", {"visit_id": "v1", "slots": [{"slot": "A1", "added": 5}]}, ago_s=600),
                            _event(dev, "inventory", {"slots": [{"slot": "A1", "count": 3, "capacity": 10}]}, ago_s=1200),
                            _event(dev, "inventory", {"slots": [{"slot": "A1", "count": 8, "capacity": 10}]}, ago_s=500),
                            *[_event(dev, "transaction", {"transaction_id": f"t{k}", "product_id": "cola", "slot": "A1",
                                                          "price_minor": 150, "currency": "EUR",
                                                          "payment_method": "card", "payment_status": "success",
                                                          "vend_status": "success"}, ago_s=300 + k * 1500)
                              for k in range(4)]]
                r = c.post(base + "/v1/events", json={"events": evs}, headers={"Authorization": f"Bearer {tok}"})
                assert r.status_code == 200 and not r.json()["rejected"], r.text
        s = Server(base, operator, viewer, data)
        _wait("device state", lambda: s.get("/v1/fleet/devices/vm-099").json()["events"] == 2
              and s.get("/v1/fleet/devices/vm-000").json()["events"] == 12, timeout_s=90)
        # the two fired signals, and the door forced open on vm-000
        _wait("incidents", lambda: len(s.get("/v1/incidents?status=active").json()["incidents"]) >= 3, timeout_s=90)
        yield s
    finally:
        _stop(proc)


def _rows(drv: Any, testid: str) -> list[Any]:
    return _css(drv, f"[data-testid={testid}] tbody tr")


# the pages redraw every 10 s: read and click through one script call, never a stale element
def _cells(drv: Any, testid: str) -> list[list[str]]:
    return drv.execute_script(
        "return [...document.querySelectorAll(`[data-testid=${arguments[0]}] tbody tr`)]"
        ".map((r) => [...r.cells].map((c) => c.innerText.trim()))", testid)


def _headers(drv: Any, testid: str) -> list[str]:
    return drv.execute_script(
        "return [...document.querySelectorAll(`[data-testid=${arguments[0]}] thead th`)].map((c) => c.innerText.trim())", testid)


def _sort_by(drv: Any, testid: str, label: str) -> str:
    """Click a column header; returns its aria-sort afterwards."""
    return drv.execute_script(
        "const b = [...document.querySelectorAll(`[data-testid=${arguments[0]}] th button.sort`)]"
        ".find((x) => x.innerText.trim() === arguments[1]); b.click();"
        "return document.querySelector(`[data-testid=${arguments[0]}]`).querySelectorAll('th')"
        "[[...b.closest('tr').children].indexOf(b.closest('th'))].getAttribute('aria-sort');", testid, label)


def test_device_list_shows_totals_and_sorts(big: Server, browser: Any) -> None:
    drv = browser
    _sign_in(drv, big, big.operator, "/console/devices")
    assert _wait("count", lambda: _text(drv, "[data-testid=device-count]").startswith(f"100 of {N_DEVICES} devices"))
    assert len(_cells(drv, "devices")) == 100
    # sort by device id, descending: the header toggles the order of the rows shown
    assert _sort_by(drv, "devices", "Device") == "ascending"
    assert _sort_by(drv, "devices", "Device") == "descending"
    ids = [r[0] for r in _cells(drv, "devices")]
    assert ids == sorted(ids, reverse=True) and ids[0] == "vm-099"
    # numeric sort on the fridge temperature, empty cells last
    assert _sort_by(drv, "devices", "Fridge") == "ascending"
    col = _headers(drv, "devices").index("Fridge")
    temps = [r[col] for r in _cells(drv, "devices")]
    values = [float(t.split()[0]) for t in temps if t != "—"]
    assert values == sorted(values) and values[0] == 3.0 and values[-1] == 9.0
    _shot(drv, "devices")
    # the order survives the periodic refresh
    time.sleep(11)
    assert [r[col] for r in _cells(drv, "devices")] == temps
    assert _js_errors(drv) == []


def test_site_filter_is_a_select_of_every_site(big: Server, browser: Any) -> None:
    from selenium.webdriver.support.select import Select

    drv = browser
    _sign_in(drv, big, big.operator, "/console/devices")
    sel = _wait("site options", lambda: len(_css(drv, "#site-filter option")) == 4 and _css(drv, "#site-filter")[0])
    assert [o.text for o in Select(sel).options] == ["Any site", "site-centre (40)", "site-north (40)", "site-south (40)"]
    Select(sel).select_by_value("site-south")
    _css(drv, "#device-filters button[type=submit]")[0].click()
    _wait("filtered", lambda: "site_id=site-south" in drv.current_url)
    assert _wait("count", lambda: _text(drv, "[data-testid=device-count]").startswith("40 devices"))


def test_times_in_the_list_are_the_ones_the_api_gives(big: Server, browser: Any) -> None:
    drv = browser
    _sign_in(drv, big, big.operator, "/console/devices?q=vm-007")
    _wait("row", lambda: len(_cells(drv, "devices")) == 1)
    api = big.get("/v1/fleet/devices?q=vm-007").json()["devices"][0]
    assert "Last heard (server time)" in _headers(drv, "devices")
    shown = _css(drv, "[data-testid=devices] tbody tr [data-epoch]")[0]
    assert float(shown.get_attribute("data-epoch")) == pytest.approx(api["last_seen_at"])
    # the tooltip is the same moment as an absolute local time
    expected = drv.execute_script(
        "const d = new Date(arguments[0] * 1000); const p = (n) => String(n).padStart(2, '0');"
        "return `${d.getFullYear()}-${p(d.getMonth()+1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;",
        api["last_seen_at"])
    assert shown.get_attribute("title") == expected
    assert "s ago" in shown.text  # heard seconds ago, as the data says


# the page redraws every 10 s: everything a test reads comes from one script call
_OVERVIEW = """
const q = (s) => [...document.querySelectorAll(s)];
return {
  bars: q('[data-testid=chart-incidents] g[data-role=series] rect').map((r) => Number(r.getAttribute('height'))),
  eventLines: q('[data-testid=chart-events] polyline[data-role=series]').length,
  ticks: q('[data-testid=chart-events] text.tick').map((t) => t.textContent),
  points: q('[data-testid=map-point]').map((p) => ({site: p.dataset.site, cls: p.dataset.class,
    cy: Number(p.querySelector('circle').getAttribute('cy'))})),
  tiles: q('[data-testid=map-tiles]').length,
  graticule: q('.map-svg .graticule').length,
};
"""

_DEVICE = """
const q = (s) => [...document.querySelectorAll(s)];
const xs = (l) => l.getAttribute('points').split(' ').map((p) => Number(p.split(',')[0]));
return {
  lines: q('[data-testid=chart-temperature] polyline[data-role=series]').map(xs),
  thresholds: q('[data-testid=chart-temperature] g[data-role=threshold] text').map((t) => t.textContent),
  markers: q('[data-testid=chart-temperature] g[data-role=marker]').length,
  sales: q('[data-testid=chart-sales] g[data-role=series] rect').length,
  stock: q('[data-testid=chart-stock] polyline[data-role=series]').map(xs),
};
"""


def test_overview_draws_activity_charts_and_a_plain_map(big: Server, browser: Any) -> None:
    drv = browser
    _sign_in(drv, big, big.operator, "/")
    # events/s: the server samples every 5 s; a rate needs two samples, the page refreshes every 10 s
    v = _wait("charts and map", lambda: (r := drv.execute_script(_OVERVIEW))["bars"] and r["eventLines"] and r["points"] and r,
              timeout_s=40)
    assert len(v["bars"]) == 24  # one per hour, last 24 h
    assert v["bars"][-1] > 0 and sum(h > 0 for h in v["bars"]) == 1  # every incident was opened this hour
    assert any(":" in t for t in v["ticks"])  # a time axis
    assert len(v["points"]) == 3  # three sites, machines grouped per position
    assert {p["site"] for p in v["points"]} == set(SITES)
    assert {p["cls"] for p in v["points"]} == {"online"}
    assert v["tiles"] == 0  # no tile URL configured: a plain background...
    assert v["graticule"] > 0  # ...with a latitude/longitude grid
    ys = {p["site"]: p["cy"] for p in v["points"]}
    assert ys["site-north"] < ys["site-centre"] < ys["site-south"]  # north is up: Stockholm above Rome
    _shot(drv, "overview")
    drv.execute_script("document.querySelector('[data-testid=map-point]')"
                       ".dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true, button: 0}))")
    _wait("site page", lambda: "/console/devices?site_id=" in drv.current_url)
    assert _js_errors(drv) == []


def test_device_page_charts_temperature_thresholds_markers_sales_and_stock(big: Server, browser: Any) -> None:
    drv = browser
    _sign_in(drv, big, big.operator, "/console/devices/vm-000")
    v = _wait("charts", lambda: (r := drv.execute_script(_DEVICE))["lines"] and r["stock"] and r)
    assert len(v["lines"]) == 2  # cabinet and refrigeration
    fridge = v["lines"][1]
    assert len(fridge) == 3 and fridge == sorted(fridge)  # three readings, drawn in device-time order
    assert any("refrigeration > 5" in t for t in v["thresholds"]), v["thresholds"]
    assert v["markers"] == 2  # the forced door and the service visit
    assert v["sales"] >= 2
    assert len(v["stock"][0]) == 2
    _shot(drv, "device")
    assert _js_errors(drv) == []


def test_incident_list_has_servicenow_column_and_bulk_acknowledge(big: Server, browser: Any) -> None:
    drv = browser
    _sign_in(drv, big, big.operator, "/console/incidents")
    active = len(big.get("/v1/incidents?status=active").json()["incidents"])
    _wait("incidents", lambda: len(_cells(drv, "incidents")) == active)
    headers = _headers(drv, "incidents")
    assert "ServiceNow" in headers and "Opened (server time)" in headers and "Last signal (device time)" in headers
    button = _css(drv, "#ack-selected")[0]
    assert not button.is_enabled()
    # a disabled button does not look like the primary action
    assert drv.execute_script("return getComputedStyle(arguments[0]).borderStyle", button) == "dashed"
    _shot(drv, "incidents")
    drv.execute_script("document.querySelectorAll('[data-testid=incidents] input.pick').forEach((b) => b.click())")
    _wait("enabled", lambda: _css(drv, "#ack-selected")[0].is_enabled())
    assert f"{active} selected" in _css(drv, "#ack-selected")[0].text
    _css(drv, "#ack-selected")[0].click()
    assert f"Acknowledged {active} incidents" in _text(drv, "[data-testid=bulk-message]")
    statuses = {i["status"] for i in big.get("/v1/incidents?status=active").json()["incidents"]}
    assert statuses == {"acknowledged"}
    assert _js_errors(drv) == []


def test_silences_page_lists_and_adds(big: Server, browser: Any) -> None:
    drv = browser
    _sign_in(drv, big, big.operator, "/console/silences")
    assert _text(drv, "[data-testid=silence-count]").startswith("0 active")
    _css(drv, "#new-silence-target")[0].send_keys("site-north")
    _css(drv, "#new-silence-add")[0].click()
    _wait("one silence", lambda: _text(drv, "[data-testid=silence-count]").startswith("1 active"))
    assert "site site-north" in _text(drv, "[data-testid=all-silences]")
    assert any(a.text == "Silences" and "active" in a.get_attribute("class") for a in _css(drv, "#nav a"))
    _shot(drv, "silences")
    assert _js_errors(drv) == []


def test_ids_do_not_wrap_and_sql_results_scroll(big: Server, browser: Any) -> None:
    drv = browser
    _sign_in(drv, big, big.operator, "/console/devices")
    link = _wait("device link", lambda: _css(drv, "[data-testid=devices] a.device-link"))[0]
    assert drv.execute_script("return getComputedStyle(arguments[0]).whiteSpace", link) == "nowrap"
    drv.execute_script("document.body.append(Object.assign(document.createElement('div'), {className: 'scroll', id: 't'}))")
    assert drv.execute_script("return getComputedStyle(document.getElementById('t')).overflowX") == "auto"


class _Tiles(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _Tiles.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: object) -> None:
        pass


def test_map_with_tiles_from_a_configured_url(big: Server, browser: Any) -> None:
    tiles = ThreadingHTTPServer(("127.0.0.1", 0), _Tiles)
    threading.Thread(target=tiles.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{tiles.server_address[1]}/{{z}}/{{x}}/{{y}}.png"
    proc, base = _serve(big.data, env={"VENDWATCH_CONSOLE__MAP_TILES_URL": url,
                                       "VENDWATCH_CONSOLE__MAP_ATTRIBUTION": "test tiles"}, roles="collector")
    try:
        csp = httpx.get(base + "/console/").headers["content-security-policy"]
        assert f"img-src 'self' data: http://127.0.0.1:{tiles.server_address[1]}" in csp
        drv = browser
        _sign_in(drv, Server(base, big.operator, big.viewer, big.data), big.operator, "/")
        # the browser really loaded them (the CSP allows the tile server)
        _wait("tiles loaded", lambda: drv.execute_script(
            "const t = [...document.querySelectorAll('[data-testid=map-tiles] img.map-tile')];"
            "return t.length > 0 && t.every((i) => i.complete && i.naturalWidth > 0);"))
        assert _Tiles.hits and all(h.endswith(".png") for h in _Tiles.hits)
        assert len(_css(drv, "[data-testid=map-point]")) == 3
        assert "test tiles" in _text(drv, "[data-testid=fleet-map] figcaption")
    finally:
        _stop(proc)
        tiles.shutdown()


def test_reports_page_says_when_the_tables_were_refreshed(big: Server, browser: Any) -> None:
    drv = browser
    _sign_in(drv, big, big.viewer, "/console/reports")
    assert "refresh every 5 min" in _text(drv, "[data-testid=etl-status]")
    # serve runs the ETL on its own (first run 30 s after start): no `vendwatch etl run` needed
    _wait("refreshed", lambda: big.get("/v1/lake/jobs").json()["jobs"]["etl"]["last_ok_at"], timeout_s=90)
    drv.refresh()
    assert "Last refreshed" in _text(drv, "[data-testid=etl-status]")
    _shot(drv, "reports")
