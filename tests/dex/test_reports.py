"""DEX reports over a real lake: raw files table, reconciliation, cash, food safety, findings as events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.testclient import TestClient
from tests.dex.files import file
from tests.ingest_support import read_all
from tests.lake.conftest import drain, make_settings
from tests.lake.factory import publish, sale, stored

from vendwatch import events as ev
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.dex.intake import judge, remember
from vendwatch.dex.publish import publish_findings
from vendwatch.dex.store import DexStore
from vendwatch.ingest.sink import open_sink
from vendwatch.lake.api import routes
from vendwatch.lake.dex_reports import Window, findings, run_dex_report
from vendwatch.lake.query import LakeSQL
from vendwatch.runtime import Context

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(days=3)
T1 = T0 + timedelta(days=1)


def _ingest(ctx: Context, store: DexStore, raw: bytes) -> None:
    device = ctx.state.get_device("dev-1")
    assert device is not None
    j = judge(raw, device, ctx.settings.ingest, store, ev.utcnow())
    open_sink(ctx.log, ctx.settings).commit(j.accepted, j.quarantine)
    remember(j, device, store)


def _temp(at: datetime, c: float, door: bool = False) -> ev.StoredEvent:
    return stored("telemetry", ev.Telemetry(refrigeration_temp_c=c, door_open=door), at=at)


def test_reports_from_dex_and_telemetry(tmp_path: Path) -> None:
    ctx = Context(make_settings(tmp_path / "data"))
    for t in (EVENTS, REJECTED):
        ctx.log.create_topic(t)
    ctx.state.add_device("dev-1", "site-a")
    store = DexStore(ctx.state.db)
    # read 1 (baseline), read 2 a day later: slot A1 sold 6 by the counters, telemetry saw 4
    _ingest(ctx, store, file(T0, {"A1": (100, 15000)}, to_box=50_000))
    second = file(T1, {"A1": (106, 15900)}, to_box=50_900)
    _ingest(ctx, store, second)
    _ingest(ctx, store, second.replace(b"PA2*106", b"PA2*107"))  # refused: bad CRC
    publish(ctx.log, [sale(T0 + timedelta(hours=h), price=150, txid=f"t{h}") for h in (1, 2, 3, 4)])
    publish(ctx.log, [stored("refill", ev.Refill(visit_id="v1", cash_collected_minor=600), at=T1 + timedelta(minutes=3))])
    # a 40-minute cooling episode (door closed, two sales during it) and a 5-minute loading blip
    ep = T0 + timedelta(hours=10)
    publish(ctx.log, [_temp(ep - timedelta(minutes=1), 4.0)]
            + [_temp(ep + timedelta(minutes=m), 5.5 + m / 10) for m in range(0, 40, 2)]
            + [_temp(ep + timedelta(minutes=40), 4.5)]
            + [sale(ep + timedelta(minutes=m), price=150, txid=f"fs{m}") for m in (5, 20)])
    visit = T0 + timedelta(hours=20)
    publish(ctx.log, [stored("refill", ev.Refill(visit_id="v0"), at=visit),
                      _temp(visit + timedelta(minutes=1), 6.0, door=True), _temp(visit + timedelta(minutes=5), 4.0)])
    drain(ctx)
    s = ctx.settings

    files = run_dex_report(s, "dex-files").rows()
    assert [(f["verdict"], f["findings"]) for f in files] == [("accepted", "first_read"), ("accepted", None),
                                                              ("refused", None)]
    assert files[1]["file"].encode("latin-1") == second and "G85 integrity check failed" in files[2]["reason"]

    (rec,) = run_dex_report(s, "dex-reconciliation").rows()
    # 4 sales + the 2 during the cooling episode: the counters agree with telemetry
    assert (rec["slot"], rec["dex_units"], rec["telemetry_units"], rec["finding"]) == ("A1", 6, 6, None)
    cash = run_dex_report(s, "cash-accountability").rows()
    assert [(c["expected_minor"], c["collected_minor"], c["finding"]) for c in cash] == [(900, 600, "cash_shortfall")]

    (fs,) = run_dex_report(s, "food-safety", site="site-a").rows()
    assert fs["duration_min"] == 40.0 and fs["door"] == "closed" and not fs["after_service_visit"]
    assert fs["peak_c"] == 9.3 and fs["sales_during"] == 2 and fs["ongoing"] is False
    assert run_dex_report(s, "food-safety", site="site-b").rows() == []
    assert run_dex_report(s, "food-safety", limits={"dev-1": 10.0}).rows() == []

    # over HTTP (the console's printable page reads this) and from the CLI, as CSV
    app = Starlette(routes=routes(ctx))
    viewer = {"Authorization": f"Bearer {ctx.state.add_operator_token('v', 'viewer')}"}
    with TestClient(app) as c:
        names = [r["name"] for r in c.get("/v1/reports", headers=viewer).json()["reports"]]
        assert {"food-safety", "dex-files", "dex-reconciliation", "cash-accountability"} <= set(names)
        r = c.get(f"/v1/reports/food-safety?since={T0.date()}&site=site-a&format=csv", headers=viewer)
        assert r.status_code == 200 and r.text.splitlines()[0].startswith('"site_id","device_id","limit_c","start"')
        assert len(r.text.splitlines()) == 2
        assert c.get("/v1/reports/food-safety?since=yesterday", headers=viewer).status_code == 400
    res = CliRunner().invoke(cli, ["report", "food-safety", "--from", str(T0.date()), "--to", str(NOW.date()),
                                   "--site", "site-a", "--format", "csv", "--data-dir", s.data_dir],
                             obj=Env(None, {}))
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 2, res.output
    res = CliRunner().invoke(cli, ["report", "revenue", "--site", "site-a", "--data-dir", s.data_dir], obj=Env(None, {}))
    assert res.exit_code == 2 and "--site and --visit apply to" in res.output

    found = findings(LakeSQL(s), Window())
    assert [f.kind for f in found] == ["cash_shortfall"]
    assert publish_findings(ctx, found) == (1, 0)
    assert publish_findings(ctx, found) == (0, 1)  # re-running adds nothing
    kinds = [msgspec.json.decode(ev.decode_stored(v).data)["kind"] for v in read_all(ctx.log, EVENTS)  # type: ignore[arg-type]
             if ev.decode_stored(v).type == "dex_finding"]
    assert kinds == ["cash_shortfall"]
    ctx.close()
