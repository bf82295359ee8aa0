"""What an operator sees when a command cannot do its job: one clear line, a non-zero
exit, never a traceback (missing extras, busy port, bad paths, bad settings, bad CSV)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import vendwatch_cmd
from tests.ingest_support import ago, event, running
from tests.test_device_state import _run_projector

SCALE_HINT = "pip install 'vendwatch[scale]'"

# Runs the CLI with some modules made unimportable, as on an install without the
# extra: sys.modules[name] = None makes `import name` raise ModuleNotFoundError.
_BLOCKED_RUNNER = textwrap.dedent("""
    import sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None
    sys.argv = ["vendwatch", *sys.argv[2:]]
    from vendwatch.cli.main import main
    main()
""")


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd)


def _without(modules: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-c", _BLOCKED_RUNNER, modules, *args], env=env, timeout=timeout)


def _assert_clear_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    for n in needles:
        assert n in out, out


# -- item 6: missing extras ---------------------------------------------------------


def test_db_migrate_without_psycopg_names_the_extra(data_dir: Path) -> None:
    proc = _without("psycopg,psycopg_pool", "db", "migrate", "--data-dir", str(data_dir),
                    env={"VENDWATCH_STATE__BACKEND": "postgres"})
    _assert_clear_failure(proc, SCALE_HINT, "psycopg")


def test_bus_init_without_confluent_kafka_names_the_extra(data_dir: Path) -> None:
    proc = _without("confluent_kafka", "bus", "init", env={"VENDWATCH_BUS__BACKEND": "kafka",
                                                          "VENDWATCH_DATA_DIR": str(data_dir)})
    _assert_clear_failure(proc, SCALE_HINT, "confluent_kafka")


def test_mqtt_bridge_without_paho_names_the_extra(data_dir: Path) -> None:
    proc = _without("paho,paho.mqtt", "run", "mqtt-bridge", "--data-dir", str(data_dir), timeout=30)
    _assert_clear_failure(proc, SCALE_HINT, "paho")


def test_kafka_role_without_confluent_kafka_fails_fast_instead_of_restarting(data_dir: Path) -> None:
    started = time.monotonic()
    proc = _without("confluent_kafka", "run", "detector", "--data-dir", str(data_dir),
                    env={"VENDWATCH_BUS__BACKEND": "kafka"}, timeout=30)
    _assert_clear_failure(proc, SCALE_HINT)
    assert "restarting" not in proc.stderr
    assert time.monotonic() - started < 20


# -- item 8: CLI details ------------------------------------------------------------


def test_serve_on_a_busy_port_fails_before_claiming_to_serve(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _run(vendwatch_cmd("serve", "--data-dir", str(data_dir), "--port", str(port)), timeout=30)
    _assert_clear_failure(proc, f"127.0.0.1:{port}", "already in use")
    assert "serving on" not in proc.stderr + proc.stdout


def test_data_dir_with_missing_parents_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "typo" / "deeper" / "data"
    proc = _run(vendwatch_cmd("devices", "list", "--data-dir", str(target)))
    _assert_clear_failure(proc, "does not exist")
    assert not (tmp_path / "typo").exists()


def test_data_dir_whose_parent_exists_is_created(tmp_path: Path) -> None:
    proc = _run(vendwatch_cmd("devices", "list", "--data-dir", str(tmp_path / "fresh")))
    assert proc.returncode == 0, proc.stderr


def test_unknown_log_level_is_refused_naming_the_key(data_dir: Path) -> None:
    proc = _run(vendwatch_cmd("devices", "list", "--data-dir", str(data_dir)), env={"VENDWATCH_LOG_LEVEL": "verbose"})
    _assert_clear_failure(proc, "VENDWATCH_LOG_LEVEL", "verbose")
    flag = _run(vendwatch_cmd("--log-level", "loud", "devices", "list", "--data-dir", str(data_dir)))
    _assert_clear_failure(flag, "--log-level", "loud")
    ok = _run(vendwatch_cmd("--log-level", "DEBUG", "devices", "list", "--data-dir", str(data_dir)))
    assert ok.returncode == 0, ok.stderr


def test_import_reports_every_bad_row(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "fleet.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device_id", "site_id", "heartbeat_interval_s"])
        w.writerow(["VM-1", "S1", "60"])
        w.writerow(["bad id!", "S1", "60"])  # line 3
        w.writerow(["VM-2", "S1", "often"])  # line 4
        w.writerow(["VM-1", "S1", "60"])  # line 5: duplicate
    proc = _run(vendwatch_cmd("devices", "import", str(path), "--data-dir", str(data_dir)))
    _assert_clear_failure(proc, "line 3", "line 4", "line 5", "nothing was imported")


def test_show_commands_print_iso_times(data_dir: Path) -> None:
    from vendwatch.cli.common import iso_times

    doc = {"last_seen_at": 1764437479.25, "timeline": [{"at": 1764437479, "kind": "opened"}],
           "count": 3, "opened_at": None}
    out = iso_times(doc)
    assert out["last_seen_at"] == "2025-11-29T17:31:19.250Z"
    assert out["timeline"][0]["at"] == "2025-11-29T17:31:19.000Z"
    assert out["count"] == 3 and out["opened_at"] is None
    # and the command really prints them, for a machine the pipeline has seen
    with running(data_dir) as h:
        h.add_device("VM-1", "SITE-1")
        assert h.post("VM-1", [event("VM-1", "heartbeat", {"uptime_s": 5}, occurred_at=ago(minutes=1))]).status_code == 200
    _run_projector(data_dir, 1)
    proc = _run(vendwatch_cmd("devices", "show", "VM-1", "--data-dir", str(data_dir)))
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    stamps = [v for k, v in _walk(shown) if k.endswith("_at") and v is not None]
    assert stamps, shown
    assert all(isinstance(v, str) and v.endswith("Z") and "T" in v for v in stamps), shown


def _walk(doc: object) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((k, v))
            out += _walk(v)
    elif isinstance(doc, list):
        for v in doc:
            out += _walk(v)
    return out


# -- item 7: simulator against an unreachable collector -------------------------------


def test_simulator_against_a_closed_port_says_connection_refused(data_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    proc = _run(vendwatch_cmd("simulate", "--url", f"http://127.0.0.1:{port}", "--data-dir", str(data_dir),
                              "--devices", "3", "--speed", "600", "--duration", "2", "--drain-timeout", "1"),
                timeout=60)
    _assert_clear_failure(proc, "connection refused")
    summary = json.loads(proc.stdout)
    assert summary["events_acked"] == 0
    assert summary["events_unsent"] > 0
    # the give-up message counts what the summary counts
    assert f"gave up on {summary['events_unsent']} unsent events" in proc.stderr, proc.stderr


def test_readme_mentions_the_scale_extra() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert SCALE_HINT in readme


def test_a_rule_file_that_does_not_load_stops_serve_run_and_demo_at_once(tmp_path: Path) -> None:
    """Before: `serve` in one process printed a traceback; with role processes the detector
    crash-looped while the rest served. Now every command stops before it serves."""
    data = tmp_path / "data"
    data.mkdir()
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - id: [unclosed\n")
    env = {"VENDWATCH_DETECT__RULE_FILES": json.dumps([str(bad)])}
    for processes in ("true", "false"):
        r = _run(vendwatch_cmd("serve", "--data-dir", str(data), "--port", str(_free_port())),
                 env={**env, "VENDWATCH_SERVER__ROLE_PROCESSES": processes}, timeout=60)
        assert r.returncode == 1, (processes, r.stderr[-2000:])
        assert "Error: detect.rule_files:" in r.stderr and "rules.yaml" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "serving on" not in r.stderr, r.stderr[-2000:]
    r = _run(vendwatch_cmd("run", "detector", "--data-dir", str(data)), env=env, timeout=60)
    assert r.returncode == 1 and "Error: detect.rule_files:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _run(vendwatch_cmd("demo", "--data-dir", str(data), "--duration", "5", "--devices", "2"), env=env, timeout=60)
    assert r.returncode == 1 and "detect.rule_files:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_lake_catalog_that_cannot_exist_stops_serve_and_run_at_once(tmp_path: Path) -> None:
    """Before: the lake writer and lake jobs crash-looped, printing a SQLAlchemy traceback
    every restart, while `serve` claimed to serve. A local SQLite catalog in a directory
    that does not exist is a setting to fix, not a fault to retry."""
    data = tmp_path / "data"
    data.mkdir()
    env = {"VENDWATCH_LAKE__CATALOG__URI": f"sqlite:///{tmp_path}/missing/dir/catalog.db"}
    for processes in ("true", "false"):
        r = _run(vendwatch_cmd("serve", "--data-dir", str(data), "--port", str(_free_port())),
                 env={**env, "VENDWATCH_SERVER__ROLE_PROCESSES": processes}, timeout=60)
        assert r.returncode == 1, (processes, r.stderr[-2000:])
        assert "Error: lake.catalog.uri:" in r.stderr and "missing/dir" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "serving on" not in r.stderr, r.stderr[-2000:]
    for role in ("lake-writer", "lake-jobs"):
        r = _run(vendwatch_cmd("run", role, "--data-dir", str(data)), env=env, timeout=60)
        assert r.returncode == 1 and "Error: lake.catalog.uri:" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr, r.stderr[-2000:]


def test_an_unreachable_lake_catalog_is_one_line_per_retry_while_the_rest_serves(tmp_path: Path) -> None:
    """A catalog on a server that does not answer (yet) may come back: the lake roles retry
    with backoff and say why in one line each time, never with a traceback, and the
    collector keeps accepting events meanwhile."""
    data = tmp_path / "data"
    data.mkdir()
    port = _free_port()
    closed = _free_port()  # nothing listens there
    env = {**os.environ, "VENDWATCH_LAKE__CATALOG__URI": f"postgresql+psycopg://u:s3cret-pw@127.0.0.1:{closed}/lake",
           "VENDWATCH_LAKE__ETL_INTERVAL_S": "1"}
    for processes in ("true", "false"):
        env["VENDWATCH_SERVER__ROLE_PROCESSES"] = processes
        proc = subprocess.Popen(vendwatch_cmd("serve", "--data-dir", str(data), "--port", str(port)),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            health = ""
            while time.monotonic() < deadline:
                time.sleep(0.5)
                try:
                    import httpx

                    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text
                except httpx.HTTPError:
                    continue
                if "lake-writer" in health and "catalog" in health:
                    break
            time.sleep(3)  # a few retries
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
        assert "lake-writer" in health and "catalog" in health, (processes, health, err[-3000:])
        assert "Traceback" not in err, (processes, err[-5000:])
        assert "s3cret-pw" not in err + health, "the catalog password stays out of logs and /healthz"
        lines = [ln for ln in err.splitlines() if "lake-writer" in ln and "catalog" in ln]
        assert lines and all(f"127.0.0.1:{closed}" in ln or "lake.catalog" in ln for ln in lines), err[-3000:]
        assert any("retrying in" in ln for ln in lines), err[-3000:]


def test_an_unreachable_state_database_or_kafka_stops_serve_and_run_with_one_line(tmp_path: Path) -> None:
    """PostgreSQL or Kafka not answering at start: serve and run wait server.startup_wait_s,
    saying once per attempt what they wait for, then stop with the setting and the reason;
    never a traceback, never the password."""
    closed = _free_port()  # nothing listens there
    cases = {
        "state.postgres_dsn": {"VENDWATCH_STATE__BACKEND": "postgres",
                               "VENDWATCH_STATE__POSTGRES_DSN": f"postgresql://vw:s3cret-pw@127.0.0.1:{closed}/vw"},
        "bus.kafka.bootstrap_servers": {"VENDWATCH_BUS__BACKEND": "kafka",
                                        "VENDWATCH_BUS__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{closed}",
                                        "VENDWATCH_BUS__KAFKA__SASL_PASSWORD": "s3cret-pw"},
    }
    for setting, extra in cases.items():
        env = {**extra, "VENDWATCH_SERVER__STARTUP_WAIT_S": "7"}
        for args in (["serve", "--port", str(_free_port())], ["run", "detector"]):
            started = time.monotonic()
            r = _run(vendwatch_cmd(*args, "--data-dir", str(tmp_path / "data")), env=env, timeout=60)
            took = time.monotonic() - started
            assert r.returncode == 1, (setting, args, r.returncode, r.stderr[-3000:])
            assert "Traceback" not in r.stderr, (setting, args, r.stderr[-5000:])
            assert "s3cret-pw" not in r.stderr + r.stdout
            assert "serving on" not in r.stderr, "nothing claims to serve before its backends answer"
            waits = [ln for ln in r.stderr.splitlines() if ln.startswith("waiting for")]
            assert waits and all(setting in ln and f"{closed}" in ln for ln in waits), r.stderr[-3000:]
            last = r.stderr.strip().splitlines()[-1]
            assert last.startswith(f"Error: {setting}:") and f"{closed}" in last, last
            assert took < 30, took
            assert len(r.stderr.splitlines()) < 20, "one line per attempt, not the driver's own per connection"


def test_a_role_whose_database_goes_away_logs_one_line_per_restart(caplog) -> None:  # type: ignore[no-untyped-def]
    """A backend that stops answering while a role runs is retried with one line per
    attempt: the driver's traceback would say nothing more, at every retry."""
    import logging
    import threading

    from vendwatch.bus import LogUnavailable
    from vendwatch.config import Settings
    from vendwatch.runtime import Context, Supervisor
    from vendwatch.state.postgres import DatabaseUnavailable

    for exc in (DatabaseUnavailable("cannot connect to PostgreSQL (host=db port=5432): refused"),
                LogUnavailable("cannot reach Kafka at k:9092: timed out")):
        calls = threading.Semaphore(0)

        class Failing:
            name = "device-state"

            def run(self, stop: threading.Event, exc: Exception = exc, calls: threading.Semaphore = calls) -> None:
                calls.release()
                raise exc

        ctx = Context(Settings())
        sup = Supervisor(ctx, [Failing()])
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="vendwatch.runtime"):
            sup.start()
            assert calls.acquire(timeout=10) and calls.acquire(timeout=10)  # restarted once at least
            ctx.stop.set()
            for t in sup.threads:
                t.join(10)
        lines = [r for r in caplog.records if "device-state" in r.getMessage()]
        assert lines and all(r.exc_info is None for r in lines), [r.getMessage() for r in lines]
        assert all(str(exc) in r.getMessage() and "retrying in" in r.getMessage() for r in lines)
