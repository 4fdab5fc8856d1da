"""The one producer wrapper: an idempotent confluent-kafka producer (acks=all) for the intake side.

A channel gets an acknowledgement only for what Kafka acknowledged, so `acknowledged` counts
delivery reports, not sends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from events.codec import AvroCodec
from events.models import DeadLetter, Event, OrderModified, OrderReceived
from oms.settings import Settings


class PublishError(RuntimeError):
    """Kafka refused or could not confirm a message."""


@dataclass
class DeliveryCount:
    """Kafka's delivery reports so far, per topic."""

    acknowledged: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


class Publisher:
    def __init__(self, settings: Settings, *, codec: AvroCodec | None = None) -> None:
        self.settings = settings
        self.codec = codec or AvroCodec.for_registry(settings.schema_registry_url)
        self.count = DeliveryCount()
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.timeout.ms": 30000,
            }
        )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        topic = msg.topic() or ""
        if err is None:
            self.count.acknowledged[topic] += 1
        else:
            self.count.failed[topic] += 1
            self.count.errors.append(str(err))

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, key=key.encode(), value=value, on_delivery=self._on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
        self._producer.poll(0)

    def publish(self, topic: str, event: Event) -> None:
        """An event keyed by its aggregate, so one aggregate's events stay in order."""
        self._produce(topic, event.aggregate_id, self.codec.encode(event))

    def intake(self, event: OrderReceived | OrderModified) -> None:
        """A connector's event onto the intake topic."""
        self.publish(self.settings.topics.intake, event)

    def dead_letter(self, letter: DeadLetter) -> None:
        self._produce(self.settings.topics.dlq, letter.source_ref, self.codec.encode(letter))

    def flush(self, timeout_s: float = 60.0) -> DeliveryCount:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise PublishError(f"{remaining} messages not confirmed by Kafka within {timeout_s}s")
        return self.count
