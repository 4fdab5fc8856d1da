"""Where the agents' outputs go: librdkafka (confluent-kafka) rather than Faust's pure-Python
producer, which cost most of the worker's CPU per event (protocol encoding in Python).

An agent queues a batch's outputs with `produce` and then awaits `confirmed()`, which returns
once Kafka acknowledged every one of them (acks=all, idempotent, so order per partition is
kept and retries do not duplicate). Only then is the input batch acked to Faust.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import KafkaError, Message, Producer


class DeliveryFailed(RuntimeError):
    """Kafka did not take an output: the worker stops, and its inputs are redelivered."""


class Sink:
    def __init__(self, bootstrap: str) -> None:
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 2, "compression.type": "lz4", "partitioner": "murmur2_random",
            "message.timeout.ms": 60000,
        })  # fmt: skip
        self._errors: list[str] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, *, key: bytes, value: bytes, partition: int | None = None
                ) -> None:  # fmt: skip
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered,
                                       **extra)  # fmt: skip
                return
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.05)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"{msg.topic()}: {err}")

    async def confirmed(self) -> None:
        """Wait until everything produced so far is acknowledged."""
        remaining = await asyncio.to_thread(self._producer.flush, 60)
        with self._lock:
            errors, self._errors = self._errors, []
        if remaining or errors:
            raise DeliveryFailed(f"{remaining} unconfirmed, errors: {errors[:3]}")

    def close(self) -> None:
        self._producer.flush(30)
