"""``vendwatch quarantine list`` reads the rejected topic, newest first."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from tests.ingest_support import event, running

from vendwatch.cli.common import Env
from vendwatch.cli.main import cli


def _vw(data_dir: Path, *args: str) -> str:
    r = CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir)], obj=Env(None, {}), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def test_quarantine_list(data_dir: Path) -> None:
    with running(data_dir) as h:
        h.add_device("VM-1")
        h.add_device("VM-2")
        hot = event("VM-1", "telemetry", {"cabinet_temp_c": 900})
        h.post("VM-1", [hot, event("VM-2"), event("VM-1")])
        h.post("VM-2", [event("VM-2", event_id="x" * 200)])
        for i in range(30):
            h.post("VM-1", [event("VM-1", "fault", {"code": f"BAD CODE {i}"})])
    rows = json.loads(_vw(data_dir, "quarantine", "list", "--json", "--limit", "100"))
    assert len(rows) == 33
    assert rows[0]["raw"]["data"]["code"] == "BAD CODE 29"  # newest first
    mine = json.loads(_vw(data_dir, "quarantine", "list", "--json", "--code", "device_mismatch"))
    assert [r["raw"]["device_id"] for r in mine] == ["VM-2"]
    assert mine[0]["device_id"] == "VM-1"
    assert len(json.loads(_vw(data_dir, "quarantine", "list", "--json", "--device", "VM-2"))) == 1
    assert len(json.loads(_vw(data_dir, "quarantine", "list", "--json", "--limit", "5"))) == 5
    text = _vw(data_dir, "quarantine", "list", "--code", "schema", "--limit", "40")
    assert "cabinet_temp_c" in text and "DEVICE_ID" in text.splitlines()[0]
    assert hot["event_id"] in text
