"""SIGKILL the collector mid-load: every event that got a 2xx is in the log, none twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import msgspec
import pytest
from tests.conftest import vendwatch_cmd
from tests.ingest_support import event, read_all, settings

from vendwatch.bus import EVENTS
from vendwatch.bus.sqlite import SqliteLog
from vendwatch.events import decode_stored
from vendwatch.state import open_state

DEVICES = 8
BATCH = 25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        vendwatch_cmd("serve", "--data-dir", str(data_dir), "--port", str(port), "--roles", "collector,device-state"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not become healthy")


@pytest.mark.slow
def test_sigkill_loses_no_acked_event_and_stores_none_twice(data_dir: Path) -> None:
    st = open_state(settings(data_dir))
    tokens = {f"VM-{i}": st.add_device(f"VM-{i}", "S1") for i in range(DEVICES)}
    st.close()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1/events"
    server = _start(data_dir, port)

    sent: list[tuple[str, bytes]] = []  # every batch ever attempted (device, body)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def device_loop(device: str) -> None:
        with httpx.Client(timeout=5, headers={"authorization": f"Bearer {tokens[device]}",
                                              "content-type": "application/json"}) as c:
            while not stop.is_set():
                evs = [event(device) for _ in range(BATCH)]
                body = msgspec.json.encode({"events": evs})
                with lock:
                    sent.append((device, body))
                try:
                    r = c.post(url, content=body)
                except httpx.HTTPError:
                    time.sleep(0.05)  # server gone: this batch is retried after the restart
                    continue
                if r.status_code == 200:
                    assert r.json()["rejected"] == []
                    with lock:
                        acked.extend(e["event_id"] for e in evs)

    threads = [threading.Thread(target=device_loop, args=(d,)) for d in tokens]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 20
        while len(acked) < 3000 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(server.pid, signal.SIGKILL)  # mid-run, requests in flight
        server.wait(10)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    acked_before = set(acked)
    assert len(acked_before) >= 1000

    server = _start(data_dir, port)
    try:
        # the devices retry everything they ever sent, acked or not
        with httpx.Client(timeout=30) as c:
            for device, body in sent:
                r = c.post(url, content=body, headers={"authorization": f"Bearer {tokens[device]}",
                                                      "content-type": "application/json"})
                assert r.status_code == 200, r.text
                assert r.json()["rejected"] == []
        # the device-state role was SIGKILLed too: its per-device counts must end up equal to
        # the log's, each event folded exactly once
        st = open_state(settings(data_dir))
        expected = Counter(decode_stored(v).device_id for v in read_all(SqliteLog(data_dir / "bus.db"), EVENTS))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = {d["device_id"]: d["events"] for d in st.list_device_states()}
            if counts == dict(expected):
                break
            time.sleep(0.1)
        assert counts == dict(expected)
        st.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)

    log = SqliteLog(data_dir / "bus.db")
    ids = Counter(decode_stored(v).event_id for v in read_all(log, EVENTS))
    log.close()
    all_sent = {e["event_id"] for _, body in sent for e in msgspec.json.decode(body)["events"]}
    assert acked_before <= set(ids), "an acked event is missing"
    assert [k for k, n in ids.items() if n > 1] == [], "an event is stored twice"
    assert set(ids) == all_sent  # after the retries, everything sent is stored
