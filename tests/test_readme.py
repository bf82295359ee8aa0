"""The README's "Send an event yourself" block, run as written (on a free port), prints what
the README says it prints."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_an_event_yourself(tmp_path: Path) -> None:
    block = _block("Send an event yourself")
    port = _free_port()
    expected = re.search(r"^# (\{.*?\})", block, re.M).group(1)  # type: ignore[union-attr]
    # the same commands, on a free port, then the same event again (the README says: duplicates 1)
    script = block.replace("8080", str(port))
    post = re.search(r"^curl -s .*?\}\]\}'$", script, re.S | re.M).group(0)  # type: ignore[union-attr]
    script = f"set -e\n{script}\necho\n{post}\necho\nkill %1\nwait\n"
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "VENDWATCH_LOG_LEVEL": "warning",
           "VENDWATCH_SERVER__PORT": str(port)}
    # its own session: on a timeout the whole group (the backgrounded server too) is stopped
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"README block did not finish: {out[-2000:]} {err[-2000:]}") from None
    assert proc.returncode in (0, 143), err[-3000:]
    assert expected in out, out
    assert expected.replace('"duplicates":0', '"duplicates":1').replace('"accepted":1', '"accepted":0') in out, out
    shown = json.loads(out[out.index('{\n'):out.rindex("}") + 1].split("\n}\n")[0] + "\n}")
    assert shown["device_id"] == "VM-0001" and shown["site_id"] == "SITE-1"
    assert (tmp_path / "vendwatch-data").is_dir()  # the default data dir, as the README says
