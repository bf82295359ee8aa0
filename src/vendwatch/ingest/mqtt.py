"""The MQTT bridge (role ``mqtt-bridge``): devices publish to a broker, vendwatch appends.

Devices publish the same JSON as ``POST /v1/events`` (``{"events": [...]}``, or one
event object) with QoS 1 to ``vendwatch/v1/<device_id>/events``, and EVA-DTS audit
files (the body of ``POST /v1/dex``) to ``vendwatch/v1/<device_id>/dex``. The broker
authenticates the device (username = device id, password = device token) and its
ACL lets a device publish only to its own topic (``vendwatch devices
export-mosquitto``), so the topic's device id is the authenticated identity.

Bridge replicas share one subscription (``$share/<group>/vendwatch/v1/+/events``):
the broker hands each message to one of them. Each message is validated exactly like
an HTTP batch (``ingest.validate.validate_batch``), appended through the same
deduplicating ``IngestSink``, and acknowledged (PUBACK) only after the append is
durable. If the log is unavailable the bridge retries and keeps the messages
unacknowledged, so the broker's in-flight window fills and delivery pauses: nothing
is lost and nothing is acknowledged early. Devices get no per-event answer over MQTT;
refused events go to the quarantine (``rejected``) topic as with HTTP.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter

from vendwatch import events as ev
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.base import LogUnavailable
from vendwatch.ingest.sink import IngestSink, Pending, open_sink
from vendwatch.ingest.validate import quarantine_record, validate_batch
from vendwatch.observe import metrics as m
from vendwatch.runtime import Context
from vendwatch.state.store import Device

log = logging.getLogger("vendwatch.ingest.mqtt")

MQTT_MESSAGES = Counter(
    "vendwatch_mqtt_messages_total", "MQTT messages handled by the bridge, by outcome", ["outcome"]
)
MQTT_APPEND_RETRIES = Counter("vendwatch_mqtt_append_retries_total", "Appends retried because the log was unavailable")

_batch_decoder = msgspec.json.Decoder(ev.Batch)


def device_from_topic(topic: str, kind: str = "events") -> str | None:
    """``vendwatch/v1/<device_id>/<kind>`` -> device_id (None for any other topic)."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "vendwatch" and parts[1] == "v1" and parts[3] == kind and parts[2]:
        return parts[2]
    return None


def split_payload(payload: bytes) -> list[msgspec.Raw] | str:
    """The raw events of a message: a batch body or one event object; a reason string if unreadable."""
    try:
        return list(_batch_decoder.decode(payload).events)
    except msgspec.ValidationError:
        pass  # not a {"events": [...]} body: maybe one event object
    except msgspec.DecodeError as e:
        return f"payload is not valid JSON: {e}"
    return [msgspec.Raw(payload)] if payload.lstrip()[:1] == b"{" else 'payload must be {"events": [...]} or one event object'


@dataclass
class _Judged:
    msg: paho.MQTTMessage
    accepted: list[Pending]
    quarantine: list[tuple[str, bytes]]
    after: Callable[[], None] | None = None  # run once the append is durable


class MqttBridge:
    name = "mqtt-bridge"

    def __init__(self, ctx: Context, *, client_id: str | None = None) -> None:
        self.ctx = ctx
        self.s = ctx.settings.mqtt
        self.ingest = ctx.settings.ingest
        self.client_id = client_id or f"{self.s.client_id_prefix}-{socket.gethostname()}"
        self._inbox: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._devices: dict[str, tuple[float, Device | None]] = {}
        self.connected = threading.Event()
        self.subscribed = threading.Event()

    # -- broker session -----------------------------------------------------------
    def _client(self) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5, manual_ack=True)
        if self.s.password is not None:
            c.username_pw_set(self.s.username, self.s.password)
        if self.s.tls:
            c.tls_set(ca_certs=self.s.tls_ca)
        c.max_inflight_messages_set(max(20, self.s.max_batch_messages))
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = lambda *a: self.connected.clear()
        c.on_message = lambda _c, _u, msg: self._inbox.put(msg)
        return c

    def _on_connect(self, c: paho.Client, _u: object, _flags: object, reason: paho.ReasonCode, _p: object) -> None:
        if reason.is_failure:
            log.error("MQTT broker %s:%s refused the bridge: %s", self.s.host, self.s.port, reason)
            return
        self.connected.set()
        c.subscribe([(f"$share/{self.s.share_group}/{t}", 1) for t in (self.s.topic, self.s.dex_topic)])

    def _on_subscribe(self, _c: paho.Client, _u: object, _mid: int, reasons: list[paho.ReasonCode], _p: object) -> None:
        if any(r.is_failure for r in reasons):
            log.error("MQTT subscription to %s refused: %s", self.s.topic, reasons)
        else:
            self.subscribed.set()

    # -- the loop -----------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        for topic in (EVENTS, REJECTED):  # as the HTTP collector does at start
            self.ctx.log.create_topic(topic)
        sink = open_sink(self.ctx.log, self.ctx.settings)
        client = self._client()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # a restarted replica gets its unacknowledged messages again
        client.connect_async(self.s.host, self.s.port, self.s.keepalive_s, clean_start=False, properties=props)
        client.loop_start()
        try:
            while not stop.is_set():
                batch = self._take(stop)
                if batch:
                    self._handle(client, sink, batch, stop)
        finally:
            client.disconnect()
            client.loop_stop()

    def _take(self, stop: threading.Event) -> list[paho.MQTTMessage]:
        try:
            first = self._inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        out = [first]
        deadline = time.monotonic() + self.s.max_wait_ms / 1000
        while len(out) < self.s.max_batch_messages:
            try:
                out.append(self._inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return out

    def _device(self, device_id: str) -> Device | None:
        now = time.monotonic()
        hit = self._devices.get(device_id)
        if hit and hit[0] > now:
            return hit[1]
        dev = self.ctx.state.get_device(device_id)
        dev = dev if dev is not None and dev.status == "active" else None
        if len(self._devices) > 200_000:
            self._devices.clear()
        self._devices[device_id] = (now + 5.0, dev)
        return dev

    def judge(self, msg: paho.MQTTMessage) -> _Judged:
        """Validate one message as the HTTP collector validates one request body."""
        now = ev.utcnow()
        payload = bytes(msg.payload)
        dex_device = device_from_topic(msg.topic, "dex")
        device_id = dex_device or device_from_topic(msg.topic)

        def refuse(reason: str, outcome: str) -> _Judged:
            MQTT_MESSAGES.labels(outcome=outcome).inc()
            m.INGEST_EVENTS.labels(outcome="rejected", reason=outcome).inc()
            return _Judged(msg, [], [(device_id or "", quarantine_record(device_id, now, reason, payload))])

        if device_id is None:
            return refuse(f"topic {msg.topic!r} is not vendwatch/v1/<device_id>/events", "bad_topic")
        if len(payload) > self.s.max_payload_bytes:
            return refuse(f"payload is {len(payload)} bytes; the limit is {self.s.max_payload_bytes}", "too_large")
        device = self._device(device_id)
        if device is None:
            return refuse(f"device {device_id!r} is unknown or disabled", "unknown_device")
        if dex_device is not None:
            return self._judge_dex(msg, payload, device, now)
        raws = split_payload(payload)
        if isinstance(raws, str):
            return refuse(raws, "invalid_body")
        if len(raws) > self.ingest.max_batch_events:
            return refuse(f"{len(raws)} events in one message; the limit is {self.ingest.max_batch_events}", "too_many_events")
        v = validate_batch(raws, device, self.ingest, now)
        MQTT_MESSAGES.labels(outcome="accepted").inc()
        return _Judged(msg, v.accepted, v.quarantine)

    def _judge_dex(self, msg: paho.MQTTMessage, payload: bytes, device: Device, now: datetime) -> _Judged:
        from vendwatch.dex.intake import judge, remember  # noqa: PLC0415 - builds on the ingest package
        from vendwatch.dex.store import DexStore  # noqa: PLC0415

        store = self.ctx.extras.get("dex_store")
        if store is None:
            store = self.ctx.extras["dex_store"] = DexStore(self.ctx.state.db)
        j = judge(payload, device, self.ingest, store, now)
        MQTT_MESSAGES.labels(outcome="refused" if j.refused else "accepted").inc()
        return _Judged(msg, j.accepted, j.quarantine, lambda: remember(j, device, store))

    def _handle(self, client: paho.Client, sink: IngestSink, msgs: list[paho.MQTTMessage], stop: threading.Event) -> None:
        # a DEX file is compared with the previous read: each one is judged after the one before is stored
        dex = [msg for msg in msgs if device_from_topic(msg.topic, "dex") is not None]
        rest = [msg for msg in msgs if device_from_topic(msg.topic, "dex") is None]
        for group in ([rest] if rest else []) + [[msg] for msg in dex]:
            if stop.is_set():
                return
            self._append(client, sink, [self.judge(msg) for msg in group], stop)

    def _append(self, client: paho.Client, sink: IngestSink, judged: list[_Judged], stop: threading.Event) -> None:
        backoff = 0.2
        while judged:
            accepted = [p for j in judged for p in j.accepted]
            quarantine = [q for j in judged for q in j.quarantine]
            try:
                fresh = sink.commit(accepted, quarantine)
            except LogUnavailable as e:
                MQTT_APPEND_RETRIES.inc()
                log.warning("log unavailable (%s); %d MQTT messages stay unacknowledged, retrying", e, len(judged))
                if stop.wait(backoff):
                    return  # not acknowledged: the broker delivers them again
                backoff = min(backoff * 2, 5.0)
                continue
            n_new = sum(1 for f in fresh if f)
            m.INGEST_EVENTS.labels(outcome="accepted", reason="").inc(n_new)
            if len(fresh) - n_new:
                m.INGEST_EVENTS.labels(outcome="duplicate", reason="").inc(len(fresh) - n_new)
            retry: list[_Judged] = []
            i = 0
            for j in judged:
                part = fresh[i : i + len(j.accepted)]
                i += len(j.accepted)
                if None in part:  # another request is storing some of them: settle first
                    retry.append(_Judged(j.msg, j.accepted, [], j.after))
                else:
                    if j.after is not None:
                        j.after()
                    if j.msg.qos > 0:  # durable now: acknowledge (PUBACK)
                        client.ack(j.msg.mid, j.msg.qos)
            judged = retry
            if judged and stop.wait(backoff):
                return


def build(ctx: Context) -> MqttBridge:
    return MqttBridge(ctx)
