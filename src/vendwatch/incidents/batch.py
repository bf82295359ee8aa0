"""The incident state one transaction works on: read in bulk, changed in memory, written once.

The orchestrator applies a poll's signals one after another, each seeing what the ones
before it did. Done statement by statement that was about eight SQL round trips per
signal. ``IncidentBatch`` reads what a poll needs in one query per kind (the active
incident of every key the signals name, the last timeline entry of each), keeps the
lifecycle's changes in memory and writes them at ``flush`` in one statement per table,
in the order the one-by-one path would have written them. It lives inside the caller's
transaction, so checkpoint and effects still commit together or not at all.

Every read answers what the one-by-one path would have read: from the cache when the
cache provably holds it (the key was read, or this batch wrote its incident), else from
the database after a flush of what is pending (so the database is up to date).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vendwatch.delivery.outbox import Outbox
from vendwatch.incidents.lifecycle import Decision, Entry, Incident
from vendwatch.incidents.store import IncidentStore, Silence
from vendwatch.state.db import Tx

_UPDATED = "updated"


class IncidentBatch:
    """Cached reads and buffered writes of incident state inside one transaction."""

    def __init__(self, store: IncidentStore, outbox: Outbox, tx: Tx) -> None:
        self.store, self.outbox, self.tx = store, outbox, tx
        self._active: dict[str, Incident | None] = {}  # dedupe key -> its active incident (None: none)
        self._closed: dict[str, Incident | None] = {}  # dedupe key -> its latest resolved incident
        # incident id -> its last timeline entry: [entry_id or None while pending, kind, actor, detail]
        self._last: dict[str, list[Any]] = {}
        self._silences: list[Silence] | None = None
        # pending writes
        self._incidents: dict[str, Incident] = {}  # by id, latest state
        self._entries: list[list[Any]] = []  # [incident_id, at, kind, actor, detail, note], in order
        self._entry_details: dict[int, dict[str, Any]] = {}  # stored entry id -> new detail (a folded update)
        self._severity: list[tuple[str, float, str, str, str]] = []
        self._outbox: list[tuple[str, str, str, dict[str, Any], str, float, float | None]] = []
        self._suppressed: dict[str, int] = {}
        self._dirty_keys: set[str] = set()  # keys whose incidents have pending writes

    # -- reads ----------------------------------------------------------------------
    def _load(self, cache: dict[str, Incident | None], keys: Iterable[str],
              fetch: Callable[[Tx, Sequence[str]], dict[str, Incident]]) -> dict[str, Incident]:
        """Fill ``cache`` for the ``keys`` it lacks with one ``fetch``; returns what was found."""
        todo = sorted({k for k in keys if k not in cache})
        if not todo:
            return {}
        if self._dirty_keys.intersection(todo):
            self.flush()  # the database must hold what this batch changed of these keys
        found = fetch(self.tx, todo)
        for k in todo:
            cache[k] = found.get(k)
        return found

    def load_active(self, keys: Iterable[str]) -> None:
        """Read the active incidents of ``keys`` (and their last timeline entries) in bulk."""
        found = self._load(self._active, keys, self.store.active_for_keys)
        ids = [inc.incident_id for inc in found.values() if inc.incident_id not in self._last]
        for inc_id, last in self.store.last_entries(self.tx, ids).items():
            self._last[inc_id] = list(last)

    def load_closed(self, keys: Iterable[str]) -> None:
        """Read the latest resolved incident of each of ``keys`` in bulk."""
        self._load(self._closed, keys, self.store.last_closed_for_keys)

    def active_for(self, key: str) -> Incident | None:
        if key not in self._active:
            self.load_active([key])
        return self._active[key]

    def last_closed_for(self, key: str) -> Incident | None:
        if key not in self._closed:
            self.load_closed([key])
        return self._closed[key]

    def matching_silence(self, now: float, *, device_id: str | None, site_id: str | None, rule_id: str) -> str | None:
        """The first silence in force (oldest first) matching the signal, counted as suppressing it;
        the silences in force are read once per batch."""
        if self._silences is None:
            self._silences = self.store.silences_in_force(self.tx, now)
        for s in self._silences:
            if s.matches(device_id=device_id, site_id=site_id, rule_id=rule_id):
                self._suppressed[s.silence_id] = self._suppressed.get(s.silence_id, 0) + 1
                return s.silence_id
        return None

    def active_caused_by(self, cause_key: str) -> list[Incident]:
        self.flush()  # a query on other columns than the key: the database must be current
        return self.store.active_caused_by(self.tx, cause_key)

    def active_of_site(self, site_id: str, rule_id: str, *, opened_since: float) -> list[Incident]:
        self.flush()
        return self.store.active_of_site(self.tx, site_id, rule_id, opened_since=opened_since)

    def ref(self, incident_id: str, system: str) -> dict[str, Any] | None:
        self.flush()
        return self.store.ref(self.tx, incident_id, system)

    def cancel(self, idem_key: str) -> bool:
        self.flush()
        return self.outbox.cancel(self.tx, idem_key)

    # -- writes ---------------------------------------------------------------------
    def apply(self, d: Decision) -> None:
        """Record a lifecycle decision (as ``IncidentStore.apply`` writes it)."""
        for inc in d.incidents:
            key = inc.dedupe_key
            self._incidents[inc.incident_id] = inc
            self._dirty_keys.add(key)
            known = self._active.get(key, False)
            if inc.active:
                self._active[key] = inc
            elif known is None or (isinstance(known, Incident) and known.incident_id == inc.incident_id):
                self._active[key] = None
            # else: unknown, read after a flush if ever needed
            closed = self._closed.get(key)
            if inc.status == "resolved":
                self._closed[key] = inc  # resolved now: the latest
            elif closed is not None and closed.incident_id == inc.incident_id:
                del self._closed[key]  # reopened: the one before it is not known here
        for e in d.entries:
            if e.kind == _UPDATED and self._fold(e):
                continue
            row = [e.incident_id, e.at, e.kind, e.actor, dict(e.detail), e.note]
            self._entries.append(row)
            self._last[e.incident_id] = [None, e.kind, e.actor, row[4]]
        self._severity.extend(d.severity_changes)

    def _fold(self, e: Entry) -> bool:
        """A run of plain re-fires is one timeline entry (count and last time), not one per signal."""
        last = self._last.get(e.incident_id)
        if last is None:
            self.flush()
            found = self.store.last_entries(self.tx, [e.incident_id]).get(e.incident_id)
            if found is None:
                return False
            last = self._last[e.incident_id] = list(found)
        entry_id, kind, actor, detail = last
        if kind != _UPDATED or actor != e.actor:
            return False
        detail.update(e.detail, repeats=int(detail.get("repeats", 1)) + 1, last_at=e.at)
        if entry_id is not None:  # stored: rewrite it at flush (a pending one is written as it is then)
            self._entry_details[entry_id] = detail
        return True

    def coalesce(self, target: str, op: str, key: str, payload: dict[str, Any], *, idem_key: str, now: float,
                 not_before: float | None = None) -> None:
        """``Outbox.coalesce``, buffered (rows written in call order at flush)."""
        self._outbox.append((target, op, key, payload, idem_key, now, not_before))

    def flush(self) -> None:
        """Write everything pending, one statement per table (nothing pending: nothing sent)."""
        if self._incidents:
            # closed rows first so the unique "one active per key" index never trips
            self.store.upsert_incidents(self.tx, sorted(self._incidents.values(), key=lambda i: i.active))
            self._incidents = {}
        if self._entry_details:
            self.store.set_entry_details(self.tx, self._entry_details)
            self._entry_details = {}
        if self._entries:
            self.store.add_entries(self.tx, self._entries)
            # their ids are the database's now: read again if a later update folds into one
            for row in self._entries:
                last = self._last.get(row[0])
                if last is not None and last[0] is None:
                    del self._last[row[0]]
            self._entries = []
        if self._severity:
            self.store.add_severity_changes(self.tx, self._severity)
            self._severity = []
        if self._outbox:
            self.outbox.coalesce_many(self.tx, self._outbox)
            self._outbox = []
        if self._suppressed:
            self.store.count_suppressed(self.tx, self._suppressed)
            self._suppressed = {}
        self._dirty_keys.clear()
