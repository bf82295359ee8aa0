"""``vendwatch serve`` runs its pipeline roles in child processes (``server.role_processes``):
a role process killed in the middle of its work is started again and nothing is lost or
counted twice; a SIGKILLed ``serve`` leaves no role process running behind it; the
parent's ``/metrics`` keeps counting across a child's restart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import vendwatch_cmd
from tests.ingest_support import event, running
from tests.test_ingest_sigkill import _free_port


def _wait(what: str, cond: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:.0f}s: {what}")
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _metric(client: httpx.Client, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_a_role_process_killed_mid_stream_is_started_again_and_folds_every_event_once(data_dir: Path) -> None:
    roles = ("collector", "console", "device-state")
    with running(data_dir, roles=roles, **{"server.role_processes": True}) as h:
        procs = h.ctx.extras["role_processes"]
        h.add_device("VM-1", "SITE-1")
        _wait("device-state process started", lambda: "device-state" in procs.pids())
        first = procs.pids()["device-state"]
        assert first != os.getpid()
        restarts = _metric(h.client, "vendwatch_role_restarts_total", role="device-state") or 0.0  # this test's own
        sent = 0
        for i in range(40):
            assert h.post("VM-1", [event("VM-1") for _ in range(50)]).status_code == 200
            sent += 50
            if i == 10:
                os.kill(first, signal.SIGKILL)  # in the middle of its work
        _wait("a new device-state process", lambda: procs.pids().get("device-state") not in (None, first))
        _wait("every event folded", lambda: (h.ctx.state.get_device_state("VM-1") or {}).get("events") == sent)
        time.sleep(1.5)  # another poll and report: still exactly once
        assert h.ctx.state.get_device_state("VM-1")["events"] == sent
        assert _metric(h.client, "vendwatch_role_restarts_total", role="device-state") == restarts + 1
        # the stage's record counter goes on from where the killed process left it
        _wait("records counted", lambda: (_metric(h.client, "vendwatch_stage_records_total", stage="device-state")
                                          or 0) >= sent)
        assert h.client.get("/healthz").status_code == 200


def _serve_with_its_roles(data_dir: Path, stderr: Any) -> tuple[subprocess.Popen[bytes], list[int]]:
    """`vendwatch serve` with the default roles, healthy, and the pids of its role processes."""
    port = _free_port()
    proc = subprocess.Popen(vendwatch_cmd("serve", "--data-dir", str(data_dir), "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=stderr)
    _wait("serve healthy", lambda: _healthy(port), timeout=90)
    _wait("every role process started", lambda: len(_children(proc.pid)) >= 6, timeout=60)
    return proc, _children(proc.pid)


def test_a_sigkilled_serve_leaves_no_role_process_behind(data_dir: Path) -> None:
    proc, kids = _serve_with_its_roles(data_dir, subprocess.DEVNULL)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        _wait("role processes gone", lambda: not any(_alive(k) for k in kids), timeout=10)
    finally:
        proc.kill()
        proc.wait()


def test_serve_stopped_with_sigterm_stops_its_role_processes(data_dir: Path, tmp_path: Path) -> None:
    with (tmp_path / "serve.log").open("wb") as log:
        proc, kids = _serve_with_its_roles(data_dir, log)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal it handled
        assert not any(_alive(k) for k in kids)
        err = (tmp_path / "serve.log").read_text()
        assert "Traceback" not in err and "stopped (" not in err, err  # stopped on purpose, not a crash
    finally:
        proc.kill()
        proc.wait()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_frozen_role_process_is_reported_by_healthz_until_it_answers_again(
        data_dir: Path, monkeypatch: Any) -> None:
    import vendwatch.procs

    monkeypatch.setattr(vendwatch.procs, "SILENT_AFTER_S", 3.0)
    with running(data_dir, roles=("collector", "console", "detector"), **{"server.role_processes": True}) as h:
        procs = h.ctx.extras["role_processes"]
        _wait("detector process reporting", lambda: h.client.get("/healthz").status_code == 200
              and "detector" in procs.pids())
        pid = procs.pids()["detector"]
        os.kill(pid, signal.SIGSTOP)  # frozen: neither working nor reporting, but not dead
        try:
            _wait("healthz 503", lambda: h.client.get("/healthz").status_code == 503, timeout=30)
            body = h.client.get("/healthz").json()
            assert "has not reported" in body["stages"]["detector"], body
        finally:
            os.kill(pid, signal.SIGCONT)
        _wait("healthy again", lambda: h.client.get("/healthz").status_code == 200, timeout=30)
        assert procs.pids()["detector"] == pid  # not restarted: it was never dead


def test_merged_metrics_sum_counters_keep_gauges_by_maximum_and_carry_a_dead_process_counts() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.metrics_core import GaugeMetricFamily

    from vendwatch.config import load_settings
    from vendwatch.procs import RoleProcesses

    procs = RoleProcesses(load_settings(environ={}), ["detector", "router"])
    det, rou = procs.children["detector"], procs.children["router"]
    det.metrics = _raw([("vendwatch_stage_records", "counter", "records",
                         [("vendwatch_stage_records_total", {"stage": "x"}, 5.0)]),
                        ("vendwatch_detect_devices", "gauge", "devices", [("vendwatch_detect_devices", {}, 7.0)]),
                        ("process_cpu_seconds", "counter", "cpu", [("process_cpu_seconds_total", {}, 2.0)])])
    rou.metrics = _raw([("vendwatch_stage_records", "counter", "records",
                         [("vendwatch_stage_records_total", {"stage": "x"}, 3.0)]),
                        ("vendwatch_detect_devices", "gauge", "devices", [("vendwatch_detect_devices", {}, 0.0)])])
    own = GaugeMetricFamily("vendwatch_detect_devices", "devices", value=1.0)

    def sample(name: str, **labels: str) -> float | None:
        for fam in text_string_to_metric_families(generate_latest(_Reg(procs, [own])).decode()):
            for s in fam.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return None

    assert sample("vendwatch_stage_records_total", stage="x") == 8.0
    assert sample("vendwatch_detect_devices") == 7.0  # a gauge: the process that has the devices
    assert sample("process_cpu_seconds_total", role="detector") == 2.0
    procs._carry(det)  # the detector process died; its successor starts from zero
    det.metrics = _raw([("vendwatch_stage_records", "counter", "records",
                         [("vendwatch_stage_records_total", {"stage": "x"}, 1.0)])])
    assert sample("vendwatch_stage_records_total", stage="x") == 9.0  # 5 + 1 + 3: never goes back


def _raw(families: list[Any]) -> Any:
    import msgspec

    return msgspec.Raw(msgspec.json.encode(families))


class _Reg:
    def __init__(self, procs: Any, own: list[Any]) -> None:
        self.procs, self.own = procs, own

    def collect(self) -> Any:
        return self.procs.collect(self.own)


def test_every_shipped_configuration_reaches_a_role_process_unchanged() -> None:
    """A role process gets the server's settings as JSON on its standard input."""
    import msgspec

    from vendwatch.config import Settings, load_settings

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "deploy" / "config").glob("*.toml"))
    assert files
    for f in files:
        s = load_settings(f, environ={})
        assert msgspec.json.decode(msgspec.json.encode(s), type=Settings) == s, f.name


def test_a_role_that_cannot_start_says_why_in_one_line_and_healthz_names_it(
        data_dir: Path, tmp_path: Path, monkeypatch: Any) -> None:
    # what the settings check before the start cannot see (e.g. a resource gone at start)
    from tests.ingest_support import inject_into_role_processes

    inject_into_role_processes(monkeypatch, tmp_path / "inject", (
        "import vendwatch.detect.role as r\n"
        "def build(ctx):\n"
        "    raise OSError('rule store unreachable')\n"
        "r.build = build\n"))
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(vendwatch_cmd("serve", "--data-dir", str(data_dir), "--port", str(port)),
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            def detector_named() -> bool:
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                except httpx.HTTPError:
                    return False
                return r.status_code == 503 and "detector" in r.json().get("stages", {})

            _wait("healthz names the detector", detector_named, timeout=90)
            body = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            assert "times in a row (exit code 1)" in body["stages"]["detector"], body
            # the other stages and the collector go on
            assert set(body["stages"]) == {"detector"}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    text = log.read_text()
    assert "role detector cannot start: OSError: rule store unreachable" in text
    assert "Traceback" not in text


def test_a_role_process_logs_through_the_servers_stderr(data_dir: Path, monkeypatch: Any) -> None:
    """`vendwatch demo`'s live view replaces sys.stderr to print log lines above itself: the
    role processes' lines must take that way too, not write to the terminal underneath."""
    import io
    import sys

    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    with running(data_dir, roles=("collector", "console", "lake-writer"), **{"server.role_processes": True}) as h:
        _wait("the lake writer's first line", lambda: "[lake-writer@" in captured.getvalue(), timeout=60)
        assert "lake writer assigned events/0" in captured.getvalue()
        assert h.client.get("/healthz").status_code == 200
