"""The Faust app and its agents. Agents are thin: decode, call a pure `decide`, write the result.

Correctness does not rest on Faust's `exactly_once` (open duplicate bugs): every output has a
deterministic event id, and each send is confirmed before the input offset can be committed.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import faust

from events.codec import AvroCodec, CodecError, message_ref
from events.models import DeadLetter, OrderReceived, utc_now
from oms.settings import Settings, get_settings
from streams import validation


def create_app(settings: Settings | None = None) -> faust.App:
    settings = settings or get_settings()
    codec = AvroCodec.for_registry(settings.schema_registry_url)
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        datadir=str(settings.home / "faust"),
    )
    intake = app.topic(settings.topics.intake, key_type=bytes, value_type=bytes)
    orders = app.topic(settings.topics.orders, key_type=bytes, value_type=bytes)
    dlq = app.topic(settings.topics.dlq, key_type=bytes, value_type=bytes)

    async def send_confirmed(topic: faust.TopicT, key: str, value: bytes) -> None:
        # Wait for Kafka's ack so the input offset is never committed ahead of the output.
        delivery = await topic.send(key=key.encode(), value=value)
        await delivery

    @app.agent(intake, name="validate")
    async def validate(stream: faust.StreamT[Any]) -> AsyncIterator[list[str]]:
        """Yields the event types it wrote, for tests and tracing."""
        async for event in stream.events():
            message = event.message
            where = message_ref(message.topic, message.partition, message.offset)
            raw = event.value or b""
            try:
                order = codec.decode(raw, where=where)
                if not isinstance(order, OrderReceived):
                    raise CodecError(
                        f"expected OrderReceived, got {type(order).__name__}", where=where
                    )
            except CodecError as exc:
                letter = DeadLetter.of(
                    source=message.topic, source_ref=where, reason=str(exc), raw=raw
                )
                await send_confirmed(dlq, where, codec.encode(letter))
                yield ["DeadLetter"]
                continue
            decided = validation.decide(order, now=utc_now())
            for outcome in decided:
                await send_confirmed(orders, outcome.order_id, codec.encode(outcome))
            yield [outcome.event_type for outcome in decided]

    return app


def run_worker(argv: list[str] | None = None) -> None:
    """`oms worker`: run the Faust worker with its own command line (e.g. `-l info`)."""
    app = create_app()
    sys.argv = ["oms worker", "worker", *(argv or ["--loglevel", "warn"])]
    app.main()
