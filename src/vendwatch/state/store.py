"""The state store: device registry and credentials, live device state, checkpoints.

Later stages keep their own tables (registered through ``migrations.register``) and
reach the database through ``StateStore.db``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from vendwatch.state import migrations, mqtt_auth
from vendwatch.state.db import Database, Tx

ROLES = ("viewer", "operator", "admin")
DEVICE_TOKEN_PREFIX = "vwd_"
OPERATOR_TOKEN_PREFIX = "vwo_"

migrations.register(
    "core",
    1,
    """CREATE TABLE devices(
        device_id TEXT PRIMARY KEY,
        site_id TEXT,
        status TEXT NOT NULL DEFAULT 'active',
        serial TEXT,
        model TEXT,
        location TEXT,
        heartbeat_interval_s {bigint},
        meta TEXT NOT NULL DEFAULT '{{}}',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX devices_site ON devices(site_id)",
    """CREATE TABLE device_tokens(
        token_hash TEXT PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION)""",
    "CREATE INDEX device_tokens_device ON device_tokens(device_id)",
    """CREATE TABLE operator_tokens(
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE device_state(
        device_id TEXT PRIMARY KEY,
        site_id TEXT,
        first_seen_at DOUBLE PRECISION,
        last_seen_at DOUBLE PRECISION,
        last_event_at DOUBLE PRECISION,
        last_seq {bigint},
        events {bigint} NOT NULL DEFAULT 0,
        doc TEXT NOT NULL DEFAULT '{{}}')""",
    """CREATE TABLE checkpoints(
        name TEXT PRIMARY KEY,
        data {blob} NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
)


MAX_ROTATION_GRACE_S = 30 * 86_400.0  # an old device token outlives its rotation by 30 days at most


class RegistryError(Exception):
    """A registry operation cannot be done (unknown device, duplicate id, bad role)."""


def hash_token(token: str) -> str:
    # tokens are 256-bit random strings: a fast hash is safe (no dictionary to attack)
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Device:
    device_id: str
    site_id: str | None
    status: str
    serial: str | None = None
    model: str | None = None
    location: str | None = None
    heartbeat_interval_s: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


@dataclass(frozen=True)
class OperatorPrincipal:
    name: str
    role: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


_DEVICE_COLS = "device_id, site_id, status, serial, model, location, heartbeat_interval_s, meta, created_at"
# built once: a request whose device token is not cached runs it (joining the column list
# on every call was a third of the lookup's CPU)
_AUTH_SQL = (f"SELECT t.token_hash, t.expires_at, {', '.join('d.' + c.strip() for c in _DEVICE_COLS.split(','))}"
             " FROM device_tokens t JOIN devices d ON d.device_id = t.device_id WHERE t.token_hash=?")


def _device(row: tuple[Any, ...]) -> Device:
    return Device(*row[:7], meta=msgspec.json.decode(row[7] or "{}"), created_at=row[8])  # type: ignore[misc]


class StateStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock  # epoch seconds; injected in tests of token expiry

    def migrate(self) -> list[tuple[str, int]]:
        return migrations.apply(self.db)

    def close(self) -> None:
        self.db.close()

    # -- devices ----------------------------------------------------------------
    def add_device(
        self,
        device_id: str,
        site_id: str | None = None,
        *,
        serial: str | None = None,
        model: str | None = None,
        location: str | None = None,
        heartbeat_interval_s: int | None = None,
        meta: dict[str, Any] | None = None,
        token: str | None = None,
        tx: Tx | None = None,
    ) -> str:
        """Register a device and return its token (shown once, stored only as a hash)."""
        token = token or new_token(DEVICE_TOKEN_PREFIX)
        now = self.clock()
        for name, text in (("device_id", device_id), ("site_id", site_id), ("serial", serial), ("model", model),
                           ("location", location)):
            if text is not None and "\x00" in text:
                # PostgreSQL text cannot hold it; the same refusal on every backend
                raise RegistryError(f"{name} contains a NUL (U+0000) character")

        def run(t: Tx) -> None:
            if t.one("SELECT 1 FROM devices WHERE device_id=?", (device_id,)):
                raise RegistryError(f"device {device_id} already exists")
            t.execute(
                f"INSERT INTO devices({_DEVICE_COLS}, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (device_id, site_id, "active", serial, model, location, heartbeat_interval_s,
                 msgspec.json.encode(meta or {}).decode(), now, now),
            )
            t.execute("INSERT INTO device_tokens VALUES (?,?,?,NULL)", (hash_token(token), device_id, now))
            mqtt_auth.remember(t, device_id, token)  # the token is also the device's MQTT password

        if tx is not None:
            run(tx)
        else:
            with self.db.transaction() as t:
                run(t)
        return token

    def get_device(self, device_id: str) -> Device | None:
        row = self.db.one(f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id=?", (device_id,))
        return _device(row) if row else None

    def list_devices(self, site_id: str | None = None, limit: int = 1000, after: str = "") -> list[Device]:
        if site_id:
            rows = self.db.query(
                f"SELECT {_DEVICE_COLS} FROM devices WHERE site_id=? AND device_id>? ORDER BY device_id LIMIT ?",
                (site_id, after, limit),
            )
        else:
            rows = self.db.query(
                f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id>? ORDER BY device_id LIMIT ?", (after, limit)
            )
        return [_device(r) for r in rows]

    def count_devices(self) -> int:
        row = self.db.one("SELECT count(*) FROM devices")
        return int(row[0]) if row else 0

    def set_device_status(self, device_id: str, status: str) -> None:
        if status not in ("active", "disabled"):
            raise RegistryError(f"unknown status {status!r}")
        n = self.db.execute(
            "UPDATE devices SET status=?, updated_at=? WHERE device_id=?", (status, self.clock(), device_id)
        )
        if n == 0:
            raise RegistryError(f"no device {device_id}")

    def rotate_device_token(self, device_id: str, grace_s: float = 86_400.0) -> str:
        """New token; existing tokens stay valid for ``grace_s`` seconds (0 revokes them now)."""
        if not 0 <= grace_s <= MAX_ROTATION_GRACE_S:  # NaN too: stored as NULL it would never expire
            raise RegistryError(f"grace must be 0 to {MAX_ROTATION_GRACE_S:g} seconds, got {grace_s!r}")
        token = new_token(DEVICE_TOKEN_PREFIX)
        now = self.clock()
        with self.db.transaction() as t:
            if not t.one("SELECT 1 FROM devices WHERE device_id=?", (device_id,)):
                raise RegistryError(f"no device {device_id}")
            t.execute(
                "UPDATE device_tokens SET expires_at=? WHERE device_id=? AND (expires_at IS NULL OR expires_at>?)",
                (now + grace_s, device_id, now + grace_s),
            )
            t.execute("INSERT INTO device_tokens VALUES (?,?,?,NULL)", (hash_token(token), device_id, now))
            mqtt_auth.remember(t, device_id, token)
        return token

    def authenticate_device(self, token: str) -> Device | None:
        """The active device owning ``token``, or None (unknown, expired, disabled)."""
        if not token.startswith(DEVICE_TOKEN_PREFIX):
            return None
        h = hash_token(token)
        row = self.db.one(_AUTH_SQL, (h,))
        if row is None or not hmac.compare_digest(row[0], h):
            return None
        if row[1] is not None and row[1] <= self.clock():
            return None
        dev = _device(row[2:])
        return dev if dev.status == "active" else None

    # -- operator tokens --------------------------------------------------------
    def add_operator_token(self, name: str, role: str) -> str:
        if role not in ROLES:
            raise RegistryError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        token = new_token(OPERATOR_TOKEN_PREFIX)
        with self.db.transaction() as t:
            if t.one("SELECT 1 FROM operator_tokens WHERE name=?", (name,)):
                raise RegistryError(f"operator token {name} already exists")
            t.execute("INSERT INTO operator_tokens VALUES (?,?,?,?,0)", (name, role, hash_token(token), self.clock()))
        return token

    def list_operator_tokens(self) -> list[tuple[str, str, bool]]:
        return [(n, r, bool(d)) for n, r, d in self.db.query("SELECT name, role, disabled FROM operator_tokens ORDER BY name")]

    def revoke_operator_token(self, name: str) -> None:
        if self.db.execute("UPDATE operator_tokens SET disabled=1 WHERE name=?", (name,)) == 0:
            raise RegistryError(f"no operator token {name}")

    def authenticate_operator(self, token: str) -> OperatorPrincipal | None:
        if not token.startswith(OPERATOR_TOKEN_PREFIX):
            return None
        h = hash_token(token)
        row = self.db.one("SELECT name, role, token_hash, disabled FROM operator_tokens WHERE token_hash=?", (h,))
        if row is None or row[3] or not hmac.compare_digest(row[2], h):
            return None
        return OperatorPrincipal(row[0], row[1])

    # -- device state -----------------------------------------------------------
    def get_device_state(self, device_id: str) -> dict[str, Any] | None:
        row = self.db.one(
            "SELECT device_id, site_id, first_seen_at, last_seen_at, last_event_at, last_seq, events, doc"
            " FROM device_state WHERE device_id=?",
            (device_id,),
        )
        return _state_row(row) if row else None

    def list_device_states(self, site_id: str | None = None, limit: int = 1000, after: str = "") -> list[dict[str, Any]]:
        sql = ("SELECT device_id, site_id, first_seen_at, last_seen_at, last_event_at, last_seq, events, doc"
               " FROM device_state WHERE device_id>?")
        params: list[Any] = [after]
        if site_id:
            sql += " AND site_id=?"
            params.append(site_id)
        rows = self.db.query(sql + " ORDER BY device_id LIMIT ?", (*params, limit))
        return [_state_row(r) for r in rows]

    def count_device_states(self) -> int:
        row = self.db.one("SELECT count(*) FROM device_state")
        return int(row[0]) if row else 0

    # -- checkpoints ------------------------------------------------------------
    def load_checkpoint(self, name: str) -> bytes | None:
        row = self.db.one("SELECT data FROM checkpoints WHERE name=?", (name,))
        return bytes(row[0]) if row else None

    def save_checkpoint(self, name: str, data: bytes, tx: Tx | None = None) -> None:
        sql = ("INSERT INTO checkpoints VALUES (?,?,?) ON CONFLICT(name) DO UPDATE"
               " SET data=excluded.data, updated_at=excluded.updated_at")
        if tx is not None:
            tx.execute(sql, (name, data, self.clock()))
        else:
            self.db.execute(sql, (name, data, self.clock()))


def _state_row(row: tuple[Any, ...]) -> dict[str, Any]:
    doc = msgspec.json.decode(row[7] or "{}")
    return {
        "device_id": row[0],
        "site_id": row[1],
        "first_seen_at": row[2],
        "last_seen_at": row[3],
        "last_event_at": row[4],
        "last_seq": row[5],
        "events": row[6],
        **doc,
    }
