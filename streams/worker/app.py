"""The worker object and the Faust app that drives it. Agents are thin: decode, call a pure
decision, write results.

Correctness does not rest on Faust's `exactly_once` (open duplicate bugs) nor on its table
changelogs (written behind the offsets they belong to, so a kill -9 can leave a table older
than the outputs it led to). Instead each agent's state is the fold of its own output log —
the order log for the order agent, the stock ledger for the inventory agent — read back from
Kafka whenever a partition is (re)assigned (`PartitionStates`). A batch's log events go out
first; what it tells the other agent follows once Kafka has them (write-ahead), and the batch
is acked once Kafka has those too. So the logs always hold at least what the committed inputs
did, a message never outlives a crash that lost its cause, and every redelivered input is
recognised by its event id. The agent does not wait for those acknowledgements before its
next batch (`streams.worker.sink.Acks`): the acks to Faust follow, in order, as Kafka confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import datetime, timedelta
from functools import partial
from itertools import islice
from typing import Any, Generic, TypeVar, cast

import faust
import mode
from faust.types.auth import CredentialsT

from events.bounds import out_of_bounds
from events.codec import AvroCodec, CodecError, message_ref
from events.models import (
    DeadLetter,
    Event,
    OrderEvent,
    OrderModified,
    OrderReceived,
    StockEvent,
    stock_key,
    utc_now,
)
from infra import collector
from infra.kafka import MAX_MESSAGE_BYTES, sasl_credentials, ssl_context
from infra.keystore import KeyStoreError, private_codec
from infra.metrics import (
    CONSUMED,
    DEAD_LETTERS,
    DECIDE_BATCH_SECONDS,
    DECIDE_SECONDS,
    INTAKE_HELD_BACK,
    ORDERS_EVICTED,
    ORDERS_IN_FLIGHT,
    PERSONAL_SCRUBBED,
    REBUILD_EVENTS,
    REBUILD_SECONDS,
    SNAPSHOT_BYTES,
    SNAPSHOTS_WRITTEN,
    Health,
)
from infra.poison import describe
from infra.replay import read_partition
from infra.settings import Settings, get_settings
from infra.structured_logs import event_ids, faust_logging_config, use_log_ids
from streams import capacity, inventory, orders
from streams.partitions import LedgerPartition, OrderPartition, held_back
from streams.reference import load_catalogue, load_rules
from streams.worker import faust_compat
from streams.worker.faust_compat import App
from streams.worker.sink import Acks, Outputs, Sink, checkpoint
from streams.worker.snapshots import (
    LedgerSnapshots,
    OrderSnapshots,
    PartitionSnapshots,
    Sealer,
    SnapshotStore,
)
from streams.worker.spill import SpillFile, claim_directory
from streams.worker.views import SharedViews

log = logging.getLogger(__name__)
BATCH = 500  # inputs per batch: outputs are confirmed per batch, not per message
BATCH_WITHIN_S = 0.005
SPILL_EVERY = 10_000  # log events folded between two `spill`s while rebuilding
REPLAY_CHUNK = 5_000  # log events read at a time while rebuilding
# The agents' state (every order's fold) only grows, and a full collection walks all of it:
# seconds of pause at a million orders, for next to no garbage (the state holds no cycles).
# What has lived this long is moved out of the collector's sight (`gc.freeze`); it is still
# freed by reference counting, and new objects are collected as usual (the freeze itself
# costs nothing: it moves a list).
FREEZE_EVERY_S = 1.0
HEARTBEAT_S = 1.0  # how often the loop says it is alive (liveness, infra/metrics.py)

Replay = Callable[[str, int], Iterable[Event]]
# A log's events from an offset (on, to its end), that end put in the dict by (topic, partition).
Tail = Callable[[str, int, int, dict[tuple[str, int], int]], Iterable[Event]]
Message = tuple[str, bytes, bytes]  # topic, key, value: for another agent, after the log
Decide = Callable[[list[Any], list[Message]], Awaitable[list[str]]]  # one agent's batch
P = TypeVar("P", OrderPartition, LedgerPartition)


class OutputTooLarge(ValueError):
    """An input would make an event larger than Kafka takes: the input is dead-lettered."""


async def rebuild_at_once(
    rebuilds: Iterable[Callable[[], Awaitable[Any]]], at_once: int
) -> list[BaseException]:
    """Run `rebuilds` (partition states' `of`), `at_once` at a time (`OMS_REBUILD_AT_ONCE`
    for a worker: the work is mostly outside the GIL and partly waiting on Kafka, so three
    overlap on two cores — the 1,000,000-order restart took 11.2 / 12.4 s at three against
    12.9 / 12.8 s at two; docs/benchmarks.md, "Recovery"); the errors of those that failed."""
    gate = asyncio.Semaphore(at_once)

    async def one(rebuild: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await rebuild()

    results = await asyncio.gather(*(one(r) for r in rebuilds), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


class PartitionStates(Generic[P]):
    """Per-partition agent state, rebuilt from the agent's output log on first use after each
    (re)assignment."""

    def __init__(
        self,
        *,
        topic: str,
        replay: Replay,
        new: Callable[[int], P],
        settle: Callable[[], Awaitable[None]],
        snapshots: PartitionSnapshots | None = None,
        tail: Tail | None = None,
    ) -> None:
        self.topic = topic
        self._replay = replay
        self._new: Callable[[int], P] = new
        self._settle = settle
        self.snapshots = snapshots
        self._tail = tail
        self.states: dict[int, P] = {}
        # Per partition: the log's end when it was rebuilt, and the events folded or written
        # since the snapshot it was rebuilt from (a new snapshot is due past a bound).
        self.ends: dict[int, int] = {}
        self.unsnapped: dict[int, int] = {}
        # Rebuilds under way, and per partition how many times it was forgotten: a rebuild
        # begun before the last `forget` is not kept (the partition may have been written by
        # another worker since).
        self._building: dict[int, asyncio.Future[P]] = {}
        self._generation: dict[int, int] = {}
        self._stale: list[P] = []

    async def of(self, partition: int) -> P:
        states = self.states.get(partition)
        if states is not None:
            return states
        # One rebuild a partition, however many ask (a batch, the warm-up after an
        # assignment); shielded, so a caller cancelled does not cancel it for the others.
        building = self._building.get(partition)
        if building is None:
            generation = self._generation.get(partition, 0)
            building = asyncio.ensure_future(self._rebuild(partition, generation))
            self._building[partition] = building
        return await asyncio.shield(building)

    async def _rebuild(self, partition: int, generation: int) -> P:
        try:
            # Outputs of earlier batches may still be on their way: the log is read once
            # Kafka has them all, so the state is the fold of everything this worker wrote.
            await self._settle()
            began = time.perf_counter()
            # The collector is paused while the state is built (`infra.collector`): it holds
            # no cycles, and the collections its objects set off each walked all of it again
            # (~40 % of a restart after 1,000,000 orders, with the views restored beside it).
            with collector.paused(freeze=True):
                states = self._new(partition)
                start = 0
                ends = dict[tuple[str, int], int]()
                if self.snapshots is not None and self._tail is not None:
                    start = await asyncio.to_thread(self.snapshots.load, states, partition)
                    if start < 0:  # restored in part: start over from the whole log
                        if isinstance(states, OrderPartition):
                            states.close()
                        states, start = self._new(partition), 0
                    events = self._tail(self.topic, partition, start, ends)
                else:
                    events = self._replay(self.topic, partition)
                folded, skipped = await self._fold(states, partition, iter(events))
        finally:
            if self._generation.get(partition, 0) == generation:
                self._building.pop(partition, None)
        agent = "orders" if isinstance(states, OrderPartition) else "inventory"
        REBUILD_SECONDS.labels(agent).observe(time.perf_counter() - began)
        REBUILD_EVENTS.labels(agent).inc(folded)
        log.info(
            "rebuilt %s[%d] from %s%d events (%d not folded)",
            self.topic,
            partition,
            f"a snapshot at offset {start} and " if start else "",
            folded,
            skipped,
        )
        if self._generation.get(partition, 0) != generation:
            # Forgotten while it was rebuilt (a rebalance): whoever asked gets it, nobody
            # keeps it; closed at the next `forget`, when no batch of then is still running.
            self._stale.append(states)
            return states
        if self.snapshots is not None and self._tail is not None:
            self.ends[partition] = ends.get((self.topic, partition), 0)
        self.states[partition] = states
        self.unsnapped[partition] = folded
        return states

    async def _fold(self, states: P, partition: int, events: Iterator[Event]) -> tuple[int, int]:
        """Fold `events` (read in a thread, `REPLAY_CHUNK` at a time: a partition's whole log
        is never in memory at once, and the event loop runs between two chunks); how many were
        folded and how many could not be."""
        folded = skipped = 0
        while chunk := await asyncio.to_thread(lambda: list(islice(events, REPLAY_CHUNK))):
            for event in chunk:
                folded += 1
                if folded % SPILL_EVERY == 0 and isinstance(states, OrderPartition):
                    states.spill()
                try:
                    states.fold(event)
                except Exception:
                    # An event on the log that this version cannot fold (a bug, either in the
                    # version that wrote it or in this one): the rest of the partition is still
                    # rebuilt, rather than the worker stopping on every start.
                    skipped += 1
                    log.exception("%s[%d]: cannot fold %s", self.topic, partition, event.event_id)
            await asyncio.sleep(0)
        return folded, skipped

    def wrote(self, partition: int, events: int) -> None:
        self.unsnapped[partition] = self.unsnapped.get(partition, 0) + events

    def forget(self, partitions: Iterable[int]) -> None:
        for stale in self._stale:
            if isinstance(stale, OrderPartition):
                stale.close()
        self._stale.clear()
        for partition in partitions:
            self._generation[partition] = self._generation.get(partition, 0) + 1
            self._building.pop(partition, None)
            states = self.states.pop(partition, None)
            self.ends.pop(partition, None)
            self.unsnapped.pop(partition, None)
            if isinstance(states, OrderPartition):
                states.close()


class Worker:
    """What one worker process keeps and does: the agents' partition states, the shared
    views, the output sink; one method per thing the Faust app asks of it."""

    def __init__(
        self,
        settings: Settings,
        *,
        replay: Replay | None = None,
        views: SharedViews | None = None,
        sink: Outputs | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.codec: AvroCodec = private_codec(settings)
        self.views = views or SharedViews(
            catalogue=load_catalogue(settings.catalogue_file), codec=self.codec
        )
        self._reads_views = views is None  # views given by a test are already filled
        if self._reads_views:
            self.views.ready.clear()
        self.rules = load_rules(settings.fraud_rules_file)
        # Readiness (/readyz): the partitions Faust gave this worker (None: none yet, or a
        # rebalance under way), and how many partitions' states are being rebuilt now.
        self.assigned: set[tuple[str, int]] | None = None
        self.held_back: set[int] = set()  # intake partitions not read while orders drain
        # Per held partition, its fewest orders in flight and since when; per partition, the
        # orders in flight found stuck (not counted): `admit`.
        self._progress: dict[int, tuple[int, float]] = {}
        self._stuck: dict[int, int] = {}
        self.clock: Callable[[], float] = time.monotonic
        self.rebuilding = 0
        self.health = Health(why_not_ready=self.why_not_ready)
        self.out: Outputs = sink or Sink(settings.kafka_bootstrap)
        from_kafka = replay is None
        replay = replay or (
            lambda topic, partition: read_partition(
                settings.kafka_bootstrap, topic, partition, codec=self.codec
            )
        )
        spill_dir = claim_directory(settings.home / "worker" / "spilled")
        # Snapshots need the real broker (they are on a topic) and the real sink (which knows
        # the log's offsets); tests with fakes for either rebuild from the whole log.
        store = (
            SnapshotStore(settings)
            if settings.snapshot_every and from_kafka and hasattr(self.out, "log_end")
            else None
        )
        tail: Tail = lambda topic, partition, start, ends: read_partition(  # noqa: E731
            settings.kafka_bootstrap, topic, partition, codec=self.codec, start=start, ends=ends
        )
        sealer = Sealer(self.codec)
        self.order_states = PartitionStates(
            topic=self.topics.orders,
            replay=replay,
            new=lambda partition: OrderPartition(
                spilled=SpillFile(spill_dir, partition, sealer=sealer),
                max_in_memory=settings.orders_in_memory_per_partition,
            ),
            settle=self.out.confirmed,
            snapshots=OrderSnapshots(store, self.codec) if store else None,
            tail=tail,
        )
        self.stock_states = PartitionStates(
            topic=self.topics.inventory,
            replay=replay,
            new=lambda _: LedgerPartition(),
            settle=self.out.confirmed,
            snapshots=LedgerSnapshots(store, self.codec) if store else None,
            tail=tail,
        )
        self._snapshot_writing: asyncio.Task[None] | None = None
        self._snapshot_store = store
        self.warming: asyncio.Future[None] | None = None  # `warm` after the last assignment

    # ------------------------------------------------------------ partitions and views

    async def partitions_revoked(self, partitions: Iterable[int]) -> None:
        # Whoever takes these partitions over rebuilds from the logs: everything this worker
        # wrote must be on them first (and commands must reach the ledger before theirs).
        await self.out.confirmed()
        self.forget(partitions)

    def forget(self, partitions: Iterable[int]) -> None:
        """Someone else may write these partitions meanwhile: read them again when needed."""
        partitions = list(partitions)
        self.order_states.forget(partitions)
        self.stock_states.forget(partitions)

    async def warm(self) -> None:
        """Rebuild the states of the partitions just assigned now, `OMS_REBUILD_AT_ONCE` at
        a time, instead of each on its first input, one after another (a batch asks them in
        turn): a restart's partitions come back together, and /readyz counts them down."""
        assigned = self.assigned or set()
        topics = self.topics
        of_orders = sorted({p for t, p in assigned if t in (topics.intake, topics.order_commands)})
        of_stock = sorted({p for t, p in assigned if t == topics.stock_commands})
        store = self._snapshot_store
        with store.reusing_buffers() if store is not None else contextlib.nullcontext():
            failed = await rebuild_at_once(
                [partial(self.state_of, self.order_states, p) for p in of_orders]
                + [partial(self.state_of, self.stock_states, p) for p in of_stock],
                at_once=self.settings.rebuild_at_once,
            )
        for error in failed:  # the partition's first input tries again (and raises there)
            log.warning("a partition's state was not rebuilt ahead: %r", error)

    def start_views(self) -> None:
        if self._reads_views:
            topics = self.topics
            snapshot = None
            if self._snapshot_store is not None:
                store = SnapshotStore(self.settings)  # the views' thread's own

                def snapshot() -> bytes | memoryview | None:
                    found = store.read("views", 0)
                    return None if found is None else found.payload

            self.views.start(
                bootstrap=self.settings.kafka_bootstrap,
                topics=[topics.catalogue, topics.inventory, topics.orders],
                eta_topic=topics.eta_models,
                snapshot=snapshot,
            )

    async def views_ready(self) -> None:
        while not self.views.ready.is_set():
            await asyncio.sleep(0.05)

    def why_not_ready(self) -> str | None:
        """What the worker waits for before it decides at full speed (/readyz; read from the
        metrics server's thread): its shared views read, its partitions assigned, and no
        partition's state being rebuilt from its log (each assigned partition's is rebuilt at
        the assignment, `OMS_REBUILD_AT_ONCE` at a time)."""
        if not self.views.ready.is_set():
            return "reading the catalogue, the stock ledger and the order log into the views"
        if self.assigned is None:
            return "waiting for partitions (joining the group, or a rebalance under way)"
        if self.rebuilding:
            return f"rebuilding {self.rebuilding} partition state(s) from the logs"
        return None

    async def state_of(self, states: PartitionStates[P], partition: int) -> P:
        """`states.of(partition)`, counted as a rebuild while one is under way."""
        if partition in states.states:
            return await states.of(partition)
        self.rebuilding += 1
        try:
            return await states.of(partition)
        finally:
            self.rebuilding -= 1

    # ------------------------------------------------------------ the order agent

    async def order_batch(self, batch: list[Any], messages: list[Message]) -> list[str]:
        """Decide each input of a batch; log events are produced now, stock commands are
        added to `messages` (sent after the log). Returns what it wrote, by type."""
        written: list[str] = []
        views = self.views
        now = utc_now()
        began_batch = time.perf_counter()
        decided = DECIDE_SECONDS.labels("orders")
        _consumed(batch)
        ctx = orders.Context(
            catalogue=views.catalogue,
            rules=self.rules,
            history=views.history,
            available=views.available,
            load=views.load(now),
            now=now,
            prep_model=views.prep_model,
            open_tickets=views.open_tickets(),
        )
        inputs: list[Event | CodecError] = []
        for event in batch:
            try:
                inputs.append(
                    self.decode(event.message, event.value or b"", (OrderEvent, StockEvent))
                )
            except CodecError as exc:
                inputs.append(exc)
        # Orders that came in clear (a producer without keys) get their customers' data keys
        # together, not with a round trip each when they are sealed onto the log.
        prepare = getattr(self.codec, "prepare", None)
        if prepare is not None:
            prepare(e for e in inputs if isinstance(e, OrderReceived | OrderModified))
        for event, received in zip(batch, inputs, strict=True):
            message = event.message
            raw = event.value or b""
            use_log_ids(**event_ids(received))  # the lines logged about this input carry them
            partition = await self.state_of(self.order_states, message.partition)
            if isinstance(received, CodecError):
                self.dead_letter(message, raw, str(received))
                written.append("DeadLetter")
                continue
            assert isinstance(received, OrderEvent | StockEvent)
            began = time.perf_counter()
            try:  # decided and encoded before anything is written or the state changes
                with views.reading():
                    step = partition.decide(received, ctx)
                to_log = [(outcome, self.encoded(outcome)) for outcome in step.to_log]
                commands = [
                    (stock_key(c.sku, c.location).encode(), self.encoded(c)) for c in step.commands
                ]
                decided.observe(time.perf_counter() - began)
            except KeyStoreError:
                raise  # the key topic is away, like Kafka: the worker stops and is restarted
            except Exception as exc:
                self.poisoned(message, raw, exc)
                written.append("DeadLetter")
                continue
            partition.commit(step)
            self.order_states.wrote(message.partition, len(to_log))
            key = step.order_id.encode()
            for outcome, value in to_log:
                views.note(outcome)
                self.out.produce(
                    self.topics.orders, key=key, value=value, partition=message.partition
                )
                written.append(outcome.event_type)
            messages += [(self.topics.stock_commands, k, value) for k, value in commands]
            if step.refusal is not None:
                self.dead_letter(message, raw, step.refusal)
                written.append("DeadLetter")
        use_log_ids()
        for partition in {event.message.partition for event in batch}:
            self.order_states.states[partition].spill()
        DECIDE_BATCH_SECONDS.labels("orders").observe(time.perf_counter() - began_batch)
        return written

    def admit(self, consumer: Any) -> None:
        """Backpressure at the door: a partition with `OMS_ORDERS_IN_FLIGHT`'s share of orders
        waiting for the ledger stops taking new orders from intake until half are answered.
        The order commands (the ledger's answers, stores' updates, timers) and the ledger go
        on; intake waits, revisions included. Without it a backlog of intake (a peak, a
        restart) was all taken in first: every order in memory waiting, the ledger's commands
        and answers queued behind new orders, memory growing with the backlog, and nothing
        finishing until the end.

        A held partition whose orders in flight do not fall for `STALLED_AFTER_S` is let in
        again, and the orders it had in flight stop counting (an order whose request the ledger
        never answered — dead-lettered — waits for good: it must not close the door for good
        too). They count again as they are answered, if ever."""
        in_flight = {p: state.in_flight for p, state in self.order_states.states.items()}
        self._stuck = {p: min(n, in_flight[p]) for p, n in self._stuck.items() if p in in_flight}
        counted = {p: n - self._stuck.get(p, 0) for p, n in in_flight.items()}
        held = held_back(
            counted, self.held_back, limit=self.settings.orders_in_flight_per_partition
        )
        now = self.clock()
        for p in sorted(held):
            fewest, since = self._progress.get(p, (counted[p] + 1, now))
            if counted[p] < fewest:
                self._progress[p] = (counted[p], now)
            elif now - since > STALLED_AFTER_S:
                log.warning(
                    "intake partition %d held back %.0f s and its %d orders in flight did not "
                    "move: let in again (they are waiting for something other than load)",
                    p,
                    now - since,
                    in_flight[p],
                )
                self._stuck[p] = in_flight[p]
                held.discard(p)
        self._progress = {p: v for p, v in self._progress.items() if p in held}
        assigned = {p for topic, p in self.assigned or () if topic == self.topics.intake}
        faust_compat.hold_back(
            consumer,
            self.topics.intake,
            paused=held,
            resumed=self.held_back - held,
            assigned=assigned,
        )
        if held != self.held_back:
            log.info(
                "intake held back on partitions %s (orders in flight: %s)",
                sorted(held),
                sum(in_flight.values()),
            )
        self.held_back = held
        ORDERS_IN_FLIGHT.set(sum(in_flight.values()))
        INTAKE_HELD_BACK.set(len(held))

    # ------------------------------------------------------------ the inventory agent

    async def stock_batch(self, batch: list[Any], messages: list[Message]) -> list[str]:
        """Apply each stock command of a batch; ledger events are produced now, answers to
        the orders are added to `messages` (sent after the log)."""
        written: list[str] = []
        now = utc_now()
        began_batch = time.perf_counter()
        decided = DECIDE_SECONDS.labels("inventory")
        _consumed(batch)
        for event in batch:
            message = event.message
            raw = event.value or b""
            use_log_ids()
            partition = await self.state_of(self.stock_states, message.partition)
            began = time.perf_counter()
            command: StockEvent | None = None  # known once decoded, to answer if refused
            try:
                decoded = self.decode(message, raw, (StockEvent,))
                assert isinstance(decoded, StockEvent)
                command = decoded
                use_log_ids(**event_ids(command))
                product = self.views.catalogue.products.get(command.sku)
                step = partition.decide(command, product=product, now=now)
            except CodecError as exc:
                self.dead_letter(message, raw, str(exc))
                written.append("DeadLetter")
                continue
            except inventory.StockCommandRefused as exc:
                self.dead_letter(message, raw, str(exc))
                written += ["DeadLetter", *self.refused(command, exc.code, now, messages)]
                continue
            except Exception as exc:
                self.poisoned(message, raw, exc)
                written += ["DeadLetter", *self.refused(command, "LEDGER_ERROR", now, messages)]
                continue
            try:
                ledger = [(e, self.encoded(e)) for e in step.events]
                answers = [
                    (getattr(a, "order_id", "").encode(), self.encoded(a)) for a in step.answers
                ]
                decided.observe(time.perf_counter() - began)
            except KeyStoreError:
                raise
            except Exception as exc:
                self.poisoned(message, raw, exc)
                written += ["DeadLetter", *self.refused(command, "LEDGER_ERROR", now, messages)]
                continue
            partition.commit(step)
            self.write_ledger(ledger, message.partition)
            messages += [(self.topics.order_commands, key, value) for key, value in answers]
            written += [e.event_type for e in step.events]
        use_log_ids()
        DECIDE_BATCH_SECONDS.labels("inventory").observe(time.perf_counter() - began_batch)
        return written

    def refused(
        self, command: StockEvent | None, reason: str, now: datetime, messages: list[Message]
    ) -> list[str]:
        """A dead-lettered `ReserveStock` is answered refused (`inventory.refusal`): the order
        would otherwise wait for an answer that never comes, routed for good, holding its
        place among the partition's orders in flight."""
        answer = inventory.refusal(command, reason, now=now) if command is not None else None
        if answer is None:
            return []
        try:
            value = self.encoded(answer)
        except Exception:  # noqa: BLE001 - the command is in the dead-letter topic already
            log.exception("the refusal of %s could not be encoded", answer.causation_id)
            return []
        messages.append((self.topics.order_commands, answer.order_id.encode(), value))
        return [answer.event_type]

    def write_ledger(self, events: list[tuple[StockEvent, bytes]], partition: int) -> None:
        self.stock_states.wrote(partition, len(events))
        for outcome, value in events:
            self.views.note(outcome)
            key = stock_key(outcome.sku, outcome.location).encode()
            self.out.produce(self.topics.inventory, key=key, value=value, partition=partition)

    # ------------------------------------------------------------ both agents

    async def snapshot_due(self, states: PartitionStates[Any]) -> None:
        """After a batch: if a partition's tail outgrew its bound (`OMS_SNAPSHOT_EVERY`, and at
        least the state's own size), cut its state and write it in the background. One at a
        time; the cut is taken once Kafka has every output, at the log offset they end at."""
        snapshots = states.snapshots
        if snapshots is None or not (
            self._snapshot_writing is None or self._snapshot_writing.done()
        ):
            return
        every = self.settings.snapshot_every
        due = [
            p
            for p, state in states.states.items()
            if states.unsnapped.get(p, 0) >= max(every, snapshots.size(state))
        ]
        if not due:
            return
        partition = due[0]
        await self.out.confirmed()
        state = states.states.get(partition)
        end = cast(Sink, self.out).log_end(states.topic, partition)
        if state is None or end is None:
            return  # revoked meanwhile, or written to meanwhile (by a timer): next batch
        offset = max(end, states.ends.get(partition, 0))
        unsnapped = states.unsnapped.get(partition, 0)
        seal = snapshots.capture(state)
        states.unsnapped[partition] = 0

        async def write() -> None:
            try:
                size = await asyncio.to_thread(lambda: snapshots.write(partition, offset, seal()))
                SNAPSHOTS_WRITTEN.labels(snapshots.name).inc()
                SNAPSHOT_BYTES.labels(snapshots.name).inc(size)
                log.info(
                    "snapshot of %s[%d] at offset %d: %d bytes",
                    states.topic,
                    partition,
                    offset,
                    size,
                )
            except Exception:  # noqa: BLE001 - a snapshot only saves time: try again later
                log.exception("snapshot of %s[%d] not written", states.topic, partition)
                if partition in states.unsnapped:
                    states.unsnapped[partition] += unsnapped

        self._snapshot_writing = asyncio.ensure_future(write())

    async def after_the_log(self, messages: list[Message]) -> None:
        """Write-ahead: what a batch tells other agents leaves only once Kafka has the log
        events it follows from (so a command or an answer never outlives a crash that lost
        its cause); the batch is acked once Kafka has those too. Batches pass in order, so
        commands to one key keep the order they were decided in."""
        await checkpoint(self.out)
        for topic, key, value in messages:
            self.out.produce(topic, key=key, value=value)
        await checkpoint(self.out)

    def encoded(self, event: Event) -> bytes:
        """An output as it goes on Kafka; one Kafka would refuse is the input's fault."""
        value = self.codec.encode(event)
        if len(value) > MAX_MESSAGE_BYTES:
            raise OutputTooLarge(
                f"{event.event_type} {event.event_id} would be {len(value):,} bytes, over "
                f"Kafka's {MAX_MESSAGE_BYTES:,}"
            )
        return value

    def poisoned(self, message: Any, raw: bytes, exc: Exception) -> None:
        """One input whose decision failed (a bug, or input no check foresaw): it goes to the
        dead-letter topic with what failed and where, and the partition goes on. Only
        decisions and encoding are caught so: Kafka's and the rebuild's own failures stop the
        worker, which is restarted and waits for them (docs/operations.md)."""
        where = message_ref(message.topic, message.partition, message.offset)
        log.error("dead-lettered %s: deciding it failed", where, exc_info=exc)
        self.dead_letter(message, raw, f"deciding {where} failed: {describe(exc)}")

    def dead_letter(self, message: Any, raw: bytes, reason: str) -> None:
        where = message_ref(message.topic, message.partition, message.offset)
        letter = DeadLetter.of(source=message.topic, source_ref=where, reason=reason, raw=raw)
        self.out.produce(self.topics.dlq, key=where.encode(), value=self.codec.encode(letter))
        DEAD_LETTERS.labels(message.topic).inc()
        log.info("dead-lettered %s: %s", where, reason)

    def decode(self, message: Any, raw: bytes, kinds: tuple[type, ...]) -> Event:
        where = message_ref(message.topic, message.partition, message.offset)
        event = self.codec.decode(raw, where=where)
        if not isinstance(event, kinds):
            raise CodecError(
                f"{type(event).__name__} does not belong on {message.topic}", where=where
            )
        unstorable = out_of_bounds(event)
        if unstorable is not None:
            raise CodecError(f"{type(event).__name__}: {unstorable}", where=where)
        return event  # type: ignore[return-value]

    # ------------------------------------------------------------ timers

    async def expire(self) -> None:
        """Orders whose hold ran out get their expiry command (an input of their own agent);
        settled orders untouched for `OMS_ORDER_RETENTION_DAYS` are forgotten; perishable
        batches past their date leave the ledger."""
        now = utc_now()
        self.forget_personal()
        retained = now - timedelta(days=self.settings.order_retention_days)
        for partition, orders_of in list(self.order_states.states.items()):
            if self.order_states.states.get(partition) is not orders_of:
                continue  # revoked while an earlier partition's timers ran
            for due in orders_of.expiries(now, self.views.catalogue.locations):
                self.out.produce(
                    self.topics.order_commands,
                    key=due.order_id.encode(),
                    value=self.codec.encode(due),
                )
            evicted = orders_of.evict(retained)
            if evicted:
                ORDERS_EVICTED.inc(evicted)
                log.info("forgot %d orders of partition %d settled before %s", evicted,
                         partition, retained.isoformat())  # fmt: skip
            await asyncio.sleep(0)  # the agents' batches go on between partitions
        products = self.views.catalogue.products
        for partition, levels in list(self.stock_states.states.items()):
            for _, lapsed in levels.expire(now=now, products=products):
                self.write_ledger([(e, self.codec.encode(e)) for e in lapsed], partition)
        self.forget_the_past(now)
        await self.out.confirmed()
        await self.snapshot_views()

    def forget_personal(self) -> None:
        """Customers and orders whose data keys were tombstoned (`oms privacy forget`, here or
        on any host: the key store's thread takes the tombstones as they come) leave this
        worker's memory: the views' velocity indexes (and their next snapshot) and the order
        states in memory keep them only as a reader without the keys sees them."""
        keys = getattr(self.codec, "keys", None)
        if keys is None:
            return
        try:
            subjects = keys.forgotten()
        except KeyStoreError:
            log.exception("forgotten customers not taken: the key store failed")
            return
        if not subjects:
            return
        customers = {s for s in subjects if not s.startswith("order:")}
        orders_of = {s.removeprefix("order:") for s in subjects if s.startswith("order:")}
        in_views = self.views.forget(customers, orders_of)
        in_orders = sum(
            partition.forget_personal(customers, orders_of)
            for partition in list(self.order_states.states.values())
        )
        PERSONAL_SCRUBBED.labels("views").inc(in_views)
        PERSONAL_SCRUBBED.labels("orders").inc(in_orders)
        log.info(
            "%d subjects forgotten: personal data emptied from %d velocity entries and %d "
            "orders in memory",
            len(subjects),
            in_views,
            in_orders,
        )

    async def snapshot_views(self) -> None:
        """The worker holding partition 0 of the order log snapshots the shared views once
        they folded more than their bound since the last cut (on the snapshot topic's
        partition 0). Written only once Kafka confirmed every output noted before the cut."""
        store, views = self._snapshot_store, self.views
        if store is None or 0 not in self.order_states.states or not views.ready.is_set():
            return
        if self._snapshot_writing is not None and not self._snapshot_writing.done():
            return
        if not views.recut and views.unsnapped < max(self.settings.snapshot_every, views.size()):
            return
        blob = await asyncio.to_thread(views.cut)  # pickling a million customers: not here
        await self.out.confirmed()

        async def write() -> None:
            try:
                size = await asyncio.to_thread(store.write, "views", 0, 0, blob)
                SNAPSHOTS_WRITTEN.labels("views").inc()
                SNAPSHOT_BYTES.labels("views").inc(size)
                log.info("snapshot of the views: %d bytes", size)
            except Exception:  # noqa: BLE001 - a snapshot only saves time: try again later
                log.exception("snapshot of the views not written")

        self._snapshot_writing = asyncio.ensure_future(write())

    def forget_the_past(self, now: datetime) -> None:
        self.views.forget_the_past(now, window=timedelta(minutes=self.rules.window_minutes))

    async def watch_capacity(self) -> None:
        """Pause a location whose capacity slot is full; resume it when a new slot starts."""
        now = utc_now()
        views = self.views
        with views.reading():
            changes = capacity.changes(
                views.catalogue, load=views.load(now), auto_paused=views.auto_paused, now=now
            )
        for change in changes:
            views.note(change)
            self.out.produce(
                self.topics.catalogue,
                key=change.entity_id.encode(),
                value=self.codec.encode(change),
            )
        views.forget_before(now - timedelta(hours=2))
        await self.out.confirmed()


STALLED_AFTER_S = 30.0  # a held intake partition whose orders in flight do not move: let in


def _consumed(batch: list[Any]) -> None:
    """A batch's inputs, counted per topic (oms_consumed_total)."""
    for topic, count in Counter(event.message.topic for event in batch).items():
        CONSUMED.labels(topic).inc(count)


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's (aiokafka's) side of `OMS_KAFKA_SECURITY_PROTOCOL`: the same SASL user and
    CAs as the librdkafka clients (infra/kafka.py), missing secrets refused the same way."""
    protocol = settings.kafka_security_protocol
    context = ssl_context(settings)
    if protocol.startswith("SASL_"):
        username, password = sasl_credentials(settings)
        return faust.SASLCredentials(
            username=username,
            password=password,
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(
    settings: Settings | None = None,
    *,
    replay: Replay | None = None,
    views: SharedViews | None = None,
    sink: Outputs | None = None,
) -> faust.App:
    """The Faust app around one `Worker`. `replay`, `views` and `sink` are for tests without
    a broker."""
    settings = settings or get_settings()
    worker = Worker(settings, replay=replay, views=views, sink=sink)
    topics = settings.topics
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)
    app = App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=broker_credentials(settings),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.002,
        web_enabled=False,
        logging_config=faust_logging_config(settings, process="worker"),
        # A worker that died (kill -9) leaves the group after 10 s, not Faust's default 60 s,
        # so its partitions move to the survivors (or its restart) quickly.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        # An agent that raises stops the worker (Faust would restart the agent in the same
        # process, with partition states that may be ahead of what reached Kafka): the
        # supervisor restarts the process, which rebuilds from the logs.
        agent_supervisor=mode.CrashingSupervisor,
        # Inputs Faust hands an agent ahead of its batches (default 4,096): the orders taken
        # in past OMS_ORDERS_IN_FLIGHT's bound before the door closes (`Worker.admit`).
        stream_buffer_maxsize=2 * BATCH,
        datadir=str(settings.home / "faust"),
    )
    app.worker = worker  # type: ignore[attr-defined]  # tests reach the worker through the app
    order_inputs = app.topic(topics.intake, topics.order_commands, key_type=bytes, value_type=bytes)
    stock_commands = app.topic(topics.stock_commands, key_type=bytes, value_type=bytes)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's stub is too strict
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        (revoked,) = args
        worker.assigned = None
        await worker.partitions_revoked(tp.partition for tp in revoked)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        (assigned,) = args
        worker.forget(tp.partition for tp in assigned)
        inputs = {topics.intake, topics.order_commands, topics.stock_commands}
        worker.assigned = {(tp.topic, tp.partition) for tp in assigned if tp.topic in inputs}
        if worker.warming is not None:
            worker.warming.cancel()  # its rebuilds go on (shielded) or were forgotten above
        worker.warming = asyncio.ensure_future(worker.warm())

    @app.task
    async def start_views() -> None:
        worker.start_views()

    async def batches(
        stream: faust.StreamT[Any], decide: Decide, states: PartitionStates[Any]
    ) -> AsyncIterator[list[str]]:
        await worker.views_ready()
        async with Acks.running(stream) as acks:
            async for batch in cast(Any, stream).noack_take(BATCH, within=BATCH_WITHIN_S):
                messages: list[Message] = []
                written = await decide(batch, messages)
                await acks.add(batch, worker.after_the_log(messages))
                await worker.snapshot_due(states)
                yield written

    @app.agent(order_inputs, name="orders")
    async def run_orders(stream: faust.StreamT[Any]) -> AsyncIterator[list[str]]:
        """The order process (streams.orders): one writer per order; yields what it wrote."""
        async for written in batches(stream, worker.order_batch, worker.order_states):
            worker.admit(app.consumer)
            yield written

    @app.agent(stock_commands, name="inventory")
    async def run_inventory(stream: faust.StreamT[Any]) -> AsyncIterator[list[str]]:
        """The stock ledger (streams.inventory): one writer per sku@location."""
        async for written in batches(stream, worker.stock_batch, worker.stock_states):
            yield written

    @app.timer(interval=FREEZE_EVERY_S)
    async def freeze_old_objects() -> None:
        gc.freeze()

    @app.timer(interval=HEARTBEAT_S)
    async def heartbeat() -> None:
        worker.health.beat()

    @app.timer(interval=settings.expiry_check_s)
    async def expire() -> None:
        await worker.expire()
        worker.admit(app.consumer)  # also when no batch comes

    @app.timer(interval=settings.capacity_check_s, on_leader=True)
    async def watch_capacity() -> None:
        await worker.watch_capacity()

    return app
