"""Contract of the ``Log`` port; every backend runs the same tests.

Backends are listed in ``LOG_BACKENDS``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from tests.contract.kafka_backend import kafka_log

from vendwatch.bus.base import Log
from vendwatch.bus.batch import RecordBatch
from vendwatch.bus.sqlite import SqliteLog


def _sqlite(tmp_path: Path) -> Log:
    return SqliteLog(tmp_path / "bus.db", default_partitions=3)


# Both backends always run: a broken import of the Kafka backend fails the suite instead
# of quietly testing SQLite alone (a missing broker skips locally and fails in CI).
LOG_BACKENDS: dict[str, Callable[[Path], Log]] = {"sqlite": _sqlite, "kafka": kafka_log}


@pytest.fixture(params=sorted(LOG_BACKENDS))
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    lg = LOG_BACKENDS[request.param](tmp_path)
    yield lg
    lg.close()


@pytest.fixture
def topic() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def _drain(consumer, want: int, rounds: int = 40) -> list:
    got: list = []
    for _ in range(rounds):
        got.extend(consumer.poll(1000, timeout_s=0.5))
        if len(got) >= want:
            break
    return got


def test_append_returns_positions_and_read_returns_values(log: Log, topic: str) -> None:
    log.create_topic(topic, 3)
    pos = log.append(topic, [("dev-a", b"1"), ("dev-b", b"2"), ("dev-a", b"3")])
    assert len(pos) == 3
    assert pos[0][0] == pos[2][0], "same key, same partition"
    assert pos[2][1] > pos[0][1], "offsets grow within a partition"
    recs = log.read(topic, pos[0][0], pos[0][1])
    assert [r.value for r in recs if r.key == "dev-a"] == [b"1", b"3"]
    assert all(r.topic == topic for r in recs)


def test_per_key_order_is_kept(log: Log, topic: str) -> None:
    log.create_topic(topic, 3)
    for i in range(20):
        log.append(topic, [(f"k{i % 4}", str(i).encode())])
    c = log.consumer("g-" + topic, [topic])
    recs = _drain(c, 20)
    assert len(recs) == 20
    for k in range(4):
        vals = [int(r.value) for r in recs if r.key == f"k{k}"]
        assert vals == sorted(vals)
    c.close()


def test_end_offsets_advance(log: Log, topic: str) -> None:
    log.create_topic(topic, 2)
    before = log.end_offsets(topic)
    log.append(topic, [("x", b"1")] * 5)
    after = log.end_offsets(topic)
    assert sum(after.values()) - sum(before.values()) >= 5
    assert set(after) == {0, 1}


def test_offset_for_time_finds_the_first_record_at_or_after_a_time(log: Log, topic: str) -> None:
    import time

    log.create_topic(topic, 1)
    before = int(time.time() * 1000) - 1
    [(p, first)] = log.append(topic, [("dev-a", b"1")])
    time.sleep(0.05)
    between = int(time.time() * 1000)
    time.sleep(0.05)
    [(_, second)] = log.append(topic, [("dev-a", b"2")])
    assert log.offset_for_time(topic, p, 0) == first
    assert log.offset_for_time(topic, p, before) == first
    assert log.offset_for_time(topic, p, between) == second
    assert log.offset_for_time(topic, p, int(time.time() * 1000) + 60_000) == log.end_offsets(topic)[p], (
        "nothing that late: the end")


def test_group_resumes_after_commit(log: Log, topic: str) -> None:
    log.create_topic(topic, 2)
    log.append(topic, [(f"k{i}", str(i).encode()) for i in range(10)])
    g = "g-" + topic
    c1 = log.consumer(g, [topic])
    first = _drain(c1, 10)
    assert sorted(int(r.value) for r in first) == list(range(10))
    c1.commit()
    c1.close()
    log.append(topic, [(f"k{i}", str(i).encode()) for i in range(10, 15)])
    c2 = log.consumer(g, [topic])
    second = _drain(c2, 5)
    assert sorted(int(r.value) for r in second) == list(range(10, 15)), "no re-delivery after commit"
    c2.close()


def test_uncommitted_records_are_redelivered(log: Log, topic: str) -> None:
    log.create_topic(topic, 1)
    log.append(topic, [("k", b"a"), ("k", b"b")])
    g = "g-" + topic
    c1 = log.consumer(g, [topic])
    assert len(_drain(c1, 2)) == 2
    c1.close()  # no commit: at-least-once means we see them again
    c2 = log.consumer(g, [topic])
    assert [r.value for r in _drain(c2, 2)] == [b"a", b"b"]
    c2.close()


def test_seek_on_assign_replays_from_checkpoint(log: Log, topic: str) -> None:
    log.create_topic(topic, 1)
    pos = log.append(topic, [("k", str(i).encode()) for i in range(6)])
    third = pos[3][1]
    holder: dict = {}

    def on_assign(parts):
        for t, p in parts:
            holder["c"].seek(t, p, third)

    c = log.consumer("g-" + topic, [topic], on_assign=on_assign)
    holder["c"] = c
    recs = _drain(c, 3)
    assert [r.value for r in recs] == [b"3", b"4", b"5"]
    c.close()


def test_groups_are_independent(log: Log, topic: str) -> None:
    log.create_topic(topic, 1)
    log.append(topic, [("k", b"x")])
    a = log.consumer("ga-" + topic, [topic])
    b = log.consumer("gb-" + topic, [topic])
    assert len(_drain(a, 1)) == 1
    a.commit()
    assert len(_drain(b, 1)) == 1
    a.close()
    b.close()


def test_poll_times_out_empty(log: Log, topic: str) -> None:
    log.create_topic(topic, 1)
    c = log.consumer("g-" + topic, [topic])
    assert c.poll(10, timeout_s=0.2) == []
    c.close()


def test_committed_offsets_visible(log: Log, topic: str) -> None:
    log.create_topic(topic, 1)
    log.append(topic, [("k", b"1"), ("k", b"2")])
    g = "g-" + topic
    c = log.consumer(g, [topic])
    recs = _drain(c, 2)
    c.commit()
    assert log.committed_offsets(g, topic)[0] == recs[-1].offset + 1
    c.close()


def test_binary_values_roundtrip(log: Log, topic: str) -> None:
    log.create_topic(topic, 1)
    blob = bytes(range(256)) * 40
    p, o = log.append(topic, [("k", blob)])[0]
    assert log.read(topic, p, o, 1)[0].value == blob


def test_append_to_a_new_topic_creates_it(log: Log, topic: str) -> None:
    # no create_topic first: the first append must create the topic, not hang or fail
    pos = log.append(topic, [("k", b"v")])
    assert len(pos) == 1
    assert log.read(topic, pos[0][0], pos[0][1], 1)[0].value == b"v"


def _drain_joined(consumer, want: int, rounds: int = 40) -> list:
    got: list = []
    for _ in range(rounds):
        got.extend(consumer.poll_joined(1000, timeout_s=0.5))
        if sum(len(j.offsets) for j in got) >= want:
            break
    return got


def test_poll_joined_gives_what_poll_gives(log: Log, topic: str) -> None:
    log.create_topic(topic, 3)
    log.append(topic, [(f"k{i % 5}", b'{"i":%d,"s":"a,b"}' % i) for i in range(40)])
    c = log.consumer("g-" + topic, [topic])
    runs = _drain_joined(c, 40)
    values = []
    for j in runs:
        recs = log.read(topic, j.partition, j.offsets[0], len(j.offsets))
        assert j.topic == topic and j.offsets == [r.offset for r in recs]
        assert j.values == b",".join(r.value for r in recs)
        assert (j.oldest_ms, j.newest_ms) == (min(r.timestamp_ms for r in recs), max(r.timestamp_ms for r in recs))
        values += msgspec.json.decode(b"[" + j.values + b"]")
    assert sorted(v["i"] for v in values) == list(range(40))
    for k in range(5):  # per-key order, as poll
        mine = [v["i"] for v in values if v["i"] % 5 == k]
        assert mine == sorted(mine)
    ends = log.end_offsets(topic)
    read_from = {j.partition for j in runs}
    assert {p: o for (_t, p), o in c.position().items() if p in read_from} == {p: ends[p] for p in read_from}
    c.commit()
    committed = log.committed_offsets("g-" + topic, topic)
    assert {p: committed[p] for p in read_from} == {p: ends[p] for p in read_from}
    c.close()


def test_a_record_batch_is_the_records_it_was_read_as(log: Log, topic: str) -> None:
    log.create_topic(topic, 2)
    # k0 and k4 land on different partitions (``partition_for``)
    log.append(topic, [(f"k{i % 2 * 4}", b'{"i":%d}' % i) for i in range(20)] + [("k0", b"not json"), ("k0", b"[1,2]")])
    c = log.consumer("g-" + topic, [topic])
    batch = RecordBatch(log, _drain_joined(c, 22))
    recs = [r for p in range(2) for r in log.read(topic, p, 0, 100)]
    assert len(batch) == 22
    assert sorted((r.partition, r.offset, r.key, r.value, r.timestamp_ms) for r in batch) == sorted(
        (r.partition, r.offset, r.key, r.value, r.timestamp_ms) for r in recs)
    assert batch.next_offsets() == {(topic, p): max(r.offset for r in recs if r.partition == p) + 1 for p in range(2)}
    # a value that is not one JSON document: no bulk decode, the caller goes record by record
    assert batch.decode(msgspec.json.Decoder(list[dict])) is None
    [dirty] = {r.partition for r in recs if r.value == b"not json"}
    clean = [j for j in batch.runs if j.partition != dirty]
    assert clean
    got = RecordBatch(log, clean).decode(msgspec.json.Decoder(list[dict]))
    assert got is not None and sorted(v["i"] for v in got) == sorted(
        msgspec.json.decode(r.value)["i"] for r in recs if r.partition != dirty)
    c.close()


def test_every_backend_runs_the_contract() -> None:
    assert sorted(LOG_BACKENDS) == ["kafka", "sqlite"]
