"""Pages of a log for systems that cannot run a Kafka consumer (`GET /events`, oms/feed.py).

A page is read straight from the topic, not from a copy: what a follower sees is what the
agents wrote, in the same order per partition (an order's events are in one partition, so in
their sequence). Where the follower is is a cursor: the next offset of every partition of the
log, opaque to the follower and carried from page to page. It survives restarts of the API and
of the follower; it names its log, so a cursor of one log is refused by another.

Offsets the topic no longer holds (retention) are skipped and said so (`gap`); a follower that
polls often enough never sees one. A page reads at most `scan` records, so a filter that
matches nothing costs a bounded read, and the cursor still moves past what was read.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from events.codec import AvroCodec, CodecError, message_ref
from events.models import DeadLetter, Event
from infra.kafka import consumer_config

CURSOR_PREFIX = "c1."
MAX_PARTITIONS = 10_000


class FeedError(ValueError):
    """A cursor or request the feed cannot use; `field` names the parameter."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name


class FeedUnavailable(RuntimeError):
    """Kafka did not answer."""


@dataclass(frozen=True)
class Cursor:
    log: str
    offsets: tuple[int, ...]  # the next offset to read, per partition

    def encode(self) -> str:
        body = json.dumps({"log": self.log, "o": list(self.offsets)}, separators=(",", ":"))
        return CURSOR_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, *, log: str) -> Cursor:
        """The cursor a page gave; FeedError("after", why) for anything else."""
        if not text.startswith(CURSOR_PREFIX):
            raise FeedError("after", "not a cursor this feed gave (they start with 'c1.')")
        raw = text[len(CURSOR_PREFIX) :]
        try:
            body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        except (binascii.Error, ValueError) as exc:
            raise FeedError("after", f"not a cursor this feed gave ({exc})") from None
        if not isinstance(body, dict) or not isinstance(body.get("o"), list):
            raise FeedError("after", "not a cursor this feed gave")
        offsets = body["o"]
        if len(offsets) > MAX_PARTITIONS or not all(
            isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets
        ):
            raise FeedError("after", "a cursor's offsets are whole numbers from 0")
        if body.get("log") != log:
            raise FeedError("after", f"a cursor of the {body.get('log')!r} log, not {log!r}")
        return cls(log, tuple(offsets))


@dataclass
class Page:
    events: list[tuple[int, int, Event]] = field(default_factory=list)  # partition, offset
    cursor: Cursor | None = None
    caught_up: bool = True  # nothing more on the log after the cursor when it was read
    gap: bool = False  # some offsets after the old cursor were gone (retention)
    unreadable: int = 0  # records passed over that are not events of the contract


def read_page(
    bootstrap: str,
    topic: str,
    cursor: Cursor,
    *,
    codec: AvroCodec,
    limit: int,
    scan: int,
    keep: Callable[[Event], bool],
    timeout_s: float = 10.0,
) -> Page:
    """Up to `limit` events after `cursor` that `keep` takes, reading at most `scan` records."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    config = consumer_config(
        bootstrap, group_id=f"oms-feed-{uuid.uuid4().hex}", **{"enable.partition.eof": False}
    )
    page = Page()
    try:
        consumer = Consumer(config)
    except KafkaException as exc:
        raise FeedUnavailable(str(exc)) from exc
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise FeedUnavailable(f"topic {topic} is missing")
        partitions = sorted(metadata.partitions)
        offsets = list(cursor.offsets) + [0] * (len(partitions) - len(cursor.offsets))
        scanned = 0
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if offsets[partition] < low:
                page.gap = page.gap or offsets[partition] > 0
                offsets[partition] = low
            if offsets[partition] >= high:
                continue
            if len(page.events) >= limit or scanned >= scan:
                page.caught_up = False
                continue
            consumer.assign([TopicPartition(topic, partition, offsets[partition])])
            deadline = time.monotonic() + timeout_s
            while offsets[partition] < high and len(page.events) < limit and scanned < scan:
                if time.monotonic() > deadline:
                    raise FeedUnavailable(f"{topic}[{partition}] stopped at {offsets[partition]}")
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                offset = message.offset() or 0
                offsets[partition] = offset + 1
                scanned += 1
                event = _event(codec, message.value(), message_ref(topic, partition, offset))
                if event is None:
                    page.unreadable += 1
                elif keep(event):
                    page.events.append((partition, offset, event))
            if offsets[partition] < high:
                page.caught_up = False
            consumer.unassign()
    except KafkaException as exc:
        raise FeedUnavailable(str(exc)) from exc
    finally:
        consumer.close()
    page.cursor = Cursor(cursor.log, tuple(offsets))
    return page


def _event(codec: AvroCodec, value: bytes | None, where: str) -> Event | None:
    try:
        event = codec.decode(value or b"", where=where)
    except CodecError:
        return None  # (the agent that wrote the log dead-letters what it cannot read)
    return None if isinstance(event, DeadLetter) else event


def describe(partition: int, offset: int, event: Event) -> dict[str, Any]:
    """One event as the feed shows it: where it is on the log, and the event as JSON."""
    return {
        "partition": partition,
        "offset": offset,
        "type": event.event_type,
        "event": event.model_dump(mode="json"),
    }
