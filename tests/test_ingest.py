"""The collector over real HTTP (uvicorn on loopback): every rule of device protocol v1."""

from __future__ import annotations

import gzip
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest
from tests.ingest_support import Harness, ago, event, running

from vendwatch.bus import EVENTS, REJECTED


@pytest.fixture
def h(data_dir: Path):
    with running(data_dir, **{"ingest.auth_cache_s": 0}) as harness:
        harness.add_device("VM-1", "SITE-1")
        harness.add_device("VM-2", "SITE-2")
        yield harness


def test_accepts_batch_and_stores_it_enriched(h: Harness) -> None:
    evs = [event("VM-1", seq=i) for i in range(5)]
    r = h.post("VM-1", evs)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 5, "duplicates": 0, "rejected": []}
    stored = h.stored_events()
    assert sorted(e.event_id for e in stored) == sorted(e["event_id"] for e in evs)
    for e in stored:
        assert e.site_id == "SITE-1"
        assert e.schema_version == 1
        assert e.late is False
        assert e.received_at >= e.occurred_at
    assert sorted(e.seq for e in stored) == list(range(5))


def test_unknown_payload_fields_are_preserved_end_to_end(h: Harness) -> None:
    data = {"cabinet_temp_c": 4.5, "vendor_ext": {"fan_rpm": 1200, "tags": ["a", "b"]}, "new_field": None}
    e = event("VM-1", "telemetry", data)
    assert h.post("VM-1", [e]).json()["accepted"] == 1
    (stored,) = h.stored_events()
    assert msgspec.json.decode(stored.data) == data


def test_unknown_envelope_field_is_refused_not_dropped(h: Harness) -> None:
    odd = event("VM-1", firmware="4.2")  # belongs inside data
    r = h.post("VM-1", [odd, event("VM-1")]).json()
    assert r["accepted"] == 1
    (rej,) = r["rejected"]
    assert rej["code"] == "schema" and "firmware" in rej["reason"] and "inside `data`" in rej["reason"]
    (q,) = h.quarantine()
    assert q["raw"] == odd


def test_identity_comes_from_the_token(h: Harness) -> None:
    good, foreign = event("VM-1"), event("VM-2")
    r = h.post("VM-1", [good, foreign])
    body = r.json()
    assert r.status_code == 200
    assert body["accepted"] == 1
    (rej,) = body["rejected"]
    assert rej["index"] == 1 and rej["event_id"] == foreign["event_id"] and rej["code"] == "device_mismatch"
    assert "VM-2" in rej["reason"] and "VM-1" in rej["reason"]
    assert [e.device_id for e in h.stored_events()] == ["VM-1"]


@pytest.mark.parametrize("authz", [None, "Bearer vwd_not-a-real-token", "Basic dXNlcjpwYXNz", "Bearer"])
def test_bad_credentials_get_401(h: Harness, authz: str | None) -> None:
    headers = {"content-type": "application/json"}
    if authz is not None:
        headers["authorization"] = authz
    r = h.client.post("/v1/events", content=msgspec.json.encode({"events": [event("VM-1")]}), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"
    assert h.stored_events() == []


def test_replayed_batch_is_reported_as_duplicates_and_stored_once(h: Harness) -> None:
    evs = [event("VM-1") for _ in range(3)]
    assert h.post("VM-1", evs).json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert h.post("VM-1", evs).json() == {"accepted": 0, "duplicates": 3, "rejected": []}
    # a retry mixing old and new events
    more = [*evs[:1], event("VM-1")]
    assert h.post("VM-1", more).json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert len(h.stored_events()) == 4


def test_same_event_id_twice_in_one_batch(h: Harness) -> None:
    e = event("VM-1")
    assert h.post("VM-1", [e, dict(e)]).json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert len(h.stored_events()) == 1


def test_same_event_id_from_two_devices_is_two_events(h: Harness) -> None:
    assert h.post("VM-1", [event("VM-1", event_id="boot-1")]).json()["accepted"] == 1
    assert h.post("VM-2", [event("VM-2", event_id="boot-1")]).json()["accepted"] == 1
    assert sorted(e.device_id for e in h.stored_events()) == ["VM-1", "VM-2"]


def test_concurrent_retries_store_once(h: Harness) -> None:
    # the same batch raced from 8 connections lands in one or several group commits
    evs = [event("VM-1") for _ in range(20)]
    with ThreadPoolExecutor(8) as pool:
        bodies = [r.json() for r in pool.map(lambda _: h.post("VM-1", evs), range(8))]
    assert sum(b["accepted"] for b in bodies) == 20
    assert sum(b["duplicates"] for b in bodies) == 20 * 7
    assert len(h.stored_events()) == 20


def test_gzip_body_is_accepted(h: Harness) -> None:
    r = h.post("VM-1", [event("VM-1"), event("VM-1")], gzip_body=True)
    assert r.json()["accepted"] == 2


def test_multi_member_gzip_is_read_whole(h: Harness) -> None:
    # `gzip -c a b` writes two members; none of the body may be ignored
    body = msgspec.json.encode({"events": [event("VM-1"), event("VM-1")]})
    cut = len(body) // 2
    r = h.post("VM-1", body=gzip.compress(body[:cut]) + gzip.compress(body[cut:]),
               headers={"content-encoding": "gzip"})
    assert r.json()["accepted"] == 2


def test_gzip_with_trailing_garbage_gets_400(h: Harness) -> None:
    r = h.post("VM-1", body=gzip.compress(b'{"events": []}') + b"garbage", headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_gzip"


def test_five_megabyte_body_gets_413(h: Harness) -> None:
    big = {"events": [event("VM-1", "log", {"kind": "application", "message": "x" * 8000}) for _ in range(640)]}
    raw = msgspec.json.encode(big)
    assert len(raw) > 5_000_000
    r = h.post("VM-1", body=raw)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    assert h.stored_events() == []


def test_chunked_body_over_the_limit_gets_413(h: Harness) -> None:
    def chunks():
        for _ in range(40):
            yield b" " * 65536

    r = h.client.post("/v1/events", content=chunks(),
                      headers={"authorization": f"Bearer {h.tokens['VM-1']}", "content-type": "application/json"})
    assert r.status_code == 413


def test_gzip_bomb_gets_413(h: Harness) -> None:
    bomb = gzip.compress(b'{"events": [' + b" " * 50_000_000 + b"]}")
    assert len(bomb) < 100_000
    r = h.post("VM-1", body=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413
    assert "decompressed" in r.json()["error"]["message"]


@pytest.mark.parametrize("payload", [b"not gzip at all", gzip.compress(b'{"events": []}')[:-12]])
def test_bad_or_truncated_gzip_gets_400(h: Harness, payload: bytes) -> None:
    r = h.post("VM-1", body=payload, headers={"content-encoding": "gzip"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_gzip"


def test_unsupported_encoding_and_media_type_get_415(h: Harness) -> None:
    body = zlib.compress(msgspec.json.encode({"events": [event("VM-1")]}))
    assert h.post("VM-1", body=body, headers={"content-encoding": "br"}).status_code == 415
    r = h.post("VM-1", [event("VM-1")], headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_too_many_events_in_one_batch(data_dir: Path) -> None:
    with running(data_dir, **{"ingest.max_batch_events": 10}) as h:
        h.add_device("VM-1")
        r = h.post("VM-1", [event("VM-1") for _ in range(11)])
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_many_events"
        assert h.post("VM-1", [event("VM-1") for _ in range(10)]).json()["accepted"] == 10


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"event_id": "x" * 129}, "event_id"),
        ({"event_id": ""}, "event_id"),
        ({"device_id": "VM 1"}, "device_id"),
        ({"type": "coffee"}, "type"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "UTC offset"),
        ({"seq": -1}, "seq"),
        ({"type": "telemetry", "data": {"cabinet_temp_c": 500}}, "cabinet_temp_c"),
        ({"type": "telemetry", "data": {"cpu_pct": 101}}, "cpu_pct"),
        ({"type": "telemetry", "data": {"motor_status": "dancing"}}, "motor_status"),
        ({"type": "transaction", "data": {"transaction_id": "t1", "product_id": "p1", "slot": "A1",
                                          "price_minor": -5, "currency": "EUR", "payment_method": "cash",
                                          "payment_status": "success", "vend_status": "success"}}, "price_minor"),
        ({"type": "log", "data": {"kind": "crash", "message": "m" * 9000}}, "message"),
        ({"type": "fault", "data": {}}, "code"),
        ({"data": [1, 2]}, "data"),
    ],
)
def test_invalid_event_is_rejected_alone_with_a_reason(h: Harness, patch: dict, needle: str) -> None:
    bad = {**event("VM-1"), **patch}
    r = h.post("VM-1", [event("VM-1"), bad, event("VM-1")])
    body = r.json()
    assert r.status_code == 200
    assert body["accepted"] == 2
    (rej,) = body["rejected"]
    assert rej["index"] == 1
    assert needle in rej["reason"]
    assert rej["code"] == "schema"


def test_event_that_is_not_an_object_is_rejected(h: Harness) -> None:
    r = h.post("VM-1", body=b'{"events": ["hello", 42, null, {"event_id": "only"}]}')
    body = r.json()
    assert r.status_code == 200 and body["accepted"] == 0
    assert [x["index"] for x in body["rejected"]] == [0, 1, 2, 3]
    assert body["rejected"][3]["event_id"] == "only"


def test_timestamps_future_late_and_too_old(h: Harness) -> None:
    future = event("VM-1", occurred_at=ago(seconds=-3600))
    slightly_ahead = event("VM-1", occurred_at=ago(seconds=-60))  # within the allowed clock skew
    late = event("VM-1", occurred_at=ago(hours=2))
    old = event("VM-1", occurred_at=ago(days=40))
    r = h.post("VM-1", [future, slightly_ahead, late, old]).json()
    assert r["accepted"] == 2
    assert {x["index"]: x["code"] for x in r["rejected"]} == {0: "future", 3: "too_old"}
    by_id = {e.event_id: e for e in h.stored_events()}
    assert by_id[late["event_id"]].late is True
    assert by_id[slightly_ahead["event_id"]].late is False


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"events": [{"a": NaN}]}', "invalid_json"),
        (b'{"events": [1, 2', "invalid_json"),
        (b"[]", "invalid_body"),
        (b'{"events": {"a": 1}}', "invalid_body"),
        (b'{"evnts": []}', "invalid_body"),
        (b'\xff\xfe{"events": []}', "invalid_json"),
        (b'{"events": "\xff\xfe"}', "invalid_body"),
        (b'{"events": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_json"),
    ],
)
def test_malformed_bodies_get_400(h: Harness, body: bytes, code: str) -> None:
    r = h.post("VM-1", body=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert h.stored_events() == []


def test_non_utf8_inside_an_event(h: Harness) -> None:
    body = b'{"events": [' + msgspec.json.encode(event("VM-1")) + b', {"event_id": "\xc3\x28"}]}'
    r = h.post("VM-1", body=body)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    (rej,) = r.json()["rejected"]
    assert rej["index"] == 1 and rej["code"] == "schema"
    # the quarantine stays readable JSON and keeps the bytes, escaped
    (q,) = h.quarantine()
    assert q["device_id"] == "VM-1" and q["raw"] == '{"event_id": "\\xc3("}'


def test_deeply_nested_data_does_not_crash_the_collector(h: Harness) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    ev = msgspec.json.encode(event("VM-1"))
    body = b'{"events": [' + ev[:-1] + b', "extra": ' + deep + b"}]}"
    r = h.post("VM-1", body=body)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert r.json()["rejected"][0]["code"] == "schema"
    assert h.post("VM-1", [event("VM-1")]).json()["accepted"] == 1  # still serving


def test_huge_unknown_field_is_refused_per_event(h: Harness) -> None:
    big = event("VM-1", "heartbeat", {"uptime_s": 1, "blob": "z" * 200_000})
    r = h.post("VM-1", [big, event("VM-1")]).json()
    assert r["accepted"] == 1
    assert r["rejected"][0]["code"] == "too_large"


def test_quarantine_keeps_rejected_events_with_reason(h: Harness) -> None:
    bad = event("VM-1", "telemetry", {"cabinet_temp_c": 999})
    foreign = event("VM-2")
    h.post("VM-1", [bad, foreign, event("VM-1")])
    q = sorted(h.quarantine(), key=lambda x: x["index"])
    assert [x["event_id"] for x in q] == [bad["event_id"], foreign["event_id"]]
    assert all(x["device_id"] == "VM-1" for x in q)  # the authenticated device, not the claimed one
    assert q[0]["code"] == "schema" and "cabinet_temp_c" in q[0]["reason"]
    assert q[0]["raw"] == bad
    assert q[1]["code"] == "device_mismatch" and q[1]["raw"]["device_id"] == "VM-2"


def test_rate_limit_answers_429_with_retry_after(data_dir: Path) -> None:
    with running(data_dir, **{"ingest.rate_limit_events_per_s": 1.0, "ingest.rate_limit_burst": 10.0}) as h:
        h.add_device("VM-1")
        h.add_device("VM-2")
        assert h.post("VM-1", [event("VM-1") for _ in range(8)]).status_code == 200
        r = h.post("VM-1", [event("VM-1") for _ in range(5)])
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"
        # per device: another machine is not affected
        assert h.post("VM-2", [event("VM-2") for _ in range(5)]).status_code == 200
        assert len(h.stored_events()) == 13


def test_healthz_and_metrics(h: Harness) -> None:
    assert h.client.get("/healthz").json()["status"] == "ok"
    h.post("VM-1", [event("VM-1"), event("VM-2")])
    text = h.client.get("/metrics").text
    assert 'vendwatch_ingest_events_total{outcome="accepted",reason=""}' in text
    assert 'vendwatch_ingest_events_total{outcome="rejected",reason="device_mismatch"}' in text
    assert "vendwatch_ingest_request_seconds_bucket" in text
    assert "vendwatch_bus_append_seconds_bucket" in text
    assert "vendwatch_ingest_dedupe_keys" in text
    assert "vendwatch_ingest_group_commit_events_bucket" in text


def test_events_and_quarantine_topics_are_keyed_by_device(h: Harness) -> None:
    h.post("VM-1", [event("VM-1"), event("VM-2")])
    log = h.log
    for topic in (EVENTS, REJECTED):
        keys = {r.key for p in range(log.partitions(topic)) for r in log.read(topic, p, 0)}
        assert keys == {"VM-1"}
