"""``POST /v1/dex`` over real HTTP: same auth, limits and idempotency as ``/v1/events``."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from tests.dex.files import file
from tests.ingest_support import Harness, running

from vendwatch.dex import model as dm
from vendwatch.ingest.openapi import DexResult


@pytest.fixture
def h(data_dir: Path):
    with running(data_dir, **{"ingest.auth_cache_s": 0}) as harness:
        harness.add_device("VM-1", "SITE-1")
        harness.add_device("VM-2", "SITE-2")
        yield harness


def _post(h: Harness, device: str, body: bytes, *, gz: bool = False, ctype: str = "text/plain", token: str | None = None):
    headers = {"content-type": ctype, "authorization": f"Bearer {token if token is not None else h.tokens[device]}"}
    if gz:
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    return h.client.post("/v1/dex", content=body, headers=headers)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def test_a_read_becomes_events_and_resending_it_stores_it_once(h: Harness) -> None:
    t1 = _now() - timedelta(days=7)
    t2 = _now() - timedelta(hours=1)
    ea = [dm.MachineEvent(code="EJJ", date=(t2 - timedelta(hours=5)).strftime("%y%m%d"),
                          time=(t2 - timedelta(hours=5)).strftime("%H%M"), duration_min=95)]
    r = _post(h, "VM-1", file(t1, {"A1": (100, 15000), "A2": (10, 2000)}))
    assert r.status_code == 200, r.text
    msgspec.convert(r.json(), DexResult)  # the answer has the documented shape
    assert r.json()["findings"] == ["first_read"] and r.json()["accepted"] == 1
    second = file(t2, {"A1": (112, 16800), "A2": (10, 2000)}, events=ea)
    body = _post(h, "VM-1", second).json()
    assert body["accepted"] == 4 and body["duplicates"] == 0 and body["findings"] == []
    assert _post(h, "VM-1", second, gz=True).json() | {"read_id": None} == {
        "read_id": None, "accepted": 0, "duplicates": 4, "rejected": [], "flags": [], "findings": []}
    stored = h.stored_events()
    by_type = sorted(e.type for e in stored)
    assert by_type == ["dex_read", "dex_read", "dex_sales", "fault", "fault"]
    (sales,) = [msgspec.json.decode(e.data) for e in stored if e.type == "dex_sales"]
    assert sales["slot"] == "A1" and sales["units"] == 12 and sales["value_minor"] == 1800
    assert sales["cash_units"] + sales["card_units"] == 12 and sales["currency"] == "EUR"
    faults = [msgspec.json.decode(e.data) for e in stored if e.type == "fault"]
    assert [(f["code"], f["state"]) for f in faults] == [("cooling_failure", "raised"), ("cooling_failure", "cleared")]
    summary = [msgspec.json.decode(e.data) for e in stored if e.type == "dex_read"][-1]
    assert summary["raw"].encode("latin-1") == second and summary["units"] == 12


def test_wrong_crc_is_refused_with_its_reason_kept_in_quarantine_and_not_counted(h: Harness) -> None:
    good = file(_now() - timedelta(hours=2), {"A1": (5, 750)})
    bad = good.replace(b"PA2*5*750", b"PA2*4*750")
    r = _post(h, "VM-1", bad)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "dex_crc_mismatch" and "G85 integrity check failed" in err["message"]
    assert h.stored_events() == []
    (q,) = h.quarantine()
    assert q["code"] == "dex_crc_mismatch" and q["raw"].encode("latin-1") == bad and q["device_id"] == "VM-1"
    # nothing counted: the next good read is a first read, not a period after the bad one
    assert _post(h, "VM-1", good).json()["findings"] == ["first_read"]


def test_same_rules_as_events_auth_media_type_size(h: Harness) -> None:
    f = file(_now(), {"A1": (1, 150)})
    assert _post(h, "VM-1", f, token="nope").status_code == 401
    assert h.client.post("/v1/dex", content=f, headers={"content-type": "text/plain"}).status_code == 401
    assert _post(h, "VM-1", f, ctype="application/json").status_code == 415
    assert _post(h, "VM-1", b"ST*001*0001\r\n" + b"X" * 2_000_000).status_code == 413
    r = _post(h, "VM-1", b"ST*001*0001\r\n" + b"PA1*A1*1\r\n" * 8000)
    assert r.status_code == 422 and r.json()["error"]["code"] == "dex_too_large"
    r = _post(h, "VM-1", b"hello")
    assert r.status_code == 422 and "not an EVA-DTS audit file" in r.json()["error"]["message"]


def test_board_replacement_counter_reset_and_missed_reads_are_reported(h: Harness) -> None:
    t = _now() - timedelta(days=3)
    assert _post(h, "VM-1", file(t, {"A1": (100, 15000)}, reads=10)).status_code == 200
    r = _post(h, "VM-1", file(t + timedelta(days=1), {"A1": (110, 16500)}, reads=13)).json()
    assert r["findings"] == ["missed_reads"]
    r = _post(h, "VM-1", file(t + timedelta(days=2), {"A1": (4, 600)}, reads=14)).json()
    assert r["findings"] == ["counter_reset"]
    r = _post(h, "VM-1", file(t + timedelta(days=2, hours=1), {"A1": (1, 150)}, reads=1, serial="SN-NEW")).json()
    assert r["findings"] == ["board_replaced"]
    sales = [msgspec.json.decode(e.data) for e in h.stored_events() if e.type == "dex_sales"]
    assert [(s["units"], s["counter_reset"]) for s in sales] == [(10, False), (4, True)]
    assert all(s["units"] >= 0 and s["value_minor"] >= 0 for s in sales)


def test_lf_only_and_swapped_crc_are_accepted_and_flagged(h: Harness) -> None:
    r = _post(h, "VM-1", file(_now(), {"A1": (1, 150)}, lf_only=True, swap_crc=True))
    assert r.status_code == 200 and r.json()["flags"] == ["lf_line_ends", "crc_byte_swapped"]
