"""The demo's terminal view: URL, sign-in token and phase always on screen, short lines,
and an end summary with next steps instead of a page of JSON."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

from tests.conftest import vendwatch_cmd

from vendwatch.demo_display import DemoDisplay, Snapshot, end_summary, phase, progress_line

URL = "http://127.0.0.1:8080"
TOKEN = "vwo_" + "x" * 43


def _snap(**kw: object) -> Snapshot:
    base = dict(elapsed_s=12, phase=phase(1000.0, 4000.0, 60), sim_time="2026-11-29 17:00", rate=290.0, sent=5000,
                acked=4990, in_log=4980, devices_seen=200, devices=200, rejected=0, retries=3,
                hooks={"signals_total": 120, "incidents_opened": 14, "signals_fired": {"a": 1, "b": 2}})
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_phase_says_when_the_backlog_is_replayed_and_when_it_is_live() -> None:
    assert phase(1000.0, 4000.0, 60).startswith("catching up: replaying the last 50 min at x60")
    assert phase(4000.0, 4000.2, 60).startswith("live")
    assert phase(4000.0, 4000.0, 1).startswith("live")


def test_terminal_view_keeps_url_token_and_phase_in_one_panel() -> None:
    out = io.StringIO()
    with DemoDisplay(out, URL, TOKEN, "operator", "./vendwatch-data", force_terminal=True, width=100) as d:
        for i in range(5):
            d.show(_snap(acked=4990 + i))
    text = out.getvalue()
    frames = text.count("vendwatch demo")
    assert frames >= 5
    # every redraw moves the cursor back over the previous panel: no pile-up of headers
    assert text.count("\x1b[1A") + text.count("\x1b[2K") > 0
    last = text.split("vendwatch demo")[-1]
    for needle in (URL, TOKEN, "operator token", "catching up", "Ctrl-C"):
        assert needle in last, needle


def test_panel_lines_fit_the_terminal() -> None:
    from rich.console import Console

    d = DemoDisplay(io.StringIO(), URL, TOKEN, "operator", ".")
    con = Console(record=True, width=100, file=io.StringIO())
    con.print(d._render(_snap()))
    lines = con.export_text().splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert len(lines) < 20


def test_log_view_is_one_short_line_per_refresh() -> None:
    line = progress_line(_snap())
    assert len(line) <= 120 and "catching up" in line and "\n" not in line


def test_end_summary_is_short_and_says_what_next() -> None:
    s = {"wall_seconds": 60.2, "devices": 200, "sites": 10, "simulated_seconds": 3600, "events_acked": 5,
         "events_in_log": 5, "duplicate_events_in_log": 0, "devices_seen": 200, "faults_injected": {"a": 2},
         "incidents_opened": 3, "data_dir": "./vendwatch-data", "drained": True}
    lines = end_summary(s, TOKEN, "operator")
    assert len(lines) <= 16
    text = "\n".join(lines)
    assert "each stored once" in text and "Next:" in text and TOKEN in text
    assert "vendwatch serve --data-dir ./vendwatch-data" in text


def test_demo_prints_a_summary_not_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.run(vendwatch_cmd("demo", "--data-dir", str(data), "--devices", "10", "--duration", "3",
                                        "--summary-json", str(tmp_path / "s.json")),
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    token = (data / "fleet" / "console-token").read_text().strip()
    assert f"sign in with the operator token {token}" in proc.stderr
    assert "phase: done" in proc.stderr
    assert "Next:" in proc.stdout and not proc.stdout.lstrip().startswith("{")
    assert len(proc.stdout.splitlines()) <= 16
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["console_role"] == "operator"
    # the token really is an operator token
    from vendwatch.config import load_settings
    from vendwatch.runtime import Context

    ctx = Context(load_settings(overrides={"data_dir": str(data)}, environ={}))
    try:
        who = ctx.state.authenticate_operator(token)
        assert who is not None and who.role == "operator"
    finally:
        ctx.close()
