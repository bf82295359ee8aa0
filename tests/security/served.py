"""A real ``vendwatch serve`` subprocess on loopback, for tests of the listener's guards."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from tests.conftest import vendwatch_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, logfile: Path) -> None:
        self.proc, self.port, self.logfile = proc, port, logfile
        self.url = f"http://127.0.0.1:{port}"

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")[-4000:]


@contextmanager
def serve(data_dir: Path, roles: str = "collector", **env: str) -> Iterator[Served]:
    """``vendwatch serve`` with ``VENDWATCH_...`` overrides in ``env``; killed at exit."""
    port = free_port()
    logfile = data_dir.parent / f"serve-{port}.log"
    with logfile.open("wb") as out:
        proc = subprocess.Popen(vendwatch_cmd("serve", "--data-dir", str(data_dir), "--port", str(port),
                                              "--roles", roles),
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    served = Served(proc, port, logfile)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited: {served.log()}")
            try:
                if httpx.get(served.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {served.log()}")
            time.sleep(0.1)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
