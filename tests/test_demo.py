"""``vendwatch demo`` end to end, as a user runs it: fresh data dir, then the same one again."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from tests.conftest import vendwatch_cmd


def _demo(data_dir: Path, summary: Path, *extra: str) -> tuple[dict, str]:
    proc = subprocess.run(
        vendwatch_cmd("demo", "--data-dir", str(data_dir), "--summary-json", str(summary), "--devices", "100", *extra),
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(summary.read_text()), proc.stderr


@pytest.mark.slow
def test_demo_acks_every_event_once_and_reuses_its_fleet(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s, err = _demo(data, tmp_path / "s1.json", "--duration", "20")
    assert s["events_acked"] > 0
    assert s["events_acked"] == s["events_in_log"] and s["duplicate_events_in_log"] == 0
    assert s["devices_seen"] > 0 and s["devices_seen"] <= 100
    assert s["events_sent"] >= s["events_acked"] and s["events_rejected"] == 0
    assert s["drained"] is True and all(v == 0 for v in s["stage_lag"].values())
    assert sum(s["faults_injected"].values()) > 0
    # every part's figures are there (a hook that fails or is missing must fail the demo test)
    assert "hook_errors" not in s, s.get("hook_errors")
    assert sum(s["signals_fired"].values()) > 0 and s["signals_total"] >= sum(s["signals_fired"].values())
    assert s["incidents_opened"] > 0 and s["incidents_open"] <= s["incidents_opened"]
    assert s["dlq_depth"] == 0
    # the lake holds every acked event once, and the events derived from DEX audit files
    # (counted apart: no device sent them as events)
    assert s["raw_events_rows"] == s["events_in_log"] + s["dex_events_in_log"]
    assert s["lake_tables"] >= 2 and s["lake_data_files"] > 0
    assert "100 newly registered" in err
    tokens = data / "fleet" / "tokens.csv"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert len(tokens.read_text().splitlines()) == 101

    # the same data dir again, with the ServiceNow emulator
    again, err = _demo(data, tmp_path / "s2.json", "--duration", "4", "--no-faults", "--servicenow-emulator")
    assert "0 newly registered" in err
    assert again["events_acked"] > 0 and again["events_acked"] == again["events_in_log"]
    assert again["faults_injected"] == {}
    assert "ServiceNow emulator at http" in err
    assert "hook_errors" not in again, again.get("hook_errors")
    assert again["raw_events_rows"] == s["raw_events_rows"] + again["events_in_log"] + again["dex_events_in_log"]


def test_demo_tuning_applies_only_to_present_keys_left_at_default() -> None:
    import msgspec

    from vendwatch.demo import demo_tuning

    class Lake(msgspec.Struct):
        batch_max_wait_s: float = 30.0

    class Settings(msgspec.Struct):
        lake: object

    assert demo_tuning(Settings(lake=Lake())) == {"lake.batch_max_wait_s": 5.0}  # type: ignore[arg-type]
    assert demo_tuning(Settings(lake=Lake(batch_max_wait_s=60))) == {}  # type: ignore[arg-type]
    assert demo_tuning(Settings(lake={})) == {}  # type: ignore[arg-type]


def test_stage_lag_reads_every_checkpoint_format_and_group_offsets(tmp_path: Path) -> None:
    import msgspec

    from vendwatch.config import load_settings
    from vendwatch.demo import stage_lag
    from vendwatch.runtime import Context

    ctx = Context(load_settings(overrides={"data_dir": str(tmp_path), "bus.partitions": 2}, environ={}))
    try:
        ctx.log.create_topic("events")
        ctx.log.append("events", [(f"VM-{i}", b"{}") for i in range(40)])
        end = ctx.log.end_offsets("events")
        st = ctx.state
        # whole-map JSON (one row per stage), fully caught up
        st.save_checkpoint("offsets:vendwatch-a", msgspec.json.encode({f"events/{p}": o for p, o in end.items()}))
        # one row per partition holding an integer, 3 behind on partition 0
        st.save_checkpoint("offsets:vendwatch-b:events/0", str(end[0] - 3).encode())
        st.save_checkpoint("offsets:vendwatch-b:events/1", str(end[1]).encode())
        # one msgpack row per partition with an offset field, and a row of another shape
        st.save_checkpoint("detect:vendwatch-c:events/0", msgspec.msgpack.encode({"offset": end[0], "clock": 1.0}))
        st.save_checkpoint("detect:vendwatch-c:events/1", msgspec.msgpack.encode({"offset": end[1] - 1}))
        st.save_checkpoint("detect:vendwatch-c:sites", msgspec.msgpack.encode([1, 2]))
        st.save_checkpoint("offsets:vendwatch-b:signals/0", b"999")
        # a stage known only by its consumer group: behind by its whole partition 1
        c = ctx.log.consumer("vendwatch-lake-writer", ["events"])
        c.commit({("events", 0): end[0]})
        c.close()
        begin = ctx.log.begin_offsets("events")
        lags = stage_lag(ctx, ["lake-writer"])
        assert lags == {"vendwatch-a": 0, "vendwatch-b": 3, "vendwatch-c": 1,
                        "vendwatch-lake-writer": end[1] - begin[1]}
    finally:
        ctx.close()
