"""Logging: settings honoured, JSON lines with role/replica/ids, text lines injection-safe."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path

import pytest

from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.observe.logs import setup_logging

FORGED = "motor\n2026-11-29T10:00:00.000Z ERROR vendwatch.delivery: ServiceNow credentials leaked"


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> None:
    with contextlib.suppress(SystemExit):
        cli.main([*args, "schema", "--help"], prog_name="vendwatch", standalone_mode=False, obj=Env(None, {}))
    capsys.readouterr()


def test_text_log_keeps_device_text_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text")
    log = logging.getLogger("vendwatch.delivery")
    log.warning("delivery failed (key %s)", f"fault/VM-0001/{FORGED}", extra={"component": FORGED})
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "\\n2026-11-29" in err  # the newline is shown, escaped, inside the one line
    assert "\x1b" not in err


def test_text_log_escapes_terminal_controls_and_traceback_lines_are_marked(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text")
    log = logging.getLogger("vendwatch.x")
    try:
        raise ValueError(FORGED + "\x1b[2J")
    except ValueError:
        log.exception("sink crashed on %s", "VM-1\r\x1b[31m")
    lines = capsys.readouterr().err.splitlines()
    assert "\\r\\x1b[31m" in lines[0]
    # every line after the first belongs to the traceback and is marked as such
    assert all(line.startswith("  | ") for line in lines[1:]), lines
    assert not any(line.startswith("2026-11-29T10:00:00.000Z") for line in lines)


def test_json_log_survives_values_json_cannot_hold(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    logging.getLogger("vendwatch.x").error(
        "odd extras", extra={"path": Path("/data/x"), "ids": {"a"}, "big": 10**30, "lock": threading.Lock()})
    err = capsys.readouterr().err
    assert "Logging error" not in err
    line = json.loads(err)
    assert line["msg"] == "odd extras" and line["path"] == "/data/x" and line["level"] == "error"
    assert line["big"] == 10**30 and line["ids"] == ["a"] and "lock" in line["lock"]


def test_json_lines_carry_role_replica_and_subject_ids(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vendwatch.observe import logs
    from vendwatch.runtime import Context, Supervisor

    monkeypatch.setenv("VENDWATCH_REPLICA", "detector-7f9c-2")
    monkeypatch.setitem(logs._identity, "replica", "")
    setup_logging("info", "json")

    class Comp:
        name = "detector"

        def run(self, stop: threading.Event) -> None:
            logging.getLogger("vendwatch.detect").info(
                "signal emitted", extra=logs.subject(device_id="VM-0001", signal_id="sig_1", incident_id=None))
            stop.set()

    from vendwatch.config import load_settings

    ctx = Context(load_settings(overrides={"data_dir": str(tmp_path), "log_archive": False}, environ={}))
    sup = Supervisor(ctx, [Comp()])
    sup.start()
    sup.threads[0].join(5)
    line = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert line["role"] == "detector" and line["replica"] == "detector-7f9c-2"
    assert line["device_id"] == "VM-0001" and line["signal_id"] == "sig_1"
    assert "incident_id" not in line


def test_log_format_and_level_come_from_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VENDWATCH_LOG_FORMAT", raising=False)
    monkeypatch.delenv("VENDWATCH_LOG_LEVEL", raising=False)
    cfg = tmp_path / "vendwatch.toml"
    cfg.write_text('log_format = "json"\nlog_level = "debug"\n')
    _run_cli(capsys, "--config", str(cfg))
    logging.getLogger("vendwatch.x").debug("from the file", extra={"device_id": "VM-2"})
    line = json.loads(capsys.readouterr().err)
    assert line["msg"] == "from the file" and line["device_id"] == "VM-2"


def test_environment_overrides_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "vendwatch.toml"
    cfg.write_text('log_format = "json"\nlog_level = "debug"\n')
    monkeypatch.setenv("VENDWATCH_LOG_FORMAT", "text")
    monkeypatch.setenv("VENDWATCH_LOG_LEVEL", "warning")
    _run_cli(capsys, "--config", str(cfg))
    log = logging.getLogger("vendwatch.x")
    log.info("hidden")
    log.warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and " WARNING vendwatch.x" in err and not err.startswith("{")


def test_bad_log_level_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    from vendwatch.config import ConfigError, load_settings

    cfg = tmp_path / "vendwatch.toml"
    cfg.write_text('log_level = "loud"\n')
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(cfg, environ={})
