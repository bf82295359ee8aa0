"""docs/configuration.md lists every setting with its meaning, and is what the code says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configuration_reference_is_current() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == _generator().render(), "run: python scripts/config_reference.py"


def test_every_setting_has_a_meaning() -> None:
    rows = [line for line in _generator().render().splitlines() if line.startswith("| `")]
    assert len(rows) > 100
    missing = [r.split("|")[1].strip() for r in rows if r.rstrip().endswith("|  |")]
    assert missing == []
