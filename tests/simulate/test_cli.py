"""``vendwatch simulate`` against a real ``vendwatch serve``, and its usage errors."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
from tests.conftest import vendwatch_cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_simulate_drives_a_real_collector(tmp_path: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(vendwatch_cmd("serve", "--data-dir", str(tmp_path), "--port", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "vendwatch serve did not start"
            time.sleep(0.2)
        out = tmp_path / "sim.json"
        proc = subprocess.run(
            vendwatch_cmd("simulate", "--url", f"http://127.0.0.1:{port}", "--data-dir", str(tmp_path), "--devices", "12",
                          "--speed", "120", "--duration", "4", "--showcase", "--summary-json", str(out)),
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        stats = json.loads(proc.stdout)
        assert stats == json.loads(out.read_text())
        assert stats["events_acked"] == stats["events_sent"] > 0
        assert stats["events_rejected"] == 0 and stats["devices_acked"] == 12
        # the tokens it registered work for a second run from the file
        proc = subprocess.run(
            vendwatch_cmd("simulate", "--url", f"http://127.0.0.1:{port}", "--tokens", str(tmp_path / "fleet" / "tokens.csv"),
                          "--devices", "3", "--speed", "60", "--duration", "1", "--faults", "none"),
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["events_acked"] > 0
    finally:
        server.terminate()
        server.wait(20)


def test_usage_errors_are_clear(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(vendwatch_cmd("simulate", "--url", "http://127.0.0.1:9", *args),
                              capture_output=True, text=True, timeout=60)

    p = run("--faults", "meltdown", "--data-dir", str(tmp_path))
    assert p.returncode == 2 and "unknown fault kind 'meltdown'" in p.stderr
    p = run("--fault-at", "offline:VM-1", "--data-dir", str(tmp_path))
    assert p.returncode == 2 and "kind@DEVICE+START" in p.stderr
    p = run("--tokens", str(tmp_path / "missing.csv"))
    assert p.returncode == 1 and "tokens file not found" in p.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("id,secret\nA,B\n")
    p = run("--tokens", str(bad))
    assert p.returncode == 1 and "device_id and token" in p.stderr
