"""The projector: order log → ClickHouse, in size- and time-bounded batches, effectively once.

Resume point and idempotency:
- `order_events` is the offset ledger and is written last in each batch (one INSERT, one part),
  so what it holds was fully applied; the projector resumes right after its max offset per
  partition and never commits offsets to Kafka.
- `orders` is written first. If the process dies between the two inserts, the batch is replayed;
  the fold skips events at or below an order's stored version, and a rewritten row with the same
  version is collapsed by ReplacingMergeTree — nothing is counted twice.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from events.codec import AvroCodec, CodecError, message_ref
from events.models import (
    DeadLetter,
    OrderAccepted,
    OrderEvent,
    OrderModified,
    OrderReceived,
    OrderRejected,
)
from oms.publisher import Publisher
from oms.settings import Settings
from projections.schema import ORDER_EVENTS_COLUMNS, ORDERS_COLUMNS, migrate
from projections.store import ClickHouseStore, Row, sql_string

STATE_CACHE_SIZE = 200_000


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int


def _ts(event: OrderEvent) -> Any:
    return event.occurred_at.replace(tzinfo=None, microsecond=0)


def apply(
    state: dict[str, Any] | None, event: OrderEvent, position: Position
) -> dict[str, Any] | None:
    """Fold one event into an order's read-model row; None when the event changes nothing."""
    if state is not None and event.sequence <= state["version"]:
        return None  # already applied: a replay or a redelivery
    where = {
        "_topic": position.topic,
        "_partition": position.partition,
        "_offset": position.offset,
        "version": event.sequence,
        "updated_at": _ts(event),
    }
    if isinstance(event, OrderReceived):
        address = event.address.text if event.address else ""
        return {
            "order_id": event.order_id,
            "channel": event.channel,
            "external_id": event.external_id,
            "mode": event.mode.value,
            "status": "received",
            "currency": event.currency,
            "total": event.total,
            "line_count": len(event.lines),
            "item_count": sum(max(line.quantity, 0) for line in event.lines),
            "customer_name": event.customer.name or "",
            "customer_phone": event.customer.phone or "",
            "address": address,
            "rejection_codes": [],
            "rejection_message": "",
            "placed_at": event.placed_at.replace(tzinfo=None, microsecond=0),
            **where,
        }
    if state is None:
        # A verdict without its OrderReceived cannot happen in a well-formed log; keep a row
        # anyway so the order is visible rather than silently missing.
        state = {column: "" for column in ORDERS_COLUMNS} | {
            "order_id": event.order_id,
            "total": 0,
            "line_count": 0,
            "item_count": 0,
            "rejection_codes": [],
            "placed_at": _ts(event),
        }
    if isinstance(event, OrderModified):
        return (
            state
            | {
                "total": event.total,
                "line_count": len(event.lines),
                "item_count": sum(max(line.quantity, 0) for line in event.lines),
                "address": event.address.text if event.address else state["address"],
                "status": "modified",
            }
            | where
        )
    if isinstance(event, OrderAccepted):
        return (
            state
            | {"status": "accepted", "channel": event.channel, "external_id": event.external_id}
            | where
        )
    if isinstance(event, OrderRejected):
        return (
            state
            | {
                "status": "rejected",
                "channel": event.channel,
                "external_id": event.external_id,
                "rejection_codes": [r.code for r in event.reasons],
                "rejection_message": "; ".join(r.message for r in event.reasons),
            }
            | where
        )
    return state | where


def event_row(event: OrderEvent, position: Position) -> Row:
    return (
        event.event_id,
        type(event).__name__,
        event.order_id,
        event.sequence,
        _ts(event),
        event.recorded_at.replace(tzinfo=None, microsecond=0),
        getattr(event, "channel", ""),
        f"{event.actor.kind.value}:{event.actor.id}",
        event.model_dump_json(),
        position.topic,
        position.partition,
        position.offset,
    )


@dataclass
class BatchStats:
    events: int = 0
    orders_written: int = 0
    dead_lettered: int = 0


class Projector:
    def __init__(
        self,
        *,
        settings: Settings,
        store: ClickHouseStore,
        codec: AvroCodec | None = None,
        batch_size: int = 5000,
        batch_seconds: float = 0.5,
    ) -> None:
        self.settings = settings
        self.store = store
        self.codec = codec or AvroCodec.for_registry(settings.schema_registry_url)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.topic = settings.topics.orders
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._publisher: Publisher | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": "oms-projector",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,
            }
        )

    def resume_offsets(self) -> dict[int, int]:
        """Next offset per partition: one past what the ledger (`order_events`) holds."""
        rows = self.store.query(
            f"SELECT _partition, max(_offset) FROM {self.store.database}.order_events "
            f"WHERE _topic = '{self.topic}' GROUP BY _partition"
        )
        return {int(partition): int(offset) + 1 for partition, offset in rows}

    def start(self) -> None:
        migrate(self.store)
        metadata = self._consumer.list_topics(self.topic, timeout=10)
        partitions = sorted(metadata.topics[self.topic].partitions)
        resume = self.resume_offsets()
        self._consumer.assign(
            [TopicPartition(self.topic, p, resume.get(p, OFFSET_BEGINNING)) for p in partitions]
        )

    def lag(self) -> int:
        """Messages on the order log not yet projected (0 = caught up)."""
        behind = 0
        for tp in self._consumer.position(self._consumer.assignment()):
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            position = tp.offset if tp.offset >= 0 else low
            behind += max(high - position, 0)
        return behind

    def poll_batch(self) -> list[Message]:
        batch: list[Message] = []
        deadline = time.monotonic() + self.batch_seconds
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            messages = self._consumer.consume(self.batch_size - len(batch), timeout=remaining)
            for message in messages:
                error = message.error()
                if error is None:
                    batch.append(message)
                elif error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"Kafka consumer error: {error}")
        return batch

    def apply_batch(self, messages: Iterable[Message]) -> BatchStats:
        stats = BatchStats()
        decoded: list[tuple[OrderEvent, Position]] = []
        for message in messages:
            position = Position(
                message.topic() or self.topic, message.partition() or 0, message.offset() or 0
            )
            raw = message.value() or b""
            where = message_ref(position.topic, position.partition, position.offset)
            try:
                event = self.codec.decode(raw, where=where)
                if not isinstance(event, OrderEvent):
                    raise CodecError(
                        f"{type(event).__name__} does not belong on the order log", where=where
                    )
            except CodecError as exc:
                self._dead_letter(
                    DeadLetter.of(source=position.topic, source_ref=where, reason=str(exc), raw=raw)
                )
                stats.dead_lettered += 1
                continue
            decoded.append((event, position))
        stats.events = len(decoded)
        self._load_states({event.order_id for event, _ in decoded})
        changed: dict[str, dict[str, Any]] = {}
        for event, position in decoded:
            row = apply(self._states.get(event.order_id), event, position)
            if row is not None:
                self._remember(event.order_id, row)
                changed[event.order_id] = row
        self.store.insert(
            "orders",
            ORDERS_COLUMNS,
            [tuple(row[c] for c in ORDERS_COLUMNS) for row in changed.values()],
        )
        self.store.insert(
            "order_events",
            ORDER_EVENTS_COLUMNS,
            [event_row(event, position) for event, position in decoded],
        )
        if self._publisher is not None:
            self._publisher.flush()
        stats.orders_written = len(changed)
        return stats

    def run(
        self,
        *,
        until: Callable[[BatchStats], bool] | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """Project batches forever, or until `until(stats)` says stop (checked after each batch)."""
        self.start()
        try:
            while True:
                stats = self.apply_batch(self.poll_batch())
                if on_batch is not None:
                    on_batch(stats)
                if until is not None and until(stats):
                    return
        finally:
            self.close()

    def close(self) -> None:
        self._consumer.close()

    def _load_states(self, order_ids: set[str]) -> None:
        missing = [order_id for order_id in order_ids if order_id not in self._states]
        if not missing:
            return
        columns = ", ".join(ORDERS_COLUMNS)
        for start in range(0, len(missing), 1000):
            chunk = missing[start : start + 1000]
            quoted = ", ".join(sql_string(order_id) for order_id in chunk)
            rows = self.store.query(
                f"SELECT {columns} FROM {self.store.database}.orders FINAL "
                f"WHERE order_id IN ({quoted})"
            )
            for row in rows:
                self._remember(row[0], dict(zip(ORDERS_COLUMNS, row, strict=True)))

    def _remember(self, order_id: str, row: dict[str, Any]) -> None:
        self._states[order_id] = row
        self._states.move_to_end(order_id)
        if len(self._states) > STATE_CACHE_SIZE:
            self._states.popitem(last=False)

    def _dead_letter(self, letter: DeadLetter) -> None:
        if self._publisher is None:
            self._publisher = Publisher(self.settings, codec=self.codec)
        self._publisher.dead_letter(letter)
