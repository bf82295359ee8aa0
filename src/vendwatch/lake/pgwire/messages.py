"""PostgreSQL v3 protocol messages: framing, the backend messages we send, value text.

Only what read-only clients need: startup, cleartext password, simple and extended
query (text format), errors and notices. Reference: the "Frontend/Backend Protocol"
chapter of the PostgreSQL documentation (message formats).
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterable
from typing import Any

import msgspec
import pyarrow as pa

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSS_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_MESSAGE = 1 << 20  # a query longer than 1 MiB is refused (the sandbox has its own limits)
MAX_STARTUP = 10_000

# type OIDs (pg_type) for the columns we return
BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON, FLOAT4, FLOAT8, VARCHAR = 16, 17, 20, 21, 23, 25, 114, 700, 701, 1043
DATE, TIMESTAMP, TIMESTAMPTZ, NUMERIC = 1082, 1114, 1184, 1700


class ProtocolError(Exception):
    """The client sent something this server cannot read; the connection is closed."""


def _cstr(s: str) -> bytes:
    return s.replace("\x00", "").encode() + b"\x00"


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def auth_ok() -> bytes:
    return message(b"R", struct.pack("!I", 0))


def auth_cleartext() -> bytes:
    return message(b"R", struct.pack("!I", 3))


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", _cstr(name) + _cstr(value))


def backend_key(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!II", pid, secret))


def ready(status: bytes) -> bytes:
    return message(b"Z", status)


def command_complete(tag: str) -> bytes:
    return message(b"C", _cstr(tag))


def empty_query() -> bytes:
    return message(b"I")


def no_data() -> bytes:
    return message(b"n")


def parse_complete() -> bytes:
    return message(b"1")


def bind_complete() -> bytes:
    return message(b"2")


def close_complete() -> bytes:
    return message(b"3")


def parameter_description(oids: Iterable[int]) -> bytes:
    oids = list(oids)
    return message(b"t", struct.pack("!H", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def _fields(severity: str, code: str, text: str, detail: str | None = None) -> bytes:
    out = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(code) + b"M" + _cstr(text)
    if detail:
        out += b"D" + _cstr(detail)
    return out + b"\x00"


def error(code: str, text: str, severity: str = "ERROR") -> bytes:
    return message(b"E", _fields(severity, code, text))


def notice(text: str) -> bytes:
    return message(b"N", _fields("NOTICE", "01000", text))


def oid_for(t: pa.DataType) -> int:
    if pa.types.is_boolean(t):
        return BOOL
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return INT2
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return INT4
    if pa.types.is_integer(t):
        return INT8
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return FLOAT4
    if pa.types.is_floating(t):
        return FLOAT8
    if pa.types.is_decimal(t):
        return NUMERIC
    if pa.types.is_timestamp(t):
        return TIMESTAMPTZ if t.tz else TIMESTAMP
    if pa.types.is_date(t):
        return DATE
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return BYTEA
    if pa.types.is_nested(t):
        return JSON
    return TEXT


def row_description(schema: pa.Schema) -> bytes:
    body = struct.pack("!H", len(schema))
    for f in schema:
        oid = oid_for(f.type)
        size = {BOOL: 1, INT2: 2, INT4: 4, INT8: 8, FLOAT4: 4, FLOAT8: 8, DATE: 4, TIMESTAMP: 8,
                TIMESTAMPTZ: 8}.get(oid, -1)
        # table oid, column number, type oid, size, modifier, format (0 text)
        body += _cstr(f.name) + struct.pack("!IhIhih", 0, 0, oid, size, -1, 0)
    return message(b"T", body)


def text_value(v: Any) -> bytes | None:
    """A value in PostgreSQL's text output format."""
    if v is None:
        return None
    if isinstance(v, bool):
        return b"t" if v else b"f"
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.UTC)
            return v.strftime("%Y-%m-%d %H:%M:%S.%f").encode() + b"+00"
        return v.strftime("%Y-%m-%d %H:%M:%S.%f").encode()
    if isinstance(v, dt.date):
        return v.isoformat().encode()
    if isinstance(v, float):
        return repr(v).replace("inf", "Infinity").replace("nan", "NaN").encode()
    if isinstance(v, (bytes, bytearray)):
        return b"\\x" + bytes(v).hex().encode()
    if isinstance(v, (dict, list)):
        return msgspec.json.encode(v, enc_hook=str)
    return str(v).encode()


def data_rows(table: pa.Table) -> Iterable[bytes]:
    cols = [c.to_pylist() for c in table.columns]
    for i in range(table.num_rows):
        body = struct.pack("!H", len(cols))
        for c in cols:
            v = text_value(c[i])
            body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
        yield message(b"D", body)


# -- reading frontend messages -------------------------------------------------------
class Reader:
    """Cursor over one message body."""

    def __init__(self, body: bytes) -> None:
        self.b, self.i = body, 0

    def cstr(self) -> str:
        end = self.b.find(b"\x00", self.i)
        if end < 0:
            raise ProtocolError("unterminated string")
        s = self.b[self.i:end].decode("utf-8", "replace")
        self.i = end + 1
        return s

    def int16(self) -> int:
        if self.i + 2 > len(self.b):
            raise ProtocolError("truncated message")
        (v,) = struct.unpack_from("!h", self.b, self.i)
        self.i += 2
        return int(v)

    def int32(self) -> int:
        if self.i + 4 > len(self.b):
            raise ProtocolError("truncated message")
        (v,) = struct.unpack_from("!i", self.b, self.i)
        self.i += 4
        return int(v)

    def bytes_(self, n: int) -> bytes:
        if n < 0 or self.i + n > len(self.b):
            raise ProtocolError("truncated message")
        v = self.b[self.i:self.i + n]
        self.i += n
        return v


def startup_params(body: bytes) -> dict[str, str]:
    r = Reader(body)
    out: dict[str, str] = {}
    while r.i < len(body):
        key = r.cstr()
        if not key:
            break
        out[key] = r.cstr()
    return out
