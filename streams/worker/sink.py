"""Where the agents' outputs go: librdkafka (confluent-kafka) rather than Faust's pure-Python
producer, which cost most of the worker's CPU per event (protocol encoding in Python).

An agent queues a batch's outputs with `produce`, then takes a `checkpoint()`: an awaitable
that completes once Kafka acknowledged every output produced so far — this batch's and every
earlier one's, whichever agent produced them (acks=all, idempotent, so order per partition is
kept and retries do not duplicate). Only then is the input batch acked to Faust (`Acks`).
The agent does not wait for it: it goes on with the next batch while Kafka confirms this one,
so the broker's round trip overlaps the next batch's work instead of stalling the agent.
`confirmed()` waits for everything produced so far (timers, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer

from infra.kafka import producer_config
from infra.metrics import PRODUCED

log = logging.getLogger(__name__)
WAIT_NOTICE_S = 30  # how often a wait for Kafka's acknowledgements says it is still waiting


class DeliveryFailed(RuntimeError):
    """Kafka did not take an output: the worker stops, and its inputs are redelivered."""


class _Batch:
    """Outputs produced between two checkpoints; done when Kafka answered for each of them.

    `produced` is counted by the event loop's thread (the only one that produces), `answered`
    by whichever thread serves delivery reports (under the sink's lock): no lock per output."""

    __slots__ = ("sink", "produced", "answered", "closed", "errors", "future", "loop")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.produced = 0
        self.answered = 0
        self.closed = False
        self.errors: list[str] = []
        self.future: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def done(self) -> bool:
        return self.closed and self.answered == self.produced

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            PRODUCED.labels(msg.topic() or "").inc()
        sink = self.sink
        with sink._lock:
            if err is not None:
                error = f"{msg.topic()}: {err}"
                sink._errors.append(error)
                self.errors.append(error)
                sink._failed = sink._failed or error
            else:
                where = (msg.topic() or "", msg.partition() or 0)
                if where in sink._written:
                    sink._acked[where] = sink._acked.get(where, 0) + 1
                    sink._ends[where] = max(sink._ends.get(where, 0), (msg.offset() or 0) + 1)
            self.answered += 1
            if self.closed and self.answered == self.produced:
                sink._settle()


class Sink:
    def __init__(self, bootstrap: str) -> None:
        # An output is kept until the broker takes it, however long it is away (a broker
        # restart, a network partition): the worker waits rather than giving up on it. With
        # idempotence, order per partition survives the retries.
        config = producer_config(bootstrap, **{"linger.ms": 2, "message.timeout.ms": 0})
        self._producer = Producer(config)
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._open = _Batch(self)
        self._closed: deque[_Batch] = deque()  # checkpoints not yet confirmed, oldest first
        self._failed: str | None = None  # once an output failed, no later checkpoint passes
        # Per partition written to by number (the agents' logs): outputs produced, outputs
        # acknowledged, and the offset after the last acknowledged (`log_end`).
        self._written: dict[tuple[str, int], int] = {}
        self._acked: dict[tuple[str, int], int] = {}
        self._ends: dict[tuple[str, int], int] = {}
        # Delivery reports are served here, as they come, not only when someone flushes.
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="oms-sink", daemon=True)
        self._poller.start()

    def produce(
        self, topic: str, *, key: bytes, value: bytes, partition: int | None = None
    ) -> None:
        batch = self._open
        if partition is not None:  # counted before its report can come; by this thread alone
            where = (topic, partition)
            self._written[where] = self._written.get(where, 0) + 1
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    -1 if partition is None else partition,
                    on_delivery=batch.delivered,
                )
                batch.produced += 1
                return
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.05)

    def checkpoint(self) -> Awaitable[None]:
        """Completes once every output produced so far is acknowledged; raises DeliveryFailed
        if one of them (or of any earlier checkpoint) was not."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            batch, self._open = self._open, _Batch(self)
            batch.closed, batch.future, batch.loop = True, future, loop
            self._closed.append(batch)
            self._settle()
        return future

    def _settle(self) -> None:
        """Complete the checkpoints whose outputs, and all before them, are acknowledged (in
        order: a checkpoint never passes while an earlier output is still out). Under the lock."""
        while self._closed and self._closed[0].done:
            batch = self._closed.popleft()
            failure = self._failed or (batch.errors[0] if batch.errors else None)
            assert batch.loop is not None and batch.future is not None
            batch.loop.call_soon_threadsafe(_complete, batch.future, failure)
        if self._failed is not None:  # nothing after a failed output is confirmed
            while self._closed:
                batch = self._closed.popleft()
                assert batch.loop is not None and batch.future is not None
                batch.loop.call_soon_threadsafe(_complete, batch.future, self._failed)

    def log_end(self, topic: str, partition: int) -> int | None:
        """The offset after this sink's last output to `topic`/`partition` (0: none yet), or
        None while one of them is still on its way (the end is not known yet)."""
        where = (topic, partition)
        with self._lock:
            if self._written.get(where, 0) != self._acked.get(where, 0):
                return None
            return self._ends.get(where, 0)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def confirmed(self) -> None:
        """Wait until everything produced so far is acknowledged (while the broker is away,
        as long as it takes); raises DeliveryFailed if Kafka refused an output."""
        waited = 0
        while remaining := await asyncio.to_thread(self._producer.flush, WAIT_NOTICE_S):
            waited += WAIT_NOTICE_S
            log.warning("%d outputs still waiting for Kafka after %d s", remaining, waited)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise DeliveryFailed(f"errors: {errors[:3]}")

    def close(self) -> None:
        self._producer.flush(30)
        self._stop.set()
        self._poller.join(timeout=5)


def _complete(future: asyncio.Future[None], failure: str | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(DeliveryFailed(f"output not acknowledged: {failure}"))


def _discard(confirmation: Awaitable[None]) -> None:
    """A confirmation no one will wait for (an earlier one failed): no warnings about it."""
    if asyncio.iscoroutine(confirmation):
        confirmation.close()
    elif isinstance(confirmation, asyncio.Future):
        confirmation.add_done_callback(lambda done: done.cancelled() or done.exception())


class Outputs(Protocol):
    """What the agents write through: `Sink`, or a fake in unit tests (`checkpoint` is
    optional there; without it a batch waits for `confirmed()`)."""

    def produce(
        self, topic: str, *, key: bytes, value: bytes, partition: int | None = None
    ) -> None: ...

    async def confirmed(self) -> None: ...


def checkpoint(out: Outputs) -> Awaitable[None]:
    take = getattr(out, "checkpoint", None)
    return take() if take is not None else out.confirmed()


class Acks:
    """Acks input batches to Faust in order, each once its checkpoint passed (every output it
    caused, and every earlier one, acknowledged by Kafka). Meanwhile the agent goes on; at most
    `depth` batches wait, then the agent waits for the oldest. A failed checkpoint acks nothing
    more: the agent raises at its next batch, and the unacked inputs are redelivered."""

    def __init__(self, stream: Any, *, depth: int = 8) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[tuple[Sequence[Any], Awaitable[None]]] = asyncio.Queue(depth)
        self._failure: BaseException | None = None

    async def add(self, events: Sequence[Any], confirmation: Awaitable[None]) -> None:
        if self._failure is not None:
            raise self._failure
        await self._queue.put((events, confirmation))

    async def drain(self) -> None:
        """Until every batch added so far is acked (or one failed)."""
        await self._queue.join()
        if self._failure is not None:
            raise self._failure

    async def _run(self) -> None:
        while True:
            events, confirmation = await self._queue.get()
            try:
                if self._failure is not None:
                    _discard(confirmation)
                    continue
                await confirmation
                for event in events:
                    await self._stream.ack(event)
            except Exception as exc:  # noqa: BLE001 - kept, and raised in the agent
                log.critical("outputs not acknowledged, inputs left unacked: %s", exc)
                self._failure = exc
            finally:
                self._queue.task_done()

    @classmethod
    @asynccontextmanager
    async def running(cls, stream: Any, *, depth: int = 8) -> AsyncIterator[Acks]:
        acks = cls(stream, depth=depth)
        task = asyncio.ensure_future(acks._run())
        try:
            yield acks
        finally:
            task.cancel()
