"""The log archive: the platform's lines and the machines' log events in the lake, read back
by `vendwatch logs` and by SQL with the same result; crash dumps in full."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import vendwatch_cmd
from tests.ingest_support import event, running

from vendwatch.lake.query import LakeSQL
from vendwatch.observe.logs import role_context, subject

DUMP = "".join(f"#{i} 0x{0x400000 + i:08x} in frame_{i} () at vend.c:{i}\n" for i in range(1200))  # ~55 KB (the protocol allows 64 KiB)
FORGED = "motor\n2026-11-29T10:00:00.000Z ERROR vendwatch.delivery: forged"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(vendwatch_cmd(*args), capture_output=True, text=True, timeout=180,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return out


def _wait(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "not archived in time"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A running platform (collector + lake writer) that logged errors and received a crash dump."""
    data = tmp_path_factory.mktemp("archive") / "data"
    with running(data, roles=("collector", "console", "lake-writer"),
                 **{"lake.batch_max_wait_s": 0.2, "log_archive_level": "info"}) as h:
        h.add_device("VM-CRASH")
        r = h.post("VM-CRASH", [event("VM-CRASH", "log", {"kind": "crash", "level": "critical",
                                                          "message": "vmc-app terminated by SIGSEGV",
                                                          "crash_dump": DUMP}),
                                event("VM-CRASH", "log", {"kind": "startup", "message": "restarted"})])
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
        log = logging.getLogger("vendwatch.delivery")
        with role_context("orchestrator"):
            for i in range(3):
                log.error("delivery to servicenow failed (key fault/VM-CRASH/%s) #%d", FORGED, i,
                          extra=subject(device_id="VM-CRASH", incident_id=f"inc_{i}"))
            log.info("an ordinary line")
        sql = LakeSQL(h.ctx.settings)

        def done() -> bool:
            try:
                errs = sql.run("SELECT count(*) AS n FROM raw.system_logs WHERE level = 'error'").rows()[0]["n"]
                dumps = sql.run("SELECT count(*) AS n FROM raw.events WHERE type = 'log'").rows()[0]["n"]
            except Exception:  # noqa: BLE001 - tables appear with the first commit
                return False
            return errs >= 3 and dumps == 2

        _wait(done)
    return data


def test_logs_level_error_and_sql_return_the_same_lines(archived: Path) -> None:
    cli = _cli("logs", "--data-dir", str(archived), "--level", "error", "--json")
    lines = [json.loads(x) for x in cli.stdout.splitlines()]
    via_sql = json.loads(_cli("sql", "--data-dir", str(archived), "--format", "json",
                              "SELECT ts, level, role, msg, device_id, incident_id FROM raw.system_logs"
                              " WHERE level IN ('error', 'critical') ORDER BY ts, log_partition, log_offset").stdout)
    rows = via_sql["rows"] if isinstance(via_sql, dict) else via_sql
    assert [(x["msg"], x["role"], x["incident_id"]) for x in lines] == \
           [(x["msg"], x["role"], x["incident_id"]) for x in rows]
    assert sum("failed (key fault/VM-CRASH/motor\n" in x["msg"] for x in lines) == 3
    assert all(x["device_id"] == "VM-CRASH" for x in lines if "VM-CRASH" in x["msg"])


def test_text_output_keeps_a_forged_line_inside_its_own(archived: Path) -> None:
    out = _cli("logs", "--data-dir", str(archived), "--level", "error", "--role", "orchestrator").stdout
    lines = out.splitlines()
    assert len(lines) == 3 and all(" ERROR orchestrator@" in x for x in lines)
    assert all("motor\\n2026-11-29T10:00:00.000Z ERROR" in x for x in lines)
    shown = _cli("logs", "--data-dir", str(archived), "--level", "error", "--show-sql").stdout
    assert "raw.system_logs" in shown


def test_a_crash_dump_is_readable_in_full(archived: Path) -> None:
    out = _cli("logs", "--data-dir", str(archived), "--device", "VM-CRASH", "--json")
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    crash = [r for r in rows if r["kind"] == "crash"]
    assert len(crash) == 1 and crash[0]["crash_dump"] == DUMP and len(DUMP) > 50_000
    text = _cli("logs", "--data-dir", str(archived), "--device", "VM-CRASH", "--level", "critical").stdout
    assert text.count("\n  | #") == 1200  # every frame, each on its own marked line
    _cli("etl", "run", "--data-dir", str(archived))
    via_sql = json.loads(_cli("sql", "--data-dir", str(archived), "--format", "json",
                              "SELECT crash_dump FROM analytics.device_logs WHERE kind = 'crash'").stdout)
    rows = via_sql["rows"] if isinstance(via_sql, dict) else via_sql
    assert [r["crash_dump"] for r in rows] == [DUMP]


def test_bad_filters_are_usage_errors(archived: Path) -> None:
    out = subprocess.run(vendwatch_cmd("logs", "--data-dir", str(archived), "--since", "yesterday-ish"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--since" in out.stderr and "Traceback" not in out.stderr


def _via_logs(data: Path, level: str) -> list[tuple[str, str, str]]:
    out = _cli("logs", "--data-dir", str(data), "--level", level, "--limit", "100000", "--json")
    return [(x["ts"], x["level"], x["msg"]) for x in map(json.loads, out.stdout.splitlines())]


def _via_sql(data: Path, levels: str) -> list[tuple[str, str, str]]:
    out = _cli("sql", "--data-dir", str(data), "--format", "json", "--limit", "100000",
               f"SELECT ts, level, msg FROM raw.system_logs WHERE level IN ({levels})"
               " ORDER BY ts, log_partition, log_offset")
    doc = json.loads(out.stdout)
    return [(str(r["ts"]), r["level"], r["msg"]) for r in (doc["rows"] if isinstance(doc, dict) else doc)]


def test_after_a_demo_logs_and_sql_return_the_same_lines(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    # every line archived (the default keeps warnings and above), so the comparison has lines
    _cli("demo", "--data-dir", str(data), "--devices", "5", "--duration", "6", env={"VENDWATCH_LOG_ARCHIVE_LEVEL": "info"})
    info = _via_logs(data, "info")
    assert any("serving roles" in msg for _, _, msg in info)  # the demo's own start line is archived
    assert [m for _, _, m in info] == [m for _, _, m in _via_sql(data, "'info', 'warning', 'error', 'critical'")]
    errors = _via_logs(data, "error")
    assert [m for _, _, m in errors] == [m for _, _, m in _via_sql(data, "'error', 'critical'")]
