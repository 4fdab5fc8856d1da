"""The projector: the order log and the stock ledger → ClickHouse, in size- and time-bounded
batches, effectively once.

Why a crash never double-counts (docs/read-models.md has the long version):
- Each batch writes every table in one INSERT: the tables derived from the fold states, then
  the states (`WRITE_GROUPS`), and the offset ledger `projector_offsets` last. The projector
  never commits offsets to Kafka; on start it resumes one past the ledger's offset of each
  partition.
- One INSERT is atomic, so after a crash each table holds, per partition, the rows of a prefix of
  the log. On start the projector reads each table's highest source offset per partition (its
  high-water mark) and, while it replays the unfinished batch, drops the rows a table already
  has. Rows are never written twice, so even the append-only tables (`stock`, the per-minute
  aggregate) stay exact without FINAL.
- The state a fold resumes from (`orders`, `stock_levels`) is written after the tables derived
  from it. A crash between them leaves the state behind the derived tables, never ahead; the
  fold re-derives the rows and the high-water marks drop the ones already there. A state that
  is ahead (crash after it, before the ledger) skips the replayed events by their sequence.

When Kafka or ClickHouse goes away for a while (a restart, a timeout, an overloaded server),
the projector does not exit: it treats the failure as a crash it survived. It waits (capped
exponential backoff, projections/reconnect.py), waits also for any INSERT of the batch that
the server may still be writing, and then starts again from what ClickHouse holds, exactly as
a new process would: a batch cut half-way is replayed, and its rows already written dropped.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any
from urllib.parse import urlparse

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from events.codec import AvroCodec, CodecError, message_ref
from events.models import DeadLetter, OrderEvent, StockEvent
from oms.publisher import Publisher
from oms.settings import Settings
from projections import orders, stock
from projections.lease import ProjectorLease
from projections.native_fold import (
    AVAILABLE as NATIVE_FOLD,
)
from projections.native_fold import (
    COLUMNS as NATIVE_COLUMNS,
)
from projections.native_fold import (
    LEVEL_STATE_SELECT,
    ORDER_STATE_SELECT,
    native_fold,
)
from projections.orders import OrderRow, Position, event_row, seconds
from projections.reconnect import Backoff, GaveUp, KafkaUnavailable, transient
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
from projections.stock import StockLevel
from projections.store import ClickHouseStore, Row, sql_string

__all__ = ["BatchStats", "Position", "Projector"]

log = logging.getLogger(__name__)

STATE_CACHE_SIZE = 50_000

_PARTITION = tuple[str, int]  # (topic, partition)

# The order of a batch's INSERTs (see the module docstring): the tables derived from the fold
# states, then the states, then (by itself) the offset ledger. Within a group, any order.
WRITE_GROUPS = (
    ("dead_letters", "order_events", "order_lines", "fulfilment_stages",
     "order_activity_per_minute", "stock"),
    ("orders", "stock_levels"),
)  # fmt: skip
assert tuple(sorted(t for group in WRITE_GROUPS for t in group)) == tuple(
    sorted(READ_MODEL_NAMES[:-1])
), "every table but the ledger is in one write group"


@dataclass
class BatchStats:
    events: int = 0
    orders_written: int = 0
    stock_events: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    rows: dict[str, int] = field(default_factory=dict)


_gc_lock = threading.Lock()
_gc_holders = 0  # batches (of any thread) running with the collector paused
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a batch runs. A batch allocates hundreds of
    thousands of containers (events, rows, states), nearly all freed by reference counting when
    it ends; with the collector on, those allocations set off collections that each walk the
    fold caches as well, which cost more than the batch's own work. Cycles a batch leaves
    are collected after it, as usual. Counted, as the reading and the writing thread of a
    pipelined run overlap: the collector is back on when the last of them is done."""
    global _gc_holders, _gc_was_enabled
    with _gc_lock:
        if _gc_holders == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_was_enabled:
                gc.enable()


@dataclass
class _Prepared:
    """A batch decoded and folded, its rows not yet written (`Projector._write`)."""

    stats: BatchStats
    tables: dict[str, tuple[tuple[str, ...], list[Row]]]
    letters: list[DeadLetter]
    ledger: dict[_PARTITION, list[int]]
    encoded: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # the native fold's


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
        batch_size: int = 100_000,
        batch_seconds: float = 0.5,
        lease: bool = True,
        native: bool = NATIVE_FOLD,
        retry: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.retry = retry or Backoff()
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
        # The fold in native code when the extension is built (same rows, no Python object
        # per event); else the Python fold with the caches above.
        self._native: Any = (
            native_fold(codec=self.codec, orders_topic=self.topics[0],
                        stock_topic=self.topics[1], capacity=STATE_CACHE_SIZE)
            if native
            else None
        )  # fmt: skip
        self._decoder: Any = self._native.decoder() if self._native is not None else None
        # A group's INSERTs go together where the store takes them from several threads.
        self._inserts = (
            ThreadPoolExecutor(max_workers=6, thread_name_prefix="projector-insert")
            if self._native is not None and store.parallel_inserts
            else None
        )
        self._high_water: dict[tuple[str, str, int], int] = {}
        self._next: dict[_PARTITION, int] = {}
        self._fresh = False
        self._publisher: Publisher | None = None
        self._pending: Future[BatchStats] | None = None  # the batch being written, if any
        self._probe: Consumer | None = None
        self._projected: set[str] = set()  # the topics assigned by the last (re)start
        # Set by librdkafka's error callback, read between fetches (projections/reconnect.py).
        self._kafka_down: KafkaError | None = None
        self._kafka_fatal: KafkaError | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": "oms-projector",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,
                # Reading ahead stops when the local queue holds 64 MB; librdkafka then waits a
                # whole second by default before it fetches again, which stalled the projector
                # once per batch of 100,000 events.
                "fetch.queue.backoff.ms": 10,
                "error_cb": self._kafka_error,
            }
        )

    def _kafka_error(self, error: KafkaError) -> None:
        """librdkafka's report of a client-wide error. It reconnects by itself; the projector
        only needs to know when no broker at all answers, or the client cannot go on."""
        if error.fatal():
            self._kafka_fatal = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._kafka_down = error
        else:
            log.debug("Kafka: %s", error.str())

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
        """Forget everything in memory and continue from what ClickHouse holds (once no INSERT
        the server may still be writing can change that)."""
        self._pending = None
        self._orders = _Cache(STATE_CACHE_SIZE)
        self._stock = _Cache(STATE_CACHE_SIZE)
        if self._native is not None:
            self._native.reset()
        self.store.settle()
        resume = self.resume_offsets()
        self._high_water = self._read_high_water(resume)
        if self._native is not None:
            self._native.complete = self._fresh
        assignment: list[TopicPartition] = []
        self._next = {}
        for topic in self.topics:
            metadata = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                if topic in self._projected:  # a broker coming back that does not list it yet
                    raise KafkaUnavailable(f"Kafka does not list topic {topic} (yet)")
                log.warning("topic %s does not exist (yet); not projecting it", topic)
                continue
            for partition in sorted(metadata.partitions):
                offset = resume.get((topic, partition), OFFSET_BEGINNING)
                assignment.append(TopicPartition(topic, partition, offset))
                if offset != OFFSET_BEGINNING:
                    self._next[(topic, partition)] = offset
        self._kafka_down = None  # it answered just now
        self._consumer.assign(assignment)
        self._projected = {tp.topic for tp in assignment}

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
        with _gc_paused():
            return [m for chunk in self._poll_chunks() for m in chunk]

    def read_batch(self) -> Any:
        """The next batch from Kafka, decoded by the native fold's decoder if there is one (on
        the reading thread, while the previous batch folds), else the messages."""
        if self._decoder is None:
            return self.poll_batch()
        return self._decode(self._poll_chunks(chunk=10_000))

    def _decode(self, chunks: Iterable[list[Message]]) -> Any:
        """The native decoder's batch, from its messages in chunks: each chunk's message
        objects are freed before the next is read, so Python reuses the same memory for every
        chunk, where a whole batch of them would be handed back to the OS and faulted in again
        for the next batch (a fifth of the projector's time went to that). The collector is
        not paused here: the native fold keeps no Python objects for it to walk."""
        batch: Any = None
        rejected: list[tuple[str, int, int, bytes, str]] = []
        ledger: dict[_PARTITION, list[int]] = {}
        orders = stock = 0
        for chunk in chunks:
            part, rejects, marks, n_orders, n_stock = self._decoder.decode(chunk)
            del chunk
            if batch is None:
                batch = part
            else:
                batch.extend(part)
            rejected += rejects
            for topic, partition, last, count in marks:
                entry = ledger.setdefault((topic, partition), [last, 0])
                entry[0] = max(entry[0], last)
                entry[1] += count
            orders += n_orders
            stock += n_stock
        if batch is None:
            batch, rejected, _, _, _ = self._decoder.decode([])
        return batch, rejected, ledger, orders, stock

    def _writing(self) -> bool:
        pending = self._pending
        return pending is not None and not pending.done()

    def _poll_chunks(self, *, chunk: int | None = None) -> Iterator[list[Message]]:
        """One batch's messages, as Kafka hands them out: until `batch_size` messages, or
        `batch_seconds` have passed and the batch before is written."""
        taken = 0
        deadline = time.monotonic() + self.batch_seconds
        while taken < self.batch_size:
            self._check_kafka()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not self._writing():
                    break
                # The previous batch is still being written: this one takes what arrives
                # meanwhile rather than queue up behind it (fewer, larger INSERTs when
                # ClickHouse is slow to take them, and no backlog of small batches).
                remaining = 0.01
            wanted = (
                self.batch_size - taken if chunk is None else min(chunk, self.batch_size - taken)
            )
            messages = self._consumer.consume(wanted, timeout=remaining)
            kept = []
            for message in messages:
                error = message.error()
                if error is None:
                    kept.append(message)
                elif error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)  # transient or not: projections/reconnect.py
            del messages
            taken += len(kept)
            if kept:
                yield kept
            del kept  # before the next chunk's messages are made

    def _check_kafka(self) -> None:
        """Raise if the consumer reported that it cannot go on, or that no broker answers (and
        none does now: the report may be older than the broker's return)."""
        if self._kafka_fatal is not None:
            raise KafkaException(self._kafka_fatal)
        down = self._kafka_down
        if down is None:
            return
        try:
            self._consumer.list_topics(self.topics[0], timeout=2)
        except KafkaException as exc:
            where = self.settings.kafka_bootstrap
            raise KafkaUnavailable(f"Kafka at {where}: {down.str()}") from exc
        self._kafka_down = None

    def _written(self, table: str, where: Position) -> bool:
        """Whether `table` already holds the rows of the message at `where` (see the module
        docstring); only ever true while replaying the batch a crash interrupted."""
        mark = self._high_water.get((table, where.topic, where.partition))
        return mark is not None and where.offset <= mark

    def apply_batch(self, messages: list[Message]) -> BatchStats:
        """Decode, fold and write one batch (the tables, then the offset ledger)."""
        read = messages if self._decoder is None else self._decode([messages])
        return self._write(self._prepare(read))

    def _prepare(self, messages: Any) -> _Prepared:
        """Decode and fold a batch, in memory: the fold states move on, nothing is written or
        sent (but a fold state missing from the cache is read from ClickHouse, after the batch
        being written, if any, is done)."""
        if self._native is not None:
            return self._prepare_native(messages)
        with _gc_paused():
            return self._prepare_batch(messages)

    def _prepare_native(self, read: Any) -> _Prepared:
        """The native fold's `_prepare_batch`: the same tables, as RowBinary. `read` is the
        decoder's answer for the batch (`read_batch`)."""
        fold = self._native
        batch, rejected, ledger, n_orders, n_stock = read
        missing_orders, missing_levels = fold.missing(batch)
        # The states the batch names that ClickHouse may hold and the fold does not.
        if missing_orders or missing_levels:
            self._settle()
        for start in range(0, len(missing_orders), 1000):
            quoted = ", ".join(sql_string(i) for i in missing_orders[start : start + 1000])
            fold.load_orders(self.store.query(
                f"SELECT {ORDER_STATE_SELECT} FROM {self.store.database}.orders FINAL "
                f"WHERE order_id IN ({quoted})"
            ))  # fmt: skip
        if missing_levels:
            wanted = set(missing_levels)
            skus = ", ".join(sql_string(sku) for sku in sorted({k[0] for k in wanted}))
            places = ", ".join(sql_string(loc) for loc in sorted({k[1] for k in wanted}))
            rows = self.store.query(
                f"SELECT {LEVEL_STATE_SELECT} FROM {self.store.database}.stock_levels FINAL "
                f"WHERE sku IN ({skus}) AND location IN ({places})"
            )
            fold.load_levels([row for row in rows if (row[0], row[1]) in wanted])
        marks: dict[str, dict[_PARTITION, int]] = {}
        for (table, topic, partition), mark in self._high_water.items():
            marks.setdefault(table, {})[(topic, partition)] = mark
        encoded, duplicates, orders_written = fold.fold(batch, marks)
        stats = BatchStats(events=n_orders, stock_events=n_stock, duplicates=duplicates,
                           orders_written=orders_written)  # fmt: skip
        letters, dead_letters = self._dead_letters(rejected, stats)
        return _Prepared(
            stats,
            {"dead_letters": (DEAD_LETTERS_COLUMNS, dead_letters)},
            letters,
            ledger,
            encoded,
        )

    def _dead_letters(
        self, rejected: Iterable[tuple[str, int, int, bytes, str]], stats: BatchStats
    ) -> tuple[list[DeadLetter], list[Row]]:
        """Messages that could not be projected: a dead letter each (once) and its row."""
        letters: list[DeadLetter] = []
        rows: list[Row] = []
        for topic, partition, offset, raw, reason in rejected:
            where = Position(topic, partition, offset)
            ref = message_ref(topic, partition, offset)
            if not self._written("dead_letters", where):
                named = str(CodecError(reason, where=ref))
                letter = DeadLetter.of(source=topic, source_ref=ref, reason=named, raw=raw)
                letters.append(letter)
                rows.append((letter.dead_letter_id, letter.reason, len(raw), *_at(where)))
            stats.dead_lettered += 1
        return letters, rows

    def _prepare_batch(self, messages: Iterable[Message]) -> _Prepared:
        stats = BatchStats()
        order_events: list[tuple[OrderEvent, Position]] = []
        stock_events: list[tuple[StockEvent, Position]] = []
        rejected: list[tuple[str, int, int, bytes, str]] = []
        ledger: dict[_PARTITION, list[int]] = {}  # (topic, partition) -> [last offset, count]
        orders_topic, stock_topic = self.topics
        decode = self.codec.decode
        for message in messages:
            where = Position(message.topic() or "", message.partition() or 0, message.offset() or 0)
            key = (where.topic, where.partition)
            entry = ledger.get(key)
            if entry is None:
                ledger[key] = [where.offset, 1]
            else:
                entry[1] += 1
                if where.offset > entry[0]:
                    entry[0] = where.offset
            raw = message.value() or b""
            try:
                event = decode(raw)
                if where.topic == orders_topic and isinstance(event, OrderEvent):
                    order_events.append((event, where))
                elif where.topic == stock_topic and isinstance(event, StockEvent):
                    stock_events.append((event, where))
                else:
                    raise CodecError(f"{type(event).__name__} does not belong on {where.topic}")
            except CodecError as exc:
                rejected.append((*where, raw, exc.reason))
        letters, dead_letters = self._dead_letters(rejected, stats)
        stats.events = len(order_events)
        stats.stock_events = len(stock_events)
        tables = self._fold_orders(order_events, stats)
        tables.update(self._fold_stock(stock_events, stats))
        tables["dead_letters"] = (DEAD_LETTERS_COLUMNS, dead_letters)
        return _Prepared(stats, tables, letters, ledger)

    def _write(self, prepared: _Prepared) -> BatchStats:
        """Send a prepared batch's dead letters, write its tables in order, the ledger last."""
        if self._native is not None:
            return self._write_batch(prepared)
        with _gc_paused():
            return self._write_batch(prepared)

    def _write_batch(self, prepared: _Prepared) -> BatchStats:
        stats, ledger = prepared.stats, prepared.ledger
        refused: list[KafkaError] = []
        for letter in prepared.letters:
            self._dead_letter(letter, refused)
        if self._publisher is not None:
            self._publisher.flush()  # a dead letter is on its topic before its row is written
        if refused:
            raise KafkaException(refused[0])
        for group in WRITE_GROUPS:
            inserts = [self._inserter(table, prepared, stats) for table in group]
            if self._inserts is None:
                for insert in inserts:
                    insert()
                continue
            # The group's INSERTs are independent of each other: sent together, each over its
            # own connection, the group takes as long as its slowest.
            futures = [self._inserts.submit(insert) for insert in inserts]
            wait(futures)
            for future in futures:
                future.result()  # the first failure, once none is in flight any more
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

    def _inserter(self, table: str, prepared: _Prepared, stats: BatchStats) -> Callable[[], None]:
        """The INSERT of one table's rows of a batch (none: a no-op)."""
        if table in prepared.encoded:
            count, data = prepared.encoded[table]
            stats.rows[table] = count
            return lambda: self.store.insert_rowbinary(table, NATIVE_COLUMNS[table], data)
        columns, rows = prepared.tables.get(table, ((), []))
        stats.rows[table] = len(rows)
        return lambda: self.store.insert(table, columns, rows)

    def _forget_passed_marks(self, ledger: dict[_PARTITION, list[int]]) -> None:
        if self._high_water:
            self._high_water = {
                (table, topic, partition): mark
                for (table, topic, partition), mark in self._high_water.items()
                if mark > ledger.get((topic, partition), (-1, 0))[0]
            }

    def _unwritten(self, table: str) -> Callable[[Position], bool] | None:
        """None when `table` takes the rows of every message of this batch (no crash left rows
        of it behind: the usual case, checked once per batch rather than once per message);
        else a test of whether it still needs a message's rows."""
        if not any(key[0] == table for key in self._high_water):
            return None
        return lambda where: not self._written(table, where)

    def _fold_orders(
        self, events: list[tuple[OrderEvent, Position]], stats: BatchStats
    ) -> dict[str, tuple[tuple[str, ...], list[Row]]]:
        states = self._load_orders(events)
        need_event = self._unwritten("order_events")
        need_lines = self._unwritten("order_lines")
        need_stages = self._unwritten("fulfilment_stages")
        need_activity = self._unwritten("order_activity_per_minute")
        event_rows: list[Row] = []
        # order_lines and fulfilment_stages are ReplacingMergeTree tables by (order_id, line_no)
        # and (order_id, entered_seq), read with FINAL: of the rows the batch makes for one key,
        # only the last (highest version) would ever be read, so only that one is written. The
        # tables' high-water marks stay those of the full rows: a row is dropped only for a
        # later one of the same batch.
        line_rows: dict[tuple[str, int], Row] = {}
        stage_rows: dict[tuple[str, int], Row] = {}
        activity: dict[tuple[Any, ...], list[int]] = {}
        changed: dict[str, tuple[dict[str, Any], Position]] = {}
        fold = orders.fold
        for event, where in events:
            at = seconds(event.occurred_at)
            if need_event is None or need_event(where):
                event_rows.append(event_row(event, where, at))
            order_id = event.order_id
            change = fold(states.get(order_id), event, where, at)
            if change is None:
                stats.duplicates += 1
                continue
            row = change.row
            states[order_id] = row
            changed[order_id] = (row, where)
            if change.lines and (need_lines is None or need_lines(where)):
                for line in change.lines:
                    line_rows[(order_id, line[1])] = line
            if change.stages and (need_stages is None or need_stages(where)):
                for stage in change.stages:
                    stage_rows[(order_id, stage[1])] = stage
            if need_activity is None or need_activity(where):
                a = change.activity
                key = (*a[:4], where.topic, where.partition)
                total = activity.get(key)
                if total is None:
                    activity[key] = [1, a.amount, where.offset]
                else:
                    total[0] += 1
                    total[1] += a.amount
                    if where.offset > total[2]:
                        total[2] = where.offset
        for order_id, (row, _) in changed.items():
            self._orders.remember(order_id, row)
        stats.orders_written = len(changed)
        need_orders = self._unwritten("orders")
        return {
            "order_events": (ORDER_EVENTS_COLUMNS, event_rows),
            "order_lines": (ORDER_LINES_COLUMNS, list(line_rows.values())),
            "fulfilment_stages": (FULFILMENT_STAGES_COLUMNS, list(stage_rows.values())),
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
                    _order_values(row)
                    for row, where in changed.values()
                    if need_orders is None or need_orders(where)
                ],
            ),  # fmt: skip
        }

    def _fold_stock(
        self, events: list[tuple[StockEvent, Position]], stats: BatchStats
    ) -> dict[str, tuple[tuple[str, ...], list[Row]]]:
        levels = self._load_stock(events)
        need_history = self._unwritten("stock")
        history: list[Row] = []
        changed: dict[tuple[str, str], tuple[dict[str, Any], Position]] = {}
        fold = stock.fold
        for event, where in events:
            key = (event.sku, event.location)
            change = fold(levels.get(key), event, where)
            if change is None:
                stats.duplicates += 1
                continue
            levels[key] = change.level
            changed[key] = (change.level, where)
            if need_history is None or need_history(where):
                history.append(change.history)
        for key, (level, _) in changed.items():
            self._stock.remember(key, level)
        need_levels = self._unwritten("stock_levels")
        return {
            "stock": (STOCK_COLUMNS, history),
            "stock_levels": (
                STOCK_LEVELS_COLUMNS,
                [
                    _level_values(level)
                    for level, where in changed.values()
                    if need_levels is None or need_levels(where)
                ],
            ),  # fmt: skip
        }

    # ------------------------------------------------------------ fold state from ClickHouse

    def _complete(self, cache: _Cache) -> bool:
        """The cache holds every state there is: the tables were empty at start and nothing has
        been forgotten since, so a miss is a new order or key (saves a query per batch)."""
        return self._fresh and not cache.evicted

    def _load_orders(self, events: list[tuple[OrderEvent, Position]]) -> dict[str, OrderRow]:
        """The state of every order the batch names that has one: from the cache, else from
        ClickHouse. The batch folds into this dict; the cache learns the results after."""
        wanted = {event.order_id for event, _ in events}
        cache = self._orders
        states = {order_id: cache[order_id] for order_id in wanted if order_id in cache}
        if self._complete(cache):
            return states
        ids = sorted(wanted - states.keys())
        if ids:
            self._settle()
        for start in range(0, len(ids), 1000):
            quoted = ", ".join(sql_string(order_id) for order_id in ids[start : start + 1000])
            rows = self.store.query(
                f"SELECT {', '.join(ORDERS_COLUMNS)} FROM {self.store.database}.orders FINAL "
                f"WHERE order_id IN ({quoted})"
            )
            for row in rows:
                state = dict(zip(ORDERS_COLUMNS, row, strict=True))
                states[row[0]] = state
                cache.remember(row[0], state)
        return states

    def _load_stock(
        self, events: list[tuple[StockEvent, Position]]
    ) -> dict[tuple[str, str], StockLevel]:
        wanted = {(e.sku, e.location) for e, _ in events}
        cache = self._stock
        levels = {key: cache[key] for key in wanted if key in cache}
        if self._complete(cache):
            return levels
        keys = wanted - levels.keys()
        if not keys:
            return levels
        self._settle()
        skus = ", ".join(sql_string(sku) for sku in sorted({sku for sku, _ in keys}))
        locations = ", ".join(sql_string(loc) for loc in sorted({loc for _, loc in keys}))
        rows = self.store.query(
            f"SELECT {', '.join(STOCK_LEVELS_COLUMNS)} FROM {self.store.database}.stock_levels "
            f"FINAL WHERE sku IN ({skus}) AND location IN ({locations})"
        )
        for row in rows:
            level = dict(zip(STOCK_LEVELS_COLUMNS, row, strict=True))
            key = (level["sku"], level["location"])
            if key in keys:
                levels[key] = level
                cache.remember(key, level)
        return levels

    # ------------------------------------------------------------ running

    def run(
        self,
        *,
        until: Callable[[BatchStats], bool] | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """Project batches forever, or until `until(stats)` says stop (checked after each batch
        is written; a batch already read by then is written too before this returns).

        Holds the database's lease while it runs, and steps aside when a rebuild swaps. Rides
        out Kafka and ClickHouse being away (see the module docstring); raises GaveUp when an
        outage outlasts the retry budget, and any failure that is not transient as it is."""
        if self.lease is not None:
            self.lease.acquire()
        stop = False

        def keep_going(stats: BatchStats) -> bool:
            nonlocal stop
            stop = until is not None and until(stats)
            return not stop and not (self.lease is not None and self.lease.swap_requested())

        try:
            self._reconnecting(self.start)
            while True:
                try:
                    self.project(keep_going=keep_going, on_batch=on_batch)
                except Exception as exc:
                    if not transient(exc):
                        raise
                    self._recover(exc)
                    continue
                if stop or self.lease is None:
                    return
                self.lease.wait_for_swap()  # a rebuild swaps its tables in
                self._reconnecting(self._reset)
        finally:
            self.close()
            if self.lease is not None:
                self.lease.release()

    def project(
        self,
        *,
        keep_going: Callable[[BatchStats], bool],
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """Project batches while `keep_going(stats)` after each, pipelined over three threads:
        one reads the next batch from Kafka and another writes the previous one to ClickHouse
        while this one folds the current one (the native fold lets go of the GIL). The writes
        stay strictly in order — a batch's tables, then its ledger, then the next batch's — so
        what a crash leaves is what the sequential projector would leave (a batch read or
        folded but not written is only in memory, which a restart forgets). When `keep_going`
        says stop, the batches already read are written as well, so the consumer's position
        and the tables agree on return."""
        pending: Future[BatchStats] | None = None
        stopping = False
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-read") as reader,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-write") as writer,
        ):
            polled: Future[Any] | None = reader.submit(self.read_batch)
            try:
                while polled is not None:
                    messages = polled.result()
                    polled = None if stopping else reader.submit(self.read_batch)
                    prepared = self._prepare(messages)
                    if pending is not None:
                        stats = self._finish(pending)
                        pending = None
                        if on_batch is not None and (not stopping or _has_content(stats)):
                            on_batch(stats)
                        if not stopping and not keep_going(stats):
                            stopping = True
                    pending = self._pending = writer.submit(self._write, prepared)
                    if stopping and polled is None:
                        last = self._finish(pending)
                        pending = None
                        if on_batch is not None and _has_content(last):
                            on_batch(last)
            except BaseException:
                if polled is not None:  # the consumer is not used by two threads at once
                    polled.exception()
                if pending is not None:  # let the write in flight end before this one goes on
                    self._pending = None
                    pending.exception()
                raise

    def _reconnecting(self, step: Callable[[], None]) -> None:
        """`step`, or if it fails for now, what `_recover` does."""
        try:
            step()
        except Exception as exc:
            if not transient(exc):
                raise
            self._recover(exc)

    def _recover(self, error: Exception) -> None:
        """After a transient failure: wait, then start again from what ClickHouse holds, as
        often as it takes, or until the outage outlasts the retry budget (GaveUp). Every thread
        of the failed attempt has ended by now (`project` waits for them)."""
        began = time.monotonic()
        budget = self.retry.give_up_after_s
        for attempt in itertools.count():
            delay = self.retry.delay(attempt)
            waited = time.monotonic() - began
            if budget is not None:
                if waited >= budget:
                    raise GaveUp(f"unavailable for {waited:.0f} s: {error}") from error
                delay = min(delay, budget - waited)  # the last attempt when the budget ends
            log.warning("projector: %s; reconnecting in %.1f s", _one_line(error), delay)
            time.sleep(delay)
            try:
                self.start()
            except Exception as exc:
                if not transient(exc):
                    raise
                error = exc
                continue
            log.warning(
                "projector: reconnected after %.1f s; resuming from what ClickHouse holds",
                time.monotonic() - began,
            )
            return

    def _finish(self, pending: Future[BatchStats]) -> BatchStats:
        try:
            return pending.result()
        finally:
            self._pending = None

    def _settle(self) -> None:
        """Wait for the batch being written (before reading fold states from ClickHouse)."""
        pending = self._pending
        if pending is not None:
            self._finish(pending)

    def close(self) -> None:
        if self._inserts is not None:
            self._inserts.shutdown()
        self._consumer.close()
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def _dead_letter(self, letter: DeadLetter, refused: list[KafkaError]) -> None:
        """Send `letter`; Kafka's refusal, if it comes, is added to `refused`."""
        if self._publisher is None:
            self._publisher = Publisher(self.settings, codec=self.codec)

        def note(error: KafkaError | None) -> None:
            if error is not None:
                refused.append(error)

        self._publisher.dead_letter(letter, then=note)


_order_values = itemgetter(*ORDERS_COLUMNS)  # an `orders` row (dict) as the INSERT's tuple
_level_values = itemgetter(*STOCK_LEVELS_COLUMNS)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _has_content(stats: BatchStats) -> bool:
    return bool(stats.events or stats.stock_events or stats.dead_lettered)


def _at(where: Position) -> tuple[str, int, int]:
    return where.topic, where.partition, where.offset


def lease_key(settings: Settings, store: ClickHouseStore) -> str:
    """What names the database for the lease: the ClickHouse (server address or chDB path) and
    the database."""
    url = urlparse(settings.resolved_clickhouse_url)
    where = url.netloc if url.scheme == "clickhouse" else url.path
    return f"{url.scheme}://{where}#{store.database}"
