"""Role processes for multi-process tests: `vendwatch run ROLE` with scale-out settings."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from tests.conftest import vendwatch_cmd
from tests.contract.kafka_backend import kafka_address
from tests.contract.pg_backend import fresh_schema
from tests.scale.mqtt_broker import free_port


def scaleout_env(dsn: str, topic_prefix: str, partitions: int = 4, **more: str) -> dict[str, str]:
    """Environment selecting Kafka + PostgreSQL for every vendwatch process of a test."""
    return {
        "VENDWATCH_BUS__BACKEND": "kafka",
        "VENDWATCH_BUS__KAFKA__BOOTSTRAP_SERVERS": kafka_address(),
        "VENDWATCH_BUS__KAFKA__TOPIC_PREFIX": topic_prefix,
        "VENDWATCH_BUS__KAFKA__PARTITIONS": str(partitions),
        "VENDWATCH_BUS__KAFKA__SESSION_TIMEOUT_MS": "6000",
        "VENDWATCH_STATE__BACKEND": "postgres",
        "VENDWATCH_STATE__POSTGRES_DSN": dsn,
        **more,
    }


@contextmanager
def scaleout_env_fresh(partitions: int = 4) -> Iterator[dict[str, str]]:
    import uuid

    with fresh_schema() as dsn:
        yield scaleout_env(dsn, f"vwe2e.{uuid.uuid4().hex[:8]}.", partitions)


class Role:
    """One `vendwatch run ROLE` process; output goes to a log file for post-mortems."""

    def __init__(self, role: str, env: dict[str, str], workdir: Path, name: str | None = None,
                 http: bool = False) -> None:
        """``role`` "serve" runs the embedded all-in-one process instead of one role."""
        self.role = role
        self.name = name or role
        self.port = free_port() if http else None
        args = (["serve"] if role == "serve" else ["run", role]) + ["--data-dir", str(workdir / "data")]
        if self.port:
            args += ["--port", str(self.port)]
        self.logfile = workdir / f"{self.name}.log"
        self._out = self.logfile.open("wb")
        self.proc = subprocess.Popen(vendwatch_cmd(*args), env={**os.environ, **env}, stdout=self._out,
                                     stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.logfile.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy: {self.logfile.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no leaving the group (a crash)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()

    def output(self) -> str:
        return self.logfile.read_text(errors="replace")
