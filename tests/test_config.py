"""Settings: file + VENDWATCH_* environment, validated at start, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.config import ConfigError, load_settings


def test_defaults_file_env_and_overrides_in_order(tmp_path: Path) -> None:
    f = tmp_path / "vw.toml"
    f.write_text('data_dir = "/from/file"\n[ingest]\nmax_batch_events = 50\nrate_limit_burst = 10.0\n')
    s = load_settings(f, {"ingest.rate_limit_burst": 99.0},
                      {"VENDWATCH_INGEST__MAX_BATCH_EVENTS": "70", "VENDWATCH_BUS__PARTITIONS": "8"})
    assert s.data_dir == "/from/file"
    assert s.ingest.max_batch_events == 70  # env beats file
    assert s.ingest.rate_limit_burst == 99.0  # flags beat env
    assert s.bus.partitions == 8
    assert load_settings(environ={}).ingest.max_body_bytes == 1_048_576


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"VENDWATCH_INGEST__MAX_BATCH_EVENTS": "lots"}, "ingest.max_batch_events"),
        ({"VENDWATCH_INGEST__MAX_BATCH_EVENTS": "0"}, "ingest.max_batch_events"),
        ({"VENDWATCH_INGEST__MAX_BODY_BYTES": "-1"}, "ingest.max_body_bytes"),
        ({"VENDWATCH_INGEST__NO_SUCH_KEY": "1"}, "no_such_key"),
        ({"VENDWATCH_BUS__BACKEND": "redis"}, "bus.backend"),
        ({"VENDWATCH_SERVER__PORT": "70000"}, "server.port"),
        ({"VENDWATCH_INGEST__AUTH_CACHE_S": "-2"}, "ingest.auth_cache_s"),
        ({"VENDWATCH_INGEST__DEDUPE_WINDOW_S": "1e9"}, "ingest.dedupe_window_s"),
        ({"VENDWATCH_BUS__RETENTION_HOURS": "1"}, "ingest.dedupe_window_s"),
    ],
)
def test_errors_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(environ=env)
    assert key in str(e.value)


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})
    f = tmp_path / "bad.toml"
    f.write_text("[ingest\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings(f, environ={})
    f.write_text("[ingest]\nmax_future_skew_s = \"soon\"\n")
    with pytest.raises(ConfigError, match="ingest.max_future_skew_s"):
        load_settings(f, environ={})


def test_cli_reports_config_error_with_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENDWATCH_INGEST__MAX_BATCH_EVENTS", "many")
    r = CliRunner().invoke(cli, ["devices", "list", "--data-dir", str(tmp_path)], obj=Env(None, {}))
    assert r.exit_code != 0
    assert "ingest.max_batch_events" in r.stderr
