"""uvicorn's HTTP protocol with the guards a public listener needs.

Plain uvicorn arms no timer until a first request has completed, buffers request
headers without limit (httptools) and, once ``limit_concurrency`` connections are
open, answers 503 to every request, health probes included. So a few thousand idle
sockets, or headers of a megabyte each, were enough to take the collector down.
This protocol adds, per connection:

* a header-read timeout: the request line and headers must arrive within
  ``server.header_timeout_s`` of the connection opening (or of the previous
  response); otherwise the connection is closed (slow-loris, half-open sockets);
* a cap on the request line + headers (``server.max_header_bytes``): 431 and close;
* a cap on open connections per client address (``server.max_connections_per_client``):
  over it, 503 and close, so one address cannot use up ``server.max_connections``;
* ``/livez`` is never refused for concurrency: it tells a supervisor the process is
  alive, which it is, even when busy (``/healthz`` and ``/readyz`` may be refused:
  they say whether to route traffic here).
"""

from __future__ import annotations

import asyncio
from collections import Counter as _Tally
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vendwatch.api import metrics as m

LIVENESS_PATH = b"/livez"
_REFUSED_HEADERS = m.CONNECTIONS_REFUSED.labels(reason="headers_too_large")
_REFUSED_PER_CLIENT = m.CONNECTIONS_REFUSED.labels(reason="per_client_limit")
_CLOSED_SLOW = m.CONNECTIONS_REFUSED.labels(reason="header_timeout")


class _HeadersTooLarge(Exception):
    pass


class GuardedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol + header-read timeout, header size cap, per-client connection cap.

    The limits are class attributes: ``protocol_class(...)`` makes a configured subclass.
    """

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16_384
    max_connections_per_client: int = 0  # 0: no per-client cap
    _per_client: _Tally[str] = _Tally()

    @classmethod
    def configured(cls, *, header_timeout_s: float, max_header_bytes: int,
                   max_connections_per_client: int) -> type[GuardedHttpProtocol]:
        """A subclass with these limits (and its own per-client tally)."""
        return type("GuardedHttpProtocol", (cls,), {
            "header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes,
            "max_connections_per_client": max_connections_per_client, "_per_client": _Tally(),
        })

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._client_key: str | None = None
        self._too_large = False

    # -- connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections_per_client > 0 and self.client is not None:
            key = str(self.client[0])
            if self._per_client[key] >= self.max_connections_per_client:
                _REFUSED_PER_CLIENT.inc()
                self._refuse(503, b"too many connections from this address")
                return
            self._per_client[key] += 1
            self._client_key = key
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._client_key is not None:
            n = self._per_client[self._client_key] - 1
            if n > 0:
                self._per_client[self._client_key] = n
            else:
                del self._per_client[self._client_key]
            self._client_key = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._too_large or self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._too_large:
                _REFUSED_HEADERS.inc()
                self._refuse(431, b"request line and headers exceed the size limit")
                return
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- parser callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        if self.url.split(b"?", 1)[0] == LIVENESS_PATH:
            limit, self.limit_concurrency = self.limit_concurrency, None
            try:
                super().on_headers_complete()
            finally:
                self.limit_concurrency = limit
        else:
            super().on_headers_complete()

    # -- helpers ----------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge  # httptools turns it into HttpParserCallbackError

    def _arm_header_timer(self) -> None:
        if self.header_timeout_s > 0:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            _CLOSED_SLOW.inc()
            self.transport.close()

    def _refuse(self, status: int, text: bytes) -> None:
        reason = {431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, reason, len(text), text))
        self.transport.close()
