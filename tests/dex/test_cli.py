"""``vendwatch dex import``: handheld files, any order, stored once, refused ones quarantined."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from click.testing import CliRunner
from tests.dex.files import file
from tests.ingest_support import read_all, settings

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.events import decode_stored
from vendwatch.runtime import Context


def _run(data_dir: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir)], obj=Env(None, {}))


def test_import_in_read_order_once_and_refuse_bad_crc(data_dir: Path, tmp_path: Path) -> None:
    ctx = Context(settings(data_dir))
    ctx.state.add_device("VM-1", "SITE-1")
    ctx.close()
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    a, b = tmp_path / "a.dex", tmp_path / "b.dex"
    a.write_bytes(file(t, {"A1": (10, 1500)}))
    b.write_bytes(file(t + timedelta(days=1), {"A1": (13, 1950)}))
    r = _run(data_dir, "dex", "import", str(b), str(a), "--device", "VM-1", "--json")  # newest given first
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(Path(x["file"]).name, x["verdict"], x["findings"]) for x in rows] == [
        ("a.dex", "accepted", "first_read"), ("b.dex", "accepted", None)]
    r = _run(data_dir, "dex", "import", str(a), str(b), "--device", "VM-1", "--json")
    assert [x["verdict"] for x in json.loads(r.stdout)] == ["duplicate", "duplicate"]
    bad = tmp_path / "bad.dex"
    bad.write_bytes(b.read_bytes().replace(b"PA2*13*1950", b"PA2*13*1951"))
    r = _run(data_dir, "dex", "import", str(bad), "--device", "VM-1")
    assert r.exit_code == 1 and "G85 integrity check failed" in r.output and "1 of 1 file(s) refused" in r.output
    r = _run(data_dir, "dex", "import", str(a), "--device", "VM-404")
    assert r.exit_code == 1 and "unknown device 'VM-404'" in r.output
    ctx = Context(settings(data_dir))
    stored = [decode_stored(v) for v in read_all(ctx.log, EVENTS)]  # type: ignore[arg-type]
    sales = [msgspec.json.decode(e.data) for e in stored if e.type == "dex_sales"]
    assert [(s["slot"], s["units"]) for s in sales] == [("A1", 3)]
    (q,) = [msgspec.json.decode(v) for v in read_all(ctx.log, REJECTED)]  # type: ignore[arg-type]
    assert q["code"] == "dex_crc_mismatch"
    ctx.close()
