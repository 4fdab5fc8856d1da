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

The fold itself — messages to fold states to rows — is a `BatchFold` (projections/fold.py),
chosen once when the projector is built: the native fold where the extension is built, else the
Python reference. `Projector` owns consuming, the offsets, the threads and the lease.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from events.codec import AvroCodec, CodecError, message_ref
from events.models import DeadLetter
from events.privacy import DataKeys
from infra import offsets
from infra.kafka import client_security
from infra.keystore import KafkaKeys
from infra.metrics import (
    CONSUMED,
    PROJECTOR_EVENT_DELAY,
    PROJECTOR_FRESHNESS,
    ConsumerLag,
    Health,
)
from infra.publisher import Publisher
from infra.settings import Settings
from projections.fold import (
    BatchFold,
    DecodedBatch,
    HighWater,
    Partition,
    Rejected,
    Rows,
    ValueRows,
)
from projections.lease import (
    Claim,
    PartitionLease,
    lease_key,
    migrate_concurrently,
    step_aside,
    swap_under_way,
)
from projections.native_fold import AVAILABLE as NATIVE_FOLD
from projections.native_fold import NativeFold
from projections.orders import Position
from projections.privacy import AnalystView, erase, expire_payloads, wait_for_mutations
from projections.python_fold import PythonFold
from projections.reconnect import Backoff, GaveUp, KafkaUnavailable, transient
from projections.schema import (
    DEAD_LETTERS_COLUMNS,
    PROJECTOR_OFFSETS_COLUMNS,
    READ_MODEL_NAMES,
)
from projections.store import ClickHouseStore, Row, sql_string

__all__ = ["BatchStats", "Position", "Projector"]

log = logging.getLogger(__name__)

STATE_CACHE_SIZE = 50_000  # fold states a fold keeps (per kind: orders, stock levels)
PAYLOAD_EXPIRY_EVERY_S = 6 * 3600  # how often old event payloads are emptied
READ_CHUNK = 10_000  # messages asked of Kafka at a time (see `NativeFold.decode`)

# The order of a batch's INSERTs (see the module docstring): the tables derived from the fold
# states, then the states, then (by itself) the offset ledger. Within a group, any order.
WRITE_GROUPS = (
    (
        "dead_letters",
        "order_events",
        "order_lines",
        "fulfilment_stages",
        "order_activity_per_minute",
        "stock",
    ),
    ("orders", "stock_levels"),
)
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


@dataclass
class _Prepared:
    """A batch decoded and folded, its rows not yet written (`Projector._write`)."""

    stats: BatchStats
    tables: dict[str, Rows]
    letters: list[DeadLetter]
    ledger: dict[Partition, list[int]]
    written_at: dict[str, list[int]]  # per topic, its messages' Kafka timestamps (ms)


def batch_fold(
    *,
    native: bool,
    codec: AvroCodec,
    orders_topic: str,
    stock_topic: str,
    analyst: AnalystView | None,
) -> BatchFold[Any]:
    """The fold a projector uses: native where asked for and the extension is built (same
    rows, no Python object per event), else the Python reference. Either stores what
    `analyst` lets analysts see of personal data."""
    fold = NativeFold if native and NATIVE_FOLD else PythonFold
    return fold(
        codec=codec,
        orders_topic=orders_topic,
        stock_topic=stock_topic,
        capacity=STATE_CACHE_SIZE,
        analyst=analyst,
    )


def next_offsets(store: ClickHouseStore, topics: Sequence[str]) -> dict[Partition, int]:
    """Per (topic, partition) the projector has written, the next offset it projects: one
    past what the offset ledger holds (also the dashboard's measure of the projector's lag)."""
    quoted = ", ".join(sql_string(t) for t in topics)
    rows = store.query(
        f"SELECT _topic, _partition, max(_offset) FROM {store.database}.projector_offsets "
        f"WHERE _topic IN ({quoted}) GROUP BY _topic, _partition"
    )
    return {(str(t), int(p)): int(o) + 1 for t, p, o in rows}


class _StoredStates:
    """The fold states ClickHouse holds (`StoredStates`), read once the batch being written,
    if any, is in."""

    def __init__(self, store: ClickHouseStore, settle: Callable[[], None]) -> None:
        self.store = store
        self.settle = settle

    def orders(self, order_ids: Sequence[str], columns: str) -> list[Row]:
        self.settle()
        rows: list[Row] = []
        for start in range(0, len(order_ids), 1000):
            quoted = ", ".join(sql_string(i) for i in order_ids[start : start + 1000])
            rows += self.store.query(
                f"SELECT {columns} FROM {self.store.database}.orders FINAL "
                f"WHERE order_id IN ({quoted})"
            )
        return rows

    def levels(self, keys: Collection[tuple[str, str]], columns: str) -> list[Row]:
        self.settle()
        wanted = set(keys)
        skus = ", ".join(sql_string(sku) for sku in sorted({sku for sku, _ in wanted}))
        places = ", ".join(sql_string(loc) for loc in sorted({loc for _, loc in wanted}))
        rows = self.store.query(
            f"SELECT {columns} FROM {self.store.database}.stock_levels FINAL "
            f"WHERE sku IN ({skus}) AND location IN ({places})"
        )
        return [row for row in rows if (row[0], row[1]) in wanted]


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
        keys: DataKeys | None = None,
    ) -> None:
        self.settings = settings
        self.retry = retry or Backoff()
        self.store = store
        self.codec = codec or AvroCodec.for_registry(settings.schema_registry_url)
        # Personal data reaches ClickHouse opened and masked, never clear (projections/privacy.py).
        self._own_keys = keys is None
        self.keys = keys or KafkaKeys(settings)
        self._erase_again: list[str] = []
        self._payloads_expired_at = 0.0
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.topics = (settings.topics.orders, settings.topics.inventory)
        # Which partitions this projector writes, and the fence on its writes: several
        # projectors of one database split the partitions (projections/lease.py).
        self.lease = (
            PartitionLease(
                settings=settings,
                store=store,
                topics=self.topics,
                group=f"oms-projector:{lease_key(settings, store)}",
            )
            if lease
            else None
        )
        self._claim: Claim | None = None
        self._sink: ClickHouseStore = store  # where batches are written: fenced when leased
        self.fold = batch_fold(
            native=native,
            codec=self.codec,
            orders_topic=self.topics[0],
            stock_topic=self.topics[1],
            analyst=AnalystView(self.codec, self.keys),
        )
        # A group's INSERTs go together where the store takes them from several threads.
        self._inserts = (
            ThreadPoolExecutor(max_workers=6, thread_name_prefix="projector-insert")
            if self.fold.inserts_in_parallel and store.parallel_inserts
            else None
        )
        self._states = _StoredStates(store, self._settle)
        self._high_water = HighWater()
        self._next: dict[Partition, int] = {}
        self._publisher: Publisher | None = None
        self._pending: Future[BatchStats] | None = None  # the batch being written, if any
        self._probe: Consumer | None = None
        self._projected: set[str] = set()  # the topics assigned by the last (re)start
        self._assigned: list[Partition] = []
        # Readiness (/readyz): None once connected to Kafka and ClickHouse and projecting.
        self.unready: str | None = "not started"
        self.health = Health(why_not_ready=lambda: self.unready)
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
            | client_security(settings)
        )

    def _kafka_error(self, error: KafkaError) -> None:
        """librdkafka's report of a client-wide error. It reconnects by itself; the projector
        only needs to know when no broker at all answers, or the client cannot go on — as when
        the brokers refuse its SASL user: waiting will not change its password."""
        if error.fatal() or error.code() == KafkaError._AUTHENTICATION:
            self._kafka_fatal = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._kafka_down = error
        else:
            log.debug("Kafka: %s", error.str())

    # ------------------------------------------------------------ where to resume

    def resume_offsets(self) -> dict[Partition, int]:
        """Next offset per (topic, partition): one past what the offset ledger holds."""
        return next_offsets(self.store, self.topics)

    def _read_high_water(
        self, resume: dict[Partition, int], owned: frozenset[Partition] | None = None
    ) -> tuple[HighWater, bool]:
        """Per table and partition (of `owned`, when only those are this projector's), the
        highest source offset it holds beyond the ledger: rows a crash (or the projector the
        partition was taken from) left behind, which the replay must not write again; and
        whether every table is empty (then no fold state is in ClickHouse either)."""
        topics = ", ".join(sql_string(t) for t in self.topics)
        marks: dict[tuple[str, str, int], int] = {}
        empty = not resume
        for table in READ_MODEL_NAMES:
            if table == "projector_offsets":
                continue
            rows = self.store.query(
                f"SELECT _topic, _partition, max(_offset) FROM {self.store.database}.{table} "
                f"WHERE _topic IN ({topics}) GROUP BY _topic, _partition"
            )
            for topic, partition, offset in rows:
                empty = False
                if owned is not None and (str(topic), int(partition)) not in owned:
                    continue  # another projector's: its marks move on without this one
                if int(offset) >= resume.get((str(topic), int(partition)), 0):
                    marks[(table, str(topic), int(partition))] = int(offset)
        return HighWater(marks), empty

    def start(self) -> None:
        migrate_concurrently(self.store)  # other projectors may be starting too
        self._reset()

    def _list_topic(self, topic: str) -> Any:
        """The topic's metadata; when the brokers do not answer, whether they refused the
        SASL user (a report served by `poll`) is asked first: that is not an outage."""
        try:
            return self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException:
            if not self._consumer.assignment():  # so no message can be taken and dropped here
                self._consumer.poll(0)  # runs `_kafka_error` for what librdkafka reported
            if self._kafka_fatal is not None:
                raise KafkaException(self._kafka_fatal) from None
            raise

    def _reset(self) -> None:
        """Forget everything in memory and continue from what ClickHouse holds (once no INSERT
        the server may still be writing can change that). Leased, only the partitions Kafka
        assigns this projector, claimed before anything is read (projections/lease.py)."""
        self._pending = None
        listed: dict[str, list[int]] = {}  # Kafka first: an outage or a refused user shows here
        for topic in self.topics:
            metadata = self._list_topic(topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                if topic in self._projected:  # a broker coming back that does not list it yet
                    raise KafkaUnavailable(f"Kafka does not list topic {topic} (yet)")
                log.warning("topic %s does not exist (yet); not projecting it", topic)
                continue
            listed[topic] = sorted(metadata.partitions)
        owned: frozenset[Partition] | None = None
        if self.lease is not None:
            self._claim = self.lease.acquire()  # and waits for the INSERTs running then
            self._sink = self.lease.fence(self._claim)
            owned = self._claim.partitions
        else:
            self.store.settle()
        resume = self.resume_offsets()
        self._high_water, empty = self._read_high_water(resume, owned)
        self.fold.reset(complete=empty)
        assignment: list[TopicPartition] = []
        self._next = {}
        for topic, partitions in listed.items():
            for partition in partitions:
                if owned is not None and (topic, partition) not in owned:
                    continue
                offset = resume.get((topic, partition), OFFSET_BEGINNING)
                assignment.append(TopicPartition(topic, partition, offset))
                if offset != OFFSET_BEGINNING:
                    self._next[(topic, partition)] = offset
        self._kafka_down = None  # it answered just now
        self._consumer.assign(assignment)
        self._projected = {tp.topic for tp in assignment}
        self._assigned = [(tp.topic, tp.partition) for tp in assignment]
        self.unready = None

    def positions(self) -> dict[Partition, int]:
        """Per partition projected, the next offset to project (0 where nothing is projected
        yet: the projector starts at the partition's beginning)."""
        return {where: self._next.get(where, 0) for where in self._assigned}

    def lag(self) -> int:
        """Messages on the topics not yet projected (0 = caught up)."""
        if self._probe is None:
            # Asked through the fetching consumer, each watermark waits behind its long poll
            # (~100 ms); a consumer that never fetches answers in well under a millisecond.
            self._probe = Consumer(
                {"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": "oms-projector"}
                | client_security(self.settings)
            )
        return sum(offsets.lag(self._probe, self.positions(), timeout_s=10).values())

    def consumer_lag(self) -> ConsumerLag:
        """`oms_consumer_lag` of this projector, for its metrics server."""
        return ConsumerLag(self.settings, group="oms-projector", positions=self.positions)

    # ------------------------------------------------------------ one batch

    def read_batch(self) -> tuple[DecodedBatch[Any], dict[str, list[int]]]:
        """The next batch from Kafka, decoded (on the reading thread, while the previous batch
        folds), and its messages' Kafka timestamps per topic (for freshness)."""
        written_at: dict[str, list[int]] = {topic: [] for topic in self.topics}
        return self.fold.decode(self.poll(written_at)), written_at

    def poll(self, written_at: dict[str, list[int]] | None = None) -> Iterator[list[Message]]:
        """One batch's messages in chunks, as Kafka hands them out: until `batch_size`
        messages, or `batch_seconds` have passed and the batch before is written. Each
        message's Kafka timestamp is added to `written_at` under its topic."""
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
            wanted = min(READ_CHUNK, self.batch_size - taken)
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
            if written_at is not None:
                for message in kept:
                    written_at.setdefault(message.topic() or "", []).append(message.timestamp()[1])
            if kept:
                yield kept  # (the fold masks personal data: AnalystView)
            del kept  # before the next chunk's messages are made

    def _writing(self) -> bool:
        pending = self._pending
        return pending is not None and not pending.done()

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

    def _prepare(self, batch: DecodedBatch[Any], written_at: dict[str, list[int]]) -> _Prepared:
        """Fold a decoded batch, in memory: the fold states move on, nothing is written or sent
        (but a fold state the fold lacks is read from ClickHouse, after the batch being
        written, if any, is in)."""
        self._housekeeping()
        folded = self.fold.fold(batch, states=self._states, high_water=self._high_water)
        stats = BatchStats(
            events=batch.order_events,
            stock_events=batch.stock_events,
            duplicates=folded.duplicates,
            orders_written=folded.orders_written,
        )
        letters, dead_letters = self._dead_letters(batch.rejected + folded.rejected, stats)
        tables = {**folded.tables, "dead_letters": ValueRows(DEAD_LETTERS_COLUMNS, dead_letters)}
        return _Prepared(stats, tables, letters, batch.ledger, written_at)

    def _housekeeping(self) -> None:
        """Between batches: erase customers forgotten since the last batch (and again at the
        next, for a batch read ahead before their keys went), and expire old payloads."""
        forgotten = [s for s in self.keys.forgotten() if not s.startswith("order:")]
        subjects, self._erase_again = [*self._erase_again, *forgotten], forgotten
        expire = time.monotonic() - self._payloads_expired_at > PAYLOAD_EXPIRY_EVERY_S
        if not subjects and not expire:
            return
        self._settle()
        self.store.settle()
        for subject in dict.fromkeys(subjects):
            erase(self.store, subject)
            log.info("erased customer %s from the read models", subject)
        if expire:
            expire_payloads(
                self.store,
                older_than=timedelta(days=self.settings.payload_retention_days),
                now=datetime.now(UTC),
            )
            self._payloads_expired_at = time.monotonic()
        wait_for_mutations(self.store)
        if subjects:  # fold states may hold what was just erased: read them again
            self.fold.reset(complete=False)

    def _dead_letters(
        self, rejected: list[Rejected], stats: BatchStats
    ) -> tuple[list[DeadLetter], list[Row]]:
        """Messages that could not be projected: a dead letter each (once) and its row."""
        letters: list[DeadLetter] = []
        rows: list[Row] = []
        for topic, partition, offset, raw, reason in rejected:
            where = Position(topic, partition, offset)
            ref = message_ref(topic, partition, offset)
            if not self._high_water.written("dead_letters", where):
                named = str(CodecError(reason, where=ref))
                letter = DeadLetter.of(source=topic, source_ref=ref, reason=named, raw=raw)
                letters.append(letter)
                rows.append((letter.dead_letter_id, letter.reason, len(raw), *where))
            stats.dead_lettered += 1
        return letters, rows

    def _write(self, prepared: _Prepared) -> BatchStats:
        """Send a prepared batch's dead letters, write its tables in order, the ledger last
        (leased: each INSERT fenced, so rows of a partition this projector lost are dropped)."""
        stats, ledger = prepared.stats, prepared.ledger
        sink = self._sink
        refused: list[KafkaError] = []
        for letter in prepared.letters:
            self._dead_letter(letter, refused)
        if self._publisher is not None:
            self._publisher.flush()  # a dead letter is on its topic before its row is written
        if refused:
            raise KafkaException(refused[0])
        for group in WRITE_GROUPS:
            inserts = [
                self._inserter(sink, table, prepared.tables[table], stats) for table in group
            ]
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
        sink.insert(
            "projector_offsets",
            PROJECTOR_OFFSETS_COLUMNS,
            [
                (topic, partition, last, count, now)
                for (topic, partition), (last, count) in sorted(ledger.items())
            ],
        )
        for (topic, partition), (last, _) in ledger.items():
            self._next[(topic, partition)] = last + 1
        self._high_water = self._high_water.passed(ledger)
        _measure(ledger, prepared.written_at)
        return stats

    def _inserter(
        self, sink: ClickHouseStore, table: str, rows: Rows, stats: BatchStats
    ) -> Callable[[], None]:
        """The INSERT of one table's rows of a batch into `sink` (none: a no-op)."""
        stats.rows[table] = rows.count
        return lambda: rows.insert(sink, table)

    # ------------------------------------------------------------ running

    def run(
        self,
        *,
        until: Callable[[BatchStats], bool] | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """Project batches forever, or until `until(stats)` says stop (checked after each batch
        is written; a batch already read by then is written too before this returns).

        Leased, it writes the partitions Kafka assigns it (projections/lease.py): when they
        change, or another projector claimed one of them, it claims what it is assigned then
        and resumes from what ClickHouse holds; while a rebuild swaps its tables in, it steps
        aside. Rides out Kafka and ClickHouse being away (see the module docstring); raises
        GaveUp when an outage outlasts the retry budget, and any failure that is not transient
        as it is."""
        if self.lease is not None:
            self.unready = "waiting for Kafka to assign this projector partitions"
            self.lease.join()
        stop = False

        def keep_going(stats: BatchStats) -> bool:
            nonlocal stop
            stop = until is not None and until(stats)
            return not stop and self._still_holds()

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
                self._reconnecting(self._claim_again)
        finally:
            self.unready = "stopped"
            self.close()

    def _still_holds(self) -> bool:
        """Whether this projector still holds every partition it writes and no rebuild is
        swapping (asked between batches: the fence keeps the tables right either way, this is
        how the projector finds out that its writes are being dropped)."""
        if self.lease is None:
            return True
        assert self._claim is not None
        return self.lease.holds(self._claim) and swap_under_way(self.store) is None

    def _claim_again(self) -> None:
        """After the lease was lost (partitions moved, a rebuild's swap): wait for the swap to
        end if that is why, then claim what Kafka assigns now and resume from ClickHouse."""
        swap = swap_under_way(self.store)
        if swap is not None:
            self.unready = "a rebuild is swapping its tables in"
            log.warning("a rebuild is swapping in new tables; pausing until it is done")
            if self._claim is not None:
                step_aside(self.store, swap, holder=self._claim.holder)
            while swap_under_way(self.store) is not None:
                time.sleep(0.2)
        else:
            log.warning("projector: its partitions changed hands; claiming what it is assigned")
        self.unready = "waiting for Kafka to assign this projector partitions"
        self._reset()

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
            polled: Future[tuple[DecodedBatch[Any], dict[str, list[int]]]] | None = reader.submit(
                self.read_batch
            )
            try:
                while polled is not None:
                    batch, written_at = polled.result()
                    self.health.beat()
                    polled = None if stopping else reader.submit(self.read_batch)
                    prepared = self._prepare(batch, written_at)
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
        self.unready = f"Kafka or ClickHouse is unavailable: {_one_line(error)}"
        for attempt in itertools.count():
            self.health.beat()  # waiting on purpose is not being stuck
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
        if self.lease is not None:
            self.lease.leave()
        if self._inserts is not None:
            self._inserts.shutdown()
        self._consumer.close()
        if self._own_keys:
            self.keys.close()  # type: ignore[attr-defined]
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


def _measure(ledger: dict[Partition, list[int]], written_at: dict[str, list[int]]) -> None:
    """A written batch's metrics: messages projected per topic, and how long its events took
    from Kafka to ClickHouse (each event; the oldest as the freshness gauge)."""
    for (topic, _), (_, count) in ledger.items():
        CONSUMED.labels(topic).inc(count)
    now_ms = time.time() * 1000
    for topic, stamps in written_at.items():
        if stamps:
            delays = [max(now_ms - stamp, 0.0) / 1000 for stamp in stamps]
            PROJECTOR_EVENT_DELAY.observe_many(delays, topic)
            PROJECTOR_FRESHNESS.labels(topic).set(max(delays))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _has_content(stats: BatchStats) -> bool:
    return bool(stats.events or stats.stock_events or stats.dead_lettered)
