"""MQTT ingestion against a real Mosquitto: credentials and ACL from the registry
(`vendwatch devices export-mosquitto`), the bridge role appending through the log."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from starlette.testclient import TestClient
from tests.conftest import vendwatch_cmd
from tests.scale.mqtt_broker import mosquitto

from vendwatch import events as ev
from vendwatch.api.server import build_app
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.sqlite import SqliteLog
from vendwatch.config import MqttSettings, Settings
from vendwatch.ingest.mqtt import MqttBridge, device_from_topic, split_payload
from vendwatch.runtime import Context
from vendwatch.state import open_state
from vendwatch.state.mqtt_auth import mosquitto_hash, mosquitto_verify

pytestmark = pytest.mark.timeout(90)

BRIDGE_PASSWORD = "bridge-" + uuid.uuid4().hex


@dataclass
class Env:
    settings: Settings
    tokens: dict[str, str]
    port: int
    broker: subprocess.Popen[bytes]
    log: SqliteLog
    files: tuple[Path, Path]


def _event(device: str, eid: str | None = None, at: datetime | None = None, **kw: object) -> dict:
    return {"event_id": eid or uuid.uuid4().hex, "device_id": device, "type": "heartbeat",
            "occurred_at": (at or datetime.now(UTC)).isoformat(), "data": {}, **kw}


def _export(data_dir: Path, workdir: Path) -> tuple[Path, Path]:
    pw, acl = workdir / "passwords", workdir / "acl"
    secret = workdir / "bridge.secret"
    secret.write_text(BRIDGE_PASSWORD)
    r = subprocess.run(vendwatch_cmd("devices", "export-mosquitto", "--data-dir", str(data_dir), "--passwords", str(pw),
                                     "--acl", str(acl), "--bridge-password-file", str(secret)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return pw, acl


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    data = tmp_path / "data"
    settings = Settings(data_dir=str(data))
    store = open_state(settings)
    tokens = {d: store.add_device(d, "site-1") for d in ("vm-1", "vm-2")}
    store.add_device("bad:id")  # cannot be an MQTT username: skipped by the export
    store.close()
    files = _export(data, tmp_path)
    with mosquitto(*files, tmp_path) as (port, proc):
        s = Settings(data_dir=str(data), mqtt=MqttSettings(port=port, password=BRIDGE_PASSWORD, max_wait_ms=1.0))
        log = SqliteLog(data / "bus.db", busy_timeout_ms=200)
        yield Env(s, tokens, port, proc, log, files)
        log.close()


def _start_bridge(env: Env, client_id: str) -> tuple[MqttBridge, threading.Event, threading.Thread]:
    b = MqttBridge(Context(env.settings, _log=env.log), client_id=client_id)
    stop = threading.Event()
    t = threading.Thread(target=b.run, args=(stop,), daemon=True)
    t.start()
    assert b.subscribed.wait(10), "the bridge could not subscribe"
    return b, stop, t


@pytest.fixture
def bridge(env: Env) -> Iterator[MqttBridge]:
    b, stop, t = _start_bridge(env, "test-bridge-" + uuid.uuid4().hex[:6])
    yield b
    stop.set()
    t.join(10)


class Device:
    """A device's MQTT session (MQTT 5, so the broker reports refusals in PUBACK)."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
        self.c.username_pw_set(user, password)
        self.acks: dict[int, paho.ReasonCode] = {}
        self.connect_reason: paho.ReasonCode | None = None
        self._connected = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self._connected.wait(10)

    def _on_connect(self, _c: object, _u: object, _f: object, rc: paho.ReasonCode, _p: object) -> None:
        self.connect_reason = rc
        self._connected.set()

    def publish(self, topic: str, body: object) -> paho.MQTTMessageInfo:
        payload = body if isinstance(body, bytes) else msgspec.json.encode(body)
        return self.c.publish(topic, payload, qos=1)

    def ack(self, info: paho.MQTTMessageInfo, timeout_s: float = 10) -> paho.ReasonCode | None:
        deadline = time.monotonic() + timeout_s
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks.get(info.mid)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _wait_records(log: SqliteLog, topic: str, n: int, timeout_s: float = 10) -> list[bytes]:
    deadline = time.monotonic() + timeout_s
    while True:
        vals = [r.value for p in range(log.partitions(topic)) for r in log.read(topic, p, 0, 10_000)]
        if len(vals) >= n or time.monotonic() > deadline:
            return vals
        time.sleep(0.02)


def test_mosquitto_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    # the hash format is checked against the broker in the tests below; here against the tool
    f = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(f), "u", "s3cret"], check=True, capture_output=True)
    encoded = f.read_text().strip().split(":", 1)[1]
    assert encoded.startswith("$7$101$")
    assert mosquitto_verify("s3cret", encoded) and not mosquitto_verify("other", encoded)
    assert mosquitto_verify("x", mosquitto_hash("x"))


def test_topic_and_payload_parsing() -> None:
    assert device_from_topic("vendwatch/v1/vm-1/events") == "vm-1"
    assert device_from_topic("vendwatch/v1/vm-1/other") is None
    assert device_from_topic("vendwatch/v1//events") is None
    assert len(split_payload(b'{"events": [{}, {}]}')) == 2  # type: ignore[arg-type]
    assert len(split_payload(b'{"event_id": "x"}')) == 1  # type: ignore[arg-type]
    assert "not valid JSON" in split_payload(b"{nope")  # type: ignore[operator]
    assert isinstance(split_payload(b"[1, 2]"), str)


def test_export_writes_entries_for_active_devices(env: Env) -> None:
    pw, acl = env.files
    users = [line.split(":", 1)[0] for line in pw.read_text().splitlines()]
    assert users == ["vm-1", "vm-2", "vendwatch-bridge"]
    assert "pattern write vendwatch/v1/%u/events" in acl.read_text()
    assert oct(pw.stat().st_mode & 0o777) == "0o600"


def test_valid_publish_lands_in_the_log(env: Env, bridge: MqttBridge) -> None:
    dev = Device(env.port, "vm-1", env.tokens["vm-1"])
    assert dev.connect_reason is not None and not dev.connect_reason.is_failure
    e = _event("vm-1")
    info = dev.publish("vendwatch/v1/vm-1/events", {"events": [e]})
    rc = dev.ack(info)
    assert rc is not None and not rc.is_failure
    # a PUBACK from the broker only says the broker has it; the log must have it too
    vals = _wait_records(env.log, EVENTS, 1)
    stored = [ev.decode_stored(v) for v in vals]
    assert [(s.event_id, s.device_id, s.site_id) for s in stored] == [(e["event_id"], "vm-1", "site-1")]
    # the same event again (a device retry) is a duplicate, and one bare event object works too
    dev.ack(dev.publish("vendwatch/v1/vm-1/events", e))
    e2 = _event("vm-1")
    dev.ack(dev.publish("vendwatch/v1/vm-1/events", e2))
    vals = _wait_records(env.log, EVENTS, 2)
    assert sorted(ev.decode_stored(v).event_id for v in vals) == sorted([e["event_id"], e2["event_id"]])
    dev.close()


def test_device_cannot_publish_on_another_devices_topic(env: Env, bridge: MqttBridge) -> None:
    dev = Device(env.port, "vm-1", env.tokens["vm-1"])
    forged = _event("vm-2")
    rc = dev.ack(dev.publish("vendwatch/v1/vm-2/events", {"events": [forged]}))
    assert rc is not None and rc.is_failure and rc.getName() == "Not authorized"
    # the broker delivers a client's messages in order: once a later valid one is in the
    # log, the forged one would be there too had the broker let it through
    ok = _event("vm-1")
    dev.ack(dev.publish("vendwatch/v1/vm-1/events", {"events": [ok]}))
    vals = _wait_records(env.log, EVENTS, 1)
    assert [ev.decode_stored(v).event_id for v in vals] == [ok["event_id"]]
    assert _wait_records(env.log, REJECTED, 0, 0) == []
    dev.close()


def test_wrong_password_and_unknown_device_cannot_connect(env: Env) -> None:
    bad = Device(env.port, "vm-1", env.tokens["vm-2"])
    assert bad.connect_reason is not None and bad.connect_reason.is_failure
    bad.close()
    skipped = Device(env.port, "bad:id", "whatever")
    assert skipped.connect_reason is not None and skipped.connect_reason.is_failure
    skipped.close()


def test_events_are_judged_like_http(env: Env, bridge: MqttBridge) -> None:
    now = datetime.now(UTC)
    batch = [
        _event("vm-1", "ok-1", now),
        {"event_id": "no-type", "device_id": "vm-1", "occurred_at": now.isoformat()},
        _event("vm-2", "mismatch", now),
        _event("vm-1", "future", now + timedelta(hours=2)),
        _event("vm-1", "ok-1", now),  # duplicate within the batch
    ]
    dev = Device(env.port, "vm-1", env.tokens["vm-1"])
    dev.ack(dev.publish("vendwatch/v1/vm-1/events", {"events": batch}))
    dev.close()
    mqtt_events = _wait_records(env.log, EVENTS, 1)
    mqtt_rejects = _wait_records(env.log, REJECTED, 3)

    # the same batch over HTTP, against a second data dir
    http_dir = Path(env.settings.data_dir).parent / "http-data"
    s = Settings(data_dir=str(http_dir))
    store = open_state(s)
    store.add_device("vm-1", "site-1", token=env.tokens["vm-1"])
    store.close()
    ctx = Context(s)
    with TestClient(build_app(ctx, ["collector"])) as client:
        r = client.post("/v1/events", json={"events": batch}, headers={"Authorization": f"Bearer {env.tokens['vm-1']}"})
    assert r.status_code == 200
    answer = r.json()
    assert answer["accepted"] == 1 and answer["duplicates"] == 1 and len(answer["rejected"]) == 3
    http_rejects = [r.value for p in range(ctx.log.partitions(REJECTED)) for r in ctx.log.read(REJECTED, p, 0)]
    ctx.close()

    def reasons(values: list[bytes]) -> list[tuple[str | None, str]]:
        out = []
        for v in values:
            rej = msgspec.json.decode(v)
            out.append((rej.get("event_id"), rej["reason"]))
        return sorted(out)

    assert reasons(mqtt_rejects) == reasons(http_rejects)
    assert [ev.decode_stored(v).event_id for v in mqtt_events] == ["ok-1"]


def test_unknown_device_and_unreadable_payload_are_quarantined(env: Env, bridge: MqttBridge) -> None:
    # vm-2 is disabled after the export: the broker still lets it in, the bridge refuses
    store = open_state(env.settings)
    store.set_device_status("vm-2", "disabled")
    store.close()
    dev = Device(env.port, "vm-2", env.tokens["vm-2"])
    dev.ack(dev.publish("vendwatch/v1/vm-2/events", {"events": [_event("vm-2")]}))
    dev.close()
    ok = Device(env.port, "vm-1", env.tokens["vm-1"])
    ok.ack(ok.publish("vendwatch/v1/vm-1/events", b"{not json"))
    ok.close()
    rejects = [msgspec.json.decode(v) for v in _wait_records(env.log, REJECTED, 2)]
    assert sorted((r["device_id"], r["reason"][:24].strip()) for r in rejects) == [
        ("vm-1", "payload is not valid JSO"), ("vm-2", "device 'vm-2' is unknown")]
    assert [r["raw"] for r in rejects if r["device_id"] == "vm-1"] == ["{not json"]
    assert _wait_records(env.log, EVENTS, 0, 0) == []


def test_ack_only_after_the_append(env: Env) -> None:
    from vendwatch.ingest.mqtt import MQTT_APPEND_RETRIES

    client_id = "test-bridge-" + uuid.uuid4().hex[:6]
    _b, stop, t = _start_bridge(env, client_id)
    # hold the log's write lock from outside: the bridge's appends fail (busy)
    blocker = sqlite3.connect(Path(env.settings.data_dir) / "bus.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    retries = MQTT_APPEND_RETRIES._value.get()
    dev = Device(env.port, "vm-1", env.tokens["vm-1"])
    e = _event("vm-1")
    dev.ack(dev.publish("vendwatch/v1/vm-1/events", {"events": [e]}))
    dev.close()
    try:
        deadline = time.monotonic() + 10
        while MQTT_APPEND_RETRIES._value.get() == retries and time.monotonic() < deadline:
            time.sleep(0.02)
        assert MQTT_APPEND_RETRIES._value.get() > retries, "the bridge never tried to append"
        stop.set()  # the bridge stops while the append still fails: it must not acknowledge
        t.join(10)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert _wait_records(env.log, EVENTS, 0, 0) == []
    # the same session comes back: the broker redelivers the unacknowledged message
    _b2, stop2, t2 = _start_bridge(env, client_id)
    try:
        assert [ev.decode_stored(v).event_id for v in _wait_records(env.log, EVENTS, 1)] == [e["event_id"]]
    finally:
        stop2.set()
        t2.join(10)
