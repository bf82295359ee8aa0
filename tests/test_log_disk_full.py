"""Disk full: every write fails with 503 naming the real cause, and /healthz says so.

A real full filesystem, without root: the child process runs under a file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so a write past it fails with ``EFBIG``
instead of killing the process), which SQLite reports as it reports a full disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

_CHILD = textwrap.dedent('''
    import json, os, resource, signal, sys
    from pathlib import Path
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from tests.ingest_support import event, running
    data_dir = Path(sys.argv[1])
    out = {"statuses": [], "health": []}
    with running(data_dir) as h:
        h.add_device("VM-1", "SITE-1")
        assert h.post("VM-1", [event("VM-1")]).status_code == 200
        out["health_before"] = h.client.get("/healthz").status_code
        size = sum(p.stat().st_size for p in data_dir.iterdir())
        limit = max(p.stat().st_size for p in data_dir.iterdir()) + 300_000
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        pad = "x" * 3000
        for i in range(60):
            r = h.post("VM-1", [event("VM-1", "log", {"kind": "application", "message": pad}) for _ in range(30)])
            out["statuses"].append(r.status_code)
            if r.status_code != 200:
                out["error"] = r.json()
                hz = h.client.get("/healthz")
                out["health"].append([hz.status_code, hz.json()])
                break
    print("RESULT " + json.dumps(out))
''')


def test_disk_full_gives_503_with_the_cause_and_healthz_reports_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", _CHILD, str(data_dir)], cwd=root, capture_output=True, text=True,
                       timeout=180)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, p.stdout[-3000:] + p.stderr[-5000:]
    out = json.loads(lines[0][len("RESULT "):])
    assert out["health_before"] == 200
    statuses = out["statuses"]
    assert statuses[-1] == 503, (statuses, p.stderr[-3000:])  # not 500
    assert set(statuses[:-1]) <= {200}
    err = out["error"]["error"]
    assert err["code"] == "log_unavailable"
    assert "rollback" not in err["message"].lower()  # the cause, not a failed cleanup masking it
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    [(hz_status, hz)] = out["health"]
    assert hz_status == 503, hz
    assert "write" in json.dumps(hz).lower()
