"""Reading a topic partition from its start to its end: how agents rebuild their state.

An agent's state is the fold of what it wrote (the order log, the stock ledger), and it waits
for Kafka's ack of each output before its input offset can be committed. So after a crash the
log holds at least everything the committed inputs caused, and folding it gives a state in
which every redelivered input is recognised.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from events.codec import AvroCodec, CodecError, message_ref
from events.models import DeadLetter, Event
from infra.kafka import consumer_config

log = logging.getLogger(__name__)


def read_partition(
    bootstrap: str,
    topic: str,
    partition: int,
    *,
    codec: AvroCodec,
    start: int = 0,
    ends: dict[tuple[str, int], int] | None = None,
) -> Iterator[Event]:
    """Every event in `topic`/`partition` from offset `start` up to its end at the time of
    the call; that end (the next offset) is put in `ends` when given."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    config = consumer_config(
        bootstrap,
        group_id=f"replay-{uuid.uuid4().hex}",
        **{
            "enable.partition.eof": True,
            "fetch.max.bytes": 52428800,
            "queued.max.messages.kbytes": 262144,
        },
    )
    consumer = Consumer(config)
    try:
        low, high = _watermarks(consumer, TopicPartition(topic, partition))
        if ends is not None:
            ends[(topic, partition)] = high
        if high <= max(low, start):
            return
        consumer.assign(
            [TopicPartition(topic, partition, start if start > low else OFFSET_BEGINNING)]
        )
        while True:
            # `consume` returns once it holds num_messages or its timeout passed: a short one,
            # or every partition smaller than a batch costs the whole timeout (it was 1 s).
            for message in consumer.consume(num_messages=10_000, timeout=0.05):
                if message.error() is not None:
                    continue  # end of partition
                offset = message.offset() or 0
                try:
                    event = codec.decode(
                        message.value() or b"", where=message_ref(topic, partition, offset)
                    )
                except CodecError:
                    event = None  # not ours to fold (the agent dead-letters bad input)
                if isinstance(event, Event) and not isinstance(event, DeadLetter):
                    yield event
                if offset >= high - 1:
                    return
    finally:
        consumer.close()


def _watermarks(consumer: Any, partition: Any) -> tuple[int, int]:
    """The partition's first and next offsets, asked again (backing off to 10 s) while the
    broker is away: a rebuild waits for Kafka rather than failing the worker."""
    from confluent_kafka import KafkaException

    delay = 0.5
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=30)
            return int(low), int(high)
        except KafkaException as exc:
            log.warning(
                "replay of %s[%d] waits for Kafka: %s", partition.topic, partition.partition, exc
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
