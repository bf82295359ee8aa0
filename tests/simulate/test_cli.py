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


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(vendwatch_cmd("serve", "--data-dir", str(data_dir), "--port", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and server.poll() is None, "vendwatch serve did not start"
        time.sleep(0.2)


def _log_ids(data_dir: Path) -> list[tuple[str, str]]:
    from vendwatch.bus import EVENTS
    from vendwatch.config import load_settings
    from vendwatch.events import decode_stored
    from vendwatch.runtime import Context

    ctx = Context(load_settings(overrides={"data_dir": str(data_dir)}, environ={}))
    out = []
    for p in range(ctx.log.partitions(EVENTS)):
        off = ctx.log.begin_offsets(EVENTS)[p]
        while recs := ctx.log.read(EVENTS, p, off, 5000):
            out += [(e.device_id, e.event_id) for e in map(decode_stored, (r.value for r in recs))]
            off = recs[-1].offset + 1
    ctx.close()
    return out


def test_simulate_drives_a_real_collector(tmp_path: Path) -> None:
    port = _free_port()
    server = _serve(tmp_path, port)
    try:
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
    from click.testing import CliRunner

    from vendwatch.cli.common import Env
    from vendwatch.cli.main import cli

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, ["simulate", "--url", "http://127.0.0.1:9", *args], obj=Env(None, {}))

    r = run("--faults", "meltdown", "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and "unknown fault kind 'meltdown'" in r.output
    r = run("--fault-at", "offline:VM-1", "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and "kind@DEVICE+START" in r.output
    r = run("--tokens", str(tmp_path / "missing.csv"))
    assert r.exit_code == 1 and "tokens file not found" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("id,secret\nA,B\n")
    r = run("--tokens", str(bad))
    assert r.exit_code == 1 and "device_id and token" in r.output
    one = tmp_path / "one.csv"
    one.write_text("device_id,token\nVM-1,vwd_x\n")
    r = run("--tokens", str(one), "--devices", "5")
    assert r.exit_code == 1 and "has only 1 devices" in r.output


def test_collector_killed_while_simulating_keeps_every_acked_event_once(tmp_path: Path) -> None:
    """SIGKILL the collector mid-run and restart it: the simulator retries with the same
    ids, so every event that got a 2xx is in the log, and none is there twice."""
    port = _free_port()
    server = _serve(tmp_path, port)
    acked = tmp_path / "acked.csv"
    sim = subprocess.Popen(
        vendwatch_cmd("simulate", "--url", f"http://127.0.0.1:{port}", "--data-dir", str(tmp_path), "--devices", "20",
                      "--speed", "300", "--duration", "8", "--flush-interval", "0.2", "--acked-ids", str(acked)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        server.kill()  # SIGKILL: no shutdown, in-flight requests lost
        server.wait(10)
        time.sleep(1)
        server = _serve(tmp_path, port)
        out, err = sim.communicate(timeout=120)
        assert sim.returncode == 0, err
    finally:
        server.terminate()
        server.wait(20)
    stats = json.loads(out)
    assert stats["network_errors"] > 0 and stats["retries"] > 0 and stats["events_unsent"] == 0
    acked_ids = [tuple(line.split(",", 1)) for line in acked.read_text().splitlines()]
    assert len(acked_ids) == len(set(acked_ids)) == stats["events_acked"] == stats["events_sent"]
    in_log = _log_ids(tmp_path)
    assert len(in_log) == len(set(in_log))  # none twice
    # every 2xx event is there (and nothing unacknowledged); the events a DEX upload becomes
    # (ids "dex:<file hash>...") are acknowledged per file, not in --acked-ids
    assert set(acked_ids) == {x for x in in_log if not x[1].startswith("dex:")}
