"""The scale-out backbone: the ``Log`` port on Apache Kafka (MSK in production).

Client: confluent-kafka (librdkafka). Chosen because it is the maintained client with
an idempotent producer, consumer groups with the cooperative-sticky assignor and
manual commits, SASL/SCRAM/IAM-OAUTHBEARER and TLS for MSK, and it moves data in C
threads, so a Python collector is not bound by the GIL while batches are in flight.
(kafka-python is unmaintained for new brokers; aiokafka is asyncio-only and lacks the
cooperative assignor.)

Mapping of the port's semantics:

* ``append`` produces every record with the idempotent producer (``acks=all``) and
  returns only when all delivery reports are in: the records are on every in-sync
  replica. Any delivery error raises ``LogUnavailable`` (the caller retries; records
  that did land may then be appended twice: at-least-once, like the SQLite log after a
  crash between append and acknowledgement).
* The partition of a record is ``partition_for(key, n)`` (the same CRC32 mapping as the
  SQLite log), so a device lands on the same partition in both modes.
* One Kafka topic per vendwatch stream, named ``<topic_prefix><topic>``, created by
  the admin client with the configured partitions, replication and retention.
* A consumer joins a group with ``enable.auto.commit=false``; ``commit`` commits the
  positions after the records returned by ``poll`` (or given offsets) synchronously.
  Kafka's assign/revoke callbacks run the stage's ``on_assign``/``on_revoke`` inside
  ``poll``; a ``seek`` made during ``on_assign`` becomes the starting offset of the
  assignment, which is how checkpointed stages resume exactly where their state is.
* ``append_many`` is not atomic across topics (Kafka transactions would make it so,
  at the price of a transactional id per process); no caller relies on it.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import confluent_kafka as ck
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from vendwatch.bus.base import (
    AssignCallback,
    Consumer,
    Log,
    LogError,
    LogUnavailable,
    Record,
    TopicPartition,
    partition_for,
)
from vendwatch.config import KafkaSettings

log = logging.getLogger("vendwatch.bus.kafka")

_TOPIC_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def client_config(s: KafkaSettings) -> dict[str, Any]:
    """librdkafka settings shared by producer, consumers and admin (connection, SASL, TLS)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": s.bootstrap_servers,
        "security.protocol": s.security_protocol,
        "client.id": s.client_id,
    }
    if s.sasl_mechanism:
        conf["sasl.mechanism"] = s.sasl_mechanism
    if s.sasl_username is not None:
        conf["sasl.username"] = s.sasl_username
    if s.sasl_password is not None:
        conf["sasl.password"] = s.sasl_password
    if s.ssl_ca_location:
        conf["ssl.ca.location"] = s.ssl_ca_location
    conf.update(s.extra)
    return conf


_LEADER_MOVING = frozenset({ck.KafkaError.NOT_LEADER_FOR_PARTITION, ck.KafkaError.LEADER_NOT_AVAILABLE})

class _Batch:
    """Collects the delivery reports of one ``append`` call."""

    def __init__(self, n: int) -> None:
        self.positions: list[TopicPartition | None] = [None] * n
        self.errors: list[str] = []
        self._left = n
        self._lock = threading.Lock()
        self.done = threading.Event()
        if n == 0:
            self.done.set()

    def report(self, i: int, err: ck.KafkaError | None, msg: ck.Message) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.positions[i] = (msg.partition(), msg.offset())
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self.done.set()


class KafkaLog(Log):
    """``Log`` on Kafka; one instance per process, shared by all its stages (thread-safe)."""

    def __init__(self, settings: KafkaSettings, *, retention_ms: int | None = None) -> None:
        self.s = settings
        self.retention_ms = retention_ms
        self._conf = client_config(settings)
        self._admin_client: AdminClient | None = None  # made on first use: it connects at once
        self._probe: AdminClient | None = None
        self._parts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._producer: ck.Producer | None = None
        self._poller: threading.Thread | None = None
        self._closing = threading.Event()
        self._local = threading.local()
        self._readers: list[ck.Consumer] = []

    @property
    def _admin(self) -> AdminClient:
        with self._lock:
            if self._admin_client is None:
                self._admin_client = AdminClient(self._conf)
            return self._admin_client

    def check(self, timeout_s: float = 5.0) -> None:
        # a client of its own that keeps quiet: librdkafka would print a line per connection
        # attempt (~20 a second) while the caller already says what it waits for
        if self._probe is None:
            self._probe = AdminClient({**self._conf, "log_level": 2})
        try:
            self._probe.list_topics(timeout=timeout_s)
        except ck.KafkaException as e:
            raise LogUnavailable(f"cannot reach Kafka at {self.s.bootstrap_servers}: {e.args[0].str()}") from e

    # -- names and topics -------------------------------------------------------
    def kafka_topic(self, topic: str) -> str:
        return self.s.topic_prefix + topic

    def _check_name(self, topic: str) -> None:
        if not _TOPIC_RE.match(topic):
            raise LogError(f"invalid topic name {topic!r}: use lowercase letters, digits and _")

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        self._check_name(topic)
        name = self.kafka_topic(topic)
        n = partitions or self.s.partitions
        config = {"retention.ms": str(self.retention_ms)} if self.retention_ms else {}
        fut = self._admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=self.s.replication_factor, config=config)],
            request_timeout=self.s.request_timeout_ms / 1000,
        )[name]
        try:
            fut.result()
        except ck.KafkaException as e:
            if e.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise LogUnavailable(f"cannot create topic {name}: {e}") from e
        self._wait_for_topic(topic)

    def _wait_for_topic(self, topic: str, timeout_s: float = 15.0) -> int:
        """Wait until the topic's partitions all have a leader; returns the partition count."""
        name = self.kafka_topic(topic)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                md = self._admin.list_topics(name, timeout=5).topics.get(name)
            except ck.KafkaException as e:
                raise LogUnavailable(f"cannot reach Kafka at {self.s.bootstrap_servers}: {e}") from e
            if md is not None and md.error is None and md.partitions and all(
                p.leader >= 0 for p in md.partitions.values()
            ):
                n = len(md.partitions)
                with self._lock:
                    self._parts[topic] = n
                return n
            if time.monotonic() > deadline:
                raise LogUnavailable(f"topic {name} has no leader after {timeout_s:g}s")
            time.sleep(0.05)

    def _lookup_partitions(self, topic: str) -> int | None:
        name = self.kafka_topic(topic)
        try:
            md = self._admin.list_topics(name, timeout=5).topics.get(name)
        except ck.KafkaException as e:
            raise LogUnavailable(f"cannot reach Kafka at {self.s.bootstrap_servers}: {e}") from e
        if md is None or md.error is not None or not md.partitions:
            return None
        return len(md.partitions)

    def partitions(self, topic: str) -> int:
        n = self._parts.get(topic)
        if n is not None:
            return n
        self._check_name(topic)
        n = self._lookup_partitions(topic)
        if n is None:  # like the SQLite log: a stream comes into being on first use
            self.create_topic(topic)
            return self._parts[topic]
        with self._lock:
            self._parts[topic] = n
        return n

    # -- writes -----------------------------------------------------------------
    def _get_producer(self) -> ck.Producer:
        with self._lock:
            if self._producer is None:
                conf = {
                    **self._conf,
                    "enable.idempotence": True,  # no duplicates or reordering on retries
                    "acks": "all",
                    "linger.ms": self.s.linger_ms,
                    "compression.type": self.s.compression,
                    "message.timeout.ms": self.s.delivery_timeout_ms,
                    "queue.buffering.max.messages": 500_000,
                }
                self._producer = ck.Producer(conf)
                # one thread serves all delivery reports, so append() callers just wait
                self._poller = threading.Thread(target=self._serve_reports, name="vw-kafka-dr", daemon=True)
                self._poller.start()
            return self._producer

    def _serve_reports(self) -> None:
        while not self._closing.is_set():
            assert self._producer is not None
            self._producer.poll(0.1)

    def _produce(self, topic: str, items: Sequence[tuple[str, bytes]]) -> _Batch:
        """Hand records to the producer; the returned batch collects their delivery reports."""
        n = self.partitions(topic)
        name = self.kafka_topic(topic)
        producer = self._get_producer()
        batch = _Batch(len(items))
        for i, (key, value) in enumerate(items):
            cb = functools.partial(batch.report, i)
            while True:
                try:
                    producer.produce(name, value=value, key=key.encode(), partition=partition_for(key, n), on_delivery=cb)
                    break
                except BufferError:  # local queue full: wait for deliveries to drain it
                    time.sleep(0.005)
        producer.poll(0)
        return batch

    def _wait(self, topic: str, batch: _Batch, n: int) -> list[TopicPartition]:
        name = self.kafka_topic(topic)
        if not batch.done.wait(self.s.delivery_timeout_ms / 1000 + 10):
            raise LogUnavailable(f"no delivery report from Kafka for {name} within {self.s.delivery_timeout_ms} ms")
        if batch.errors:
            raise LogUnavailable(f"Kafka refused {len(batch.errors)} of {n} records for {name}: {batch.errors[0]}")
        return [p for p in batch.positions if p is not None]

    def append(self, topic: str, items: Sequence[tuple[str, bytes]]) -> list[TopicPartition]:
        if not items:
            return []
        return self._wait(topic, self._produce(topic, items), len(items))

    def append_many(self, batches: dict[str, Sequence[tuple[str, bytes]]]) -> dict[str, list[TopicPartition]]:
        # produce to every topic first, then wait: the deliveries overlap
        pending = {topic: self._produce(topic, items) for topic, items in batches.items() if items}
        return {topic: self._wait(topic, b, len(batches[topic])) for topic, b in pending.items()}

    # -- reads ------------------------------------------------------------------
    def _reader(self) -> ck.Consumer:
        c = getattr(self._local, "reader", None)
        if c is None:
            c = ck.Consumer({
                **self._conf,
                "group.id": f"vendwatch-reader-{uuid.uuid4().hex}",  # never joins: assign() only
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
            })
            self._local.reader = c
            with self._lock:
                self._readers.append(c)
        return c

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        # a partition whose leader is being elected (a topic just created, a broker
        # restarting) answers NOT_LEADER / LEADER_NOT_AVAILABLE for a moment: retry those
        deadline = time.monotonic() + 10
        while True:
            try:
                return self._reader().get_watermark_offsets(
                    ck.TopicPartition(self.kafka_topic(topic), partition), timeout=10, cached=False
                )
            except ck.KafkaException as e:
                err = e.args[0] if e.args and isinstance(e.args[0], ck.KafkaError) else None
                if err is not None and err.code() in _LEADER_MOVING and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise LogUnavailable(f"cannot read offsets of {topic}/{partition}: {e}") from e

    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        n = self.partitions(topic)
        if not 0 <= partition < n:
            raise LogError(f"topic {topic} has no partition {partition}")
        low, high = self._watermarks(topic, partition)
        start = max(offset, low)
        if start >= high or max_records <= 0:
            return []
        c = self._reader()
        c.assign([ck.TopicPartition(self.kafka_topic(topic), partition, start)])
        out: list[Record] = []
        deadline = time.monotonic() + 10
        try:
            while len(out) < max_records and time.monotonic() < deadline:
                for m in c.consume(max_records - len(out), timeout=0.5):
                    if m.error() is None:
                        out.append(_record(topic, m))
                if out and out[-1].offset >= high - 1:
                    break
        finally:
            c.unassign()
        return out[:max_records]

    def end_offsets(self, topic: str) -> dict[int, int]:
        return {p: self._watermarks(topic, p)[1] for p in range(self.partitions(topic))}

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        tp = ck.TopicPartition(self.kafka_topic(topic), partition, max(0, timestamp_ms))
        try:
            [got] = self._reader().offsets_for_times([tp], timeout=10)
        except ck.KafkaException as e:
            raise LogUnavailable(f"cannot look up offsets of {topic}/{partition} by time: {e}") from e
        if got.error is not None:
            raise LogUnavailable(f"cannot look up offsets of {topic}/{partition} by time: {got.error}")
        # -1: no record at or after that time
        return got.offset if got.offset >= 0 else self._watermarks(topic, partition)[1]

    def begin_offsets(self, topic: str) -> dict[int, int]:
        return {p: self._watermarks(topic, p)[0] for p in range(self.partitions(topic))}

    # -- groups -----------------------------------------------------------------
    def consumer(
        self,
        group: str,
        topics: Iterable[str],
        *,
        on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
    ) -> Consumer:
        return KafkaConsumer(self, group, list(topics), on_assign, on_revoke)

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        name = self.kafka_topic(topic)
        c = ck.Consumer({**self._conf, "group.id": group, "enable.auto.commit": False})
        try:
            tps = c.committed([ck.TopicPartition(name, p) for p in range(self.partitions(topic))], timeout=10)
        except ck.KafkaException as e:
            raise LogUnavailable(f"cannot read committed offsets of {group}: {e}") from e
        finally:
            c.close()
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}

    def enforce_retention(self, max_age_s: float) -> int:
        """Set ``retention.ms`` on every vendwatch topic; the broker deletes old segments
        itself, so the number of dropped records is not known here (returns 0)."""
        ms = str(int(max_age_s * 1000))
        try:
            names = [t for t in self._admin.list_topics(timeout=10).topics if t.startswith(self.s.topic_prefix)]
        except ck.KafkaException as e:
            raise LogUnavailable(f"cannot list topics: {e}") from e
        if not names:
            return 0
        resources = [
            ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
                ConfigEntry("retention.ms", ms, incremental_operation=AlterConfigOpType.SET)])
            for name in names
        ]
        for fut in self._admin.incremental_alter_configs(resources).values():
            fut.result()
        return 0

    def topic_config(self, topic: str) -> dict[str, str]:
        """The broker's configuration of one vendwatch topic (for checks and operators)."""
        res = ConfigResource(ConfigResource.Type.TOPIC, self.kafka_topic(topic))
        entries = self._admin.describe_configs([res])[res].result()
        return {k: v.value for k, v in entries.items()}

    def close(self) -> None:
        self._closing.set()
        if self._producer is not None:
            self._producer.flush(10)
            if self._poller is not None:
                self._poller.join(2)
        with self._lock:
            readers, self._readers = self._readers, []
        for c in readers:
            c.close()
        self._local = threading.local()


def _record(topic: str, m: ck.Message) -> Record:
    key = m.key()
    return Record(topic, m.partition(), m.offset(), key.decode() if key else "", m.value() or b"", m.timestamp()[1])


class KafkaConsumer(Consumer):
    """A consumer-group member; rebalance callbacks run inside ``poll``."""

    def __init__(
        self,
        log_: KafkaLog,
        group: str,
        topics: list[str],
        on_assign: AssignCallback | None,
        on_revoke: AssignCallback | None,
    ) -> None:
        self.log = log_
        self.group = group
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._names = {log_.kafka_topic(t): t for t in topics}
        for t in topics:  # streams exist before anyone subscribes (as with the SQLite log)
            log_.partitions(t)
        s = log_.s
        self._c = ck.Consumer({
            **log_._conf,
            "group.id": group,
            "enable.auto.commit": False,  # positions are committed after processing
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": s.session_timeout_ms,
            "heartbeat.interval.ms": max(500, s.session_timeout_ms // 5),
            "max.poll.interval.ms": s.max_poll_interval_ms,
        })
        self._assigned: list[TopicPartition] = []
        self._pos: dict[TopicPartition, int] = {}
        self._seeks: dict[TopicPartition, int] | None = None  # collecting seeks made in on_assign
        self._closed = False
        self._c.subscribe(list(self._names), on_assign=self._assign_cb, on_revoke=self._revoke_cb, on_lost=self._revoke_cb)

    def _tp(self, p: ck.TopicPartition) -> TopicPartition:
        return (self._names[p.topic], p.partition)

    def _assign_cb(self, c: ck.Consumer, parts: list[ck.TopicPartition]) -> None:
        new = [self._tp(p) for p in parts]
        log.info("group %s: assigned %s", self.group, ", ".join(f"{t}/{p}" for t, p in new) or "nothing")
        self._assigned.extend(tp for tp in new if tp not in self._assigned)
        self._seeks = {}
        try:
            if self._on_assign and new:
                self._on_assign(list(new))
            seeks = self._seeks
        finally:
            self._seeks = None
        for p in parts:
            tp = self._tp(p)
            if tp in seeks:
                p.offset = seeks[tp]
                self._pos[tp] = seeks[tp]
        # cooperative-sticky (every vendwatch member uses it): only the new partitions
        c.incremental_assign(parts)

    def _revoke_cb(self, c: ck.Consumer, parts: list[ck.TopicPartition]) -> None:
        gone = [self._tp(p) for p in parts]
        log.info("group %s: revoked %s", self.group, ", ".join(f"{t}/{p}" for t, p in gone))
        try:
            if self._on_revoke and gone:
                self._on_revoke(list(gone))
        finally:
            self._assigned = [tp for tp in self._assigned if tp not in gone]
            for tp in gone:
                self._pos.pop(tp, None)
            try:
                c.incremental_unassign(parts)
            except ck.KafkaException as e:  # during close the group may be gone already
                log.debug("unassign after revoke: %s", e)

    def poll(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[Record]:
        # consume() always waits its full timeout for a short batch; take what is
        # buffered, else block on poll() for the first record, then take the rest
        msgs = self._c.consume(max_records, 0)
        if not msgs:
            first = self._c.poll(timeout_s)
            if first is None:
                return []
            msgs = [first]
            if max_records > 1:
                msgs.extend(self._c.consume(max_records - 1, 0))
        out: list[Record] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise LogError(f"Kafka consumer failed: {err}")
                log.warning("consumer %s: %s", self.group, err)
                continue
            topic = self._names.get(m.topic())
            if topic is None:
                continue
            r = _record(topic, m)
            self._pos[(topic, r.partition)] = r.offset + 1
            out.append(r)
        return out

    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        if offsets is None:
            offsets = {tp: o for tp, o in self._pos.items() if tp in self._assigned}
        tps = [ck.TopicPartition(self.log.kafka_topic(t), p, o) for (t, p), o in offsets.items()]
        if not tps:
            return
        try:
            self._c.commit(offsets=tps, asynchronous=False)
        except ck.KafkaException as e:
            # a rebalance took the partitions meanwhile; their new owner resumes from the
            # last successful commit (or its own checkpoint)
            raise LogUnavailable(f"commit failed for group {self.group}: {e}") from e

    def committed(self) -> dict[TopicPartition, int]:
        if not self._assigned:
            return {}
        tps = [ck.TopicPartition(self.log.kafka_topic(t), p) for t, p in self._assigned]
        return {self._tp(tp): tp.offset for tp in self._c.committed(tps, timeout=10) if tp.offset >= 0}

    def seek(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        if self._seeks is not None:  # inside on_assign: becomes the assignment's start offset
            self._seeks[tp] = offset
            return
        if tp not in self._assigned:
            raise LogError(f"{topic}/{partition} is not assigned to this consumer")
        ktp = ck.TopicPartition(self.log.kafka_topic(topic), partition, offset)
        try:
            self._c.seek(ktp)
        except ck.KafkaException:
            # the partition is not fetching yet: restart its assignment at the offset
            self._c.incremental_unassign([ck.TopicPartition(ktp.topic, partition)])
            self._c.incremental_assign([ktp])
        self._pos[tp] = offset

    def assignment(self) -> list[TopicPartition]:
        return list(self._assigned)

    def position(self) -> dict[TopicPartition, int]:
        out = dict(self._pos)
        missing = [tp for tp in self._assigned if tp not in out]
        if missing:
            try:
                known = self._c.position([ck.TopicPartition(self.log.kafka_topic(t), p) for t, p in missing])
            except ck.KafkaException:  # e.g. asked inside on_assign, before fetching starts
                known = []
            for ktp in known:
                if ktp.offset >= 0:
                    out[self._tp(ktp)] = ktp.offset
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._c.close()  # leaves the group; runs the revoke callback for what is held
        finally:
            if self._assigned and self._on_revoke:
                held, self._assigned = self._assigned, []
                self._on_revoke(held)
