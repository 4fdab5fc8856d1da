"""The audit trail: who did what, when and from where, on a Kafka topic whose entries are chained
by SHA-256, so an entry changed or removed afterwards shows (docs/architecture.md, "Audit
trail").

An entry is a JSON record, not an Avro event of the contract: what proves it untouched is its
hash, and an auditor must be able to recompute that from the bytes on the topic alone — with
any JSON library and SHA-256, without our codec, schema ids or registry. Avro decodes through a
reader schema that fills in the defaults of fields added later, so the same stored entry would
hash differently after a schema change. It is not a domain event either: no aggregate, no
sequence, no lifecycle, nothing folds it.

The chain: every partition of the audit topic is its own chain with exactly one writer.
`hash` is SHA-256 over the canonical encoding (`canonical`: keys sorted, no whitespace, UTF-8)
of every other field, `prev_hash` included; `prev_hash` is the hash of the entry before it in
the partition (`GENESIS` for the first); `seq` counts from 1. How several writers (several
`oms api` processes) keep their chains correct:
- A writer takes a partition of its own: `OMS_AUDIT_PARTITION`, else the first partition no
  other process on this host holds (a `flock` under HOME/run, gone with its process).
- It writes with a transactional producer whose `transactional.id` names the partition.
  Starting one fences any earlier producer with that id (a crashed, paused or misconfigured
  second writer of the partition): Kafka aborts what that one left open, and a fenced writer
  can never commit again. Only then does the writer read the partition's last committed entry
  (`read_committed`) and continue the chain from it — from what is really on the topic.
- Entries recorded meanwhile are written together in one transaction (group commit), so a
  busy API pays one commit per batch, not per request.
- Any failure drops the producer: the next write starts again as a new writer does (fence,
  read the tail), so a commit whose outcome was unknown is never guessed at.

Fail closed: `record` returns once the entry is committed, or raises `AuditUnavailable`; the
caller performs the command only after it returned.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.kafka import client_security, consumer_config, producer_config
from infra.settings import Settings

log = logging.getLogger(__name__)

GENESIS = "0" * 64  # the prev_hash of a partition's first entry
FORMAT = 1  # `v` of the entries this module writes
TEXT_LIMIT = 1000  # characters kept of a free-text field (a user agent, a reason)
TAIL_WINDOW = 64  # offsets read back at first when looking for a partition's last entry
TRANSACTION_TIMEOUT_MS = 10_000  # how long a writer that died mid-commit holds readers back

PrincipalKind = Literal["api_key", "user", "token", "system"]
Outcome = Literal["allowed", "denied", "completed", "failed"]


class AuditUnavailable(RuntimeError):
    """The entry could not be written (Kafka away, the writer fenced, no partition free): the
    command it was for must not be performed."""


class AuditEntry(BaseModel):
    """What happened, as the caller knows it; the writer adds the chain fields.

    - who: `principal` ("key:<id>", "user:<name>", "oidc:<subject>", "system:<process>"), its
      `principal_kind` and `role`;
    - what: `action` (the route template and method, "POST /orders/{id}/cancel", or a named
      act, "read personal data"), `resource` (the id it was about: an order id, a customer
      key — a pseudonymous id, never a phone number or name: the topic is kept forever),
      `outcome` and the HTTP `status` where there is one, `reason` for a denial;
    - when: `at`, aware UTC;
    - from where: `client_ip`, `user_agent`, `request_id`.

    `outcome`: "allowed" is recorded before a command runs, "denied" for a refused request,
    "completed" / "failed" after it ran, with its status.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    principal: str = Field(min_length=1, max_length=TEXT_LIMIT)
    principal_kind: PrincipalKind
    role: str = Field(max_length=100)
    action: str = Field(min_length=1)
    resource: str = ""
    outcome: Outcome
    status: int | None = Field(default=None, ge=100, le=599)
    reason: str = ""
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    client_ip: str = Field(default="", max_length=100)
    user_agent: str = ""
    request_id: str = Field(default="", max_length=200)

    @field_validator("action", "resource", "reason", "user_agent")
    @classmethod
    def _cut(cls, value: str) -> str:
        """Free text from the client (a user agent) is cut, not refused: an entry must never
        fail to be written because of what the client sent."""
        return value[:TEXT_LIMIT]

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("an audit time must be timezone-aware")
        return value.astimezone(UTC)

    def fields(self) -> dict[str, Any]:
        """The entry as JSON values (the time as `YYYY-MM-DDTHH:MM:SS.ffffffZ`)."""
        values = self.model_dump()
        values["at"] = self.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return values


def canonical(fields: dict[str, Any]) -> bytes:
    """The one encoding hashed and written: JSON, keys sorted, no whitespace, UTF-8. Values are
    strings, integers and null only (no floats, whose text is not canonical)."""
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def entry_hash(fields: dict[str, Any]) -> str:
    """SHA-256 over the canonical encoding of every field but `hash` (`prev_hash` included)."""
    return hashlib.sha256(canonical({k: v for k, v in fields.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class Tail:
    """Where a partition's chain ends: the last entry's hash and number (GENESIS, 0: empty)."""

    hash: str = GENESIS
    seq: int = 0


@dataclass(frozen=True)
class SealedEntry:
    """An entry with its chain fields, as it is (or will be) on the topic."""

    fields: dict[str, Any]

    @property
    def hash(self) -> str:
        return str(self.fields["hash"])

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])

    @property
    def value(self) -> bytes:
        return canonical(self.fields)


def seal(entry: AuditEntry, *, after: Tail, writer: str) -> SealedEntry:
    """`entry` chained after `after`."""
    fields = entry.fields() | {
        "v": FORMAT,
        "writer": writer,
        "seq": after.seq + 1,
        "prev_hash": after.hash,
    }
    fields["hash"] = entry_hash(fields)
    return SealedEntry(fields)


class NotAnEntry(ValueError):
    """Bytes on the audit topic that are not an audit entry; says why."""


_CHAIN_FIELDS = {"v": int, "writer": str, "seq": int, "prev_hash": str, "hash": str}


def parse(value: bytes | None) -> SealedEntry:
    """A stored entry, as stored (nothing filled in: its hash is over exactly these fields)."""
    if not value:
        raise NotAnEntry("empty")
    try:
        fields = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAnEntry(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise NotAnEntry("not a JSON object")
    for name, kind in _CHAIN_FIELDS.items():
        if not isinstance(fields.get(name), kind):
            raise NotAnEntry(f"no {name} ({kind.__name__})")
    return SealedEntry(fields)


# -- checking a chain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainBreak:
    partition: int
    offset: int
    problem: str

    def __str__(self) -> str:
        return f"partition {self.partition} offset {self.offset}: {self.problem}"


@dataclass
class ChainReport:
    partition: int
    entries: int = 0
    breaks: list[ChainBreak] = field(default_factory=list)
    tail: Tail = field(default_factory=Tail)
    last_offset: int | None = None

    @property
    def intact(self) -> bool:
        return not self.breaks


def check_chain(partition: int, records: Iterable[tuple[int, bytes | None]]) -> ChainReport:
    """Walk one partition's (offset, value) records in order and name every place the chain
    breaks: an entry whose hash is not that of its content (changed), one whose prev_hash is
    not the hash of the entry before it or whose number does not follow (an entry removed,
    inserted or changed before it), bytes that are not an entry. After a break the walk goes
    on from what is there, so one tampered entry is named once, not with all that follows."""
    report = ChainReport(partition)
    before: int | None = None
    for offset, value in records:
        try:
            entry = parse(value)
        except NotAnEntry as exc:
            report.breaks.append(ChainBreak(partition, offset, f"not an audit entry ({exc})"))
            continue
        problems = []
        if entry_hash(entry.fields) != entry.hash:
            problems.append("its hash is not the hash of its content: the entry was changed")
        if entry.fields["prev_hash"] != report.tail.hash:
            where = f"offset {before}" if before is not None else "the start of the partition"
            problems.append(
                f"its prev_hash {entry.fields['prev_hash'][:16]}… is not the hash of the entry "
                f"before it ({where}: {report.tail.hash[:16]}…): an entry between them was "
                "removed or changed"
            )
        if entry.seq != report.tail.seq + 1:
            missing = entry.seq - report.tail.seq - 1
            problems.append(
                f"it is entry {entry.seq} after entry {report.tail.seq}"
                + (
                    f": {missing} entr{'y' if missing == 1 else 'ies'} missing"
                    if missing > 0
                    else ""
                )
            )
        if problems:
            report.breaks.append(ChainBreak(partition, offset, "; ".join(problems)))
        report.entries += 1
        report.tail = Tail(entry.hash, entry.seq)
        report.last_offset = before = offset
    return report


# -- reading the topic ---------------------------------------------------------------------------


def _consumer(settings: Settings, *, committed: bool = True) -> Any:
    """A reader of committed records only (aborted entries of a failed writer are never
    seen); `committed=False` for asking where a partition ends: a `read_committed` consumer
    is told the last stable offset, which stays short of a transaction just committed until
    its markers are written."""
    from confluent_kafka import Consumer

    isolation = "read_committed" if committed else "read_uncommitted"
    return Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            group_id=f"oms-audit-reader-{uuid.uuid4().hex}",
            # Short-lived readers that stop at the end: the broker is not to hold a fetch
            # there for its default half second waiting for more.
            **{
                "isolation.level": isolation,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 20,
            },
        )
        | client_security(settings)
    )


def partitions_of(settings: Settings, topic: str, *, timeout_s: float = 10.0) -> list[int]:
    """The audit topic's partitions; AuditUnavailable when Kafka does not list it (asked again
    for `timeout_s` while the broker says "not yet", as for a topic just created)."""
    from confluent_kafka import KafkaException

    consumer = _consumer(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            except KafkaException as exc:
                raise AuditUnavailable(f"Kafka does not answer: {exc}") from exc
            if metadata is not None and metadata.error is None and metadata.partitions:
                return sorted(metadata.partitions)
            error = metadata.error if metadata is not None else None
            if time.monotonic() > deadline or (error is not None and not error.retriable()):
                raise AuditUnavailable(
                    f"the audit topic {topic} is not there (`oms stack up` makes it): {error}"
                )
            time.sleep(0.2)
    finally:
        consumer.close()


def _watermarks(consumer: Any, topic: str, partition: int, timeout_s: float) -> tuple[int, int]:
    """The partition's first and next offsets, asked again for `timeout_s` while the broker
    refuses (a partition just created has no leader for a moment)."""
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            return int(low), int(high)
        except KafkaException as exc:
            # librdkafka does not mark NOT_LEADER_FOR_PARTITION retriable here: every error
            # is asked again until the deadline.
            if time.monotonic() > deadline:
                raise AuditUnavailable(f"Kafka does not answer: {exc}") from exc
        time.sleep(0.2)


def _end_of(settings: Settings, topic: str, partition: int, timeout_s: float) -> tuple[int, int]:
    """The partition's first offset and its end (the high watermark, past every record
    written, committed or not)."""
    probe = _consumer(settings, committed=False)
    try:
        return _watermarks(probe, topic, partition, timeout_s)
    finally:
        probe.close()


def read_records(
    settings: Settings,
    topic: str,
    partition: int,
    *,
    start: int | None = None,
    timeout_s: float = 30.0,
) -> Iterator[tuple[int, bytes | None]]:
    """The committed (offset, value) records of a partition from `start` (default: its first)
    to its end at the time of the call, once every transaction in that range has ended
    (committed or aborted: at most the transaction timeout)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    low, high = _end_of(settings, topic, partition, timeout_s)
    consumer = _consumer(settings)
    try:
        first = OFFSET_BEGINNING if start is None or start <= low else start
        if high <= max(low, start or 0):
            return
        consumer.assign([TopicPartition(topic, partition, first)])
        idle = 0.0
        while idle < timeout_s:
            message = consumer.poll(0.5)
            if message is None:
                idle += 0.5
                continue
            idle = 0.0
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise AuditUnavailable(f"reading {topic}[{partition}]: {error}")
                if (message.offset() or 0) >= high:
                    return
                # The end of what is committed, short of the end as of the call: a transaction
                # whose commit markers are still on their way (or that will be aborted).
                continue
            offset = int(message.offset())
            if offset >= high:
                return  # written after the call: not this read's
            yield offset, message.value()
            if offset == high - 1:
                return
        raise AuditUnavailable(
            f"{topic}[{partition}] gave nothing for {timeout_s:.0f}s (a transaction left open?)"
        )
    finally:
        consumer.close()


def read_tail(settings: Settings, topic: str, partition: int) -> Tail:
    """The last entry of the partition's chain, read back from its end (widening the window
    while only control records, aborted writes or non-entries are found there)."""
    low, high = _end_of(settings, topic, partition, 10.0)
    window = TAIL_WINDOW
    while True:
        start = max(low, high - window)
        last: SealedEntry | None = None
        for offset, value in read_records(settings, topic, partition, start=start):
            try:
                last = parse(value)
            except NotAnEntry as exc:
                log.warning(
                    "%s[%d] offset %d is not an audit entry (%s)", topic, partition, offset, exc
                )
        if last is not None:
            return Tail(last.hash, last.seq)
        if start <= low:
            return Tail()
        window *= 8


def read_last(
    settings: Settings, topic: str, partition: int, count: int
) -> list[tuple[int, bytes | None]]:
    """About the last `count` records of a partition (each transaction's commit marker takes
    an offset too, so twice as many offsets are read back)."""
    low, high = _end_of(settings, topic, partition, 10.0)
    start = max(low, high - 2 * count)
    return list(read_records(settings, topic, partition, start=start))[-count:]


def verify(
    settings: Settings, *, topic: str | None = None, partitions: Sequence[int] | None = None
) -> list[ChainReport]:
    """Check every chain (or those of `partitions`) of the audit topic from its first entry."""
    topic = topic or settings.topics.audit
    wanted = list(partitions) if partitions is not None else partitions_of(settings, topic)
    return [check_chain(p, read_records(settings, topic, p)) for p in wanted]


# -- writing ----------------------------------------------------------------------------------


class _PartitionClaim:
    """This host's claim on an audit partition: a `flock` under HOME/run that the kernel drops
    with the process. Across hosts, set OMS_AUDIT_PARTITION per process (the transactional
    fencing keeps the chain correct if two ever collide; one of them then fails closed)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.dir = settings.home / "run"
        self.topic = topic
        self._handle: IO[bytes] | None = None

    def take(self, partitions: Sequence[int]) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        for partition in partitions:
            handle = (self.dir / f"audit-{self.topic}-{partition}.lock").open("a+b")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._handle = handle
            return partition
        raise AuditUnavailable(
            f"every partition of {self.topic} ({len(partitions)}) has a writer on this host: "
            "add partitions or set OMS_AUDIT_PARTITION"
        )

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class AuditWriter:
    """The one writer of an audit partition; `record` for a synchronous caller (the CLI),
    `AuditTrail` around it for asyncio. Thread-safe: one transaction at a time."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        partition: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.topics.audit
        self.partition = partition if partition is not None else settings.audit_partition
        self.timeout_s = timeout_s if timeout_s is not None else settings.audit_timeout_s
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._claim = _PartitionClaim(settings, self.topic)
        self._producer: Any = None
        self._tail = Tail()
        self._lock = threading.Lock()

    @property
    def tail(self) -> Tail:
        return self._tail

    def open(self) -> None:
        """Take a partition, fence its earlier writers, read where its chain ends."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        from confluent_kafka import KafkaException, Producer

        if self.partition is None:
            self.partition = self._claim.take(partitions_of(self.settings, self.topic))
        producer = Producer(
            producer_config(
                self.settings.kafka_bootstrap,
                **{
                    "transactional.id": f"oms-audit.{self.topic}.{self.partition}",
                    "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                    "linger.ms": 0,
                },
            )
            | client_security(self.settings)
        )
        try:
            producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            raise AuditUnavailable(f"cannot start the audit writer: {exc}") from exc
        self._tail = read_tail(self.settings, self.topic, self.partition)
        self._producer = producer
        log.info(
            "audit writer %s on %s[%d] continues after entry %d",
            *(self.name, self.topic, self.partition, self._tail.seq),
        )

    def write(self, entries: Sequence[AuditEntry]) -> list[SealedEntry]:
        """Chain `entries` after the tail and commit them in one transaction; AuditUnavailable
        if they are not (then none of them is on the topic for a `read_committed` reader)."""
        from confluent_kafka import KafkaException

        with self._lock:
            if self._producer is None:
                self._start()
            sealed: list[SealedEntry] = []
            tail = self._tail
            for entry in entries:
                sealed.append(seal(entry, after=tail, writer=self.name))
                tail = Tail(sealed[-1].hash, sealed[-1].seq)
            try:
                self._producer.begin_transaction()
                for item in sealed:
                    self._producer.produce(
                        self.topic,
                        value=item.value,
                        key=self.name.encode(),
                        partition=self.partition,
                    )
                self._producer.commit_transaction(self.timeout_s)
            except (KafkaException, BufferError) as exc:
                self._drop(exc)
                raise AuditUnavailable(f"audit entries not written: {exc}") from exc
            self._tail = tail
            return sealed

    def record(self, entry: AuditEntry) -> SealedEntry:
        return self.write([entry])[0]

    def _drop(self, cause: Exception) -> None:
        """Give up on this producer after a failure: abort what it can, and let the next write
        start over from the topic (a commit that may have happened is then read back)."""
        from confluent_kafka import KafkaException

        log.warning("audit writer on %s[%s] restarts: %s", self.topic, self.partition, cause)
        producer, self._producer = self._producer, None
        try:
            producer.abort_transaction(min(self.timeout_s, 5.0))
        except KafkaException as exc:
            log.warning("aborting the audit transaction failed too: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self.timeout_s)
                self._producer = None
            self._claim.release()


class AuditTrail:
    """The asyncio face of an `AuditWriter`: `await record(entry)` returns once the entry is on
    the topic, else raises AuditUnavailable. Entries recorded while a transaction is under way
    go together in the next one, off the event loop."""

    MAX_BATCH = 500

    def __init__(self, writer: AuditWriter) -> None:
        self.writer = writer
        self._waiting: list[tuple[AuditEntry, asyncio.Future[SealedEntry]]] = []
        self._flushing: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, partition: int | None = None) -> AuditTrail:
        return cls(AuditWriter(settings, partition=partition))

    async def start(self) -> None:
        """Open the writer now (AuditUnavailable if it cannot), so the first request does not
        pay for it. A trail that was not started opens on its first entry."""
        await asyncio.to_thread(self.writer.open)

    async def record(self, entry: AuditEntry) -> SealedEntry:
        future: asyncio.Future[SealedEntry] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.writer.timeout_s * 2)
        except TimeoutError:
            # Its transaction may still end either way; nobody waits for the answer any more.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise AuditUnavailable("the audit entry was not written in time") from None

    async def _flush(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.MAX_BATCH]
            del self._waiting[: self.MAX_BATCH]
            try:
                sealed = await asyncio.to_thread(self.writer.write, [e for e, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter gets it (AuditUnavailable)
                failure = exc if isinstance(exc, AuditUnavailable) else AuditUnavailable(str(exc))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for (_, future), item in zip(batch, sealed, strict=True):
                if not future.done():
                    future.set_result(item)

    async def close(self) -> None:
        if self._flushing is not None:
            await self._flushing
        await asyncio.to_thread(self.writer.close)
