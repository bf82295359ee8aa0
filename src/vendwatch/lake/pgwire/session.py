"""One client connection: startup, password, simple and extended query.

The extended protocol is served in text format: ``Parse`` keeps the statement,
``Bind`` substitutes the parameters as SQL literals (strings quoted, doubled
quotes; numbers checked), ``Describe``/``Execute`` run it once and reuse the
result. After an error, messages are skipped until ``Sync`` (as PostgreSQL does).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import secrets
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from vendwatch.lake.pgwire import messages as m
from vendwatch.lake.pgwire.backend import LakeBackend, Result, SqlFailure
from vendwatch.observe.logs import subject

log = logging.getLogger("vendwatch.lake.pgwire")

_PARAM = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\$(\d+))""", re.S)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_NUMERIC_OIDS = {m.INT2, m.INT4, m.INT8, m.FLOAT4, m.FLOAT8, m.NUMERIC, 26}

Authenticate = Callable[[str, str], Awaitable[str | None]]  # (user, password) -> refusal or None


def bind_params(sql: str, values: list[bytes | None], oids: list[int]) -> str:
    """``$n`` placeholders outside quotes and comments replaced by SQL literals."""

    def lit(i: int) -> str:
        if i < 1 or i > len(values):
            raise SqlFailure("08P01", f"bind message supplies {len(values)} parameters, the query uses ${i}")
        v = values[i - 1]
        if v is None:
            return "NULL"
        text = v.decode("utf-8", "replace")
        oid = oids[i - 1] if i - 1 < len(oids) else 0
        if oid in _NUMERIC_OIDS:
            if not _NUMBER.match(text.strip()):
                raise SqlFailure("22P02", f"invalid input for a numeric parameter: {text[:40]!r}")
            return text.strip()
        if oid == m.BOOL:
            return "TRUE" if text.lower() in ("t", "true", "1", "yes", "on") else "FALSE"
        return "'" + text.replace("\x00", "").replace("'", "''") + "'"

    return _PARAM.sub(lambda mt: lit(int(mt.group(2))) if mt.group(2) else mt.group(1), sql)


_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def binary_to_text(raw: bytes, oid: int) -> bytes:
    """A parameter sent in binary format (drivers do for numbers and dates) as its text form."""
    try:
        if oid == m.BOOL:
            return b"t" if raw == b"\x01" else b"f"
        if oid in (m.INT2, m.INT4, m.INT8):
            return str(int.from_bytes(raw, "big", signed=True)).encode()
        if oid == m.FLOAT4:
            return repr(struct.unpack("!f", raw)[0]).encode()
        if oid == m.FLOAT8:
            return repr(struct.unpack("!d", raw)[0]).encode()
        if oid == m.NUMERIC:
            return _numeric(raw).encode()
        if oid == m.DATE:
            return (_PG_EPOCH.date() + dt.timedelta(days=struct.unpack("!i", raw)[0])).isoformat().encode()
        if oid in (m.TIMESTAMP, m.TIMESTAMPTZ):
            at = _PG_EPOCH + dt.timedelta(microseconds=struct.unpack("!q", raw)[0])
            return (at.isoformat() if oid == m.TIMESTAMPTZ else at.replace(tzinfo=None).isoformat()).encode()
        if oid in (0, m.TEXT, m.VARCHAR, 1042, 19, m.JSON):
            return raw
    except (struct.error, ValueError, OverflowError):
        raise SqlFailure("22P03", f"invalid binary parameter for type {oid}") from None
    raise SqlFailure("0A000", f"binary parameters of type {oid} are not supported; send them as text")


def _numeric(raw: bytes) -> str:
    ndigits, weight, sign, dscale = struct.unpack("!hhHh", raw[:8])
    digits = struct.unpack(f"!{ndigits}H", raw[8:8 + 2 * ndigits])
    if sign == 0xC000:
        return "NaN"
    value = 0
    for d in digits:
        value = value * 10000 + d
    exp = (weight - ndigits + 1) * 4  # value * 10^exp
    text = str(value) + "0" * exp if exp >= 0 else _shift(value, -exp)
    return ("-" if sign == 0x4000 else "") + text


def _shift(value: int, places: int) -> str:
    s = str(value).rjust(places + 1, "0")
    return s[:-places] + "." + s[-places:]


@dataclass
class _Statement:
    sql: str
    oids: list[int]


@dataclass
class _Portal:
    sql: str
    result: Result | None = None
    sent_rows: bool = False


@dataclass
class Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    backend: LakeBackend
    authenticate: Authenticate
    tls: ssl.SSLContext | None = None
    require_tls: bool = False
    idle_timeout_s: float = 600.0
    user: str = ""
    in_tx: bool = False
    failed_tx: bool = False
    statements: dict[str, _Statement] = field(default_factory=dict)
    portals: dict[str, _Portal] = field(default_factory=dict)

    # -- I/O ----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read_exact(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), self.idle_timeout_s)

    async def _read_message(self) -> tuple[bytes, bytes]:
        head = await self._read_exact(5)
        kind, length = head[:1], struct.unpack("!I", head[1:])[0]
        if length < 4 or length > m.MAX_MESSAGE:
            raise m.ProtocolError(f"message of {length} bytes")
        return kind, await self._read_exact(length - 4)

    # -- startup ------------------------------------------------------------------
    async def startup(self) -> bool:
        """Negotiate TLS, read the startup packet, check the password. True: ready for queries."""
        encrypted = False
        while True:
            length = struct.unpack("!I", await self._read_exact(4))[0]
            if length < 8 or length > m.MAX_STARTUP:
                raise m.ProtocolError("bad startup packet length")
            body = await self._read_exact(length - 4)
            code = struct.unpack("!I", body[:4])[0]
            if code == m.SSL_REQUEST and not encrypted:
                if self.tls is None:
                    self.send(b"N")
                    await self.writer.drain()
                    continue
                self.send(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.tls)
                encrypted = True
                continue
            if code == m.GSS_REQUEST:
                self.send(b"N")
                await self.writer.drain()
                continue
            if code == m.CANCEL_REQUEST:
                return False  # queries are bounded by the sandbox timeout; nothing to cancel
            if code != m.PROTOCOL_V3:
                self.send(m.error("0A000", f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}", "FATAL"))
                return False
            break
        if self.require_tls and not encrypted:
            self.send(m.error("28000", "this server accepts TLS connections only (sslmode=require)", "FATAL"))
            return False
        params = m.startup_params(body[4:])
        self.user = params.get("user", "")
        self.send(m.auth_cleartext())
        await self.writer.drain()
        kind, body = await self._read_message()
        if kind != b"p":
            raise m.ProtocolError("expected a password message")
        password = m.Reader(body).cstr()
        refusal = await self.authenticate(self.user, password)
        if refusal is not None:
            self.send(m.error("28P01", refusal, "FATAL"))
            return False
        self.send(m.auth_ok())
        for k, v in (("server_version", "15.0"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
                     ("DateStyle", "ISO, MDY"), ("TimeZone", "UTC"), ("integer_datetimes", "on"),
                     ("standard_conforming_strings", "on"), ("is_superuser", "off"),
                     ("default_transaction_read_only", "on"), ("in_hot_standby", "off"),
                     ("application_name", params.get("application_name", "")),
                     ("session_authorization", self.user)):
            self.send(m.parameter_status(k, v))
        self.send(m.backend_key(secrets.randbelow(2**31), secrets.randbelow(2**31)))
        self.send(m.ready(b"I"))
        await self.writer.drain()
        return True

    # -- queries ------------------------------------------------------------------
    def _status(self) -> bytes:
        return b"E" if self.failed_tx else (b"T" if self.in_tx else b"I")

    def _track(self, tag: str) -> None:
        if tag == "BEGIN":
            self.in_tx = True
        elif tag in ("COMMIT", "ROLLBACK"):
            self.in_tx = self.failed_tx = False

    async def _run(self, sql: str) -> Result:
        if self.failed_tx and sql.strip().lower().rstrip(";") not in ("rollback", "abort", "commit", "end"):
            raise SqlFailure("25P02", "current transaction is aborted, commands ignored until end of transaction block")
        res = await asyncio.to_thread(self.backend.execute, sql)
        self._track(res.tag)
        return res

    def _fail(self, e: SqlFailure) -> None:
        if self.in_tx:
            self.failed_tx = True
        self.send(m.error(e.code, str(e)))

    def _send_result(self, res: Result, describe: bool) -> None:
        for text in res.notices:
            self.send(m.notice(text))
        if res.table is None:
            self.send(m.command_complete(res.tag) if res.tag else m.empty_query())
            return
        if describe:
            self.send(m.row_description(res.table.schema))
        for row in m.data_rows(res.table):
            self.send(row)
        self.send(m.command_complete(res.tag))

    async def simple_query(self, body: bytes) -> None:
        sql = m.Reader(body).cstr()
        parts = _split(sql)
        if not parts:
            self.send(m.empty_query())
        for part in parts:
            try:
                res = await self._run(part)
            except SqlFailure as e:
                self._fail(e)
                break
            self._send_result(res, describe=True)
            await self.writer.drain()
        self.send(m.ready(self._status()))

    async def serve(self) -> None:
        """Read messages until Terminate or disconnect."""
        skipping = False  # after an error in the extended protocol: until Sync
        while True:
            kind, body = await self._read_message()
            if kind == b"X":
                return
            if kind == b"Q":
                skipping = False
                await self.simple_query(body)
            elif kind == b"S":
                skipping = False
                self.send(m.ready(self._status()))
            elif kind == b"H":
                pass
            elif skipping:
                continue
            else:
                try:
                    await self._extended(kind, body)
                except SqlFailure as e:
                    self._fail(e)
                    skipping = True
            await self.writer.drain()

    async def _extended(self, kind: bytes, body: bytes) -> None:
        r = m.Reader(body)
        if kind == b"P":
            name, sql = r.cstr(), r.cstr()
            n = r.int16()
            oids = [r.int32() for _ in range(max(0, n))]
            self.statements[name] = _Statement(sql, oids)
            self.send(m.parse_complete())
        elif kind == b"B":
            portal, stmt_name = r.cstr(), r.cstr()
            stmt = self._statement(stmt_name)
            fmts = [r.int16() for _ in range(max(0, r.int16()))]
            values: list[bytes | None] = []
            for i in range(max(0, r.int16())):
                size = r.int32()
                raw = None if size < 0 else r.bytes_(size)
                if raw is not None and (fmts[i] if len(fmts) > 1 else (fmts[0] if fmts else 0)) == 1:
                    raw = binary_to_text(raw, stmt.oids[i] if i < len(stmt.oids) else 0)
                values.append(raw)
            results = [r.int16() for _ in range(max(0, r.int16()))]
            if any(f == 1 for f in results):
                raise SqlFailure("0A000", "binary results are not supported; use text format")
            self.portals[portal] = _Portal(bind_params(stmt.sql, values, stmt.oids))
            self.send(m.bind_complete())
        elif kind == b"D":
            what, name = r.bytes_(1), r.cstr()
            if what == b"S":
                stmt = self._statement(name)
                count = len({int(x) for x in re.findall(r"\$(\d+)", stmt.sql)})
                self.send(m.parameter_description([stmt.oids[i] if i < len(stmt.oids) and stmt.oids[i] else m.TEXT
                                                   for i in range(count)]))
                res = await self._run(bind_params(stmt.sql, [None] * count, stmt.oids))
            else:
                portal = self._portal(name)
                res = portal.result = portal.result or await self._run(portal.sql)
            self.send(m.row_description(res.table.schema) if res.table is not None else m.no_data())
        elif kind == b"E":
            name = r.cstr()
            portal = self._portal(name)
            res = portal.result or await self._run(portal.sql)
            portal.result = None  # executed: a second Execute runs it again
            self._send_result(res, describe=False)
        elif kind == b"C":
            what, name = r.bytes_(1), r.cstr()
            (self.statements if what == b"S" else self.portals).pop(name, None)
            self.send(m.close_complete())
        elif kind == b"F":
            raise SqlFailure("0A000", "the function call protocol is not supported")
        elif kind in (b"d", b"c", b"f"):
            raise SqlFailure("0A000", "COPY is not supported: the endpoint is read-only")
        else:
            raise m.ProtocolError(f"unexpected message {kind!r}")

    def _statement(self, name: str) -> _Statement:
        if name not in self.statements:
            raise SqlFailure("26000", f'prepared statement "{name}" does not exist')
        return self.statements[name]

    def _portal(self, name: str) -> _Portal:
        if name not in self.portals:
            raise SqlFailure("34000", f'portal "{name}" does not exist')
        return self.portals[name]


def _split(sql: str) -> list[str]:
    """Statements of a simple query (semicolons outside quotes and comments)."""
    out, start = [], 0
    for mt in re.finditer(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|;""", sql, re.S):
        if mt.group() == ";":
            out.append(sql[start:mt.start()])
            start = mt.end()
    out.append(sql[start:])
    return [s for s in out if s.strip()]


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: LakeBackend,
                 authenticate: Authenticate, tls: ssl.SSLContext | None, require_tls: bool,
                 idle_timeout_s: float) -> None:
    """Serve one connection to the end; protocol errors close it with a FATAL error."""
    peer = writer.get_extra_info("peername")
    s = Session(reader, writer, backend, authenticate, tls, require_tls, idle_timeout_s)
    try:
        if await s.startup():
            log.info("sql client connected", extra=subject(user=s.user, peer=str(peer)))
            await s.serve()
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError):
        pass
    except m.ProtocolError as e:
        try:
            s.send(m.error("08P01", f"protocol violation: {e}", "FATAL"))
            await writer.drain()
        except ConnectionError:
            pass
    except Exception:
        log.exception("sql session failed", extra=subject(user=s.user, peer=str(peer)))
        try:
            s.send(m.error("XX000", "internal error; the server log has the details", "FATAL"))
            await writer.drain()
        except ConnectionError:
            pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
