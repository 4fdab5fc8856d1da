"""The dead-letter topic, read back: list what was rejected, and replay it through its
connector once the cause is fixed (a connector bug, a missing mapping).

A replay is not a way round a webhook's signature. A letter refused as not authentic (forged,
unsigned, or replayed outside its window: `replayable` false) is refused, never sent on. Any
other letter that came through a webhook is verified again, with the headers it kept, against
the channel's current secret, before it is parsed; its signed time is not held to the window
again (the letter was received in time, or was refused for that and is not replayable). A
letter that came through the webhook of a channel not served there any more — polled, or
verifying no signature — is refused too: nothing vouches for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from connectors.base import ChannelEvent, Connector, PayloadRejected
from connectors.intake import csv_row_as_json
from connectors.registry import available
from events.codec import AvroCodec, CodecError
from events.models import DeadLetter, utc_now
from infra.kafka import consumer_config
from infra.publisher import Publisher
from infra.settings import Settings


def read_dead_letters(settings: Settings, *, timeout_s: float = 30.0) -> Iterator[DeadLetter]:
    """Every dead letter on the topic, oldest first per partition (reads up to the end)."""
    topic = settings.topics.dlq
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-dlq-reader"))
    codec = AvroCodec.for_registry(settings.schema_registry_url)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for partition in sorted(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            offset = low
            while offset < high:
                message = consumer.poll(timeout_s)
                if message is None:
                    raise TimeoutError(f"{topic}[{partition}] stopped at offset {offset}")
                if message.error():
                    continue
                offset = (message.offset() or 0) + 1
                try:
                    letter = codec.decode(message.value() or b"")
                except CodecError:
                    continue  # not a dead letter: nothing to list or replay
                if isinstance(letter, DeadLetter):
                    yield letter
    finally:
        consumer.close()


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)  # dead letter ids now on the intake topic
    still_rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, why)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (id, reason): not authentic


def replay(
    settings: Settings, *, ids: set[str] | None = None, source: str | None = None
) -> ReplayReport:
    """Send the chosen dead letters through their connector again; what parses is published."""
    connectors = available()
    publisher = Publisher(settings)
    report = ReplayReport()
    for letter in read_dead_letters(settings):
        if ids is not None and letter.dead_letter_id not in ids:
            continue
        if source is not None and letter.source != source:
            continue
        connector_class = connectors.get(letter.source)
        if connector_class is None:
            report.skipped.append((letter.dead_letter_id, f"no connector named {letter.source!r}"))
            continue
        if not letter.replayable:
            report.refused.append((letter.dead_letter_id, letter.reason))
            continue
        if letter.source_ref.startswith("webhook:") and not _verifiable(connector_class):
            why = f"came through a webhook {letter.source} is not served on (nothing verified)"
            report.refused.append((letter.dead_letter_id, why))
            continue
        try:
            event = _again(connector_class(), letter)
        except PayloadRejected as exc:
            report.still_rejected.append((letter.dead_letter_id, str(exc)))
            continue
        publisher.intake(event)
        report.replayed.append(letter.dead_letter_id)
    publisher.flush()
    return report


def _verifiable(connector_class: type[Connector]) -> bool:
    """Whether a webhook's letter of this channel can be verified again: a signed pushed
    channel, or staff typing (whose login the API checked). A polled or unsigned channel's
    webhook letters are from before those were closed: nobody vouches for them."""
    if connector_class.delivery == "staff":
        return True
    return connector_class.delivery == "webhook" and connector_class.signed


def _again(connector: Connector, letter: DeadLetter) -> ChannelEvent:
    """What the connector makes of a letter now: a webhook's verified first, with its headers."""
    headers = {header.name: header.value for header in letter.headers}
    if letter.source_ref.startswith("webhook:"):
        connector.verify(headers, letter.raw)
    body = csv_row_as_json(letter.raw) if ".csv:" in letter.source_ref else letter.raw
    return connector.parse(body, received_at=utc_now(), headers=headers)
