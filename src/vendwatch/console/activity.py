"""What the log says right now: a device's recent events, append rates, stage lag.

Reads are bounded: a device's recent events come from scanning its partition of the
``events`` topic backwards at most ``max_scan`` records, so a busy partition costs a
fixed amount per page view (the lake answers questions about older history).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from vendwatch import events as ev
from vendwatch.bus.base import EVENTS, Log, partition_for

SCAN_CHUNK = 2000
_positions = msgspec.json.Decoder(dict[str, int])


def device_partition(log: Log, device_id: str) -> int:
    """The partition of ``events`` holding a device's records.

    Events are keyed by device id and every backend places a key with ``partition_for``
    (the Kafka log passes it to the producer explicitly), so this is where they are.
    """
    return partition_for(device_id, log.partitions(EVENTS))


def recent_events(
    log: Log, device_id: str, *, limit: int = 50, max_scan: int = 20_000, types: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Newest-first events of one device, scanning at most ``max_scan`` records back.

    ``complete`` is true when the scan reached the oldest retained record, so no older
    event of the device is left in the log.
    """
    part = device_partition(log, device_id)
    begin = log.begin_offsets(EVENTS).get(part, 0)
    cursor = log.end_offsets(EVENTS).get(part, 0)
    found: list[dict[str, Any]] = []
    scanned = 0
    while cursor > begin and scanned < max_scan and len(found) < limit:
        start = max(begin, cursor - min(SCAN_CHUNK, max_scan - scanned))
        records = log.read(EVENTS, part, start, cursor - start)
        scanned += cursor - start
        for r in reversed(records):
            if r.key != device_id or r.offset >= cursor:
                continue
            e = ev.decode_stored(r.value)
            if e.device_id != device_id or (types and e.type not in types):
                continue
            found.append(_event_view(e, r.offset))
            if len(found) >= limit:
                break
        cursor = start
    return {"device_id": device_id, "events": found, "scanned": scanned, "complete": cursor <= begin,
            "partition": part}


def _event_view(e: ev.StoredEvent, offset: int) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(e.data)
    except msgspec.DecodeError:  # stored bytes are validated JSON; keep the page alive regardless
        data = {"_raw": bytes(e.data).decode("utf-8", "replace")}
    return {
        "offset": offset,
        "event_id": e.event_id,
        "type": e.type,
        "category": ev.CATEGORY.get(e.type),
        "occurred_at": e.occurred_at.timestamp(),
        "received_at": e.received_at.timestamp(),
        "seq": e.seq,
        "late": e.late,
        "data": data,
    }


def log_position(log: Log, topic: str) -> tuple[int, int]:
    """``(end, retained)`` of a topic: the sum of end offsets (it grows by one per append,
    so its slope is the append rate) and the records still retained (end - begin)."""
    ends, begins = log.end_offsets(topic), log.begin_offsets(topic)
    return sum(ends.values()), sum(ends[p] - begins.get(p, ends[p]) for p in ends)


class RateMeter:
    """Records/s of a growing counter, from samples taken when someone asks.

    The console polls every few seconds; each poll adds a sample and the rate is the
    slope over the last ``window_s``. The first poll has no rate yet (None).
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, total: int) -> float | None:
        now = self.clock()
        if self._samples and total < self._samples[-1][1]:
            self._samples.clear()  # the log was reset or retention dropped a partition
        self._samples.append((now, total))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        if now - t0 < 1.0:
            return None
        return (total - n0) / (now - t0)


def stage_lag(log: Log, checkpoints: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """Records each checkpointed stage still has to read, from its stored positions.

    ``checkpoints`` are ``(name, data)`` rows of ``vendwatch.stage``: one per partition,
    ``offsets:<group>:<topic>/<partition>`` holding the next offset, or (older format)
    ``offsets:<group>`` holding ``{"topic/partition": next_offset}``.
    """
    per_stage: dict[str, dict[str, int]] = {}
    for name, data in checkpoints:
        group, _, tp = name.removeprefix("offsets:").partition(":")
        try:
            if tp:
                pos = msgspec.json.decode(data)
                if not isinstance(pos, int) or isinstance(pos, bool):
                    continue
                per_stage.setdefault(group, {})[tp] = pos
            else:
                whole = _positions.decode(data)
                per_stage.setdefault(group, {}).update(whole)
        except msgspec.DecodeError:  # a component keeping another format under this name: not a stage
            continue
    ends: dict[str, dict[int, int]] = {}
    out = []
    for group, positions in per_stage.items():
        lag = 0
        for key, pos in positions.items():
            topic, _, part = key.rpartition("/")
            if not part.isdigit():
                continue
            if topic not in ends:
                ends[topic] = log.end_offsets(topic)
            lag += max(0, ends[topic].get(int(part), pos) - pos)
        out.append({"stage": group.removeprefix("vendwatch-"), "lag_records": lag})
    return sorted(out, key=lambda s: s["stage"])
