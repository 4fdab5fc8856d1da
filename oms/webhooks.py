"""`oms subscriptions run`: the sender of outbound webhooks (docs/architecture.md, "Outbound
webhooks"); the subscriptions and the delivery log on their topics.

Every subscription reads the order log on its own (a consumer group of its own,
`{OMS_CONSUMER_GROUP}-webhooks-{id}`), so a subscriber that is down holds back nobody else.
What it guarantees, and why:

1. At least once. A subscription's progress is the committed offset of its group, moved only
   past events that are settled (delivered, failed for good, or not for it). A sender killed
   between a delivery and the commit sends it again after the restart, with the same
   `webhook-id` (derived from subscription and event id), which is what a receiver dedupes on.
2. In log order per partition, so per order (an order's events share a partition): within a
   subscription's partition one delivery is in flight at a time and the next waits for it. A
   delivery that keeps failing holds back its partition of that subscription only, until it
   is delivered, fails for good (OMS_WEBHOOK_RETRY_FOR_S after its first attempt: recorded
   `failed`, dead-lettered, passed over) or its subscription is disabled.
3. Retries back off exponentially (OMS_WEBHOOK_BACKOFF_*), with jitter. A subscription with
   OMS_WEBHOOK_DISABLE_FAILURES failed attempts in a row spanning OMS_WEBHOOK_DISABLE_AFTER_S
   is disabled: recorded on the subscriptions topic with the reason; `enable` resumes it
   where it stopped.
4. Nothing bad stops the sender: an event that cannot be decoded is dead-lettered and passed
   over; a subscription record that cannot be read is logged and ignored; one whose secret
   does not open under the master key, or is not a Standard Webhooks secret, is disabled
   (fail closed: nothing is sent unsigned).

The secrets are wrapped under the master key (`OMS_MASTER_KEY`, as the data keys are) with the
subscription's id as associated data, so the subscriptions topic holds none in clear.

Events are sent as the log holds them: decoded without the keys of personal data, so personal
fields are empty and `sealed` stays sealed.
"""

from __future__ import annotations

import base64
import http.client
import logging
import random
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from events.codec import AvroCodec, CodecError, message_ref
from events.models import DeadLetter, OrderEvent, utc_now
from events.webhook_subscriptions import DeliveryRecord, DeliveryStatus, Start, Subscription
from infra.kafka import admin_config, consumer_config, producer_config
from infra.keystore import KeyStoreError, MasterKey
from infra.poison import describe
from infra.publisher import Publisher
from infra.settings import Settings
from oms.outbox import write_acknowledged
from streams.webhook_delivery import (
    Health,
    InvalidSecret,
    Progress,
    Retrying,
    RetryPolicy,
    after_attempt,
    gives_up,
    key_of,
    matches,
    message,
    retry_delay_s,
    sign,
    webhook_id,
)

log = logging.getLogger(__name__)
COMMIT_EVERY_S = 1.0
IDLE_S = 0.02  # the longest nap of an idle sender (new events are read after it)
PAUSE_AT, RESUME_AT = 5_000, 1_000  # events waiting in one partition of one subscription
Answer = tuple[int | None, str]  # the HTTP status (None: no answer) and what was said


class WebhooksUnavailable(RuntimeError):
    """Kafka did not take or give back a subscription or delivery record."""


# -- the subscriptions and the delivery log


def _partitions(consumer: Consumer, topic: str, *, timeout_s: float) -> list[int]:
    """The topic's partitions, asked again while a topic just made is not in the metadata
    yet, for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        if time.monotonic() > deadline:
            raise WebhooksUnavailable(f"topic {topic} is missing (create it: `oms stack up`)")
        time.sleep(0.2)


def _watermarks(
    consumer: Consumer, partition: TopicPartition, *, timeout_s: float
) -> tuple[int, int]:
    """The partition's first and next offsets, asked again while its leader is still being
    elected (a topic just made, a broker restarting), for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=timeout_s)
            return int(low), int(high)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise WebhooksUnavailable(
                    f"{partition.topic}[{partition.partition}]: {exc}"
                ) from exc
            time.sleep(0.2)


def _read_to_end(
    settings: Settings, topic: str, *, timeout_s: float
) -> Iterator[tuple[bytes, bytes | None]]:
    """Every (key, value) of `topic`, from its start to its end at the time of the call, in
    order per partition (all partitions read at once)."""
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-webhooks-reader"))
    try:
        yield from _read_until_end(consumer, topic, timeout_s=timeout_s)
    finally:
        consumer.close()


def _read_until_end(
    consumer: Consumer, topic: str, *, timeout_s: float
) -> Iterator[tuple[bytes, bytes | None]]:
    """Assigns `consumer` every partition of `topic` from its start and gives what it reads
    until each is read to the end it had at the call (what comes after, in the same batch, is
    given too: it is newer). The consumer is left where it stopped, to follow on."""
    ends: dict[int, int] = {}
    starts: list[TopicPartition] = []
    for partition in _partitions(consumer, topic, timeout_s=timeout_s):
        low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout_s=timeout_s)
        starts.append(TopicPartition(topic, partition, low))
        if high > low:
            ends[partition] = high
    consumer.assign(starts)
    deadline = time.monotonic() + timeout_s
    while ends:
        if time.monotonic() > deadline:
            raise WebhooksUnavailable(f"{topic}: partitions {sorted(ends)} not read to the end")
        for found in consumer.consume(500, timeout=0.5):
            if found.error() is not None:
                continue
            partition = found.partition() or 0
            if (found.offset() or 0) + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
            yield found.key() or b"", found.value()


def read_subscriptions(settings: Settings, *, timeout_s: float = 30.0) -> dict[str, Subscription]:
    """The subscriptions, newest record of each; a record that cannot be read is left out."""
    subscriptions: dict[str, Subscription] = {}
    for key, value in _read_to_end(
        settings, settings.topics.webhook_subscriptions, timeout_s=timeout_s
    ):
        if value is None:
            subscriptions.pop(key.decode(), None)
            continue
        try:
            subscription = Subscription.decode(value)
        except ValueError:
            log.warning("webhooks: subscription record %r cannot be read", key)
            continue
        subscriptions[subscription.id] = subscription
    return subscriptions


def read_deliveries(
    settings: Settings, *, subscription_id: str | None = None, timeout_s: float = 30.0
) -> list[DeliveryRecord]:
    """The newest record of every delivery (of one subscription), newest first."""
    deliveries: dict[str, DeliveryRecord] = {}
    for key, value in _read_to_end(
        settings, settings.topics.webhook_deliveries, timeout_s=timeout_s
    ):
        if value is None:
            deliveries.pop(key.decode(), None)
            continue
        found = DeliveryRecord.decode(value)
        if subscription_id is None or found.subscription_id == subscription_id:
            deliveries[found.webhook_id] = found
    return sorted(deliveries.values(), key=lambda d: d.at, reverse=True)


def save(settings: Settings, subscription: Subscription) -> None:
    """The subscription onto its topic, once Kafka acknowledged it."""
    _produce(settings, subscription.id, subscription.encode())


def remove(settings: Settings, subscription_id: str) -> bool:
    """The subscription gone from its topic, and its progress (its consumer group) with it;
    False when the group is still in use (the running sender deletes it once it has seen the
    removal)."""
    _produce(settings, subscription_id, None)
    return forget_progress(settings, subscription_id)


def forget_progress(settings: Settings, subscription_id: str) -> bool:
    """Delete the subscription's consumer group (its committed progress); True when it is gone
    or never was."""
    admin = AdminClient(admin_config(settings.kafka_bootstrap))
    group = group_of(settings, subscription_id)
    try:
        admin.delete_consumer_groups([group], request_timeout=30)[group].result(timeout=30)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        code = error.code() if isinstance(error, KafkaError) else None
        if code == KafkaError.GROUP_ID_NOT_FOUND:
            return True
        log.warning("webhooks: progress of %s not deleted: %s", subscription_id, exc)
        return False
    return True


def _produce(settings: Settings, key: str, value: bytes | None) -> None:
    producer = Producer(producer_config(settings.kafka_bootstrap, **{"linger.ms": 0}))
    why = write_acknowledged(producer, settings.topics.webhook_subscriptions, key, value)
    if why is not None:
        raise WebhooksUnavailable(f"subscription {key} not acknowledged: {why}")


def _secret_record(subscription_id: str) -> str:
    return f"webhook-secret:{subscription_id}"


def seal_secret(master: MasterKey, subscription_id: str, secret: str) -> str:
    """The secret as the subscriptions topic keeps it: wrapped, bound to the subscription."""
    return master.wrap(_secret_record(subscription_id), secret.encode())


def open_secret(master: MasterKey, subscription: Subscription) -> str:
    """The subscription's signing secret; `InvalidSecret` when it does not open under the
    master key (another key, another subscription's) or is not a Standard Webhooks secret."""
    try:
        wrapped = base64.b64decode(subscription.sealed_secret, validate=True)
        secret = master.unwrap(_secret_record(subscription.id), wrapped).decode()
    except (KeyStoreError, ValueError) as exc:
        raise InvalidSecret(f"it does not open under the master key ({describe(exc)})") from exc
    key_of(secret)
    return secret


def group_of(settings: Settings, subscription_id: str) -> str:
    """The consumer group whose committed offsets are the subscription's progress."""
    return f"{settings.consumer_group}-webhooks-{subscription_id}"


def start_at(
    settings: Settings, *, mark: str, since: datetime | None = None, offset: int | None = None
) -> Start:
    """Where a subscription begins: the first event recorded on the log at or after `since`,
    or `offset` of every partition (within what the log holds), else the log's end now."""
    topic = settings.topics.orders
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-webhooks-reader"))
    try:
        offsets: dict[int, int] = {}
        partitions = _partitions(consumer, topic, timeout_s=30)
        if since is not None:
            ms = int(since.timestamp() * 1000)
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, ms) for p in partitions], timeout=30
            )
            timed = {tp.partition: tp.offset for tp in found}
        for partition in partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout_s=30)
            if since is not None:
                at = timed.get(partition, -1)
                offsets[partition] = high if at < 0 else at
            elif offset is not None:
                offsets[partition] = min(max(offset, low), high)
            else:
                offsets[partition] = high
        return Start(mark=mark, offsets=offsets)
    finally:
        consumer.close()


def lag(settings: Settings) -> dict[str, int]:
    """Per subscription, how many events of the order log are past its progress (read, not
    yet settled: those not for it count too). For the dashboard and alerts."""
    topic = settings.topics.orders
    behind: dict[str, int] = {}
    for subscription in read_subscriptions(settings).values():
        consumer = Consumer(
            consumer_config(settings.kafka_bootstrap, group_id=group_of(settings, subscription.id))
        )
        try:
            partitions = _partitions(consumer, topic, timeout_s=30)
            committed = consumer.committed(
                [TopicPartition(topic, p) for p in partitions], timeout=30
            )
            total, mark = 0, subscription.start.mark
            for tp in committed:
                _, high = _watermarks(consumer, TopicPartition(topic, tp.partition), timeout_s=30)
                moved = tp.offset >= 0 and Progress.read(tp.metadata).mark == mark
                at = tp.offset if moved else subscription.start.offsets.get(tp.partition, 0)
                total += max(0, high - at)
            behind[subscription.id] = total
        finally:
            consumer.close()
    return behind


# -- one attempt


class Poster:
    """POSTs over connections kept alive between deliveries, per origin (scheme, host, port):
    a delivery costs one request, not a TCP (and TLS) handshake as well. One connection
    serves one request at a time; an idle one is taken by the next delivery to its origin.

    A 3xx is an answer, not a place to send the event to (it would go unsigned for the other
    host's secret). Never raises: no answer (refused, timed out, unreadable) is (None, why).
    """

    MAX_IDLE = 32  # per origin (the sender has at most one delivery per partition in flight)
    READ_AT_MOST = 64 * 1024  # of an answer's body; a longer one is not kept alive

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def __call__(
        self, url: str, body: bytes, headers: dict[str, str], *, timeout_s: float
    ) -> Answer:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None, f"not an http(s) URL: {parts.scheme}://"
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            return None, describe(exc)
        origin = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        while True:
            connection, reused = self._take(origin, timeout_s)
            try:
                connection.request("POST", target, body=body, headers=headers)
                response = connection.getresponse()
                said = response.read(self.READ_AT_MOST)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()
                if reused:
                    continue  # the origin closed it while idle: once more on a new one
                return None, "the connection was closed before an answer"
            except Exception as exc:  # noqa: BLE001 - any way of not answering is a failure
                connection.close()
                return None, describe(exc)
            if response.will_close or not response.isclosed():
                connection.close()
            else:
                self._give_back(origin, connection)
            return response.status, said[:500].decode("utf-8", "replace")

    def _take(
        self, origin: tuple[str, str, int], timeout_s: float
    ) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            connection = idle.pop() if idle else None
        if connection is not None:
            connection.timeout = timeout_s
            if connection.sock is not None:
                connection.sock.settimeout(timeout_s)
            return connection, True
        scheme, host, port = origin
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout_s), False
        return http.client.HTTPConnection(host, port, timeout=timeout_s), False

    def _give_back(
        self, origin: tuple[str, str, int], connection: http.client.HTTPConnection
    ) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.MAX_IDLE:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


# -- the sender


@dataclass
class Pending:
    """One event of a subscription's partition, in log order: to deliver, or (`body` None)
    only to pass over once everything before it is settled."""

    offset: int
    event: OrderEvent | None = None
    webhook_id: str = ""
    body: bytes | None = None
    attempts: int = 0
    first_attempt: datetime | None = None
    due: datetime | None = None


@dataclass
class Lane:
    """One subscription being delivered: its consumer and, per partition, what waits."""

    subscription: Subscription
    secret: str  # opened: the whsec_ secret
    consumer: Consumer
    waiting: dict[int, deque[Pending]]
    read_to: dict[int, int]  # per partition, the offset after the last one read
    in_flight: dict[int, Future[Answer]] = field(default_factory=dict)
    paused: set[int] = field(default_factory=set)
    health: Health = field(default_factory=Health)
    remembered: dict[int, Retrying] = field(default_factory=dict)  # per partition, from its commit
    moved: bool = False  # progress not committed yet

    def progress(self) -> dict[int, int]:
        """The next unsettled offset of every partition."""
        return {p: q[0].offset if q else self.read_to[p] for p, q in self.waiting.items()}


@dataclass
class SenderStats:
    read: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    poison: int = 0
    disabled: int = 0


class WebhookSender:
    """One sender per deployment (each subscription's progress has a single writer)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utc_now,
        post: Callable[..., Answer] | None = None,
    ) -> None:
        self.settings = settings
        self.master = MasterKey.from_settings(settings)  # opens the subscriptions' secrets
        self.clock = clock
        self.post = post or Poster()
        self.codec = AvroCodec.for_registry(settings.schema_registry_url)  # no keys: as logged
        self.policy = RetryPolicy(
            backoff_base_s=settings.webhook_backoff_base_s,
            backoff_cap_s=settings.webhook_backoff_cap_s,
            retry_for=timedelta(seconds=settings.webhook_retry_for_s),
            disable_after_failures=settings.webhook_disable_failures,
            disable_after=timedelta(seconds=settings.webhook_disable_after_s),
        )
        self.producer = Producer(producer_config(settings.kafka_bootstrap, **{"linger.ms": 5}))
        self.publisher: Publisher | None = None  # dead letters: made on the first one
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="webhook")
        self.lanes: dict[str, Lane] = {}
        self.stats = SenderStats()

    def run(self, *, until: Callable[[WebhookSender], bool] | None = None) -> SenderStats:
        """Follow the subscriptions and deliver, for ever (or `until`)."""
        topic = self.settings.topics.webhook_subscriptions
        follower = Consumer(
            consumer_config(self.settings.kafka_bootstrap, group_id="oms-webhooks-reader")
        )
        # The newest record of each subscription first: a history replayed record by record
        # would start (and disable again) subscriptions that later records changed.
        committed_at = time.monotonic()
        try:
            newest = dict(_read_until_end(follower, topic, timeout_s=30))
            for key, value in newest.items():
                self._subscription_changed(key, value)
            while until is None or not until(self):
                busy = False
                for record in follower.consume(100, timeout=0):
                    if record.error() is None:
                        busy = True
                        self._subscription_changed(record.key() or b"", record.value())
                for lane in list(self.lanes.values()):
                    busy = self._step(lane) or busy
                if time.monotonic() - committed_at >= COMMIT_EVERY_S:
                    self._commit_all()
                    committed_at = time.monotonic()
                if not busy:
                    # Idle until an answer comes (at once, not after a nap: one delivery is
                    # in flight per partition, so each wait is the partition's throughput).
                    answers = [f for lane in self.lanes.values() for f in lane.in_flight.values()]
                    if answers:
                        wait_for(answers, timeout=IDLE_S, return_when=FIRST_COMPLETED)
                    else:
                        time.sleep(IDLE_S)
        finally:
            self._commit_all()
            for lane in self.lanes.values():
                lane.consumer.close()
            follower.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            if isinstance(self.post, Poster):
                self.post.close()
            self.producer.flush(30)
        return self.stats

    # -- subscriptions coming and going

    def _subscription_changed(self, key: bytes, value: bytes | None) -> None:
        subscription_id = key.decode(errors="replace")
        subscription: Subscription | None = None
        if value is not None:
            try:
                subscription = Subscription.decode(value)
            except ValueError as exc:
                log.warning("webhooks: subscription %s cannot be read: %s", subscription_id, exc)
                return
        lane = self.lanes.get(subscription_id)
        if lane is not None and subscription == lane.subscription:
            return
        if lane is not None:
            self._close(lane, commit=subscription is not None)
        if subscription is None:
            forget_progress(self.settings, subscription_id)  # removed: its progress too
            return
        if not subscription.enabled:
            return
        try:
            secret = open_secret(self.master, subscription)
        except InvalidSecret as exc:
            self._disable(subscription, f"invalid secret: {exc}")
            return
        try:
            self.lanes[subscription.id] = self._open(subscription, secret)
        except KafkaException as exc:
            log.error("webhooks: %s not started: %s", subscription.id, exc)

    def _open(self, subscription: Subscription, secret: str) -> Lane:
        """A lane from the subscription's progress, or from its start when that is new."""
        topic = self.settings.topics.orders
        consumer = Consumer(
            consumer_config(
                self.settings.kafka_bootstrap,
                group_id=group_of(self.settings, subscription.id),
                **{"auto.offset.reset": "earliest"},
            )
        )
        partitions = _partitions(consumer, topic, timeout_s=30)
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
        # Progress committed under this start's mark resumes, with the retry clock and the
        # run of failures it carries; any other (none yet, or made before a replay) gives way
        # to the start.
        mark = subscription.start.mark
        progress = {tp.partition: Progress.read(tp.metadata) for tp in committed}
        resumed = any(tp.offset >= 0 for tp in committed) and all(
            progress[tp.partition].mark == mark for tp in committed if tp.offset >= 0
        )
        positions = {
            tp.partition: tp.offset
            if resumed and tp.offset >= 0
            else subscription.start.offsets.get(tp.partition, 0)
            for tp in committed
        }
        consumer.assign([TopicPartition(topic, p, at) for p, at in positions.items()])
        lane = Lane(
            subscription=subscription,
            secret=secret,
            consumer=consumer,
            waiting={p: deque() for p in positions},
            read_to=dict(positions),
            moved=not resumed,  # a new start is committed at once
        )
        if resumed:
            lane.health = max(
                (p.health for p in progress.values()), key=lambda health: health.failures
            )
            lane.remembered = {
                tp.partition: head
                for tp in committed
                if (head := progress[tp.partition].retrying) is not None
                and head.offset == tp.offset
            }
        log.info("webhooks: %s from %s", subscription.id, positions)
        return lane

    def _close(self, lane: Lane, *, commit: bool) -> None:
        if commit:
            self._flush()
            self._commit(lane)
        lane.consumer.close()
        self.lanes.pop(lane.subscription.id, None)

    def _disable(self, subscription: Subscription, reason: str) -> None:
        log.warning("webhooks: %s disabled: %s", subscription.id, reason)
        self.stats.disabled += 1
        save(
            self.settings,
            subscription.model_copy(
                update={"enabled": False, "disabled_reason": reason, "changed_at": self.clock()}
            ),
        )

    # -- delivering

    def _step(self, lane: Lane) -> bool:
        """Read what is new for `lane`, settle the answers that came, send what is due."""
        busy = False
        for record in lane.consumer.consume(500, timeout=0):
            if record.error() is not None:
                continue
            busy = True
            self._take(lane, record.partition() or 0, record.offset() or 0, record.value() or b"")
        for partition, waiting in lane.waiting.items():
            answer = lane.in_flight.get(partition)
            if answer is not None and answer.done():
                del lane.in_flight[partition]
                busy = True
                if self._settle(lane, partition, answer.result()):
                    return True  # disabled: the lane is closed
            while waiting and waiting[0].body is None:
                waiting.popleft()
                lane.moved = True
            self._flow(lane, partition, len(waiting))
            if waiting and partition not in lane.in_flight:
                head = waiting[0]
                if head.due is None or head.due <= self.clock():
                    lane.in_flight[partition] = self._attempt(lane, head)
                    busy = True
        return busy

    def _take(self, lane: Lane, partition: int, offset: int, raw: bytes) -> None:
        self.stats.read += 1
        lane.read_to[partition] = offset + 1
        pending = Pending(offset=offset)
        where = message_ref(self.settings.topics.orders, partition, offset)
        try:
            event = self.codec.decode(raw, where=where)
        except (CodecError, Exception) as exc:  # noqa: BLE001 - poison: recorded, passed over
            self.stats.poison += 1
            self._dead_letter(
                f"webhooks:{lane.subscription.id}:{where}", f"webhooks: {describe(exc)}", raw
            )
            event = None
        if isinstance(event, OrderEvent) and matches(lane.subscription, event):
            pending.event = event
            pending.webhook_id = webhook_id(lane.subscription.id, event.event_id)
            pending.body = message(event)
            head = lane.remembered.pop(partition, None)
            if head is not None and head.offset == offset:
                pending.attempts, pending.due = head.attempts, head.due
                pending.first_attempt = head.first_attempt
        lane.waiting[partition].append(pending)

    def _flow(self, lane: Lane, partition: int, waiting: int) -> None:
        """Pause reading a partition whose deliveries lag far behind; resume it later."""
        tp = [TopicPartition(self.settings.topics.orders, partition)]
        if waiting >= PAUSE_AT and partition not in lane.paused:
            lane.consumer.pause(tp)
            lane.paused.add(partition)
        elif waiting <= RESUME_AT and partition in lane.paused:
            lane.consumer.resume(tp)
            lane.paused.discard(partition)

    def _attempt(self, lane: Lane, pending: Pending) -> Future[Answer]:
        pending.attempts += 1
        pending.first_attempt = pending.first_attempt or self.clock()
        body, message_id = pending.body or b"", pending.webhook_id
        subscription, secret = lane.subscription, lane.secret

        def send() -> Answer:
            try:
                return attempt()
            except Exception as exc:  # noqa: BLE001 - a failed attempt, never a dead sender
                log.exception("webhooks: %s to %s", message_id, subscription.url)
                return None, describe(exc)

        def attempt() -> Answer:
            # Timestamped and signed as it leaves, not when queued for a free thread: a
            # receiver refuses a timestamp far from its clock (replay protection).
            timestamp = int(self.clock().timestamp())
            signature = sign(secret, webhook_id=message_id, timestamp=timestamp, body=body)
            headers = {
                "content-type": "application/json",
                "user-agent": "OrderStream-Webhooks/1",
                "webhook-id": message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature,
            }
            return self.post(
                subscription.url, body, headers, timeout_s=self.settings.webhook_timeout_s
            )

        return self.pool.submit(send)

    def _settle(self, lane: Lane, partition: int, answer: Answer) -> bool:
        """The answer to the attempt of the partition's head; True when it disabled the
        subscription (its lane is closed)."""
        pending = lane.waiting[partition][0]
        status, said = answer
        now = self.clock()
        delivered = status is not None and 200 <= status < 300
        lane.health, disable = after_attempt(
            lane.health, delivered=delivered, now=now, policy=self.policy
        )
        detail = "" if delivered else said[:300]
        first = pending.first_attempt or now
        if delivered:
            outcome = DeliveryStatus.DELIVERED
            self.stats.delivered += 1
        elif gives_up(first_attempt=first, now=now, policy=self.policy):
            outcome = DeliveryStatus.FAILED
            self.stats.failed += 1
            self._dead_letter(
                f"webhooks:{lane.subscription.id}:{pending.webhook_id}",
                f"webhook to {lane.subscription.url} failed {pending.attempts} times: "
                f"{status or 'no answer'} {detail}",
                pending.body or b"",
            )
        else:
            outcome = DeliveryStatus.RETRYING
            self.stats.retried += 1
            wait = retry_delay_s(pending.attempts, self.policy, jitter=random.random())  # noqa: S311
            pending.due = now + timedelta(seconds=wait)
        self._record(lane, partition, pending, outcome, http_status=status, detail=detail)
        if outcome is not DeliveryStatus.RETRYING:
            lane.waiting[partition].popleft()
        lane.moved = True
        if not delivered and disable is None:
            # The retry clock and the run of failures are kept at once, with the progress:
            # a sender that crashes again and again still gives up and disables on time.
            self._flush()
            self._commit(lane)
        if disable is not None:
            lane.health = Health()  # `enable` starts a new run of failures
            self._close(lane, commit=True)
            self._disable(lane.subscription, disable)
            return True
        return False

    def _record(
        self,
        lane: Lane,
        partition: int,
        pending: Pending,
        status: DeliveryStatus,
        *,
        http_status: int | None,
        detail: str,
    ) -> None:
        """The delivery's newest state onto the delivery log (flushed before progress is
        committed)."""
        event = pending.event
        assert event is not None  # only events with a body are attempted
        record = DeliveryRecord(
            webhook_id=pending.webhook_id,
            subscription_id=lane.subscription.id,
            event_id=event.event_id,
            event_type=event.event_type,
            order_id=event.order_id,
            partition=partition,
            offset=pending.offset,
            status=status,
            attempts=pending.attempts,
            http_status=http_status,
            detail=detail,
            at=self.clock(),
        )
        self.producer.produce(
            self.settings.topics.webhook_deliveries,
            key=record.webhook_id.encode(),
            value=record.encode(),
        )
        self.producer.poll(0)

    def _dead_letter(self, source_ref: str, reason: str, raw: bytes) -> None:
        if self.publisher is None:
            self.publisher = Publisher(self.settings)
        letter = DeadLetter.of(source="webhooks", source_ref=source_ref, reason=reason, raw=raw)
        self.publisher.dead_letter(letter)

    # -- progress

    def _flush(self) -> None:
        """Delivery records and dead letters kept before the progress past them is."""
        self.producer.flush(30)
        if self.publisher is not None:
            self.publisher.flush(30)

    def _commit_all(self) -> None:
        self._flush()
        for lane in list(self.lanes.values()):
            if lane.moved:
                self._commit(lane)

    def _commit(self, lane: Lane) -> None:
        topic, mark = self.settings.topics.orders, lane.subscription.start.mark
        offsets = []
        for partition, at in lane.progress().items():
            waiting = lane.waiting[partition]
            head = waiting[0] if waiting else None
            retrying = None
            if head is not None and head.attempts and head.first_attempt and head.due:
                retrying = Retrying(
                    offset=head.offset,
                    attempts=head.attempts,
                    first_attempt=head.first_attempt,
                    due=head.due,
                )
            elif (remembered := lane.remembered.get(partition)) is not None:
                retrying = remembered  # not read back yet since the restart
            note = Progress(mark=mark, health=lane.health, retrying=retrying).note()
            offsets.append(TopicPartition(topic, partition, at, metadata=note))
        try:
            lane.consumer.commit(offsets=offsets, asynchronous=False)
            lane.moved = False
        except KafkaException as exc:
            log.warning("webhooks: progress of %s not committed: %s", lane.subscription.id, exc)
