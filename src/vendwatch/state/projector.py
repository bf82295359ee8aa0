"""The device-state role: folds accepted events into a live picture of each machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from itertools import groupby
from operator import attrgetter
from typing import Any

import msgspec

from vendwatch import events as ev
from vendwatch.bus import EVENTS
from vendwatch.bus.base import Consumer, Record
from vendwatch.bus.batch import RecordBatch, decode_run, run_records
from vendwatch.observe.metrics import REFUNDS, REVENUE, VENDS
from vendwatch.runtime import Context
from vendwatch.stage import CheckpointedStage
from vendwatch.state.db import Tx


class StateEvent(ev.StoredEvent, gc=False):
    """A stored event as this stage reads it: ``ev.StoredEvent`` with the payload decoded
    in the same call (its fields, so the same records are refused)."""

    data: Any


_event = msgspec.json.Decoder(StateEvent)
_events = msgspec.json.Decoder(list[StateEvent])  # a whole run of a partition at once
_SALES = ("transaction", "refund")
_device_of = attrgetter("device_id")
_ROW = "SELECT device_id, site_id, first_seen_at, last_seen_at, last_event_at, last_seq, events, doc FROM device_state WHERE device_id IN ({})"


def _rows(tx: Tx, devices: set[str]) -> dict[str, list[Any]]:
    """The stored rows of ``devices`` as lists (columns in table order, the document decoded)."""
    ids = sorted(devices)
    rows: dict[str, list[Any]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for r in tx.query(_ROW.format(",".join("?" * len(chunk))), chunk):
            rows[r[0]] = [r[0], r[1], r[2], r[3], r[4], r[5], r[6], msgspec.json.decode(r[7] or "{}")]
    return rows


def _ts(d: datetime) -> float:
    return d.timestamp()


def _fields(*structs: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(f for cls in structs for f in cls.__struct_fields__)


# Known fields only: unknown payload keys stay in the log and the lake, never in the
# live document (a device must not be able to grow it without bound).
_HEALTH = _fields(ev.Heartbeat, ev.Telemetry)
_CONFIG = _fields(ev.Config)
_CONNECTIVITY = _fields(ev.Connectivity)
_TRANSACTION = _fields(ev.Transaction)
_SECURITY = _fields(ev.Security)
_SLOT = _fields(ev.SlotState)
# per-device maps keyed by device text (slot names, fault codes): the newest are kept
MAX_SLOTS = 512
MAX_FAULT_CODES = 128


def _known(data: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """The known, non-null fields of ``data``. The usual payload has nothing else, so it
    is checked with two C-level tests and returned as it is (callers copy it); only a
    payload with an unknown key or a null is filtered key by key."""
    if fields.issuperset(data) and None not in data.values():
        return data
    return {k: v for k, v in data.items() if k in fields and v is not None}


def _trim(m: dict[str, Any], limit: int, rank: Any) -> None:
    """Keep the ``limit`` entries of ``m`` ranking highest by ``rank(key, value)``."""
    if len(m) > limit:
        for k in sorted(m, key=lambda k: rank(k, m[k]))[: len(m) - limit]:
            del m[k]


def _slot_at(_k: str, v: dict[str, Any]) -> Any:
    return v.get("at", 0)


def fold(doc: dict[str, Any], e: ev.StoredEvent) -> None:
    """Merge one event into a device's state document (newest event time wins per field)."""
    _fold(doc, e.type, _ts(e.occurred_at), msgspec.json.decode(e.data))


def _newer(doc: dict[str, Any], section: str, at: float) -> bool:
    prev = doc.get(section)
    return prev is None or prev.get("at") is None or at >= prev["at"]


# One function per event type, looked up by type (the stage's per-event cost: an if/elif
# chain walked up to ten string comparisons for the most common type). Each merges an
# event at ``at`` (epoch seconds) with its decoded payload ``data`` into ``doc``. The
# common types are written out (``_known`` and ``_newer`` inline, no empty dict made for
# a section that exists): they are most of the stage's per-event Python work.
def _merge(section: str, fields: frozenset[str], doc: dict[str, Any], at: float, data: Any) -> None:
    """Merge the known, non-null fields of ``data`` into ``doc[section]`` unless it is newer."""
    part = doc.get(section)
    if part is None:
        part = doc[section] = {}
    elif (prev := part.get("at")) is not None and at < prev:
        return
    if fields.issuperset(data) and None not in data.values():
        part.update(data)
    else:
        part.update({k: v for k, v in data.items() if k in fields and v is not None})
    part["at"] = at


# (a partial is called from C: no extra Python frame per event)
_fold_health: Callable[[dict[str, Any], float, Any], None] = partial(_merge, "health", _HEALTH)
_fold_connectivity: Callable[[dict[str, Any], float, Any], None] = partial(_merge, "connectivity", _CONNECTIVITY)


def _fold_heartbeat(doc: dict[str, Any], at: float, data: Any) -> None:
    _fold_health(doc, at, data)
    if version := data.get("firmware_version"):
        fw = doc.get("firmware")
        if fw is None:
            doc["firmware"] = {"firmware_version": version, "at": at}
        elif (prev := fw.get("at")) is None or at >= prev:
            fw["firmware_version"] = version
            fw["at"] = at


def _fold_config(doc: dict[str, Any], at: float, data: Any) -> None:
    if _newer(doc, "firmware", at):
        fw = doc.setdefault("firmware", {})
        fw.update(_known(data, _CONFIG))
        fw["at"] = at


def _fold_inventory(doc: dict[str, Any], at: float, data: Any) -> None:
    stock = doc.get("stock")
    if stock is None:
        stock = doc["stock"] = {}
    for s in data.get("slots", []):
        slot = s["slot"]
        prev = stock.get(slot)
        if prev is None:
            if at >= 0:  # as an empty slot with "at" 0 would
                stock[slot] = {**_known(s, _SLOT), "at": at}
        elif prev.get("at", 0) <= at:
            stock[slot] = {**prev, **_known(s, _SLOT), "at": at}
    if len(stock) > MAX_SLOTS:
        _trim(stock, MAX_SLOTS, _slot_at)


def _fold_refill(doc: dict[str, Any], at: float, data: Any) -> None:
    stock = doc.setdefault("stock", {})
    for s in data.get("slots", []):
        prev = stock.get(s["slot"], {})
        if prev.get("at", 0) <= at and s.get("count_after") is not None:
            stock[s["slot"]] = {**prev, "slot": s["slot"], "count": s["count_after"], "at": at,
                                **({"product_id": s["product_id"]} if s.get("product_id") else {})}
    _trim(stock, MAX_SLOTS, _slot_at)
    doc["last_refill_at"] = max(doc.get("last_refill_at") or 0, at)


def _fold_stock_alert(doc: dict[str, Any], at: float, data: Any) -> None:
    stock = doc.setdefault("stock", {})
    prev = stock.get(data["slot"], {})
    if prev.get("at", 0) <= at:
        stock[data["slot"]] = {**prev, "slot": data["slot"], "level": data["level"], "at": at,
                               **({"count": data["count"]} if data.get("count") is not None else {})}
    _trim(stock, MAX_SLOTS, _slot_at)


def _fold_transaction(doc: dict[str, Any], at: float, data: Any) -> None:
    prev = doc.get("last_transaction")
    if prev is None or (prev_at := prev.get("at")) is None or at >= prev_at:
        if _TRANSACTION.issuperset(data) and None not in data.values():
            doc["last_transaction"] = {**data, "at": at}
        else:
            doc["last_transaction"] = {**{k: v for k, v in data.items() if k in _TRANSACTION and v is not None},
                                       "at": at}


def _fold_fault(doc: dict[str, Any], at: float, data: Any) -> None:
    # raised/cleared per code, newest change wins (an old "raised" arriving late must
    # not re-open a fault that was cleared since)
    changed = doc.setdefault("fault_changed_at", {})
    code = data["code"]
    if at >= changed.get(code, float("-inf")):
        changed[code] = at
        faults = doc.setdefault("active_faults", {})
        if data.get("state") == "cleared":
            faults.pop(code, None)
        else:
            faults[code] = at
        if len(changed) > MAX_FAULT_CODES:  # cleared codes go first, then the oldest
            _trim(changed, MAX_FAULT_CODES, lambda k, v: (k in faults, v))
        if not faults.keys() <= changed.keys():
            for gone in [c for c in faults if c not in changed]:
                del faults[gone]


def _fold_security(doc: dict[str, Any], at: float, data: Any) -> None:
    if _newer(doc, "last_security", at):
        doc["last_security"] = {**_known(data, _SECURITY), "at": at}


def _fold_log(doc: dict[str, Any], at: float, data: Any) -> None:
    if data.get("kind") == "crash":
        doc["last_crash_at"] = max(doc.get("last_crash_at") or 0, at)


def _fold_nothing(doc: dict[str, Any], at: float, data: Any) -> None:
    """Types that do not change the document (refunds, DEX reads): counted, not folded."""


_FOLD: dict[str, Callable[[dict[str, Any], float, Any], None]] = {
    "heartbeat": _fold_heartbeat,
    "telemetry": _fold_health,
    "config": _fold_config,
    "connectivity": _fold_connectivity,
    "inventory": _fold_inventory,
    "refill": _fold_refill,
    "stock_alert": _fold_stock_alert,
    "transaction": _fold_transaction,
    "fault": _fold_fault,
    "security": _fold_security,
    "log": _fold_log,
}


def _fold(doc: dict[str, Any], t: str, at: float, data: Any) -> None:
    """``fold`` of an event of type ``t`` at ``at`` (epoch seconds) with its decoded payload."""
    _FOLD.get(t, _fold_nothing)(doc, at, data)


def count_business(evs: list[ev.StoredEvent]) -> None:
    """Vends, revenue and refunds as counters (the lake has the exact figures; these are live rates)."""
    tallies = _Tallies()
    tallies.add([(e.type, msgspec.json.decode(e.data)) for e in evs if e.type in _SALES])
    tallies.publish()


class _Tallies:
    """Vends, revenue and refunds summed over a transaction's events, published to the
    counters once it committed (a labelled counter update costs more than folding an event)."""

    def __init__(self) -> None:
        self.vends: dict[str, int] = {}
        self.revenue: dict[str, int] = {}
        self.refunds: dict[str, int] = {}

    def add(self, items: list[tuple[str, Any]]) -> None:
        """Count (type, decoded payload) pairs of sales and refunds."""
        vends, revenue, refunds = self.vends, self.revenue, self.refunds
        for t, d in items:
            if type(d) is not dict:  # a refund folds nothing, so any payload gets this far
                continue
            if t == "transaction":
                if d.get("payment_status") == "failure":
                    outcome = "payment_failure"
                elif d.get("vend_status") == "success":
                    outcome = "success"
                    if isinstance(d.get("price_minor"), int) and isinstance(d.get("currency"), str):
                        cur = d["currency"][:3]
                        revenue[cur] = revenue.get(cur, 0) + d["price_minor"]
                else:
                    outcome = "vend_failure" if d.get("vend_status") == "failure" else "not_attempted"
                vends[outcome] = vends.get(outcome, 0) + 1
            elif t == "refund" and isinstance(d.get("amount_minor"), int) and isinstance(d.get("currency"), str):
                cur = d["currency"][:3]
                refunds[cur] = refunds.get(cur, 0) + d["amount_minor"]

    def publish(self) -> None:
        for outcome, n in self.vends.items():
            VENDS.labels(outcome).inc(n)
        for cur, n in self.revenue.items():
            REVENUE.labels(cur).inc(n)
        for cur, n in self.refunds.items():
            REFUNDS.labels(cur).inc(n)


class DeviceStateProjector(CheckpointedStage):
    name = "device-state"
    hop = "state"
    topics = (EVENTS,)
    bulk_read = True
    # A poll is read (and decoded, and folded) this many records at a time, all in one
    # transaction of up to ``batch_size``: decoding 2,000 events at once cost about twice
    # as much per event as 250 at a time (the decoded objects no longer fit the CPU's
    # cache), while a transaction per 250 events would multiply the per-transaction costs.
    read_chunk = 256

    _tallies = _Tallies()  # sales and refunds of the last apply
    _poll_due = 0.0

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.poll_interval_s = ctx.settings.state.projector_poll_interval_s

    def poll(self, c: Consumer, timeout_s: float) -> Sequence[Record]:
        # After a poll that drained the log (a live stage, not a backlog), the next one
        # waits until ``poll_interval_s`` after it: each transaction then carries what
        # arrived meanwhile, so its fixed costs (the commit and its fsync, the rows and
        # checkpoints read and written, a read per partition) are shared by more events.
        # The state shows up to that much later.
        if (wait := self._poll_due - time.monotonic()) > 0:
            time.sleep(wait)
        started = time.monotonic()
        recs = self._read(c, timeout_s) if self.bulk_read else super().poll(c, timeout_s)
        self._poll_due = started + self.poll_interval_s if 0 < len(recs) < self.batch_size else 0.0
        return recs

    def _read(self, c: Consumer, timeout_s: float) -> Sequence[Record]:
        """Up to ``batch_size`` records in runs of at most ``read_chunk``: reads go on while
        the last one was full (a read short of it found every partition drained)."""
        chunk = min(self.read_chunk, self.batch_size)
        runs = c.poll_joined(chunk, timeout_s)
        total = last = sum(len(j.offsets) for j in runs)
        while last >= chunk and total < self.batch_size:
            more = c.poll_joined(min(chunk, self.batch_size - total), 0.0)
            last = sum(len(j.offsets) for j in more)
            runs += more
            total += last
        return RecordBatch(self.ctx.log, runs) if runs else []

    def committed(self, applied: bool) -> None:
        # counted per committed transaction: a rolled-back batch is not counted, and the
        # parts of a batch isolated around a record set aside each are
        if applied:
            self._tallies.publish()

    def apply(self, tx: Tx, records: Sequence[Record]) -> None:
        self._tallies = _Tallies()
        rows: dict[str, list[Any]] = {}
        if isinstance(records, RecordBatch):
            # one decoder call per run; if a value does not decode, that run record by
            # record (the failing record is then isolated and set aside by the stage)
            for j in records.runs:
                evs = decode_run(_events, j)
                if evs is None:
                    evs = [_event.decode(r.value) for r in run_records(records.log, j)]
                self._fold(tx, rows, evs)
        else:
            self._fold(tx, rows, [_event.decode(r.value) for r in records])
        tx.executemany(
            "INSERT INTO device_state VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET"
            " site_id=excluded.site_id, first_seen_at=excluded.first_seen_at, last_seen_at=excluded.last_seen_at,"
            " last_event_at=excluded.last_event_at, last_seq=excluded.last_seq, events=excluded.events, doc=excluded.doc",
            [(*r[:7], msgspec.json.encode(r[7]).decode()) for r in rows.values()],
        )

    def _fold(self, tx: Tx, rows: dict[str, list[Any]], evs: list[StateEvent]) -> None:
        """Fold ``evs`` into ``rows`` (by device; rows not there yet are read from ``tx``)."""
        self._tallies.add([(e.type, e.data) for e in evs if e.type in _SALES])
        if new := {e.device_id for e in evs}.difference(rows):
            rows.update(_rows(tx, new))
        folders, nothing = _FOLD, _fold_nothing
        # A device's events come in runs (a request's events are consecutive in its
        # partition): the row's columns are folded once per run, with C-level min/max
        # over the run's times, and the fold converts an event time only when it differs
        # from the previous event's (a request's events often share it).
        for dev, it in groupby(evs, _device_of):
            run = list(it)
            row = rows.get(dev)
            if row is None:
                row = rows[dev] = [dev, run[0].site_id, None, None, None, None, 0, {}]
            sites = [s for e in run if (s := e.site_id)]
            if sites:
                row[1] = sites[-1]
            recv = [e.received_at for e in run]
            first, last = min(recv).timestamp(), max(recv).timestamp()
            if row[2] is None or first < row[2]:
                row[2] = first
            if row[3] is None or last > row[3]:
                row[3] = last
            newest = max([e.occurred_at for e in run]).timestamp()
            if row[4] is None or newest > row[4]:
                row[4] = newest
            seqs = [q for e in run if (q := e.seq) is not None]
            if seqs:
                seq = max(seqs)
                if row[5] is None or seq > row[5]:
                    row[5] = seq
            row[6] += len(run)
            doc, prev, at = row[7], None, 0.0
            for e in run:
                if (occ := e.occurred_at) != prev:
                    prev, at = occ, occ.timestamp()
                folders.get(e.type, nothing)(doc, at, e.data)


def build(ctx: Context) -> DeviceStateProjector:
    return DeviceStateProjector(ctx)
