"""DEX files over MQTT (``vendwatch/v1/<device>/dex``) against a real Mosquitto."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from tests.dex.files import file
from tests.scale.test_mqtt import Device, Env, _wait_records, bridge, env  # noqa: F401 - fixtures

from vendwatch import events as ev
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.ingest.mqtt import MqttBridge


def test_dex_file_published_by_a_device_lands_once_and_bad_crc_is_quarantined(env: Env, bridge: MqttBridge) -> None:  # noqa: F811
    dev = Device(env.port, "vm-1", env.tokens["vm-1"])
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    first, second = file(t, {"A1": (10, 1500)}), file(t + timedelta(hours=1), {"A1": (12, 1800)})
    for body in (first, second, second):
        rc = dev.ack(dev.publish("vendwatch/v1/vm-1/dex", body))
        assert rc is not None and not rc.is_failure
    stored = [ev.decode_stored(v) for v in _wait_records(env.log, EVENTS, 3)]
    assert sorted(s.type for s in stored) == ["dex_read", "dex_read", "dex_sales"]
    (sales,) = [msgspec.json.decode(s.data) for s in stored if s.type == "dex_sales"]
    assert sales["units"] == 2
    dev.ack(dev.publish("vendwatch/v1/vm-1/dex", second.replace(b"PA2*12*1800", b"PA2*12*1900")))
    (q,) = [msgspec.json.decode(v) for v in _wait_records(env.log, REJECTED, 1)]
    assert q["code"] == "dex_crc_mismatch" and q["device_id"] == "vm-1"
    rc = dev.ack(dev.publish("vendwatch/v1/vm-2/dex", first))
    assert rc is not None and rc.is_failure  # the ACL keeps a device to its own topic
    dev.close()
