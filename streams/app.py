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
from events.models import DeadLetter, OrderModified, OrderReceived, utc_now
from oms.settings import Settings, get_settings
from streams.intake import OrderRecord, decide


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
        # A worker that died (kill -9) leaves the group after 10 s, not Faust's default 60 s,
        # so its partitions move to the survivors (or its restart) quickly.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        datadir=str(settings.home / "faust"),
    )
    intake_topic = app.topic(settings.topics.intake, key_type=bytes, value_type=bytes)
    orders = app.topic(settings.topics.orders, key_type=bytes, value_type=bytes)
    dlq = app.topic(settings.topics.dlq, key_type=bytes, value_type=bytes)

    async def send_confirmed(topic: faust.TopicT, key: str, value: bytes) -> None:
        # Wait for Kafka's ack so the input offset is never committed ahead of the output.
        delivery = await topic.send(key=key.encode(), value=value)
        await delivery

    # Per order: what the order log holds (see streams.intake). Keyed like the intake topic
    # (order id), so each partition's orders live with the worker that consumes them.
    records = app.Table(
        "order-records", default=None, key_type=bytes, value_type=bytes,
        partitions=_partitions(settings, settings.topics.intake),
    )  # fmt: skip

    async def dead_letter(message: Any, raw: bytes, reason: str) -> None:
        where = message_ref(message.topic, message.partition, message.offset)
        letter = DeadLetter.of(source=message.topic, source_ref=where, reason=reason, raw=raw)
        await send_confirmed(dlq, where, codec.encode(letter))

    @app.agent(intake_topic, name="intake")
    async def take_in(stream: faust.StreamT[Any]) -> AsyncIterator[list[str]]:
        """Dedup, sequence and validate; yields the event types it wrote (tests, tracing)."""
        async for event in stream.events():
            message = event.message
            where = message_ref(message.topic, message.partition, message.offset)
            raw = event.value or b""
            try:
                received = codec.decode(raw, where=where)
                if not isinstance(received, OrderReceived | OrderModified):
                    raise CodecError(
                        f"{type(received).__name__} does not belong on the intake topic",
                        where=where,
                    )
            except CodecError as exc:
                await dead_letter(message, raw, str(exc))
                yield ["DeadLetter"]
                continue
            key = received.order_id.encode()
            stored = records.get(key)
            record = None if stored is None else OrderRecord.model_validate_json(stored)
            decision = decide(record, received, now=utc_now())
            # Outputs first, state after: a crash in between re-makes the same events (same
            # ids and sequences), which every reader recognises as redeliveries.
            for outcome in decision.to_log:
                await send_confirmed(orders, outcome.order_id, codec.encode(outcome))
            if decision.refusal is not None:
                await dead_letter(message, raw, f"{decision.refusal} ({where})")
            if decision.record is not None:
                records[key] = decision.record.model_dump_json().encode()
            written = [outcome.event_type for outcome in decision.to_log]
            yield written + (["DeadLetter"] if decision.refusal is not None else [])

    return app


def _partitions(settings: Settings, topic: str) -> int:
    """The topic's partition count (a table's changelog must match its source topic)."""
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(
            topic, timeout=10
        )
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return len(found.partitions)
    except Exception:  # noqa: BLE001 - no broker yet: Faust will report it itself
        pass
    return settings.kafka_partitions


def run_worker(argv: list[str] | None = None) -> None:
    """`oms worker`: run the Faust worker with its own command line (e.g. `-l info`)."""
    app = create_app()
    sys.argv = ["oms worker", "worker", *(argv or ["--loglevel", "warn"])]
    app.main()
