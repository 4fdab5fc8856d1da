"""Reading back what a run left: the topics themselves and ClickHouse's tables, into the plain
values the checker takes (`checker.Observation`)."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from events.codec import AvroCodec, CodecError, message_ref
from events.models import Event, OrderEvent, StockEvent, stock_key
from infra.settings import Settings
from tests.faults.checker import ClickHouseSnapshot, TailSample, at_rest

TAIL = 3000  # messages of a command topic's busiest partition sampled for the report


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"fault-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": 52428800,
        }
    )


def end_offsets(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """Each partition's (low, high) watermarks."""
    consumer = _consumer(settings)
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            for p in sorted(partitions)
        }
    finally:
        consumer.close()


def topic_sizes(settings: Settings) -> dict[str, int]:
    return {
        topic: sum(high - low for low, high in end_offsets(settings, topic).values())
        for topic in settings.topics.all()
    }


class TopicReader:
    """A topic read from its start, a little further at each `read_to_end` (so waiting for
    orders to settle does not read the whole log again every second)."""

    def __init__(self, settings: Settings, topic: str, codec: AvroCodec) -> None:
        self.settings = settings
        self.topic = topic
        self.codec = codec
        self.events: list[Event] = []
        self._consumer = _consumer(settings)
        self._next: dict[int, int] = {}

    def read_to_end(self, *, timeout_s: float = 60.0) -> list[Event]:
        """The events written since the last call, up to the end offsets of now."""
        import time

        ends = {p: high for p, (_, high) in end_offsets(self.settings, self.topic).items()}
        new = [p for p in ends if p not in self._next]
        if new:
            for p in new:
                self._next[p] = 0
            self._consumer.assign(
                [
                    TopicPartition(self.topic, p, self._next[p] or OFFSET_BEGINNING)
                    for p in sorted(self._next)
                ]
            )
        added: list[Event] = []
        deadline = time.monotonic() + timeout_s
        while any(self._next[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: could not read to {ends} (at {self._next})")
            for message in self._consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                self._next[partition] = offset + 1
                try:
                    event = self.codec.decode(
                        message.value() or b"", where=message_ref(self.topic, partition, offset)
                    )
                except CodecError:
                    continue
                if isinstance(event, Event):
                    added.append(event)
        self.events += added
        return added

    def close(self) -> None:
        self._consumer.close()


class OrderFollower:
    """The order log as it grows, with which orders are not yet at rest."""

    def __init__(self, reader: TopicReader) -> None:
        self.reader = reader
        self.by_order: dict[str, list[OrderEvent]] = {}
        self.restless: set[str] = set()
        self._seen: set[str] = set()

    def catch_up(self) -> None:
        touched = set()
        for event in self.reader.read_to_end():
            if isinstance(event, OrderEvent) and event.event_id not in self._seen:
                self._seen.add(event.event_id)
                self.by_order.setdefault(event.order_id, []).append(event)
                touched.add(event.order_id)
        for order_id in touched:
            if at_rest(self.by_order[order_id]):
                self.restless.discard(order_id)
            else:
                self.restless.add(order_id)


def tail(settings: Settings, topic: str, codec: AvroCodec, *, size: int = TAIL) -> TailSample:
    """What the last `size` messages of the topic's fullest partition are."""
    ends = end_offsets(settings, topic)
    partition, (low, high) = max(ends.items(), key=lambda item: item[1][1] - item[1][0])
    start = max(low, high - size)
    consumer = _consumer(settings)
    types: Counter[str] = Counter()
    ids: set[str] = set()
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        offset = start
        while offset < high:
            batch = consumer.consume(num_messages=size, timeout=5.0)
            if not batch:
                break
            for message in batch:
                if message.error() is not None:
                    continue
                offset = (message.offset() or 0) + 1
                try:
                    event = codec.decode(message.value() or b"")
                except CodecError:
                    types["(undecodable)"] += 1
                    continue
                types[type(event).__name__] += 1
                ids.add(getattr(event, "event_id", "") or getattr(event, "dead_letter_id", ""))
    finally:
        consumer.close()
    return TailSample(topic, partition, sum(types.values()), len(ids), dict(types))


def projector_behind(settings: Settings, store: Any) -> int:
    """Messages of the order log and the ledger not yet in the projector's offset ledger."""
    done = {
        (t, p): o
        for t, p, o in store.query(
            f"SELECT _topic, _partition, max(_offset) FROM {store.database}.projector_offsets "
            "GROUP BY _topic, _partition"
        )
    }
    behind = 0
    for topic in (settings.topics.orders, settings.topics.inventory):
        for partition, (_, high) in end_offsets(settings, topic).items():
            behind += max(0, high - (int(done.get((topic, partition), -1)) + 1))
    return behind


def caught_up(settings: Settings) -> Callable[[], int | None]:
    """A probe of how far the projector is behind (None while ClickHouse does not answer)."""
    from projections.store import connect

    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)

    def behind() -> int | None:
        try:
            store = connect(settings.resolved_clickhouse_url)
            try:
                return projector_behind(settings, store)
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - not answering, or the tables not made yet
            return None

    return behind


def clickhouse_snapshot(settings: Settings) -> ClickHouseSnapshot:
    from projections.store import connect

    store = connect(settings.resolved_clickhouse_url)
    db = store.database
    try:
        orders = {
            o: (s, int(t))
            for o, s, t in store.query(f"SELECT order_id, status, total FROM {db}.orders FINAL")
        }
        events = {
            o: (int(n), int(s))
            for o, n, s in store.query(
                f"SELECT order_id, count(), sum(sequence) FROM {db}.order_events FINAL "
                "GROUP BY order_id"
            )
        }
        stock = {
            stock_key(sku, loc): int(n)
            for sku, loc, n in store.query(
                f"SELECT sku, location, count() FROM {db}.stock GROUP BY sku, location"
            )
        }
        levels = {
            stock_key(sku, loc): (int(h), int(r), int(a))
            for sku, loc, h, r, a in store.query(
                f"SELECT sku, location, on_hand, reserved, available FROM {db}.stock_levels FINAL"
            )
        }
        behind = projector_behind(settings, store)
    finally:
        store.close()
    return ClickHouseSnapshot(orders, events, stock, levels, behind)


def ledger_events(reader: TopicReader) -> list[StockEvent]:
    reader.read_to_end()
    return [e for e in reader.events if isinstance(e, StockEvent)]


def release_commands(
    settings: Settings, reservation_ids: Sequence[str], codec: AvroCodec, *, within_s: float = 120
) -> dict[str, int] | None:
    """How many ReleaseStock commands the stock-command topic holds for each reservation id
    (None if it could not be read within `within_s`). Messages are matched on their bytes
    first — an Avro string is its UTF-8 — so a topic of millions is read in seconds."""
    import re
    import time

    if not reservation_ids:
        return {}
    topic = settings.topics.stock_commands
    pattern = re.compile(b"|".join(re.escape(rid.encode()) for rid in set(reservation_ids)))
    found: Counter[str] = Counter()
    consumer = _consumer(settings)
    deadline = time.monotonic() + within_s
    try:
        for partition, (low, high) in end_offsets(settings, topic).items():
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            offset = low
            while offset < high:
                if time.monotonic() > deadline:
                    return None
                for message in consumer.consume(num_messages=50_000, timeout=1.0):
                    if message.error() is not None:
                        continue
                    offset = (message.offset() or 0) + 1
                    value = message.value() or b""
                    if pattern.search(value) is None:
                        continue
                    command = codec.decode(value)
                    if type(command).__name__ == "ReleaseStock":
                        found[getattr(command, "reservation_id", "")] += 1
    finally:
        consumer.close()
    return dict(found)


def worker_lag(settings: Settings) -> dict[str, int]:
    """Messages of each input topic the workers' consumer group has not committed yet."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": settings.consumer_group,
            "enable.auto.commit": False,
        }
    )
    lag = {}
    try:
        topics = settings.topics
        for topic in (topics.intake, topics.order_commands, topics.stock_commands):
            ends = end_offsets(settings, topic)
            committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=30)
            lag[topic] = sum(
                ends[tp.partition][1] - max(tp.offset, ends[tp.partition][0]) for tp in committed
            )
    finally:
        consumer.close()
    return lag
