"""The publisher: the intake side's producer (channels, operators' commands, the simulator),
configured like every other client by `infra.kafka`.

A channel gets an acknowledgement only for what Kafka acknowledged: `Publisher` counts delivery
reports for batch work (file imports), `AsyncPublisher` lets an HTTP handler await the report
of its own message before it answers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from events.codec import AvroCodec
from events.models import DeadLetter, Event, OrderModified, OrderReceived
from infra.kafka import producer_config
from infra.keystore import KeyStoreError, private_codec
from infra.metrics import DEAD_LETTERS, PRODUCED
from infra.settings import Settings

log = logging.getLogger(__name__)
Delivered = Callable[[KafkaError | None], None]


class PublishError(RuntimeError):
    """Kafka refused or could not confirm a message."""


@dataclass
class DeliveryCount:
    """Kafka's delivery reports so far, per topic."""

    acknowledged: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


class Publisher:
    def __init__(
        self, settings: Settings, *, codec: AvroCodec | None = None, linger_ms: float = 5
    ) -> None:
        self.settings = settings
        self.codec = codec or private_codec(settings)
        self.count = DeliveryCount()
        # A channel waits for its acknowledgement: 30 s, then it is told to try again.
        config = {"message.timeout.ms": 30000, "linger.ms": linger_ms}
        self._producer = Producer(producer_config(settings.kafka_bootstrap, **config))

    def _count(self, err: KafkaError | None, msg: Message) -> None:
        topic = msg.topic() or ""
        if err is None:
            self.count.acknowledged[topic] += 1
            PRODUCED.labels(topic).inc()
        else:
            self.count.failed[topic] += 1
            self.count.errors.append(str(err))

    def produce(self, topic: str, key: str, value: bytes, *, then: Delivered | None = None) -> None:
        """Queue one message; `then(error_or_None)` runs when Kafka reports on it."""

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            self._count(err, msg)
            if then is not None:
                then(err)

        while True:
            try:
                self._producer.produce(
                    topic, key=key.encode(), value=value, on_delivery=on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
        self._producer.poll(0)

    def publish(self, topic: str, event: Event, *, then: Delivered | None = None) -> None:
        """An event keyed by its aggregate, so one aggregate's events stay in order. When
        its personal data cannot be sealed (the key topic is away with the broker), that is
        a failed delivery: reported to `then`, else raised as `PublishError`."""
        try:
            value = self.codec.encode(event)
        except KeyStoreError as exc:
            if then is None:
                raise PublishError(str(exc)) from exc
            self.count.failed[topic] += 1
            self.count.errors.append(str(exc))
            then(KafkaError(KafkaError._MSG_TIMED_OUT, str(exc)))
            return
        self.produce(topic, event.aggregate_id, value, then=then)

    def prepare(self, events: Iterable[Event]) -> None:
        """Stores the data keys `events` will need in one go (a bulk publisher calls it per
        chunk). A key store that is away is left for `publish` to report, event by event."""
        prepare = getattr(self.codec, "prepare", None)
        if prepare is not None:
            try:
                prepare(events)
            except KeyStoreError as exc:
                log.warning("data keys not prepared: %s", exc)

    def intake(
        self, event: OrderReceived | OrderModified, *, then: Delivered | None = None
    ) -> None:
        """A connector's event onto the intake topic."""
        self.publish(self.settings.topics.intake, event, then=then)

    def dead_letter(self, letter: DeadLetter, *, then: Delivered | None = None) -> None:
        def counted(err: KafkaError | None) -> None:
            if err is None:
                DEAD_LETTERS.labels(letter.source).inc()
            if then is not None:
                then(err)

        self.produce(
            self.settings.topics.dlq, letter.source_ref, self.codec.encode(letter), then=counted
        )

    def poll(self, timeout_s: float) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 60.0) -> DeliveryCount:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise PublishError(f"{remaining} messages not confirmed by Kafka within {timeout_s}s")
        return self.count


class AsyncPublisher:
    """For HTTP intake: each `await` returns once Kafka acknowledged that message (acks=all)."""

    def __init__(self, settings: Settings) -> None:
        # A request waits for its own acknowledgement: 1 ms to gather the requests of the
        # same moment into one produce request, not 5 (a file import's batches fill anyway).
        self.publisher = Publisher(settings, linger_ms=1)
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._running:
            self.publisher.poll(0.05)

    async def _delivered(self, send: Callable[[Delivered], None]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def then(err: KafkaError | None) -> None:
            if err is None:
                loop.call_soon_threadsafe(_settle, future, None)
            else:
                loop.call_soon_threadsafe(_settle, future, PublishError(str(err)))

        send(then)
        await future

    async def intake(self, event: OrderReceived | OrderModified) -> None:
        # Sealing a new customer's data first stores their data key in Kafka (a round trip,
        # infra/keystore.py): off the event loop, so other requests go on meanwhile.
        try:
            value = await asyncio.to_thread(self.publisher.codec.encode, event)
        except KeyStoreError as exc:
            raise PublishError(str(exc)) from exc
        topic, key = self.publisher.settings.topics.intake, event.aggregate_id
        await self._delivered(lambda then: self.publisher.produce(topic, key, value, then=then))

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self._delivered(lambda then: self.publisher.dead_letter(letter, then=then))

    async def publish(self, topic: str, event: Event) -> None:
        await self._delivered(lambda then: self.publisher.publish(topic, event, then=then))

    async def produce(self, topic: str, key: str, value: bytes) -> None:
        """A record that is not an event (a carrier's verified push), once Kafka has it."""
        await self._delivered(lambda then: self.publisher.produce(topic, key, value, then=then))

    def close(self) -> None:
        self._running = False
        self._poller.join(timeout=5)
        self.publisher.flush(10)


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
