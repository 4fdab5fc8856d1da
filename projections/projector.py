"""The projector: the order log and the stock ledger → ClickHouse, in size- and time-bounded
batches, effectively once.

Why a crash never double-counts (docs/read-models.md has the long version):
- Each batch writes every table in one INSERT, in the order of `schema.READ_MODELS`, and the
  offset ledger `projector_offsets` last. The projector never commits offsets to Kafka; on start
  it resumes one past the ledger's offset of each partition.
- One INSERT is atomic, so after a crash each table holds, per partition, the rows of a prefix of
  the log. On start the projector reads each table's highest source offset per partition (its
  high-water mark) and, while it replays the unfinished batch, drops the rows a table already
  has. Rows are never written twice, so even the append-only tables (`stock`, the per-minute
  aggregate) stay exact without FINAL.
- The state a fold resumes from (`orders`, `stock_levels`) is written after the tables derived
  from it. A crash between them leaves the state behind the derived tables, never ahead; the
  fold re-derives the rows and the high-water marks drop the ones already there. A state that
  is ahead (crash after it, before the ledger) skips the replayed events by their sequence.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from events.codec import AvroCodec, CodecError, message_ref
from events.models import DeadLetter, OrderEvent, StockEvent
from oms.publisher import Publisher
from oms.settings import Settings
from projections import orders, stock
from projections.lease import ProjectorLease
from projections.orders import Position, event_row
from projections.schema import (
    DEAD_LETTERS_COLUMNS,
    FULFILMENT_STAGES_COLUMNS,
    ORDER_ACTIVITY_COLUMNS,
    ORDER_EVENTS_COLUMNS,
    ORDER_LINES_COLUMNS,
    ORDERS_COLUMNS,
    PROJECTOR_OFFSETS_COLUMNS,
    READ_MODEL_NAMES,
    STOCK_COLUMNS,
    STOCK_LEVELS_COLUMNS,
    migrate,
)
from projections.store import ClickHouseStore, Row, sql_string

__all__ = ["BatchStats", "Position", "Projector"]

log = logging.getLogger(__name__)

STATE_CACHE_SIZE = 50_000

_PARTITION = tuple[str, int]  # (topic, partition)


@dataclass
class BatchStats:
    events: int = 0
    orders_written: int = 0
    stock_events: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    rows: dict[str, int] = field(default_factory=dict)


class _Cache(OrderedDict[Any, dict[str, Any]]):
    """Most recently used fold states; remembers whether it ever had to forget one."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.evicted = False

    def remember(self, key: Any, state: dict[str, Any]) -> None:
        self[key] = state
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)
            self.evicted = True


class Projector:
    def __init__(
        self,
        *,
        settings: Settings,
        store: ClickHouseStore,
        codec: AvroCodec | None = None,
        batch_size: int = 5000,
        batch_seconds: float = 0.5,
        lease: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.codec = codec or AvroCodec.for_registry(settings.schema_registry_url)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.topics = (settings.topics.orders, settings.topics.inventory)
        self.lease = (
            ProjectorLease(home=settings.home, clickhouse_url=lease_key(settings, store))
            if lease
            else None
        )
        self._orders = _Cache(STATE_CACHE_SIZE)
        self._stock = _Cache(STATE_CACHE_SIZE)
        self._high_water: dict[tuple[str, str, int], int] = {}
        self._next: dict[_PARTITION, int] = {}
        self._fresh = False
        self._publisher: Publisher | None = None
        self._probe: Consumer | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": "oms-projector",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,
            }
        )

    # ------------------------------------------------------------ where to resume

    def resume_offsets(self) -> dict[_PARTITION, int]:
        """Next offset per (topic, partition): one past what the offset ledger holds."""
        topics = ", ".join(sql_string(t) for t in self.topics)
        rows = self.store.query(
            f"SELECT _topic, _partition, max(_offset) FROM {self.store.database}.projector_offsets "
            f"WHERE _topic IN ({topics}) GROUP BY _topic, _partition"
        )
        return {(str(t), int(p)): int(o) + 1 for t, p, o in rows}

    def _read_high_water(self, resume: dict[_PARTITION, int]) -> dict[tuple[str, str, int], int]:
        """Per table and partition, the highest source offset it holds beyond the ledger: rows a
        crash left behind, which the replay must not write again."""
        topics = ", ".join(sql_string(t) for t in self.topics)
        marks: dict[tuple[str, str, int], int] = {}
        self._fresh = not resume
        for table in READ_MODEL_NAMES:
            if table == "projector_offsets":
                continue
            rows = self.store.query(
                f"SELECT _topic, _partition, max(_offset) FROM {self.store.database}.{table} "
                f"WHERE _topic IN ({topics}) GROUP BY _topic, _partition"
            )
            for topic, partition, offset in rows:
                self._fresh = False
                if int(offset) >= resume.get((str(topic), int(partition)), 0):
                    marks[(table, str(topic), int(partition))] = int(offset)
        return marks

    def start(self) -> None:
        migrate(self.store)
        self._reset()

    def _reset(self) -> None:
        """Forget everything in memory and continue from what ClickHouse holds."""
        self._orders = _Cache(STATE_CACHE_SIZE)
        self._stock = _Cache(STATE_CACHE_SIZE)
        resume = self.resume_offsets()
        self._high_water = self._read_high_water(resume)
        assignment: list[TopicPartition] = []
        self._next = {}
        for topic in self.topics:
            metadata = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                log.warning("topic %s does not exist (yet); not projecting it", topic)
                continue
            for partition in sorted(metadata.partitions):
                offset = resume.get((topic, partition), OFFSET_BEGINNING)
                assignment.append(TopicPartition(topic, partition, offset))
                if offset != OFFSET_BEGINNING:
                    self._next[(topic, partition)] = offset
        self._consumer.assign(assignment)

    def lag(self) -> int:
        """Messages on the topics not yet projected (0 = caught up)."""
        if self._probe is None:
            # Asked through the fetching consumer, each watermark waits behind its long poll
            # (~100 ms); a consumer that never fetches answers in well under a millisecond.
            self._probe = Consumer(
                {"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": "oms-projector"}
            )
        behind = 0
        for tp in self._consumer.assignment():
            low, high = self._probe.get_watermark_offsets(tp, timeout=10)
            behind += max(high - max(self._next.get((tp.topic, tp.partition), low), low), 0)
        return behind

    # ------------------------------------------------------------ one batch

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

    def _written(self, table: str, where: Position) -> bool:
        """Whether `table` already holds the rows of the message at `where` (see the module
        docstring); only ever true while replaying the batch a crash interrupted."""
        mark = self._high_water.get((table, where.topic, where.partition))
        return mark is not None and where.offset <= mark

    def apply_batch(self, messages: Iterable[Message]) -> BatchStats:
        stats = BatchStats()
        order_events: list[tuple[OrderEvent, Position]] = []
        stock_events: list[tuple[StockEvent, Position]] = []
        dead_letters: list[Row] = []
        ledger: dict[_PARTITION, tuple[int, int]] = {}
        for message in messages:
            where = Position(message.topic() or "", message.partition() or 0, message.offset() or 0)
            key = (where.topic, where.partition)
            last, count = ledger.get(key, (-1, 0))
            ledger[key] = (max(last, where.offset), count + 1)
            raw = message.value() or b""
            ref = message_ref(where.topic, where.partition, where.offset)
            try:
                event = self.codec.decode(raw, where=ref)
                if where.topic == self.topics[0] and isinstance(event, OrderEvent):
                    order_events.append((event, where))
                elif where.topic == self.topics[1] and isinstance(event, StockEvent):
                    stock_events.append((event, where))
                else:
                    raise CodecError(
                        f"{type(event).__name__} does not belong on {where.topic}", where=ref
                    )
            except CodecError as exc:
                if not self._written("dead_letters", where):
                    letter = DeadLetter.of(
                        source=where.topic, source_ref=ref, reason=str(exc), raw=raw
                    )
                    self._dead_letter(letter)
                    dead_letters.append(
                        (letter.dead_letter_id, letter.reason, len(raw), *_at(where))
                    )
                stats.dead_lettered += 1
        stats.events = len(order_events)
        stats.stock_events = len(stock_events)
        tables = self._fold_orders(order_events, stats)
        tables.update(self._fold_stock(stock_events, stats))
        tables["dead_letters"] = (DEAD_LETTERS_COLUMNS, dead_letters)
        if self._publisher is not None:
            self._publisher.flush()  # a dead letter is on its topic before its row is written
        for table in READ_MODEL_NAMES[:-1]:
            columns, rows = tables.get(table, ((), []))
            self.store.insert(table, columns, rows)
            stats.rows[table] = len(rows)
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        self.store.insert(
            "projector_offsets",
            PROJECTOR_OFFSETS_COLUMNS,
            [(topic, partition, last, count, now)
             for (topic, partition), (last, count) in sorted(ledger.items())],
        )  # fmt: skip
        for (topic, partition), (last, _) in ledger.items():
            self._next[(topic, partition)] = last + 1
        self._forget_passed_marks(ledger)
        return stats

    def _forget_passed_marks(self, ledger: dict[_PARTITION, tuple[int, int]]) -> None:
        if self._high_water:
            self._high_water = {
                (table, topic, partition): mark
                for (table, topic, partition), mark in self._high_water.items()
                if mark > ledger.get((topic, partition), (-1, 0))[0]
            }

    def _fold_orders(
        self, events: list[tuple[OrderEvent, Position]], stats: BatchStats
    ) -> dict[str, tuple[tuple[str, ...], list[Row]]]:
        self._load_orders(events)
        event_rows: list[Row] = []
        line_rows: list[Row] = []
        stage_rows: list[Row] = []
        activity: dict[tuple[Any, ...], list[int]] = {}
        changed: dict[str, tuple[dict[str, Any], Position]] = {}
        for event, where in events:
            if not self._written("order_events", where):
                event_rows.append(event_row(event, where))
            change = orders.fold(self._orders.get(event.order_id), event, where)
            if change is None:
                stats.duplicates += 1
                continue
            self._orders.remember(event.order_id, change.row)
            changed[event.order_id] = (change.row, where)
            if not self._written("order_lines", where):
                line_rows.extend(change.lines)
            if not self._written("fulfilment_stages", where):
                stage_rows.extend(change.stages)
            if not self._written("order_activity_per_minute", where):
                a = change.activity
                key = (a.minute, a.channel, a.event_type, a.currency, where.topic, where.partition)
                total = activity.setdefault(key, [0, 0, -1])
                total[0] += 1
                total[1] += a.amount
                total[2] = max(total[2], where.offset)
        stats.orders_written = len(changed)
        return {
            "order_events": (ORDER_EVENTS_COLUMNS, event_rows),
            "order_lines": (ORDER_LINES_COLUMNS, line_rows),
            "fulfilment_stages": (FULFILMENT_STAGES_COLUMNS, stage_rows),
            "order_activity_per_minute": (
                ORDER_ACTIVITY_COLUMNS,
                [
                    (*key[:4], n, amount, key[4], key[5], offset)
                    for key, (n, amount, offset) in activity.items()
                ],
            ),  # fmt: skip
            "orders": (
                ORDERS_COLUMNS,
                [
                    tuple(row[c] for c in ORDERS_COLUMNS)
                    for row, where in changed.values()
                    if not self._written("orders", where)
                ],
            ),  # fmt: skip
        }

    def _fold_stock(
        self, events: list[tuple[StockEvent, Position]], stats: BatchStats
    ) -> dict[str, tuple[tuple[str, ...], list[Row]]]:
        self._load_stock(events)
        history: list[Row] = []
        changed: dict[tuple[str, str], tuple[dict[str, Any], Position]] = {}
        for event, where in events:
            key = (event.sku, event.location)
            change = stock.fold(self._stock.get(key), event, where)
            if change is None:
                stats.duplicates += 1
                continue
            self._stock.remember(key, change.level)
            changed[key] = (change.level, where)
            if not self._written("stock", where):
                history.append(change.history)
        return {
            "stock": (STOCK_COLUMNS, history),
            "stock_levels": (
                STOCK_LEVELS_COLUMNS,
                [
                    tuple(level[c] for c in STOCK_LEVELS_COLUMNS)
                    for level, where in changed.values()
                    if not self._written("stock_levels", where)
                ],
            ),  # fmt: skip
        }

    # ------------------------------------------------------------ fold state from ClickHouse

    def _complete(self, cache: _Cache) -> bool:
        """The cache holds every state there is: the tables were empty at start and nothing has
        been forgotten since, so a miss is a new order or key (saves a query per batch)."""
        return self._fresh and not cache.evicted

    def _load_orders(self, events: list[tuple[OrderEvent, Position]]) -> None:
        if self._complete(self._orders):
            return
        ids = sorted({event.order_id for event, _ in events} - set(self._orders))
        for start in range(0, len(ids), 1000):
            quoted = ", ".join(sql_string(order_id) for order_id in ids[start : start + 1000])
            rows = self.store.query(
                f"SELECT {', '.join(ORDERS_COLUMNS)} FROM {self.store.database}.orders FINAL "
                f"WHERE order_id IN ({quoted})"
            )
            for row in rows:
                self._orders.remember(row[0], dict(zip(ORDERS_COLUMNS, row, strict=True)))

    def _load_stock(self, events: list[tuple[StockEvent, Position]]) -> None:
        if self._complete(self._stock):
            return
        keys = {(e.sku, e.location) for e, _ in events} - set(self._stock)
        if not keys:
            return
        skus = ", ".join(sql_string(sku) for sku in sorted({sku for sku, _ in keys}))
        locations = ", ".join(sql_string(loc) for loc in sorted({loc for _, loc in keys}))
        rows = self.store.query(
            f"SELECT {', '.join(STOCK_LEVELS_COLUMNS)} FROM {self.store.database}.stock_levels "
            f"FINAL WHERE sku IN ({skus}) AND location IN ({locations})"
        )
        for row in rows:
            level = dict(zip(STOCK_LEVELS_COLUMNS, row, strict=True))
            if (level["sku"], level["location"]) in keys:
                self._stock.remember((level["sku"], level["location"]), level)

    # ------------------------------------------------------------ running

    def run(
        self,
        *,
        until: Callable[[BatchStats], bool] | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """Project batches forever, or until `until(stats)` says stop (checked after each batch).

        Holds the database's lease while it runs, and steps aside when a rebuild swaps."""
        if self.lease is not None:
            self.lease.acquire()
        try:
            self.start()
            while True:
                stats = self.apply_batch(self.poll_batch())
                if on_batch is not None:
                    on_batch(stats)
                if until is not None and until(stats):
                    return
                if self.lease is not None and self.lease.swap_requested():
                    self.lease.wait_for_swap()
                    self._reset()
        finally:
            self.close()
            if self.lease is not None:
                self.lease.release()

    def close(self) -> None:
        self._consumer.close()
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def _dead_letter(self, letter: DeadLetter) -> None:
        if self._publisher is None:
            self._publisher = Publisher(self.settings, codec=self.codec)
        self._publisher.dead_letter(letter)


def _at(where: Position) -> tuple[str, int, int]:
    return where.topic, where.partition, where.offset


def lease_key(settings: Settings, store: ClickHouseStore) -> str:
    """What names the database for the lease: the ClickHouse (server address or chDB path) and
    the database."""
    url = urlparse(settings.resolved_clickhouse_url)
    where = url.netloc if url.scheme == "clickhouse" else url.path
    return f"{url.scheme}://{where}#{store.database}"
