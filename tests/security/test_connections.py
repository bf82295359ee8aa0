"""Idle and half-open connections cannot take the listener down (issue 10, item 5).

Against a real ``vendwatch serve`` on loopback: the attacker's sockets come from
127.0.0.2, the health probes from 127.0.0.1 (loopback answers on all of 127/8).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
from tests.security.served import serve

ATTACKER = "127.0.0.2"


def _idle_sockets(port: int, n: int, send: bytes = b"") -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        s.bind((ATTACKER, 0))
        s.connect(("127.0.0.1", port))
        if send:
            s.sendall(send)  # a request that never finishes its headers (slow-loris)
        out.append(s)
    return out


def _closed_by_server(s: socket.socket) -> bool:
    try:
        s.settimeout(0.05)
        data = s.recv(1024)
        return data == b"" or data.startswith(b"HTTP/1.1 503")
    except TimeoutError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_idle_connections_are_closed_and_health_answers_meanwhile(data_dir: Path) -> None:
    env = {"VENDWATCH_SERVER__HEADER_TIMEOUT_S": "2", "VENDWATCH_SERVER__MAX_CONNECTIONS": "600",
           "VENDWATCH_SERVER__MAX_CONNECTIONS_PER_CLIENT": "0"}
    with serve(data_dir, **env) as srv:
        socks = _idle_sockets(srv.port, 500) + _idle_sockets(srv.port, 300, b"GET /healthz HTTP/1.1\r\nHo")
        try:
            time.sleep(0.5)  # the server has accepted them all: more than max_connections are open
            # liveness is never refused for load; a supervisor must not restart a busy server
            assert httpx.get(srv.url + "/livez", timeout=5).status_code == 200
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if all(_closed_by_server(s) for s in socks):
                    break
                time.sleep(0.5)
            open_left = sum(1 for s in socks if not _closed_by_server(s))
            assert open_left == 0, f"{open_left} idle connections still open after the header timeout"
            assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200
        finally:
            for s in socks:
                s.close()


def test_one_address_cannot_use_up_the_connections(data_dir: Path) -> None:
    env = {"VENDWATCH_SERVER__MAX_CONNECTIONS": "400", "VENDWATCH_SERVER__MAX_CONNECTIONS_PER_CLIENT": "100"}
    with serve(data_dir, **env) as srv:
        socks = _idle_sockets(srv.port, 1000)
        try:
            time.sleep(0.5)
            refused = sum(1 for s in socks if _closed_by_server(s))
            assert refused >= 900
            for path in ("/livez", "/healthz"):
                assert httpx.get(srv.url + path, timeout=5).status_code == 200, path
        finally:
            for s in socks:
                s.close()
