"""`oms outbox run`: the sender that tells the platforms (docs/architecture.md, "The outbox").

It folds the order log, the stock ledger and the catalogue from their beginning
(`streams.outbox.decide` says which calls each event causes) and makes each call through its
platform's client (`connectors.outbound`). Exactly once toward the platform, across a kill -9:

1. Every call has an idempotency key derived from its causing event's id. The outbox topic
   (compacted, keyed by it) holds the newest record of each call; it is read to its end before
   anything is sent. A call whose record is settled (sent, failed, skipped, expired) is never
   made again, however often its event is read.
2. Before a call is made, its `intent` is written and acknowledged by Kafka; after it, the
   outcome. A crash between the two leaves an intent without outcome: on restart the platform
   is ASKED (order status, shop status, shelf status, prepared list) whether it is already
   where the call would take it; only if it says no, or publishes no such question, is the
   call made again (docs/connectors.md lists which calls cannot be asked about).
3. A transport error, an HTTP 5xx or 429, or a platform error code it documents as temporary
   is tried again with bounded, jittered exponential backoff; a permanent refusal, or the last
   failed attempt, is recorded `failed` and dead-lettered (`oms outbox list --failed`,
   `oms outbox retry`). A call whose cause is older than OMS_OUTBOX_MAX_AGE_S is not made but
   recorded `expired`; one older than OMS_OUTBOX_KEEP_S (7 days) is passed over without a
   record, and settled records older than that are tombstoned when the sender starts, so the
   outbox topic and the sender's memory stay bounded however long the logs are. An event that
   cannot be read or decided is dead-lettered and skipped, and a client that raises anything
   unexpected fails its call (tried again, then `failed`): one bad event or answer never stops
   the sender.

Replaying the logs from their beginning rebuilds the fold (stock levels, orders in flight,
catalogue) without any state of its own; its cost grows with the logs (docs/operations.md).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from connectors.outbound import CallFailed, PlatformClient, TransientFailure, Unsupported
from events.codec import AvroCodec, CodecError
from events.models import DeadLetter, Event, utc_now
from events.platform_calls import OutboxRecord, OutboxStatus, PlatformCall, record
from infra.kafka import consumer_config, producer_config
from infra.metrics import OUTBOX_BACKLOG, Health
from infra.poison import describe
from infra.publisher import Publisher
from infra.settings import Settings
from streams.outbox import OutboxState, decide
from streams.reference import load_catalogue

_T = TypeVar("_T")
_R = TypeVar("_R")

log = logging.getLogger(__name__)
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


class OutboxUnavailable(RuntimeError):
    """Kafka did not take or give back an outbox record."""


def write_acknowledged(producer: Producer, topic: str, key: str, value: bytes | None) -> str | None:
    """One record onto `topic`, waited for: None once Kafka acknowledged it, else why not. The
    outbox, the notifier's lone records, the alerter and the subscriptions write this way: an
    intent must be durable before its call is made."""
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered)
    if producer.flush(30) or failures:
        return "; ".join(failures) or "timed out"
    return None


def backoff_s(attempt: int, *, base_s: float = BACKOFF_BASE_S, jitter: float = 0.5) -> float:
    """The wait before try `attempt + 1`: base x 2^(attempt-1), capped, less up to `jitter` of
    it at random (several senders retrying one platform do not retry in step)."""
    full = min(BACKOFF_CAP_S, base_s * 2 ** (attempt - 1))
    return full * (1 - jitter * random.random())  # noqa: S311 - jitter, not a secret


def read_records(settings: Settings, *, timeout_s: float = 30.0) -> dict[str, OutboxRecord]:
    """The newest record of every call on the outbox topic (read to its end)."""
    return read_newest(
        settings,
        settings.topics.outbox,
        OutboxRecord.decode,
        key=lambda found: found.key,
        timeout_s=timeout_s,
    )


def from_the_beginning(
    settings: Settings, topics: list[str], *, group: str, label: str, wait_s: float = 0.5
) -> Generator[list[tuple[bytes, str]], None, None]:
    """The topics from their beginning, for ever: chunks of (value, where), an empty chunk when
    nothing came within `wait_s` (the caller's moment for its timers). How the outbox sender,
    the notifier and the staff alerter rebuild their fold and then follow the logs live;
    `group` only names the consumer (nothing is committed: the fold is rebuilt each start)."""
    consumer = Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            group_id=f"{settings.consumer_group}-{group}",
            **{"auto.offset.reset": "earliest"},
        )
    )
    try:
        consumer.assign(
            [
                TopicPartition(topic, partition, 0)
                for topic in topics
                for partition in consumer.list_topics(topic, timeout=30).topics[topic].partitions
            ]
        )
        while True:
            chunk = []
            for message in consumer.consume(200, timeout=wait_s):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("%s input: %s", label, error)
                    continue
                where = f"{message.topic()}/{message.partition()}/{message.offset()}"
                chunk.append((message.value() or b"", where))
            yield chunk
    finally:
        consumer.close()


def read_newest(
    settings: Settings,
    topic: str,
    decode: Callable[[bytes], _R],
    *,
    key: Callable[[_R], str],
    timeout_s: float = 30.0,
) -> dict[str, _R]:
    """The newest record of every key on a topic of intent and outcome records (the outbox,
    the notifications), read to its end; a tombstone drops its key."""
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-outbox-reader"))
    records: dict[str, _R] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise OutboxUnavailable(f"topic {topic} is missing (create it: `oms stack up`)")
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            offset = low
            while offset < high:
                message = consumer.poll(timeout_s)
                if message is None:
                    raise OutboxUnavailable(f"{topic}[{partition}] stopped at offset {offset}")
                if message.error() is not None:
                    continue
                offset = (message.offset() or 0) + 1
                if message.value():
                    found = decode(message.value() or b"")
                    records[key(found)] = found
                elif message.key():
                    records.pop((message.key() or b"").decode(), None)
    finally:
        consumer.close()
    return records


@dataclass
class SenderStats:
    events: int = 0
    sent: int = 0
    reconciled: int = 0  # intents found done on the platform after a crash
    failed: int = 0
    skipped: int = 0
    expired: int = 0
    poison: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class OutboxSender:
    """One sender; run one per deployment (the outbox is its single writer)."""

    def __init__(
        self,
        settings: Settings,
        clients: Mapping[str, PlatformClient],
        *,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        self_delivery: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.clients = dict(clients)
        self.clock, self.sleep = clock, sleep
        self.codec = AvroCodec.for_registry(settings.schema_registry_url)
        self.producer = Producer(producer_config(settings.kafka_bootstrap, **{"linger.ms": 0}))
        self.publisher: Publisher | None = None  # dead letters: made on the first one
        self.records: dict[str, OutboxRecord] = {}
        self.state = OutboxState(
            catalogue=load_catalogue(settings.catalogue_file), self_delivery=self_delivery
        )
        self.stats = SenderStats()
        self.max_age = timedelta(seconds=settings.outbox_max_age_s)
        self.keep = max(timedelta(seconds=settings.outbox_keep_s), self.max_age)
        # Ready (/readyz) once the outbox is read and the sender goes through the logs.
        self.unready: str | None = "reading the outbox"
        self.health = Health(why_not_ready=lambda: self.unready)

    # -- the loop

    def run(self, *, until: Callable[[OutboxSender], bool] | None = None) -> SenderStats:
        """Read the outbox, then every input from its beginning, for ever (or `until`)."""
        self.records = read_records(self.settings)
        for outbox_record in self.records.values():
            if outbox_record.status is OutboxStatus.INTENT:
                OUTBOX_BACKLOG.labels(outbox_record.call.platform).inc()
        self.forget_old()
        topics = self.settings.topics
        inputs = [topics.catalogue, topics.inventory, topics.orders]
        chunks = from_the_beginning(self.settings, inputs, group="outbox", label="outbox")
        self.unready = None
        try:
            while until is None or not until(self):
                self.health.beat()
                for raw, where in next(chunks):
                    self.take(raw, where=where)
        finally:
            self.unready = "stopped"
            chunks.close()
            self.producer.flush(30)
            if self.publisher is not None:
                self.publisher.flush(30)
        return self.stats

    def forget_old(self) -> int:
        """Tombstones the settled records older than the keep window (their causes are passed
        over without a record when read again); how many."""
        cutoff = self.clock() - self.keep
        old = [k for k, r in self.records.items() if r.status.settled and r.at < cutoff]
        for key in old:
            self.producer.produce(self.settings.topics.outbox, key=key.encode(), value=None)
            del self.records[key]
        if old:
            self.producer.flush(30)
            log.info("outbox: %d records settled before %s dropped", len(old), cutoff)
        return len(old)

    def take(self, raw: bytes, *, where: str) -> None:
        """One input message: decoded, decided, its calls made. A message that cannot be
        read or decided is dead-lettered; the sender goes on."""
        self.stats.events += 1
        try:
            event = self.codec.decode(raw, where=where)
            if not isinstance(event, Event):
                return
            calls = decide(self.state, event, platforms=self.clients)
        except (CodecError, Exception) as exc:  # noqa: BLE001 - poison: recorded, not raised
            self.stats.poison += 1
            log.exception("outbox: %s could not be decided", where)
            self._dead_letter(source_ref=where, reason=f"outbox: {describe(exc)}", raw=raw)
            return
        for call in calls:
            self.make(call)

    # -- one call

    def make(
        self, call: PlatformCall, *, by: str | None = None, again: bool = False
    ) -> OutboxRecord:
        """Make `call` once: skipped when settled (unless `again`: `oms outbox retry`),
        reconciled when an intent was left by a crash, else intent → call → outcome."""
        now = self.clock()
        known = self.records.get(call.idempotency_key)
        if known is not None and known.status.settled and not again:
            return known
        if known is None and now - call.caused_at > self.keep and not again:
            self.stats.expired += 1  # long past: not made, and no record kept of it
            return record(call, OutboxStatus.EXPIRED, at=now, detail="past the keep window")
        if known is None and now - call.caused_at > self.max_age and not again:
            age = now - call.caused_at
            return self._settle(call, OutboxStatus.EXPIRED, 0, f"its cause is {age} old", by)
        client = self.clients.get(call.platform)
        if client is None:
            return self._settle(call, OutboxStatus.SKIPPED, 0, f"{call.platform} is not served", by)
        attempts = known.attempts if known is not None else 0
        if known is not None and known.status is OutboxStatus.INTENT:
            done = self._ask(client, call)
            if done:
                self.stats.reconciled += 1
                return self._settle(
                    call, OutboxStatus.SENT, attempts, "found done on the platform", by
                )
        self._write(record(call, OutboxStatus.INTENT, at=now, attempts=attempts, by=by))
        while True:
            attempts += 1
            try:
                answer = _guarded(client.send, call, now=self.clock())
            except Unsupported as exc:
                return self._settle(call, OutboxStatus.SKIPPED, attempts, exc.detail, by)
            except CallFailed as exc:
                if exc.permanent or attempts >= self.settings.outbox_attempts:
                    settled = self._settle(call, OutboxStatus.FAILED, attempts, exc.detail, by)
                    self._dead_letter(
                        source_ref=f"outbox:{call.platform}:{call.idempotency_key}",
                        reason=f"{call.platform} {call.kind.value} failed: {exc.detail}",
                        raw=settled.encode(),
                    )
                    return settled
                log.warning(
                    "%s %s: %s (try %d)", call.platform, call.kind.value, exc.detail, attempts
                )
                self.sleep(backoff_s(attempts))
                continue
            return self._settle(call, OutboxStatus.SENT, attempts, answer[:500], by)

    def _ask(self, client: PlatformClient, call: PlatformCall) -> bool:
        """The platform's answer to "is it done?", asked until it answers (bounded)."""
        for attempt in range(1, self.settings.outbox_attempts + 1):
            try:
                return bool(_guarded(client.already_done, call, now=self.clock()))
            except CallFailed as exc:
                if exc.permanent:
                    return False
                self.sleep(backoff_s(attempt))
        return False

    def _settle(
        self, call: PlatformCall, status: OutboxStatus, attempts: int, detail: str, by: str | None
    ) -> OutboxRecord:
        settled = record(call, status, at=self.clock(), attempts=attempts, detail=detail, by=by)
        self._write(settled)
        counter = {"sent": "sent", "failed": "failed", "skipped": "skipped", "expired": "expired"}
        name = counter[status.value]
        setattr(self.stats, name, getattr(self.stats, name) + 1)
        return settled

    def _write(self, outbox_record: OutboxRecord) -> None:
        """The record onto the outbox topic, once Kafka acknowledged it."""
        topic = self.settings.topics.outbox
        why = write_acknowledged(self.producer, topic, outbox_record.key, outbox_record.encode())
        if why is not None:
            raise OutboxUnavailable(f"outbox record not acknowledged: {why}")
        known = self.records.get(outbox_record.key)
        was_intent = known is not None and known.status is OutboxStatus.INTENT
        is_intent = outbox_record.status is OutboxStatus.INTENT
        if was_intent != is_intent:  # an intent left or settled: the backlog moves
            OUTBOX_BACKLOG.labels(outbox_record.call.platform).inc(1 if is_intent else -1)
        self.records[outbox_record.key] = outbox_record

    def _dead_letter(self, *, source_ref: str, reason: str, raw: bytes) -> None:
        if self.publisher is None:
            self.publisher = Publisher(self.settings)
        letter = DeadLetter.of(source="outbox", source_ref=source_ref, reason=reason, raw=raw)
        self.publisher.dead_letter(letter)
        self.publisher.flush(30)


def _guarded(ask: Callable[..., _T], call: PlatformCall, *, now: datetime) -> _T:
    """A client's answer; anything it raises that is not a `CallFailed` (an answer of a shape
    the client did not expect, a connection cut mid-answer) is a transient failure: tried
    again, then settled FAILED and dead-lettered, never a crash that would replay the call
    forever."""
    try:
        return ask(call, now=now)
    except CallFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - a client's bug or a platform's odd answer
        log.exception("%s %s: unreadable answer", call.platform, call.kind.value)
        raise TransientFailure(f"unreadable answer: {describe(exc)}") from exc


def failed(records: Mapping[str, OutboxRecord]) -> Iterator[OutboxRecord]:
    """The calls not made: failed, or expired, newest first."""
    gone = (OutboxStatus.FAILED, OutboxStatus.EXPIRED)
    yield from sorted(
        (r for r in records.values() if r.status in gone), key=lambda r: r.at, reverse=True
    )
