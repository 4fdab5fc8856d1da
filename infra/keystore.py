"""The data keys of personal data (events/privacy.py): a compacted Kafka topic, each key
wrapped (AES-256-GCM) under a master key that only the environment holds.

- A record per data key, keyed `<subject>/<key id>`; its value the wrapped key as JSON. A
  customer is forgotten by a tombstone (a null value) for each of their keys; compaction then
  removes the key for good, and whatever it sealed, on every topic, can no longer be read.
- The master key comes from `OMS_MASTER_KEY` (32 bytes, base64), else from the local stack's
  `HOME/master.key` (written by `oms stack up`, mode 0600, for development). Without one,
  nothing that reads or writes personal data starts: it fails closed.
- Each process reads the whole topic when it starts and then follows it (a thread), so a key
  another process created is found and a forgotten one is dropped everywhere within a fetch.
  It creates a key for a subject it has none for (written with acks=all and confirmed before
  it is used: an unstored key would make data unreadable, and a reader could meet the data
  before the key); a reader that meets a key it does not hold waits until it has followed
  the topic to where it ends now.
- Losing the topic (or the master key) loses every key: personal data becomes unreadable, as
  if every customer were forgotten, while orders, amounts and statuses stay whole. That is the
  failure mode to back up against (docs/operations.md, "Privacy").
- New keys are confirmed in groups: `prepare(subjects)` writes the keys of every new subject
  and waits for them all with one flush (a file import prepares a chunk of orders at once),
  and threads that each need a key at the same moment (webhook requests) share a flush. One
  key confirmed alone costs a round trip to the broker (~3 ms here); a thousand together,
  about the same.

`DataKeys` (events/privacy.py) is the interface: a KMS-backed store implements `current`,
`find` and `pepper` the same way.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from events.codec import LocalSchemaIds, RegistrySchemaIds, SchemaIds
from events.privacy import DataKeys, PrivateCodec, aes_gcm, random_bytes
from infra.kafka import admin_config, consumer_config, producer_config
from infra.settings import Settings

log = logging.getLogger(__name__)
ABSENT_KEPT = 100_000  # forgotten keys remembered as such (a replay meets each many times)
T = TypeVar("T")
DAY_MS = 24 * 3600 * 1000
# Compacted, so a forgotten key's tombstone replaces it; a rolled segment is compacted within
# a day (`max.compaction.lag.ms`), after which the key is gone from the broker's disks too.
# The tombstone itself stays a day, for every process to see it.
TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "segment.ms": str(DAY_MS // 24),
    "max.compaction.lag.ms": str(DAY_MS),
    "delete.retention.ms": str(DAY_MS),
}


class KeyStoreError(RuntimeError):
    """No master key, a master key that does not open the stored keys, or Kafka refusing."""


class KeyStoreUnavailable(KeyStoreError):
    """The key topic cannot be read or written now (Kafka away): try again later."""


@dataclass(frozen=True)
class MasterKey:
    """The key that wraps every data key, and (through HKDF) keys the customer hash."""

    secret: bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> MasterKey:
        """`OMS_MASTER_KEY`, else the local stack's key file; else `KeyStoreError`."""
        text = settings.master_key.get_secret_value() if settings.master_key else None
        path = settings.home / "master.key"
        if not text and path.exists():
            text = path.read_text().strip()
        if not text:
            raise KeyStoreError(
                "OMS_MASTER_KEY is not set (and there is no local stack key at "
                f"{path}): personal data cannot be sealed or read. Set it to 32 random "
                "bytes in base64 (`oms privacy master-key` prints one)."
            )
        try:
            secret = base64.b64decode(text, validate=True)
        except ValueError:
            raise KeyStoreError("OMS_MASTER_KEY is not base64") from None
        if len(secret) != 32:
            raise KeyStoreError(f"OMS_MASTER_KEY is {len(secret)} bytes; it must be 32")
        return cls(secret)

    @staticmethod
    def generate() -> str:
        return base64.b64encode(secrets.token_bytes(32)).decode()

    @property
    def pepper(self) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=None, info=b"orderstream customer key").derive(
            self.secret
        )

    def wrap(self, record: str, key: bytes) -> str:
        nonce = random_bytes(12)
        return base64.b64encode(
            nonce + aes_gcm(self.secret).encrypt(nonce, key, record.encode())
        ).decode()

    def unwrap(self, record: str, data: bytes) -> bytes:
        try:
            return aes_gcm(self.secret).decrypt(data[:12], data[12:], record.encode())
        except InvalidTag:
            raise KeyStoreError(
                f"the master key does not open data key {record}: is OMS_MASTER_KEY the one "
                "the keys were stored under?"
            ) from None


def ensure_local_master_key(home: Path) -> Path:
    """The local stack's master key file (development only), created once."""
    path = home / "master.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(MasterKey.generate() + "\n")
    return path


# How long a new data key may wait for Kafka's acknowledgement: longer than the election of a
# new leader for its partition after a broker is lost (KRaft's broker session, 9 s by default,
# then the election), so a broker kill -9 in a cluster is ridden out rather than refused.
KEY_CONFIRM_S = 30.0


class MemoryKeys:
    """Data keys in memory: for tests and tools that must not touch Kafka."""

    def __init__(self, pepper: bytes = b"test pepper") -> None:
        self.pepper = pepper
        self.keys: dict[str, dict[str, bytes]] = {}
        self._forgotten: list[str] = []

    def current(self, subject: str) -> tuple[str, bytes]:
        held = self.keys.setdefault(subject, {})
        if not held:
            held[secrets.token_hex(8)] = AESGCM.generate_key(256)
        key_id = next(iter(held))
        return key_id, held[key_id]

    def find(self, subject: str, key_id: str) -> bytes | None:
        return self.keys.get(subject, {}).get(key_id)

    def forget(self, subjects: Iterable[str]) -> int:
        gone = [(subject, self.keys.pop(subject, {})) for subject in subjects]
        self._forgotten += [subject for subject, keys in gone if keys]
        return sum(len(keys) for _, keys in gone)

    def forgotten(self) -> list[str]:
        subjects, self._forgotten = self._forgotten, []
        return subjects


class KafkaKeys:
    """Data keys on the compacted key topic, wrapped under the master key.

    A thread follows the topic from its beginning and takes every record as it comes, so keys
    made and forgotten elsewhere arrive within one fetch. A reader that meets a key it does
    not hold asks a second consumer (which never fetches, so a fetch parked at the broker
    does not hold the question up) where the topic ends now, and waits until the thread got
    there: a key confirmed before the data it sealed is then found."""

    open: ClassVar[weakref.WeakSet[KafkaKeys]] = weakref.WeakSet()  # not closed yet

    def __init__(self, settings: Settings, *, master: MasterKey | None = None) -> None:
        self.master = master or MasterKey.from_settings(settings)
        self.pepper = self.master.pepper
        self.topic = settings.topics.privacy_keys
        self._bootstrap = settings.kafka_bootstrap
        self._keys: dict[str, dict[str, bytes]] = {}
        self._forgotten: list[str] = []
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)  # the tail took records
        self._tail = Consumer(
            consumer_config(
                settings.kafka_bootstrap,
                group_id="oms-keys",  # never commits: `assign` reads from the beginning
                **{"enable.partition.eof": True, "auto.offset.reset": "earliest"},
            )
        )
        self._probe = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-keys"))
        self._producer: Producer | None = None
        self._pending: dict[str, tuple[str, bytes]] = {}  # new keys, written, not confirmed
        self._refused: dict[str, str] = {}  # subject: why Kafka did not store its new key
        self._absent: dict[str, None] = {}  # keys a catch-up did not find (oldest first)
        self._positions: dict[int, int] = {}  # per partition: the next offset the tail takes
        self._broken: KeyStoreError | None = None  # a record the master key does not open
        self._skipped, self._skip_reason = 0, ""  # records that are no wrapped keys
        self._stop = threading.Event()
        self._closed = False
        KafkaKeys.open.add(self)
        self._partitions = self._retrying(self._assign)
        self._follower = threading.Thread(target=self._follow, name="oms-keys", daemon=True)
        self._follower.start()
        atexit.register(self._stop.set)
        try:
            self.refresh()
        except KeyStoreError:
            self.close()
            raise

    # -- DataKeys

    def current(self, subject: str) -> tuple[str, bytes]:
        return self.prepare([subject])[subject]

    def prepare(self, subjects: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        """The current key of each subject; those without one get a new key, all stored with
        one flush (shared with other threads storing keys at the same time)."""
        wanted = set(subjects)
        with self._lock:
            self._check()
            for subject in wanted:
                if not self._keys.get(subject) and subject not in self._pending:
                    key_id, key = random_bytes(8).hex(), random_bytes(32)
                    record = f"{subject}/{key_id}"
                    self._pending[subject] = (key_id, key)
                    self._send(record, self.master.wrap(record, key), subject)
            waiting = wanted & self._pending.keys()
        if waiting:
            self._confirm(waiting)
        with self._lock:
            current = {}
            for subject in wanted:
                held = self._keys[subject]
                key_id = next(reversed(held))
                current[subject] = (key_id, held[key_id])
            return current

    def find(self, subject: str, key_id: str) -> bytes | None:
        """The key, or None when it is not on the topic. A key is confirmed before anything
        sealed with it is written, so it is found once the tail reached where the topic ends
        after the data was read; a key it did not find then was forgotten (or is not ours) and
        is not looked for again."""
        record = f"{subject}/{key_id}"
        with self._lock:
            self._check()
            key = self._keys.get(subject, {}).get(key_id)
            if key is not None or record in self._absent:
                return key
        ends = self._ends()  # made elsewhere a moment ago?
        with self._lock:
            self._wait_for(ends)
            key = self._keys.get(subject, {}).get(key_id)
            if key is None:
                self._absent[record] = None
                if len(self._absent) > ABSENT_KEPT:
                    del self._absent[next(iter(self._absent))]
            return key

    # -- the rest

    def subjects(self) -> dict[str, list[str]]:
        """Each subject with its key ids."""
        self.refresh()
        with self._lock:
            return {subject: list(held) for subject, held in self._keys.items() if held}

    def forget(self, subjects: Iterable[str]) -> int:
        """Tombstones every key of `subjects`; how many keys were forgotten."""
        subjects = list(subjects)
        self.refresh()
        with self._lock:
            records = [
                f"{subject}/{key_id}"
                for subject in subjects
                for key_id in self._keys.get(subject, {})
            ]
        for record in records:
            self._store(record, None)
        with self._lock:
            for subject in subjects:
                if self._keys.pop(subject, None):
                    self._forgotten.append(subject)
        return len(records)

    def forgotten(self) -> list[str]:
        """Subjects whose keys were all forgotten since the last call (the tail takes
        tombstones as they come)."""
        with self._lock:
            self._check()
            subjects, self._forgotten = self._forgotten, []
            return subjects

    def refresh(self) -> None:
        """Until everything on the key topic as of now is taken."""
        ends = self._ends()
        with self._lock:
            self._wait_for(ends)

    def close(self) -> None:
        """Stops following the topic and lets go of the clients (idempotent)."""
        if self._closed:
            return
        self._closed = True
        KafkaKeys.open.discard(self)
        self._stop.set()
        if self._follower.is_alive() and self._follower is not threading.current_thread():
            self._follower.join(timeout=5)
        self._probe.close()
        if self._producer is not None:
            self._producer.flush(10)

    @classmethod
    def close_all(cls, settings: Settings) -> None:
        """Close every store of this process on the key topic of `settings` (before the topic
        or its broker goes: a test's, the demo's)."""
        topic, bootstrap = settings.topics.privacy_keys, settings.kafka_bootstrap
        for keys in [k for k in cls.open if (k.topic, k._bootstrap) == (topic, bootstrap)]:
            keys.close()

    # -- following the topic

    def _assign(self) -> list[int]:
        """The key topic's partitions (the topic made if there is none), assigned to the tail
        from their beginnings."""
        try:
            metadata = self._probe.list_topics(self.topic, timeout=10)
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                self._create_topic()
                topic = self._probe.list_topics(self.topic, timeout=10).topics[self.topic]
        except KafkaException as exc:
            raise KeyStoreUnavailable(f"the key topic {self.topic}: {exc}") from exc
        partitions = sorted(topic.partitions)
        self._positions = dict.fromkeys(partitions, 0)
        self._tail.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        return partitions

    def _follow(self) -> None:
        """The tail thread: takes records as they come until `close`."""
        try:
            while not self._stop.is_set():
                first = self._tail.poll(0.2)
                if first is None:
                    continue
                messages = [first, *self._tail.consume(999, timeout=0)]
                with self._lock:
                    self._take_all(messages)
                    self._taken.notify_all()
        except Exception as exc:  # never silently: every reader is told on its next call
            log.exception("the key store stopped following %s", self.topic)
            with self._lock:
                self._broken = KeyStoreError(f"the key store stopped following the topic: {exc}")
                self._taken.notify_all()
        finally:
            self._tail.close()

    def _take_all(self, messages: list[Message]) -> None:
        """Under the lock."""
        for message in messages:
            error, partition = message.error(), message.partition() or 0
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._positions[partition] = max(
                        self._positions.get(partition, 0), message.offset() or 0
                    )
                continue  # (other errors: librdkafka retries; a catch-up times out meanwhile)
            try:
                self._take((message.key() or b"").decode(), message.value())
            except KeyStoreError as exc:  # a key the master key does not open
                self._broken = exc
            self._positions[partition] = (message.offset() or 0) + 1
        if self._skipped:
            what = "%d records on %s are no wrapped keys, skipped (the last: %s)"
            log.error(what, self._skipped, self.topic, self._skip_reason)
            self._skipped = 0

    def _ends(self) -> dict[int, int]:
        """Where each partition of the key topic ends now (riding out a partition with no
        leader yet, as just after the topic is made)."""

        def ask() -> dict[int, int]:
            try:
                return {
                    p: self._probe.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[
                        1
                    ]
                    for p in self._partitions
                }
            except KafkaException as exc:
                raise KeyStoreUnavailable(f"the key topic {self.topic}: {exc}") from exc

        return self._retrying(ask)

    def _wait_for(self, ends: dict[int, int], timeout_s: float = 30.0) -> None:
        """Under the lock: until the tail took everything before `ends`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check()
            if all(self._positions.get(p, 0) >= end for p, end in ends.items()):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise KeyStoreUnavailable(f"could not read the key topic {self.topic} to its end")
            self._taken.wait(min(left, 1.0))

    def _check(self) -> None:
        """Under the lock: fails closed once a record did not open (the wrong master key)."""
        if self._broken is not None:
            raise self._broken

    @staticmethod
    def _retrying(call: Callable[[], T]) -> T:
        deadline = time.monotonic() + 30
        while True:
            try:
                return call()
            except KeyStoreUnavailable as exc:
                if not isinstance(exc.__cause__, KafkaException) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _create_topic(self) -> None:
        admin = AdminClient(admin_config(self._bootstrap))
        wanted = NewTopic(self.topic, num_partitions=1, config=TOPIC_CONFIG)
        for future in admin.create_topics([wanted]).values():
            try:
                future.result(timeout=30)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        deadline = time.monotonic() + 30  # until its partition has a leader
        while time.monotonic() < deadline:
            topic = self._probe.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if (
                topic is not None
                and topic.partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                return
            time.sleep(0.1)

    def _take(self, record: str, value: bytes | None) -> None:
        subject, _, key_id = record.rpartition("/")
        if value is None:
            held = self._keys.get(subject, {})
            held.pop(key_id, None)
            if not held:  # (its record may already be compacted away: erasing is idempotent)
                self._keys.pop(subject, None)
                self._forgotten.append(subject)
            return
        if key_id in self._keys.get(subject, ()):
            return  # this process made it (or took it before): ids are random, it is the same
        try:
            wrapped = json.loads(value)["wrapped"]
            data = base64.b64decode(wrapped, validate=True)
            if len(data) < 12 + 32 + 16:
                raise ValueError(f"{len(data)} bytes is no wrapped key")
        except (ValueError, KeyError, TypeError) as exc:
            # Not a key this store wrote: skipped, so one bad record cannot stop every reader.
            # (A key the master key does not open still stops it: that is the wrong master.)
            self._skipped += 1
            self._skip_reason = f"{record!r}: {exc}"
            return
        self._keys.setdefault(subject, {})[key_id] = self.master.unwrap(record, data)

    def _key_producer(self) -> Producer:
        if self._producer is None:
            # linger 1 ms: keys that threads create at the same moment go in one request.
            self._producer = Producer(producer_config(self._bootstrap, **{"linger.ms": 1}))
        return self._producer

    def _send(self, record: str, wrapped: str, subject: str) -> None:
        """Queues a new key (under the lock); its delivery settles `_pending[subject]`."""

        def delivered(err: KafkaError | None, _msg: object) -> None:
            with self._lock:
                key_id, key = self._pending.pop(subject)
                if err is None:
                    self._keys.setdefault(subject, {})[key_id] = key
                else:
                    self._refused[subject] = str(err)

        value = json.dumps({"wrapped": wrapped}).encode()
        self._key_producer().produce(
            self.topic, key=record.encode(), value=value, on_delivery=delivered
        )

    def _confirm(self, subjects: set[str]) -> None:
        """Waits (outside the lock) until Kafka stored or refused the new keys of `subjects`:
        polling, which serves every thread's deliveries and returns at the first, not
        flushing, which under a steady stream of requests would wait for every key queued
        after these too."""
        producer = self._key_producer()
        deadline = time.monotonic() + KEY_CONFIRM_S
        while True:
            with self._lock:
                if not subjects & self._pending.keys():
                    refused = {s: self._refused.pop(s) for s in subjects if s in self._refused}
                    break
            if time.monotonic() > deadline:
                raise KeyStoreUnavailable(f"Kafka did not confirm {len(subjects)} new data keys")
            producer.poll(0.005)
        if refused:
            subject, why = next(iter(refused.items()))
            raise KeyStoreUnavailable(f"Kafka did not store the data key of {subject}: {why}")

    def _store(self, record: str, wrapped: str | None) -> None:
        producer = self._key_producer()
        value = None if wrapped is None else json.dumps({"wrapped": wrapped}).encode()
        failed: list[str] = []
        producer.produce(
            self.topic,
            key=record.encode(),
            value=value,
            on_delivery=lambda err, _msg: failed.append(str(err)) if err else None,
        )
        if producer.flush(10) or failed:
            raise KeyStoreUnavailable(
                f"Kafka did not store data key {record}: {failed[0] if failed else 'timed out'}"
            )


def private_codec(settings: Settings, keys: DataKeys | None = None) -> PrivateCodec:
    """The codec of a process that reads and writes personal data: the schema registry's (or
    the local) ids, the key topic's data keys."""
    ids: SchemaIds = (
        RegistrySchemaIds(settings.schema_registry_url)
        if settings.schema_registry_url
        else LocalSchemaIds()
    )
    return PrivateCodec(keys or KafkaKeys(settings), ids)
