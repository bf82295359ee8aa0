"""Structured logging: JSON lines (``log_format = "json"``) or readable text.

Every line carries the role that wrote it and the replica (pod or host) it runs on,
plus the ids that tie it to its subject, passed as ``extra``: ``device_id``,
``event_id``, ``signal_id``, ``incident_id``, ``ticket``, ``dedupe_key`` (see
:func:`subject`). Device text reaches log lines (fault components, dedupe keys,
error messages), so the text format escapes control characters: a newline sent by a
device can never start a line of its own. JSON lines are safe by construction.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from vendwatch.observe.metrics import LOG_MESSAGES

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("json", "text")

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# C0 and C1 controls, DEL, and the Unicode line/paragraph separators some viewers break on
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_local = threading.local()
_identity: dict[str, str] = {"role": "", "replica": ""}


class LogSettingsError(ValueError):
    """``log_level`` or ``log_format`` has a value logging does not know."""


def escape(text: str) -> str:
    """Control characters as visible escapes (``\\n``, ``\\x1b``): one log line stays one line."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                             else f"\\u{ord(m.group()):04x}"), text)


def subject(**ids: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the ids given, without the ones that are None."""
    return {k: v for k, v in ids.items() if v is not None}


def set_identity(role: str | None = None, replica: str | None = None) -> None:
    """The process's role (``vendwatch run ROLE``) and replica name (pod name, host)."""
    if role is not None:
        _identity["role"] = role
    if replica is not None:
        _identity["replica"] = replica


@contextmanager
def role_context(role: str) -> Iterator[None]:
    """Lines logged by this thread inside the block carry ``role`` (``serve`` runs every role)."""
    prev = getattr(_local, "role", None)
    _local.role = role
    try:
        yield
    finally:
        _local.role = prev


def current_role() -> str:
    return getattr(_local, "role", None) or _identity["role"]


def default_replica() -> str:
    # VENDWATCH_REPLICA, else the pod name Kubernetes puts in HOSTNAME, else the host name
    return os.environ.get("VENDWATCH_REPLICA") or os.environ.get("HOSTNAME") or socket.gethostname()


class IdentityFilter(logging.Filter):
    """Adds role and replica to every record a handler formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "role", None):
            record.role = current_role()
        if not getattr(record, "replica", None):
            record.replica = _identity["replica"]
        return True


class _Counting(IdentityFilter):
    """Also counts warnings and errors and keeps the last errors (one handler only: counted once)."""

    def __init__(self, recent: deque[dict[str, Any]]) -> None:
        super().__init__()
        self.recent = recent

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        if record.levelno >= logging.WARNING:
            LOG_MESSAGES.labels(level=record.levelname.lower(), role=record.role or "-").inc()
            if record.levelno >= logging.ERROR:
                self.recent.append(_record_dict(record, with_exc=False))
        return True


def _ts(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")}


def _record_dict(record: logging.LogRecord, with_exc: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": _ts(record), "level": record.levelname.lower(), "logger": record.name,
                           "msg": record.getMessage()}
    out.update(_extras(record))
    if with_exc and record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


def _fallback(obj: Any) -> Any:
    # any value a caller put in ``extra`` (a Path, a set, an exception, an object): its text
    return str(obj)


_json = msgspec.json.Encoder(enc_hook=_fallback)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields (device_id, event_id, incident key...) are kept."""

    def format(self, record: logging.LogRecord) -> str:
        out = _record_dict(record)
        if record.exc_info is None and record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        try:
            return _json.encode(out).decode()
        except (TypeError, ValueError, OverflowError):
            # e.g. a dict with tuple keys inside a value: that value's text instead
            return _json.encode({k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                                 for k, v in out.items()}).decode()


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger [role@replica]: message key=value ...``; device text escaped.

    A traceback keeps its lines, each indented with ``  | `` so none reads as a log line."""

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        role, replica = extras.pop("role", ""), extras.pop("replica", "")
        where = f" [{escape(str(role or '-'))}@{escape(str(replica or '-'))}]" if role or replica else ""
        line = f"{_ts(record)} {record.levelname} {record.name}{where}: {escape(record.getMessage())}"
        if extras:
            line += " " + " ".join(f"{escape(str(k))}={escape(_value(v))}" for k, v in extras.items())
        tail = ""
        if record.exc_info:
            tail = self.formatException(record.exc_info)
        elif record.exc_text:
            tail = record.exc_text
        if record.stack_info:
            tail = f"{tail}\n{record.stack_info}" if tail else record.stack_info
        if tail:
            line += "".join(f"\n  | {escape(t)}" for t in tail.splitlines())
        return line


def _value(v: Any) -> str:
    s = str(v)
    return f'"{s}"' if (" " in s or not s) else s


_recent: deque[dict[str, Any]] = deque(maxlen=50)


def recent_errors() -> list[dict[str, Any]]:
    """The last error lines of this process (newest last), for the console's Pipeline page."""
    return list(_recent)


def check(level: str, fmt: str) -> tuple[str, str]:
    """Normalised (level, format); LogSettingsError names the bad one."""
    lv, ft = level.strip().lower(), fmt.strip().lower()
    if lv not in LEVELS:
        raise LogSettingsError(f"log_level: must be one of {', '.join(LEVELS)}, got {level!r}")
    if ft not in FORMATS:
        raise LogSettingsError(f"log_format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return lv, ft


def setup_logging(level: str | None = None, fmt: str | None = None, stream: Any = None) -> None:
    """Configure the root logger: ``level``/``fmt`` (from the settings), else VENDWATCH_LOG_* or defaults."""
    lv, ft = check(level or os.environ.get("VENDWATCH_LOG_LEVEL") or "info",
                   fmt or os.environ.get("VENDWATCH_LOG_FORMAT") or "text")
    if not _identity["replica"]:
        _identity["replica"] = default_replica()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if ft == "json" else TextFormatter())
    handler.addFilter(_Counting(_recent))
    root = logging.getLogger()
    for h in root.handlers:
        if getattr(h, "_vendwatch", False) or isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr,
                                                                                                    sys.stdout):
            root.removeHandler(h)
    handler._vendwatch = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(lv.upper())
