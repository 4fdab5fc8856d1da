"""The audit projection: the audit topic (infra/audit.py) → ClickHouse's `audit_log`, exactly
once across restarts, for the `audit` report (who did what, by principal, action and time).

The projector's idea, for one table: every row carries its topic, partition and offset, and a
batch is one INSERT, which ClickHouse writes whole or not at all. So the table is its own
offset ledger — on start the projection resumes one past the highest offset it holds per
partition, and a batch cut short by a crash is read again and written once. Offsets are never
committed to Kafka. Several projections of one database split the topic's partitions, with
the projector's lease (projections/lease.py: a Kafka consumer group of their own, claims in
`audit_leases`): each INSERT keeps only the rows of partitions its writer still holds, so one
that lost its partitions while paused writes nothing when it wakes.

It reads `read_committed`, so an audit transaction that was aborted (a writer that failed
closed) never reaches the table. Bytes on the topic that are not an entry become a row with
outcome `unreadable` and the reason, so nothing on the trail is skipped silently; whether the
chain holds is `oms audit verify`'s to say, from the topic itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from infra.audit import NotAnEntry, parse
from infra.kafka import client_security, consumer_config
from infra.settings import Settings
from projections.lease import AUDIT_LEASES, PartitionLease, lease_key, migrate_concurrently
from projections.schema import AUDIT_LOG, AUDIT_LOG_COLUMNS
from projections.store import ClickHouseStore, Row, sql_string

log = logging.getLogger(__name__)

_ENTRY_FIELDS = AUDIT_LOG_COLUMNS[: AUDIT_LOG_COLUMNS.index("_topic")]


def audit_row(
    topic: str, partition: int, offset: int, value: bytes | None, *, timestamp_ms: int
) -> Row:
    """The `audit_log` row of one record of the audit topic."""
    try:
        fields = dict(parse(value).fields)
        at = datetime.strptime(str(fields["at"]), "%Y-%m-%dT%H:%M:%S.%fZ")
    except (NotAnEntry, KeyError, ValueError) as exc:
        fields = {
            "seq": 0,
            "outcome": "unreadable",
            "reason": f"not an audit entry: {exc}"[:1000],
        }
        at = datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, UTC).replace(tzinfo=None)
    fields["at"] = at.replace(microsecond=0)
    status = fields.get("status")
    fields["status"] = status if isinstance(status, int) and 0 < status < 1000 else 0
    values = tuple(_text(fields.get(name)) for name in _ENTRY_FIELDS)
    return (*values, topic, partition, offset)


def _text(value: Any) -> Any:
    """A column value: datetimes and numbers as they are, anything else as text ('' for
    none), so an entry written by a later format still fits the row."""
    if isinstance(value, datetime | int) and not isinstance(value, bool):
        return value
    return "" if value is None else str(value)


class AuditProjection:
    def __init__(
        self,
        *,
        settings: Settings,
        store: ClickHouseStore,
        batch_size: int = 10_000,
        batch_seconds: float = 0.5,
        lease: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.topic = settings.topics.audit
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.lease = (
            PartitionLease(
                settings=settings,
                store=store,
                topics=[self.topic],
                group=f"oms-audit-projection:{lease_key(settings, store)}",
                table=AUDIT_LEASES,
            )
            if lease
            else None
        )
        self._sink: ClickHouseStore = store  # where rows are written: fenced when leased
        self._consumer = Consumer(
            consumer_config(
                settings.kafka_bootstrap,
                group_id="oms-audit-projection",
                **{
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 100,
                },
            )
            | client_security(settings)
        )
        self._partitions: list[int] = []
        self._at_end: dict[int, int] = {}  # partition → offset of the end it last reached
        self._probe: Consumer | None = None

    def resume_offsets(self) -> dict[int, int]:
        """Next offset per partition: one past the highest `audit_log` holds."""
        rows = self.store.query(
            f"SELECT _partition, max(_offset) FROM {self.store.database}.{AUDIT_LOG} "
            f"WHERE _topic = {sql_string(self.topic)} GROUP BY _partition"
        )
        return {int(partition): int(offset) + 1 for partition, offset in rows}

    def start(self, owned: frozenset[tuple[str, int]] | None = None) -> None:
        """Create the table if needed and take up each partition (of `owned`, when only those
        are this projection's) after what the table holds."""
        migrate_concurrently(self.store)  # other projections may be starting too
        self.store.settle()
        resume = self.resume_offsets()
        metadata = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, self.topic))
        self._partitions = sorted(
            p for p in metadata.partitions if owned is None or (self.topic, p) in owned
        )
        self._at_end = {}
        self._consumer.assign(
            [
                TopicPartition(self.topic, p, resume.get(p, OFFSET_BEGINNING))
                for p in self._partitions
            ]
        )

    def caught_up(self) -> bool:
        """Every partition read to its end. The end a `read_committed` reader reaches is the
        last stable offset, which trails a commit whose markers are still being written; so
        it counts only once it is the partition's high watermark too."""
        if not self._partitions or len(self._at_end) < len(self._partitions):
            return False
        if self._probe is None:
            self._probe = Consumer(
                consumer_config(self.settings.kafka_bootstrap, group_id="oms-audit-projection")
                | client_security(self.settings)
            )
        for partition, reached in list(self._at_end.items()):
            _, high = self._probe.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10
            )
            if reached < high:
                del self._at_end[partition]  # more to come once it is decided
        return len(self._at_end) == len(self._partitions)

    def step(self) -> int:
        """Read one batch (up to `batch_size` records, or `batch_seconds`, or the end of every
        partition) and write it in one INSERT; the number of rows written."""
        rows: list[Row] = []
        deadline = time.monotonic() + self.batch_seconds
        while len(rows) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wanted = min(1000, self.batch_size - len(rows))
            for message in self._consumer.consume(wanted, timeout=min(remaining, 0.1)):
                error = message.error()
                partition = int(message.partition() or 0)
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    self._at_end[partition] = int(message.offset() or 0)
                    continue
                self._at_end.pop(partition, None)
                rows.append(
                    audit_row(
                        self.topic,
                        partition,
                        int(message.offset() or 0),
                        message.value(),
                        timestamp_ms=message.timestamp()[1],
                    )
                )
            if len(self._at_end) == len(self._partitions):
                break  # at the end of every partition (as far as this reader can tell)
        if rows:
            self._sink.insert(AUDIT_LOG, AUDIT_LOG_COLUMNS, rows)
        return len(rows)

    def run(self, *, until: Callable[[AuditProjection], bool] | None = None) -> int:
        """Project until `until(self)` says stop (checked after every batch), or forever; the
        number of rows written. Leased, it writes the partitions Kafka assigns it, and claims
        again (resuming from the table) whenever they change or another holder claimed one."""
        written = 0
        try:
            if self.lease is not None:
                migrate_concurrently(self.store)  # the claims table, before the first claim
            while True:
                claim = None
                if self.lease is not None:
                    claim = self.lease.acquire()
                    self._sink = self.lease.fence(claim)
                self.start(None if claim is None else claim.partitions)
                while True:
                    written += self.step()
                    if until is not None and until(self):
                        return written
                    if self.lease is not None and claim is not None and not self.lease.holds(claim):
                        break
        finally:
            if self.lease is not None:
                self.lease.leave()

    def close(self) -> None:
        self._consumer.close()
        if self._probe is not None:
            self._probe.close()
