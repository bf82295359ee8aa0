"""A real Mosquitto broker per test, configured from files `export-mosquitto` wrote."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import service_missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if path is None:
        service_missing("mosquitto", "the mosquitto binary is not installed; run scripts/services.sh up")
    return str(path)


@contextmanager
def mosquitto(passwords: Path, acl: Path, workdir: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Start Mosquitto on a free loopback port with this password file and ACL."""
    binary = mosquitto_binary()
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "per_listener_settings false\nallow_anonymous false\n"
        f"password_file {passwords}\nacl_file {acl}\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
        f"listener {port} 127.0.0.1\n"
        # as root, mosquitto would switch to its own user and lose access to tmp files
        "user root\n"
    )
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start: " + (workdir / "mosquitto.log").read_text()) from None
                time.sleep(0.05)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
