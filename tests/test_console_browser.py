"""The console in a real browser: headless Chromium driven by Selenium against a real
``vendwatch serve`` on a loopback port, with a small registered fleet and posted events.

Needs ``chromium`` and ``chromedriver`` (``scripts/browser.sh`` installs them) and the
``selenium`` package. Set ``CONSOLE_SCREENSHOTS=DIR`` to save a PNG of each page.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import service_missing, vendwatch_cmd

from vendwatch.bus.sqlite import SqliteLog
from vendwatch.config import load_settings
from vendwatch.signals import Signal, encode_signal, signal_id
from vendwatch.state import open_state

CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000"]
WAIT_S = 20.0

# attacker-controlled text in a registry field and in event payloads
XSS_LOCATION = '<img src=x onerror="window.__xss=1">'
XSS_DETAIL = '"><img src=x onerror="window.__xss=2">'
XSS_CONFIG = "<script>window.__xss=3</script>"
XSS_SUMMARY = 'Fridge warm <img src=x onerror="window.__xss=4">'



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _event(device_id: str, type_: str, data: dict[str, Any], ago_s: float = 0.0) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "device_id": device_id, "type": type_,
            "occurred_at": (datetime.now(UTC) - timedelta(seconds=ago_s)).isoformat(), "data": data}


def _wait(what: str, fn: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """Poll until fn returns something truthy (a condition, not a timer)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as e:  # noqa: BLE001 - page still rendering; retry until the deadline
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _fire_signals(data: Path, first_summary: str = XSS_SUMMARY) -> None:
    """Two firing signals on the log, as the detector would emit them (the orchestrator opens incidents)."""
    now = datetime.now(UTC)
    log = SqliteLog(data / "bus.db")
    log.create_topic("signals")  # appending to a missing topic would try to create it under the write lock
    items = []
    for rule, sev, device, summary in (("cooling-failure", "critical", "m-001", first_summary),
                                       ("payment-failures", "minor", "m-002", "5 failed card payments")):
        key = f"{rule}/{device}"
        sig = Signal(signal_id=signal_id(rule, key, "firing", now), rule_id=rule, status="firing", severity=sev,
                     dedupe_key=key, summary=summary, occurred_at=now, emitted_at=now, device_id=device)
        items.append((key, encode_signal(sig)))
    log.append("signals", items)
    log.close()


class Fleet:
    """A running ``vendwatch serve`` with three machines and two operator tokens."""

    def __init__(self, base: str, operator: str, viewer: str, data: Path) -> None:
        self.base = base
        self.operator = operator
        self.viewer = viewer
        self.data = data

    def state(self) -> Any:
        """The server's state store, opened from this process (SQLite allows both)."""
        return open_state(load_settings(overrides={"data_dir": str(self.data)}, environ={}))

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        return httpx.get(self.base + path, headers={"Authorization": f"Bearer {token or self.operator}"}, timeout=10)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    data = tmp_path_factory.mktemp("console") / "data"
    st = open_state(load_settings(overrides={"data_dir": str(data)}, environ={}))
    tokens = {
        "m-001": st.add_device("m-001", "site-a", model="Necta Zeta", serial="SN-1", location="Lobby"),
        "m-002": st.add_device("m-002", "site-a"),
        "m-003": st.add_device("m-003", "site-b", location=XSS_LOCATION),
    }
    operator = st.add_operator_token("noc", "operator")
    viewer = st.add_operator_token("wall", "viewer")
    st.close()
    _fire_signals(data)
    port = _free_port()
    env = {**os.environ, "VENDWATCH_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(vendwatch_cmd("serve", "--data-dir", str(data), "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait("vendwatch serve", lambda: httpx.get(base + "/healthz", timeout=2).status_code == 200)
        except AssertionError:
            proc.terminate()
            raise AssertionError(f"vendwatch serve did not start: {proc.communicate(timeout=10)[1].decode()[-2000:]}") from None
        posts = {
            "m-001": [
                _event("m-001", "telemetry", {"cabinet_temp_c": 9.5, "refrigeration_temp_c": 5.0}, ago_s=120),
                _event("m-001", "telemetry", {"cabinet_temp_c": 6.5, "refrigeration_temp_c": 3.2, "power_on": True,
                                              "door_open": False, "bill_validator": "degraded"}),
                _event("m-001", "heartbeat", {"uptime_s": 86000, "firmware_version": "4.2.1"}),
                _event("m-001", "inventory", {"slots": [
                    {"slot": "A1", "product_id": "cola-33", "count": 8, "capacity": 10, "low_threshold": 2},
                    {"slot": "A2", "product_id": "water-50", "count": 1, "capacity": 10, "low_threshold": 2},
                    {"slot": "A10", "product_id": "chips", "count": 0, "capacity": 12}]}),
                _event("m-001", "fault", {"code": "motor_jam", "slot": "A2", "detail": XSS_DETAIL}),
                _event("m-001", "config", {"config_version": XSS_CONFIG}),
                _event("m-001", "transaction", {
                    "transaction_id": "t-1", "product_id": "cola-33", "slot": "A1", "price_minor": 150,
                    "currency": "EUR", "payment_method": "card", "payment_status": "success",
                    "vend_status": "success"}),
            ],
            "m-002": [_event("m-002", "heartbeat", {"firmware_version": "4.1.0"})],
        }
        for device, evs in posts.items():
            r = httpx.post(base + "/v1/events", json={"events": evs},
                           headers={"Authorization": f"Bearer {tokens[device]}"}, timeout=10)
            assert r.status_code == 200 and r.json()["accepted"] == len(evs), r.text
        f = Fleet(base, operator, viewer, data)
        # the device-state stage folds the events in the background
        _wait("device state", lambda: f.get("/v1/fleet/devices/m-001").json()["events"] == 7)
        yield f
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver:
        service_missing("chromium", "chromium and chromedriver are not on PATH (run scripts/browser.sh)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        service_missing("chromium", "the selenium package is not installed (pip install selenium)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="vw-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(drv: Any, name: str) -> None:
    out = os.environ.get("CONSOLE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(Path(out) / f"console-{name}.png"))


def _css(drv: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(drv.find_elements(By.CSS_SELECTOR, selector))


def _text(drv: Any, selector: str) -> str:
    return _wait(selector, lambda: (_css(drv, selector) or [None])[0] and _css(drv, selector)[0].text)


def _sign_in(drv: Any, fleet: Fleet, token: str, path: str = "/") -> None:
    drv.get(fleet.base + "/console/login")
    drv.execute_script("sessionStorage.clear()")
    drv.get(fleet.base + path)
    field = _wait("login form", lambda: (_css(drv, "#token") or [None])[0])
    field.send_keys(token)
    _css(drv, "#login-form button[type=submit]")[0].click()
    _wait("signed in", lambda: not drv.current_url.split("?")[0].endswith("/login") and _css(drv, "#who:not([hidden])"))


def _js_errors(drv: Any) -> list[str]:
    # network 404s of absent optional services are expected; script errors never are
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]


def test_login_rejects_a_bad_token_then_overview_matches_the_api(fleet: Fleet, browser: Any) -> None:
    drv = browser
    drv.get(fleet.base + "/")
    drv.execute_script("sessionStorage.clear()")
    drv.get(fleet.base + "/")
    _wait("redirect to login", lambda: "/console/login" in drv.current_url and _css(drv, "#token"))
    _shot(drv, "login")
    _css(drv, "#token")[0].send_keys("vwo_not-a-real-token")
    _css(drv, "#login-form button[type=submit]")[0].click()
    assert "not valid" in _text(drv, "#login-error")
    field = _css(drv, "#token")[0]
    field.clear()
    field.send_keys(fleet.operator)
    _css(drv, "#login-form button[type=submit]")[0].click()
    _wait("overview", lambda: _css(drv, "[data-testid=kpi-online]"))
    assert fleet.operator not in drv.current_url
    assert drv.execute_script("return sessionStorage.getItem('vendwatch.operator-token')") == fleet.operator
    assert "noc (operator)" in _text(drv, "#who-name")

    stats = fleet.get("/v1/stats").json()
    assert stats["devices"] == 3
    assert stats["connectivity"]["online"] == 2 and stats["connectivity"]["never"] == 1
    assert _text(drv, "[data-testid=kpi-devices]") == str(stats["devices"])
    for cls in ("online", "stale", "offline", "never", "disabled"):
        assert _text(drv, f"[data-testid=kpi-{cls}]") == str(stats["connectivity"][cls]), cls
    sites = _text(drv, "[data-testid=sites]")
    assert "site-a" in sites and "site-b" in sites
    assert "m-001" in _text(drv, "[data-testid=faulted]")
    # the rate appears once the page has taken a second sample
    _wait("events rate", lambda: _text(drv, "[data-testid=kpi-events-per-s]") != "…", timeout_s=15)
    _shot(drv, "overview")
    assert _js_errors(drv) == []


def test_device_list_filters_and_colours_by_staleness(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.viewer, "/console/devices")
    _wait("device rows", lambda: len(_css(drv, "[data-testid=devices] tbody tr")) == 3)
    classes = {r.find_element("css selector", "a.device-link").text: r.get_attribute("class")
               for r in _css(drv, "[data-testid=devices] tbody tr")}
    assert classes == {"m-001": "conn-online", "m-002": "conn-online", "m-003": "conn-never"}
    _shot(drv, "devices")
    status = _css(drv, "#device-filters select[name=status]")[0]
    status.find_element("css selector", "option[value=never]").click()
    _css(drv, "#device-filters button[type=submit]")[0].click()
    _wait("filtered list", lambda: [a.text for a in _css(drv, "[data-testid=devices] a.device-link")] == ["m-003"])
    assert "status=never" in drv.current_url
    drv.get(fleet.base + "/console/devices?q=lobby")
    _wait("search", lambda: [a.text for a in _css(drv, "[data-testid=devices] a.device-link")] == ["m-001"])
    assert _js_errors(drv) == []


def test_device_page_shows_temperatures_stock_faults_and_events(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.viewer, "/console/devices")
    link = _wait("device link", lambda: [a for a in _css(drv, "a.device-link") if a.text == "m-001"])[0]
    link.click()
    _wait("device page", lambda: _text(drv, "[data-testid=device-id]") == "m-001")
    assert drv.current_url.endswith("/console/devices/m-001")
    assert _text(drv, "[data-testid=cabinet-temp]") == "6.5 °C"
    assert _text(drv, "[data-testid=fridge-temp]") == "3.2 °C"
    tiles = _wait("stock", lambda: _css(drv, "[data-testid=stock] .slot"))
    # slot order is natural (A2 before A10); each tile carries its level
    assert [(t.get_attribute("data-slot"), t.get_attribute("class")) for t in tiles] == [
        ("A1", "slot level-ok"), ("A2", "slot level-low"), ("A10", "slot level-out")]
    assert "8 / 10" in tiles[0].text and "cola-33" in tiles[0].text and "out" in tiles[2].text
    assert "motor jam" in _text(drv, "[data-testid=faults]")  # a state name, not its code
    assert "4.2.1" in _text(drv, "[data-testid=firmware]")
    assert "€1.50" in _text(drv, "[data-testid=last-transaction]")
    events = _wait("events", lambda: _css(drv, "[data-testid=events] tbody tr"))
    assert len(events) == 7
    # the temperature trend draws both series from the two telemetry readings
    assert len(_css(drv, "[data-testid=chart-temperature] polyline[data-role=series]")) == 2
    assert "transaction" in events[0].text and "telemetry" in events[-1].text  # newest first
    _shot(drv, "device")
    assert _js_errors(drv) == []


def test_xss_payloads_render_as_text(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.viewer, "/console/devices/m-003")
    machine = _wait("machine facts", lambda: _text(drv, "[data-testid=machine]"))
    assert XSS_LOCATION in machine  # shown literally
    drv.get(fleet.base + "/console/devices/m-001")
    _wait("events", lambda: _css(drv, "[data-testid=events] tbody tr"))
    assert XSS_CONFIG in _text(drv, "[data-testid=firmware]")
    for d in _css(drv, "[data-testid=events] details"):
        d.click()  # open every payload
    body = _text(drv, "[data-testid=events]")
    assert 'onerror=\\"window.__xss=2\\"' in body  # JSON-escaped text, not markup
    assert drv.execute_script("return window.__xss") is None
    assert _css(drv, "img") == [] and len(_css(drv, "script")) == 1  # only the console's own module
    assert _js_errors(drv) == []


def test_incidents_page_shows_the_service_or_says_it_is_absent(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.operator, "/console/incidents")
    served = fleet.get("/v1/incidents").status_code
    if served == 404 and not fleet.get("/v1/incidents").headers.get("content-type", "").startswith("application/json"):
        assert "not available" in _text(drv, "[data-testid=incidents-unavailable]")
    else:
        _wait("incident list", lambda: _css(drv, "[data-testid=incidents], [data-testid=incidents-empty]"))
    _shot(drv, "incidents")
    assert _js_errors(drv) == []


def test_incidents_counts_detail_and_acknowledge(fleet: Fleet, browser: Any) -> None:
    drv = browser
    active = _wait("incidents opened", lambda: len(
        body := fleet.get("/v1/incidents?status=active").json()["incidents"]) == 2 and body)
    critical = next(i for i in active if i["severity"] == "critical")
    _sign_in(drv, fleet, fleet.operator, "/console/")
    _wait("incident counts", lambda: _text(drv, "[data-testid=incidents-critical]") == "1"
          and _text(drv, "[data-testid=incidents-minor]") == "1")
    assert _text(drv, "[data-testid=incidents-major]") == "0"

    drv.get(fleet.base + "/console/incidents")
    link = _wait("incident link", lambda: [a for a in _css(drv, "[data-testid=incidents] a")
                                           if a.text == XSS_SUMMARY])[0]
    link.click()
    _wait("incident page", lambda: _css(drv, "#ack:not([disabled])"))
    assert XSS_SUMMARY in _text(drv, "h1")
    assert drv.execute_script("return window.__xss") is None and _css(drv, "img") == []
    _css(drv, "#ack")[0].click()
    _wait("acknowledged", lambda: "Acknowledged" in _text(drv, "[data-testid=action-message]"))
    after = fleet.get(f"/v1/incidents/{critical['incident_id']}").json()
    assert after["status"] == "acknowledged" and after["acknowledged_by"] == "operator:noc"
    _wait("timeline entry", lambda: "acknowledged" in _text(drv, "[data-testid=timeline]"))
    _shot(drv, "incident")
    _wait("resolve enabled", lambda: _css(drv, "#resolve:not([disabled])"))[0]
    _css(drv, "#resolve-note")[0].send_keys("compressor restarted on site")
    _css(drv, "#resolve")[0].click()
    _wait("resolved", lambda: "Resolved" in _text(drv, "[data-testid=action-message]"))
    after = fleet.get(f"/v1/incidents/{critical['incident_id']}").json()
    assert after["status"] == "resolved" and after["resolved_by"] == "operator:noc"
    assert any("compressor restarted on site" in str(e) for e in after["timeline"])

    # a viewer sees the incident but cannot act on it
    _sign_in(drv, fleet, fleet.viewer, f"/console/incidents/{critical['incident_id']}")
    _wait("incident page", lambda: _css(drv, "#resolve"))
    assert _css(drv, "#resolve")[0].get_attribute("disabled") is not None
    assert _js_errors(drv) == []


def test_device_silence_can_be_added_and_ended(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.operator, "/console/devices/m-002")
    _wait("silence form", lambda: _css(drv, "#silence-add"))
    assert "No active silence" in _text(drv, "[data-testid=silences-empty]")
    _css(drv, "#silence-duration option[value='14400']")[0].click()
    _css(drv, "#silence-reason")[0].send_keys("refill visit <i>now</i>")
    _css(drv, "#silence-add")[0].click()
    _wait("silence listed", lambda: "refill visit <i>now</i>" in _text(drv, "[data-testid=silences]"))
    active = [s for s in fleet.get("/v1/silences").json()["silences"] if s["active"]]
    assert [(s["device_id"], s["reason"], s["created_by"]) for s in active] == [
        ("m-002", "refill visit <i>now</i>", "operator:noc")]
    assert 4 * 3600 - 60 < active[0]["expires_at"] - active[0]["starts_at"] <= 4 * 3600
    _css(drv, "button.end-silence")[0].click()
    _wait("silence ended", lambda: _css(drv, "[data-testid=silences-empty]"))
    assert not [s for s in fleet.get("/v1/silences").json()["silences"] if s["active"]]
    assert _js_errors(drv) == []


def test_sql_page_runs_a_query(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.operator, "/console/sql")
    editor = _wait("editor", lambda: (_css(drv, "#sql") or [None])[0])
    editor.clear()
    editor.send_keys("SELECT 40 + 2 AS answer, '<b>x</b>' AS markup")
    _css(drv, "#run-sql")[0].click()
    result = _text(drv, "[data-testid=sql-result]")
    assert "answer" in result and "42" in result and "<b>x</b>" in result
    _shot(drv, "sql")
    # a viewer may not run SQL: the page shows the API's refusal
    _sign_in(drv, fleet, fleet.viewer, "/console/sql")
    _wait("editor", lambda: _css(drv, "#run-sql"))[0].click()
    assert "operator" in _text(drv, "[data-testid=sql-error]")
    assert _js_errors(drv) == []


def test_reports_page_lists_reports(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.viewer, "/console/reports")
    names = {r["name"] for r in fleet.get("/v1/reports", fleet.viewer).json()["reports"]}
    listed = _text(drv, "[data-testid=reports]")
    assert names and all(n in listed for n in names)
    first = sorted(names)[0]
    drv.get(f"{fleet.base}/console/reports?name={first}")
    _wait("report result", lambda: _css(drv, "[data-testid=report-result]") or _css(drv, "#report-out .error"))
    assert _css(drv, "[data-testid=report-result]"), _text(drv, "#report-out")
    assert _js_errors(drv) == []


def test_unknown_device_and_page_say_so(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.viewer, "/console/devices/ghost%2F1")
    assert _text(drv, "main h1") == "Unknown device"
    assert "ghost/1" in _text(drv, "main p")  # the id decoded from its one path segment
    drv.get(fleet.base + "/console/nowhere")
    _wait("not found", lambda: _text(drv, "main h1") == "Not found")
    assert _js_errors(drv) == []


def test_a_revoked_token_is_sent_back_to_sign_in(fleet: Fleet, browser: Any) -> None:
    drv = browser
    st = fleet.state()
    temp = st.add_operator_token("temp", "viewer")
    _sign_in(drv, fleet, temp, "/console/devices")
    _wait("device rows", lambda: _css(drv, "[data-testid=devices] tbody tr"))
    st.revoke_operator_token("temp")
    st.close()
    _css(drv, "a.device-link")[0].click()  # the next API call answers 401
    _wait("back to sign-in", lambda: "/console/login" in drv.current_url and _css(drv, "#token"))
    assert "next=%2Fconsole%2Fdevices%2F" in drv.current_url  # where to return after signing in
    assert drv.execute_script("return sessionStorage.getItem('vendwatch.operator-token')") is None


def test_sign_out_forgets_the_token(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.viewer, "/console/")
    _css(drv, "#sign-out")[0].click()
    _wait("login page", lambda: "/console/login" in drv.current_url and _css(drv, "#token"))
    assert drv.execute_script("return sessionStorage.getItem('vendwatch.operator-token')") is None
    drv.get(fleet.base + "/console/devices")
    _wait("back to login", lambda: "/console/login" in drv.current_url)


def test_food_safety_page_shows_the_printable_record(fleet: Fleet, browser: Any) -> None:
    drv = browser
    _sign_in(drv, fleet, fleet.viewer, "/console/food-safety?site=site-a")
    assert _css(drv, '#nav a[href="/console/food-safety"].active')
    # m-001's warmest reading is 5.0 °C: at the limit, not above it
    said = _wait("food-safety record", lambda: next((p.text for p in _css(drv, "#food-safety-out p")
                                                     if "episode" in p.text), None))
    assert "No episode above the limit" in said and "site site-a" in said
    headers = [th.text for th in _css(drv, "[data-testid=food-safety] th")]
    assert headers[:4] == ["Site", "Machine", "Limit", "Start (UTC)"] and "Sales during" in headers
    assert _css(drv, ".print-only") and not _css(drv, ".print-only")[0].is_displayed()  # shown on paper only
    assert _js_errors(drv) == []
