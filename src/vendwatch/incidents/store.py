"""Incident tables in the state store: incidents, timeline, severity history, external
references and silences. Migrations are registered under component ``incidents``."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import msgspec

from vendwatch.incidents.lifecycle import Incident
from vendwatch.state import migrations
from vendwatch.state.db import Database, Tx
from vendwatch.state.store import StateStore

migrations.register(
    "incidents",
    1,
    """CREATE TABLE incidents(
        incident_id TEXT PRIMARY KEY,
        dedupe_key TEXT NOT NULL,
        rule_id TEXT NOT NULL,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        opened_at DOUBLE PRECISION NOT NULL,
        last_seen_at DOUBLE PRECISION NOT NULL,
        scope TEXT NOT NULL,
        device_id TEXT,
        site_id TEXT,
        summary TEXT NOT NULL DEFAULT '',
        occurrences {bigint} NOT NULL,
        acknowledged_at DOUBLE PRECISION,
        acknowledged_by TEXT,
        resolve_due_at DOUBLE PRECISION,
        resolved_at DOUBLE PRECISION,
        resolved_by TEXT,
        parent_id TEXT,
        caused_by TEXT,
        reopen_count INTEGER NOT NULL DEFAULT 0,
        labels TEXT NOT NULL DEFAULT '{{}}',
        version {bigint} NOT NULL DEFAULT 1)""",
    # the database enforces "one active incident per dedupe key", whatever the code does
    "CREATE UNIQUE INDEX incidents_one_active ON incidents(dedupe_key) WHERE status IN ('open', 'acknowledged')",
    "CREATE INDEX incidents_key ON incidents(dedupe_key, opened_at)",
    "CREATE INDEX incidents_status ON incidents(status, opened_at)",
    "CREATE INDEX incidents_due ON incidents(resolve_due_at)",
    "CREATE INDEX incidents_caused_by ON incidents(caused_by)",
    """CREATE TABLE incident_timeline(
        entry_id {serial_pk},
        incident_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{{}}',
        note TEXT,
        note_sent INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX incident_timeline_inc ON incident_timeline(incident_id, entry_id)",
    """CREATE TABLE incident_severity(
        entry_id {serial_pk},
        incident_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        from_severity TEXT NOT NULL,
        to_severity TEXT NOT NULL,
        actor TEXT NOT NULL)""",
    "CREATE INDEX incident_severity_inc ON incident_severity(incident_id, entry_id)",
    """CREATE TABLE incident_refs(
        incident_id TEXT NOT NULL,
        system TEXT NOT NULL,
        ref_id TEXT NOT NULL,
        number TEXT,
        url TEXT,
        state TEXT,
        synced TEXT NOT NULL DEFAULT '{{}}',
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY(incident_id, system))""",
    """CREATE TABLE silences(
        silence_id TEXT PRIMARY KEY,
        device_id TEXT,
        site_id TEXT,
        rule_id TEXT,
        reason TEXT NOT NULL DEFAULT '',
        created_by TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        starts_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        suppressed {bigint} NOT NULL DEFAULT 0)""",
    """CREATE TABLE incident_seen_signals(
        signal_id TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL)""",
)

# the replay guard is pruned by age on every timer tick: without an index each prune
# scanned every signal id of the last 7 days (version 2 of "incidents" is the outbox)
migrations.register("incidents", 3, "CREATE INDEX incident_seen_signals_at ON incident_seen_signals(at)")
# the reopen lookup (the latest resolved incident of a key) read every resolved incident
# through the status index: resolved incidents only, by key and time
migrations.register(
    "incidents", 4, "CREATE INDEX incidents_closed ON incidents(dedupe_key, resolved_at) WHERE status='resolved'")

_FIELDS = [f.name for f in fields(Incident)]
_COLS = ", ".join(_FIELDS)
_LABELS = _FIELDS.index("labels")


def _row_to_incident(row: tuple[Any, ...]) -> Incident:
    values = list(row)
    values[_LABELS] = msgspec.json.decode(values[_LABELS] or "{}")
    return Incident(*values)


_UPSERT = (f"INSERT INTO incidents({_COLS}) VALUES ({','.join('?' * len(_FIELDS))})"
           " ON CONFLICT(incident_id) DO UPDATE SET "
           + ", ".join(f"{f}=excluded.{f}" for f in _FIELDS if f != "incident_id"))


_GET_FIELDS = attrgetter(*_FIELDS)


def _incident_params(inc: Incident) -> tuple[Any, ...]:
    # the fields as they are (all scalars but the labels, stored as JSON): dataclasses.asdict
    # deep-copies every value and was a third of the orchestrator's CPU per signal
    values = list(_GET_FIELDS(inc))
    values[_LABELS] = msgspec.json.encode(values[_LABELS]).decode()
    return tuple(values)


@dataclass(frozen=True)
class Silence:
    """A silence in force: each matcher given must equal the signal's."""

    silence_id: str
    device_id: str | None
    site_id: str | None
    rule_id: str | None

    def matches(self, *, device_id: str | None, site_id: str | None, rule_id: str) -> bool:
        # a signal without a device (site) matches no device (site) matcher
        return ((self.device_id is None or self.device_id == (device_id or ""))
                and (self.site_id is None or self.site_id == (site_id or ""))
                and (self.rule_id is None or self.rule_id == rule_id))


_CHUNK = 500  # values per bulk statement


class IncidentStore:
    """Reads and writes incident state; every write method takes the caller's transaction."""

    def __init__(self, state: StateStore) -> None:
        state.migrate()  # idempotent: applies our tables if the store was opened before import
        self.state = state
        self.db: Database = state.db

    # -- incidents ----------------------------------------------------------------
    @property
    def _lock_rows(self) -> str:
        # PostgreSQL: lock what we read-modify-write (the API and the orchestrator may race);
        # SQLite: write transactions are already serialised
        return " FOR UPDATE" if self.db.dialect == "postgres" else ""

    def active_for(self, tx: Tx, dedupe_key: str) -> Incident | None:
        row = tx.one(f"SELECT {_COLS} FROM incidents WHERE dedupe_key=? AND status IN ('open','acknowledged')"
                     + self._lock_rows, (dedupe_key,))
        return _row_to_incident(row) if row else None

    def _indexed_by(self, index: str) -> str:
        # SQLite's planner (no statistics) takes the status index for a list of more than a
        # few keys, reading every open or every resolved incident: name the key index
        return f" INDEXED BY {index}" if self.db.dialect == "sqlite" else ""

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        """``column`` is one of ``values``: on PostgreSQL one array parameter (one statement
        text whatever the length, prepared once); on SQLite a list of placeholders, with
        which its planner picks the index on ``column`` (with ``json_each`` it did not)."""
        if self.db.dialect == "postgres":
            return f"{column} = ANY(?)", (list(values),)
        return f"{column} IN ({','.join('?' * len(values))})", tuple(values)

    def active_for_keys(self, tx: Tx, keys: Sequence[str]) -> dict[str, Incident]:
        """The active incident of each of ``keys`` that has one, in one query per 500 keys."""
        out: dict[str, Incident] = {}
        for i in range(0, len(keys), _CHUNK):
            cond, params = self._in("dedupe_key", keys[i:i + _CHUNK])
            rows = tx.query(f"SELECT {_COLS} FROM incidents{self._indexed_by('incidents_one_active')}"
                            f" WHERE {cond} AND status IN ('open','acknowledged')" + self._lock_rows, params)
            for r in rows:
                inc = _row_to_incident(r)
                out[inc.dedupe_key] = inc
        return out

    def last_entries(self, tx: Tx, incident_ids: Sequence[str]) -> dict[str, tuple[int, str, str, dict[str, Any]]]:
        """The last timeline entry of each incident: (entry_id, kind, actor, detail)."""
        out: dict[str, tuple[int, str, str, dict[str, Any]]] = {}
        for i in range(0, len(incident_ids), _CHUNK):
            cond, params = self._in("incident_id", incident_ids[i:i + _CHUNK])
            rows = tx.query(
                "SELECT incident_id, entry_id, kind, actor, detail FROM incident_timeline WHERE entry_id IN"
                f" (SELECT max(entry_id) FROM incident_timeline WHERE {cond} GROUP BY incident_id)", params)
            for inc_id, entry_id, kind, actor, detail in rows:
                out[inc_id] = (int(entry_id), kind, actor, msgspec.json.decode(detail))
        return out

    def active_caused_by(self, tx: Tx, cause_key: str) -> list[Incident]:
        """Active incidents whose signals blamed the condition ``cause_key`` (absorption candidates)."""
        rows = tx.query(f"SELECT {_COLS} FROM incidents WHERE caused_by=? AND status IN ('open','acknowledged')"
                        + self._lock_rows, (cause_key,))
        return [_row_to_incident(r) for r in rows]

    def active_of_site(self, tx: Tx, site_id: str, rule_id: str, *, opened_since: float) -> list[Incident]:
        """Active device incidents of ``rule_id`` at ``site_id`` opened since then, blaming no cause."""
        rows = tx.query(f"SELECT {_COLS} FROM incidents WHERE site_id=? AND rule_id=? AND scope='device'"
                        " AND caused_by IS NULL AND opened_at>=? AND status IN ('open','acknowledged')"
                        + self._lock_rows, (site_id, rule_id, opened_since))
        return [_row_to_incident(r) for r in rows]

    def last_closed_for(self, tx: Tx, dedupe_key: str) -> Incident | None:
        row = tx.one(
            f"SELECT {_COLS} FROM incidents WHERE dedupe_key=? AND status='resolved'"
            " ORDER BY resolved_at DESC LIMIT 1", (dedupe_key,))
        return _row_to_incident(row) if row else None

    def last_closed_for_keys(self, tx: Tx, keys: Sequence[str]) -> dict[str, Incident]:
        """``last_closed_for`` of each of ``keys`` that has a resolved incident, one query per 500 keys."""
        out: dict[str, Incident] = {}
        for i in range(0, len(keys), _CHUNK):
            cond, params = self._in("dedupe_key", keys[i:i + _CHUNK])
            rows = tx.query(
                f"SELECT {_COLS} FROM (SELECT {_COLS}, row_number() OVER (PARTITION BY dedupe_key"
                f" ORDER BY resolved_at DESC) AS newest FROM incidents{self._indexed_by('incidents_closed')} WHERE {cond} AND status='resolved')"
                " AS closed WHERE newest=1", params)
            for r in rows:
                inc = _row_to_incident(r)
                out[inc.dedupe_key] = inc
        return out

    def get(self, incident_id: str, tx: Tx | None = None) -> Incident | None:
        sql = f"SELECT {_COLS} FROM incidents WHERE incident_id=?"
        row = tx.one(sql + self._lock_rows, (incident_id,)) if tx else self.db.one(sql, (incident_id,))
        return _row_to_incident(row) if row else None

    def due_resolves(self, tx: Tx, now: float, limit: int = 500) -> list[Incident]:
        """Active incidents whose flap-damping delay has passed (locked on PostgreSQL, so one replica resolves each)."""
        # "NOT IN" the closed statuses (the same rows: there are four statuses) so that SQLite
        # walks the due-time index instead of reading every active incident and sorting them
        sql = (f"SELECT {_COLS} FROM incidents WHERE resolve_due_at IS NOT NULL AND resolve_due_at<=?"
               " AND status NOT IN ('resolved','absorbed') ORDER BY resolve_due_at LIMIT ?")
        if self.db.dialect == "postgres":
            sql += " FOR UPDATE SKIP LOCKED"
        rows = tx.query(sql, (now, limit))
        return [_row_to_incident(r) for r in rows]

    def list(self, *, status: str | None = None, severity: str | None = None, device_id: str | None = None,
             site_id: str | None = None, rule_id: str | None = None, dedupe_key: str | None = None,
             limit: int = 100, offset: int = 0) -> list[Incident]:
        where, params = [], []
        for col, val in (("severity", severity), ("device_id", device_id), ("site_id", site_id),
                         ("rule_id", rule_id), ("dedupe_key", dedupe_key)):
            if val:
                where.append(f"{col}=?")
                params.append(val)
        if status == "active":
            where.append("status IN ('open','acknowledged')")
        elif status:
            where.append("status=?")
            params.append(status)
        sql = f"SELECT {_COLS} FROM incidents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at DESC, incident_id LIMIT ? OFFSET ?"
        return [_row_to_incident(r) for r in self.db.query(sql, (*params, limit, offset))]

    def counts_by_status(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.db.query("SELECT status, count(*) FROM incidents GROUP BY status")}

    # -- bulk writes (``IncidentBatch.flush``) ---------------------------------------------
    def upsert_incidents(self, tx: Tx, incidents: Sequence[Incident]) -> None:
        tx.executemany(_UPSERT, [_incident_params(inc) for inc in incidents])

    def add_entries(self, tx: Tx, entries: Sequence[Sequence[Any]]) -> None:
        """Timeline entries, (incident_id, at, kind, actor, detail, note) each, in this order."""
        enc = msgspec.json.encode
        tx.executemany(
            "INSERT INTO incident_timeline(incident_id, at, kind, actor, detail, note) VALUES (?,?,?,?,?,?)",
            [(i, at, kind, actor, enc(detail).decode(), note) for i, at, kind, actor, detail, note in entries])

    def set_entry_details(self, tx: Tx, details: dict[int, dict[str, Any]]) -> None:
        tx.executemany("UPDATE incident_timeline SET detail=? WHERE entry_id=?",
                       [(msgspec.json.encode(d).decode(), entry_id) for entry_id, d in details.items()])

    def add_severity_changes(self, tx: Tx, changes: Sequence[tuple[str, float, str, str, str]]) -> None:
        tx.executemany(
            "INSERT INTO incident_severity(incident_id, at, from_severity, to_severity, actor) VALUES (?,?,?,?,?)",
            list(changes))

    def count_suppressed(self, tx: Tx, counts: dict[str, int]) -> None:
        tx.executemany("UPDATE silences SET suppressed=suppressed+? WHERE silence_id=?",
                       [(n, sid) for sid, n in counts.items()])

    def timeline(self, incident_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT entry_id, at, kind, actor, detail, note FROM incident_timeline WHERE incident_id=? ORDER BY entry_id",
            (incident_id,))
        return [{"entry_id": r[0], "at": r[1], "kind": r[2], "actor": r[3], "detail": msgspec.json.decode(r[4]),
                 **({"note": r[5]} if r[5] else {})} for r in rows]

    def severity_history(self, incident_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT at, from_severity, to_severity, actor FROM incident_severity WHERE incident_id=? ORDER BY entry_id",
            (incident_id,))
        return [{"at": r[0], "from": r[1] or None, "to": r[2], "actor": r[3]} for r in rows]

    def pending_notes(self, tx: Tx, incident_id: str) -> list[tuple[int, str]]:
        return [(int(r[0]), r[1]) for r in tx.query(
            "SELECT entry_id, note FROM incident_timeline WHERE incident_id=? AND note IS NOT NULL AND note_sent=0"
            " ORDER BY entry_id", (incident_id,))]

    def mark_notes_sent(self, tx: Tx, entry_ids: list[int]) -> None:
        tx.executemany("UPDATE incident_timeline SET note_sent=1 WHERE entry_id=?", [(i,) for i in entry_ids])

    def record_signals(self, tx: Tx, signal_ids: Sequence[str], now: float) -> set[str]:
        """Record signal ids; returns those not processed before (the others are detector
        replays). One statement per 500 ids."""
        ids = list(dict.fromkeys(signal_ids))
        new: set[str] = set()
        for i in range(0, len(ids), _CHUNK):
            part = ids[i:i + _CHUNK]
            rows = tx.query(
                f"INSERT INTO incident_seen_signals VALUES {','.join(['(?,?)'] * len(part))}"
                " ON CONFLICT(signal_id) DO NOTHING RETURNING signal_id",
                [v for sid in part for v in (sid, now)])
            new.update(r[0] for r in rows)
        return new

    def prune_seen(self, tx: Tx, older_than: float) -> None:
        tx.execute("DELETE FROM incident_seen_signals WHERE at<?", (older_than,))

    # -- external references ------------------------------------------------------
    def ref(self, tx: Tx | None, incident_id: str, system: str) -> dict[str, Any] | None:
        q = ("SELECT ref_id, number, url, state, synced, updated_at FROM incident_refs WHERE incident_id=? AND system=?",
             (incident_id, system))
        row = tx.one(*q) if tx else self.db.one(*q)
        if row is None:
            return None
        return {"system": system, "ref_id": row[0], "number": row[1], "url": row[2], "state": row[3],
                "synced": msgspec.json.decode(row[4]), "updated_at": row[5]}

    def refs(self, incident_id: str) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT system FROM incident_refs WHERE incident_id=? ORDER BY system", (incident_id,))
        out = []
        for (system,) in rows:
            r = self.ref(None, incident_id, system)
            if r:
                r.pop("synced", None)
                out.append(r)
        return out

    def save_ref(self, tx: Tx, incident_id: str, system: str, ref_id: str, *, number: str | None, url: str | None,
                 state: str | None, synced: dict[str, Any], now: float) -> None:
        tx.execute(
            "INSERT INTO incident_refs VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(incident_id, system) DO UPDATE SET"
            " ref_id=excluded.ref_id, number=excluded.number, url=excluded.url, state=excluded.state,"
            " synced=excluded.synced, updated_at=excluded.updated_at",
            (incident_id, system, ref_id, number, url, state, msgspec.json.encode(synced).decode(), now))

    def drop_ref(self, tx: Tx, incident_id: str, system: str) -> None:
        tx.execute("DELETE FROM incident_refs WHERE incident_id=? AND system=?", (incident_id, system))

    # -- silences -------------------------------------------------------------------
    def add_silence(self, *, device_id: str | None, site_id: str | None, rule_id: str | None, expires_at: float,
                    created_by: str, reason: str, now: float, starts_at: float | None = None) -> str:
        if not (device_id or site_id or rule_id):
            raise ValueError("a silence needs at least one of device_id, site_id, rule_id")
        if expires_at <= now:
            raise ValueError("expires_at must be in the future")
        sid = "sil_" + secrets.token_hex(6)
        self.db.execute(
            "INSERT INTO silences(silence_id, device_id, site_id, rule_id, reason, created_by, created_at, starts_at,"
            " expires_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (sid, device_id, site_id, rule_id, reason, created_by, now, starts_at or now, expires_at))
        return sid

    def remove_silence(self, silence_id: str) -> bool:
        return self.db.execute("DELETE FROM silences WHERE silence_id=?", (silence_id,)) > 0

    def list_silences(self, now: float | None = None) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT silence_id, device_id, site_id, rule_id, reason, created_by, created_at, starts_at, expires_at,"
            " suppressed FROM silences ORDER BY created_at")
        keys = ("silence_id", "device_id", "site_id", "rule_id", "reason", "created_by", "created_at", "starts_at",
                "expires_at", "suppressed")
        out = [dict(zip(keys, r, strict=True)) for r in rows]
        if now is not None:
            for s in out:
                s["active"] = s["starts_at"] <= now < s["expires_at"]
        return out

    def silences_in_force(self, tx: Tx, now: float) -> list[Silence]:
        """Unexpired silences that have started, oldest first (the first that matches applies)."""
        rows = tx.query("SELECT silence_id, device_id, site_id, rule_id FROM silences"
                        " WHERE starts_at<=? AND expires_at>? ORDER BY created_at, silence_id", (now, now))
        return [Silence(*r) for r in rows]
