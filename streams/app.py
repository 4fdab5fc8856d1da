"""The Faust app and its agents. Agents are thin: decode, call a pure decision, write results.

Correctness does not rest on Faust's `exactly_once` (open duplicate bugs) nor on its table
changelogs (written behind the offsets they belong to, so a kill -9 can leave a table older
than the outputs it led to). Instead each agent's state is the fold of its own output log —
the order log for the order agent, the stock ledger for the inventory agent — read back
from Kafka whenever a partition is (re)assigned (`streams.replay`). An input's batch is acked
only after Kafka acknowledged every output it caused, so the log always holds at least what
the committed inputs did, and every redelivered input is recognised by its event id. The agent
does not wait for those acknowledgements before its next batch (`streams.sink.Acks`): the acks
to Faust follow, in order, as Kafka confirms.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, Generic, NoReturn, TypeVar, cast

import aiokafka
import faust
import mode
from faust.transport.drivers import aiokafka as faust_kafka
from pydantic import ValidationError

from events.codec import AvroCodec, CodecError, message_ref
from events.models import DeadLetter, Event, OrderEvent, StockEvent, stock_key, utc_now
from oms.exit_codes import ExitCode
from oms.settings import Settings, get_settings
from streams import capacity, inventory, orders
from streams.catalogue import load_catalogue
from streams.fraud import load_rules
from streams.partitions import LedgerPartition, OrderPartition
from streams.replay import read_partition
from streams.sink import Acks, Outputs, Sink, checkpoint
from streams.views import SharedViews

log = logging.getLogger(__name__)
BATCH = 500  # inputs per batch: outputs are confirmed per batch, not per message
BATCH_WITHIN_S = 0.005
# The agents' state (every order's fold) only grows, and a full collection walks all of it:
# seconds of pause at a million orders, for next to no garbage (the state holds no cycles).
# What has lived this long is moved out of the collector's sight (`gc.freeze`); it is still
# freed by reference counting, and new objects are collected as usual (the freeze itself
# costs nothing: it moves a list).
FREEZE_EVERY_S = 1.0
# How long the broker may hold a fetch that finds no new data. Faust fixes it at 1.5 s, and
# aiokafka has one fetch in flight per broker, leaving out partitions whose last records are
# still being processed: with one broker, a partition that runs dry waits for the others' long
# poll — up to 1.5 s with no input at all (seen as gaps in the agents' batches).
FETCH_MAX_WAIT_MS = 20


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when its fetcher starts
        return consumer


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class _App(faust.App):
    """Faust's app on the aiokafka transport, with a short fetch wait (FETCH_MAX_WAIT_MS)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


Replay = Callable[[str, int], Iterable[Event]]
Message = tuple[str, bytes, bytes]  # topic, key, value: for another agent, after the log
P = TypeVar("P", OrderPartition, LedgerPartition)


class PartitionStates(Generic[P]):
    """Per-partition agent state, rebuilt from the agent's output log on first use after each
    (re)assignment."""

    def __init__(self, *, topic: str, replay: Replay, new: Callable[[], P],
                 settle: Callable[[], Awaitable[None]]) -> None:  # fmt: skip
        self.topic = topic
        self._replay = replay
        self._new: Callable[[], P] = new
        self._settle = settle
        self.states: dict[int, P] = {}

    async def of(self, partition: int) -> P:
        states = self.states.get(partition)
        if states is None:
            # Outputs of earlier batches may still be on their way: the log is read once
            # Kafka has them all, so the state is the fold of everything this worker wrote.
            await self._settle()
            states = self._new()
            events = await asyncio.to_thread(lambda: list(self._replay(self.topic, partition)))
            for event in events:
                states.fold(event)
            log.info("rebuilt %s[%d] from %d events", self.topic, partition, len(events))
            self.states[partition] = states
        return states

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.states.pop(partition, None)


def create_app(
    settings: Settings | None = None, *, replay: Replay | None = None, views: SharedViews |
    None = None, sink: Outputs | None = None,
) -> faust.App:  # fmt: skip
    """The worker. `replay`, `views` and `sink` are for tests without a broker."""
    settings = settings or get_settings()
    codec = AvroCodec.for_registry(settings.schema_registry_url)
    topics = settings.topics
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)
    app = _App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.002,
        web_enabled=False,
        # A worker that died (kill -9) leaves the group after 10 s, not Faust's default 60 s,
        # so its partitions move to the survivors (or its restart) quickly.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        # An agent that raises stops the worker (Faust would restart the agent in the same
        # process, with partition states that may be ahead of what reached Kafka): the
        # supervisor restarts the process, which rebuilds from the logs.
        agent_supervisor=mode.CrashingSupervisor,
        datadir=str(settings.home / "faust"),
    )
    shared = views or SharedViews(catalogue=load_catalogue(settings.catalogue_file), codec=codec)
    if views is None:
        shared.ready.clear()
    rules = load_rules(settings.fraud_rules_file)
    replay = replay or (
        lambda topic, partition: read_partition(
            settings.kafka_bootstrap, topic, partition, codec=codec
        )  # fmt: skip
    )
    order_inputs = app.topic(topics.intake, topics.order_commands, key_type=bytes,
                             value_type=bytes)  # fmt: skip
    stock_commands = app.topic(topics.stock_commands, key_type=bytes, value_type=bytes)
    out: Outputs = sink or Sink(settings.kafka_bootstrap)

    order_states = PartitionStates(topic=topics.orders, replay=replay, new=OrderPartition,
                                   settle=out.confirmed)  # fmt: skip
    stock_states = PartitionStates(topic=topics.inventory, replay=replay, new=LedgerPartition,
                                   settle=out.confirmed)  # fmt: skip

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's stub is too strict
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        (revoked,) = args
        # Whoever takes these partitions over rebuilds from the logs: everything this worker
        # wrote must be on them first (and commands must reach the ledger before theirs).
        await out.confirmed()
        order_states.forget(tp.partition for tp in revoked)
        stock_states.forget(tp.partition for tp in revoked)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Someone else may have written these partitions meanwhile: read them again.
        (assigned,) = args
        order_states.forget(tp.partition for tp in assigned)
        stock_states.forget(tp.partition for tp in assigned)

    @app.task
    async def start_views() -> None:
        if views is None:
            shared.start(bootstrap=settings.kafka_bootstrap,
                         topics=[topics.catalogue, topics.inventory, topics.orders])  # fmt: skip

    async def wait_for_views() -> None:
        while not shared.ready.is_set():
            await asyncio.sleep(0.05)

    def dead_letter(message: Any, raw: bytes, reason: str) -> None:
        where = message_ref(message.topic, message.partition, message.offset)
        letter = DeadLetter.of(source=message.topic, source_ref=where, reason=reason, raw=raw)
        out.produce(topics.dlq, key=where.encode(), value=codec.encode(letter))

    def decode(message: Any, raw: bytes, kinds: tuple[type, ...]) -> Event:
        where = message_ref(message.topic, message.partition, message.offset)
        event = codec.decode(raw, where=where)
        if not isinstance(event, kinds):
            raise CodecError(f"{type(event).__name__} does not belong on {message.topic}",
                             where=where)  # fmt: skip
        return event  # type: ignore[return-value]

    @app.agent(order_inputs, name="orders")
    async def run_orders(stream: faust.StreamT[Any]) -> AsyncIterator[list[str]]:
        """The order process (streams.orders): one writer per order; yields what it wrote."""
        await wait_for_views()
        async with Acks.running(stream) as acks:
            async for batch in cast(Any, stream).noack_take(BATCH, within=BATCH_WITHIN_S):
                messages: list[Message] = []
                written = await order_batch(batch, messages)
                await acks.add(batch, after_the_log(messages))
                yield written

    async def after_the_log(messages: list[Message]) -> None:
        """Write-ahead: what a batch tells other agents leaves only once Kafka has the log
        events it follows from (so a command or an answer never outlives a crash that lost
        its cause); the batch is acked once Kafka has those too. Batches pass in order, so
        commands to one key keep the order they were decided in."""
        logged = checkpoint(out)
        await logged
        for topic, key, value in messages:
            out.produce(topic, key=key, value=value)
        await checkpoint(out)

    async def order_batch(batch: list[Any], messages: list[Message]) -> list[str]:
        written: list[str] = []
        now = utc_now()
        ctx = orders.Context(
            catalogue=shared.catalogue, rules=rules, history=shared.history,
            available=shared.available, load=shared.load(now), now=now,
        )  # fmt: skip
        for event in batch:
            message = event.message
            raw = event.value or b""
            partition = await order_states.of(message.partition)
            try:
                received = decode(message, raw, (OrderEvent, StockEvent))
                assert isinstance(received, OrderEvent | StockEvent)
            except CodecError as exc:
                dead_letter(message, raw, str(exc))
                written.append("DeadLetter")
                continue
            with shared.reading():
                step = partition.handle(received, ctx)
            order_id = getattr(received, "order_id", "")
            for outcome in step.to_log:
                shared.note(outcome)
                out.produce(topics.orders, key=order_id.encode(), value=codec.encode(outcome),
                            partition=message.partition)  # fmt: skip
                written.append(outcome.event_type)
            for command in step.commands:
                key = stock_key(command.sku, command.location).encode()
                messages.append((topics.stock_commands, key, codec.encode(command)))
            if step.refusal is not None:
                dead_letter(message, raw, step.refusal)
                written.append("DeadLetter")
        return written

    @app.agent(stock_commands, name="inventory")
    async def run_inventory(stream: faust.StreamT[Any]) -> AsyncIterator[list[str]]:
        """The stock ledger (streams.inventory): one writer per sku@location."""
        await wait_for_views()
        async with Acks.running(stream) as acks:
            async for batch in cast(Any, stream).noack_take(BATCH, within=BATCH_WITHIN_S):
                messages: list[Message] = []
                written = await stock_batch(batch, messages)
                await acks.add(batch, after_the_log(messages))
                yield written

    async def stock_batch(batch: list[Any], messages: list[Message]) -> list[str]:
        written: list[str] = []
        now = utc_now()
        for event in batch:
            message = event.message
            raw = event.value or b""
            partition = await stock_states.of(message.partition)
            try:
                command = decode(message, raw, (StockEvent,))
                assert isinstance(command, StockEvent)
                product = shared.catalogue.products.get(command.sku)
                step = partition.handle(command, product=product, now=now)
            except (CodecError, inventory.StockCommandRefused) as exc:
                dead_letter(message, raw, str(exc))
                written.append("DeadLetter")
                continue
            write_ledger(step.events, message.partition)
            for answer in step.answers:
                order_id = getattr(answer, "order_id", "")
                messages.append((topics.order_commands, order_id.encode(), codec.encode(answer)))
            written += [e.event_type for e in step.events]
        return written

    def write_ledger(events: list[StockEvent], partition: int) -> None:
        for outcome in events:
            shared.note(outcome)
            key = stock_key(outcome.sku, outcome.location)
            out.produce(topics.inventory, key=key.encode(), value=codec.encode(outcome),
                        partition=partition)  # fmt: skip

    @app.timer(interval=FREEZE_EVERY_S)
    async def freeze_old_objects() -> None:
        gc.freeze()

    @app.timer(interval=settings.expiry_check_s)
    async def expire() -> None:
        """Orders whose hold ran out get their expiry command (an input of their own agent);
        perishable batches past their date leave the ledger."""
        now = utc_now()
        for orders_of in list(order_states.states.values()):
            for due in orders_of.expiries(now):
                out.produce(topics.order_commands, key=due.order_id.encode(),
                            value=codec.encode(due))  # fmt: skip
        products = shared.catalogue.products
        for partition, levels in list(stock_states.states.items()):
            for _, lapsed in levels.expire(now=now, products=products):
                write_ledger(lapsed, partition)
        await out.confirmed()

    @app.timer(interval=settings.capacity_check_s, on_leader=True)
    async def watch_capacity() -> None:
        """Pause a location whose capacity slot is full; resume it when a new slot starts."""
        now = utc_now()
        with shared.reading():
            changes = capacity.changes(
                shared.catalogue, load=shared.load(now), auto_paused=shared.auto_paused, now=now
            )
        for change in changes:
            shared.note(change)
            out.produce(topics.catalogue, key=change.entity_id.encode(),
                        value=codec.encode(change))  # fmt: skip
        shared.forget_before(now - timedelta(hours=2))
        await out.confirmed()

    return app


def run_workers(count: int, argv: list[str] | None = None) -> None:
    """`oms worker --processes N`: N workers of one consumer group on this host, so the
    partitions (4 by default: at most that many workers get any) are spread over several cores.
    Each is a whole worker — its own views, its own states — so this is the same as starting N
    `oms worker`s. SIGTERM / SIGINT go to all of them; when one exits, the others are stopped
    and its exit code is returned, so whatever supervises this restarts them together."""
    import signal
    import subprocess

    profile = os.environ.get("OMS_PROFILE")
    children: list[subprocess.Popen[bytes]] = []
    for n in range(count):
        env = dict(os.environ)
        if profile and n:
            env["OMS_PROFILE"] = f"{profile}.{n}"  # the first writes where it was asked to
        children.append(subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "worker", *(argv or [])], env=env
        ))  # fmt: skip

    def stop(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not any(child.poll() is not None for child in children):
        time.sleep(0.2)
    first = next(child for child in children if child.poll() is not None)
    code = first.returncode
    stop(signal.SIGTERM, None)
    for child in children:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    sys.exit(code)


def missing_topics(settings: Settings) -> list[str]:
    """The topics the worker needs that the cluster does not have, asked once the broker
    answers (waiting for it as long as it takes, backing off to 10 s)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    delay = 0.5
    while True:
        try:
            existing = admin.list_topics(timeout=10).topics
            break
        except KafkaException as exc:
            log.warning("waiting for Kafka at %s: %s", settings.kafka_bootstrap, exc)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    topics = settings.topics
    needed = [topics.intake, topics.order_commands, topics.stock_commands, topics.orders,
              topics.inventory, topics.catalogue, topics.dlq]  # fmt: skip
    return [topic for topic in needed if topic not in existing]


def run_worker(argv: list[str] | None = None) -> None:
    """`oms worker`: run the Faust worker with its own command line (e.g. `-l info`).

    Fails closed before it starts: a setting that is not valid, or a topic the cluster does
    not have (a worker must not create topics with the broker's defaults), exits 78."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        _exit(ExitCode.CONFIG, f"a setting is not valid: {exc}")
    missing = missing_topics(settings)
    if missing:
        _exit(ExitCode.CONFIG, f"topics missing on {settings.kafka_bootstrap}: "
              f"{', '.join(missing)} (create them, e.g. with `oms stack up`)")  # fmt: skip
    app = create_app(settings)
    gc.freeze()  # everything imported and built so far lives as long as the worker
    # Faust's own web server is off (the worker command would turn it on whatever the app
    # says, and two workers on one host would fight over its port 6066).
    sys.argv = ["oms worker", "worker", "--without-web", *(argv or ["--loglevel", "warn"])]
    profile = os.environ.get("OMS_PROFILE")  # `oms bench pipeline`: where the time goes
    if not profile:
        app.main()
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        app.main()
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def _exit(code: ExitCode, reason: str) -> NoReturn:
    print(f"oms worker: configuration error (exit {int(code)}, restarting will not help): "
          f"{reason}", file=sys.stderr)  # fmt: skip
    sys.exit(code)
