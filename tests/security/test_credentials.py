"""Credentials: bounded rotation grace, private files (issue 10, item 10)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from tests.conftest import vendwatch_cmd
from tests.ingest_support import settings

from vendwatch.runtime import Context
from vendwatch.state.store import RegistryError


def _cli(data_dir: Path, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vendwatch_cmd(*args, "--data-dir", str(data_dir)), capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: os.umask(umask))


@pytest.mark.parametrize("grace", ["nan", "inf", "-inf", "1e15", "-1"])
def test_rotate_secret_refuses_unbounded_grace(data_dir: Path, grace: str) -> None:
    assert _cli(data_dir, "devices", "add", "VM-1").returncode == 0
    r = _cli(data_dir, "devices", "rotate-secret", "VM-1", "--grace", grace)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--grace" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("grace", [float("nan"), float("inf"), 1e15, -1.0])
def test_registry_refuses_unbounded_grace(data_dir: Path, grace: float) -> None:
    ctx = Context(settings(data_dir))
    try:
        old = ctx.state.add_device("VM-1", "S1")
        with pytest.raises(RegistryError, match="grace"):
            ctx.state.rotate_device_token("VM-1", grace)
        assert ctx.state.authenticate_device(old) is not None  # nothing changed
    finally:
        ctx.close()


def test_old_token_expires_after_the_grace(data_dir: Path) -> None:
    now = [1000.0]
    ctx = Context(settings(data_dir))
    try:
        ctx.state.clock = lambda: now[0]
        old = ctx.state.add_device("VM-1", "S1")
        new = ctx.state.rotate_device_token("VM-1", 60)
        assert ctx.state.authenticate_device(old) is not None
        now[0] += 61
        assert ctx.state.authenticate_device(old) is None and ctx.state.authenticate_device(new) is not None
    finally:
        ctx.close()


def _loose(path: Path) -> list[str]:
    """Paths under ``path`` (itself included) that group or others can read, write or enter."""
    out = []
    for p in [path, *path.rglob("*")]:
        if stat.S_IMODE(p.stat().st_mode) & 0o077:
            out.append(f"{p.relative_to(path.parent)} {oct(stat.S_IMODE(p.stat().st_mode))}")
    return out


def test_data_dir_and_token_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"  # created by vendwatch itself
    assert _cli(data, "devices", "add", "VM-1").returncode == 0
    csv_in = tmp_path / "fleet.csv"
    csv_in.write_text("device_id,site_id\nVM-2,S1\nVM-3,S1\n")
    tokens = tmp_path / "tokens.csv"
    r = _cli(data, "devices", "import", str(csv_in), "--tokens-out", str(tokens))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert _loose(data) == []
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600


def test_an_existing_loose_data_dir_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    assert _cli(data, "devices", "add", "VM-1").returncode == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
