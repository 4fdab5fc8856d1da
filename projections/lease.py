"""Which partitions a projector writes, across hosts: Kafka hands them out, a claim in
ClickHouse fences every write; and the hand-over for a rebuild's swap.

The assignment. The projectors of one database form one Kafka consumer group
(`oms-projector:<database>`) on the topics they project, each through a consumer that fetches
nothing (`_Membership`). Kafka spreads the partitions over the members and gives a member's
partitions to the others when it leaves, or stops heartbeating for the session timeout
(`OMS_PROJECTOR_SESSION_TIMEOUT_S`: killed, paused, cut off). A projector reads exactly the
partitions it holds, from where the offset ledger says.

The fence. Kafka says who should write a partition; it cannot stop a writer that no longer
should. A process paused past its session (a long GC, SIGSTOP, a VM migration) wakes with a
batch half-written and believes it still has its partitions until it next hears from Kafka.
So before it writes, a projector claims its partitions in ClickHouse (`projector_leases`):
a row per partition with an epoch one above the partition's highest and a holder token made
for this claim. A partition is held by the holder of its highest epoch, if that epoch has only
one holder (two claims racing to one epoch hold nothing, and claim again). Every INSERT of a
leased projector, each table of a batch and the offset ledger last, is `INSERT INTO t SELECT
... FROM <the batch's rows> WHERE (_topic, _partition) IN <held by this claim>`
(`FencedStore`): the server decides when it runs the INSERT, and drops the rows of every
partition the writer no longer holds, however late a paused writer sends them.

The hand-over. After its claim, the new holder waits until every INSERT into the database
that was running then has ended (`ClickHouseStore.settle`; an INSERT that starts later reads
the new claim and keeps nothing of the claimed partitions), and only then reads the offset
ledger, the tables' high-water marks and the fold states. So, per partition, what the
previous holder wrote is a prefix of its batches' INSERTs in their order, which is what a
crash leaves, and the successor resumes from it as a restarted projector does
(docs/read-models.md, "Effectively once"). The previous holder finds out at its next batch
(`holds`), forgets what it had in memory and claims whatever Kafka assigns it then.

The swap. A rebuild (projections/rebuild.py) marks a swap under way (`projector_swaps`,
never swapped), and live projectors step aside at their next batch until it ends. The mark
only spares them work: the fence is the claims table, which the rebuild swaps in with its
tables, holding the live claims and above them the rebuild's own (`fence_for_swap`). What a
projector of the swapped-out tables sends afterwards is dropped, and it claims again on the
new tables before it writes anything.

What it relies on: one ClickHouse server (an INSERT reads the claims as they are once written;
a replicated table's replicas may lag), and each key's events on one partition (the order id
on the order log, sku@location on the ledger, as the producers key them) so that no fold state
spans two projectors.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from infra.kafka import client_security, consumer_config
from projections.cluster import Replicas, replicas_of, replicated_tables
from projections.fold import Partition
from projections.reconnect import KafkaUnavailable
from projections.schema import MigrationError, migrate
from projections.store import ClickHouseStore, Row, StoreError, sql_string

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "AUDIT_LEASES",
    "PROJECTOR_LEASES",
    "Claim",
    "FencedStore",
    "PartitionLease",
    "SwapMarker",
    "fence_for_swap",
    "lease_key",
    "migrate_concurrently",
    "step_aside",
    "swap_under_way",
]

log = logging.getLogger(__name__)

PROJECTOR_LEASES = "projector_leases"  # the read models' claims, swapped with their tables
AUDIT_LEASES = "audit_leases"  # the audit projection's, never swapped
SWAPS = "projector_swaps"
LEASE_COLUMNS = ("_topic", "_partition", "epoch", "holder", "claimed_at")
# ClickHouse's answers to a quorum INSERT that is not known to be on enough replicas:
# TIMEOUT_EXCEEDED, TOO_FEW_LIVE_REPLICAS, UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE,
# UNKNOWN_STATUS_OF_INSERT.
QUORUM_NOT_REACHED = frozenset({159, 285, 286, 319})


def migrate_concurrently(store: ClickHouseStore, *, attempts: int = 5) -> None:
    """`migrate`, where other projectors of the database may be migrating it at the same time
    (several started together). ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: of two
    processes adding one column, one fails; it tries again and finds the column there."""
    for attempt in range(attempts):
        try:
            migrate(store)
            return
        except MigrationError:
            if attempt == attempts - 1:
                raise
            log.info("another process migrates %s too; trying again", store.database)
            time.sleep(random.uniform(0.2, 1.0))


def lease_key(settings: Settings, store: ClickHouseStore) -> str:
    """What names the database for the lease: the ClickHouse (server address or chDB path) and
    the database."""
    url = urlparse(settings.resolved_clickhouse_url)
    # The server's address without the user: every user of one database shares its lease.
    where = url.netloc.rsplit("@", 1)[-1] if url.scheme == "clickhouse" else url.path
    return f"{url.scheme}://{where}#{store.database}"


@dataclass(frozen=True)
class Claim:
    """The partitions a projector claimed for one assignment, under a holder token of this
    claim only (a process claiming again gets a new one)."""

    holder: str
    partitions: frozenset[Partition]
    round: int  # which of Kafka's assignments to this process it was made for


class PartitionLease:
    """The partitions of `topics` this process may write into `store`'s database: those Kafka
    assigns it in consumer group `group`, claimed in `table`."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: ClickHouseStore,
        topics: Sequence[str],
        group: str,
        table: str = PROJECTOR_LEASES,
    ) -> None:
        self.settings = settings
        self.store = store
        self.topics = tuple(topics)
        self.group = group
        self.table = table
        self._membership: _Membership | None = None

    def join(self) -> None:
        """Join the consumer group (once; Kafka assigns partitions from then on)."""
        if self._membership is not None:
            return
        session_ms = round(self.settings.projector_session_timeout_s * 1000)
        config = consumer_config(
            self.settings.kafka_bootstrap,
            group_id=self.group,
            **{
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(session_ms // 6, 100),
                # Each member's share of both topics, partition by partition (the range
                # assignor would give the first member the first partitions of each topic).
                "partition.assignment.strategy": "roundrobin",
                "enable.partition.eof": False,
                "topic.metadata.refresh.interval.ms": 30_000,  # a topic made later is seen
            },
        ) | client_security(self.settings)
        self._membership = _Membership(config, self.topics)

    def acquire(self) -> Claim:
        """Wait for Kafka's assignment, claim it, and wait for the INSERTs that were running
        then to end: afterwards only this claim's INSERTs reach the claimed partitions.
        KafkaUnavailable when Kafka assigns nothing for a while."""
        self.join()
        assert self._membership is not None
        wait_s = max(60.0, 3 * self.settings.projector_session_timeout_s)
        while True:
            assigned, partitions = self._membership.assignment(timeout_s=wait_s)
            holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            claim = Claim(holder, partitions, assigned)
            replicas = replicas_of(self.store, self.table)
            try:
                self._claim(claim, replicas)
            except StoreError as exc:
                if replicas is None or exc.code not in QUORUM_NOT_REACHED:
                    raise
                # Not known to be on every replica (another claim's quorum pending, a replica
                # down or slow): it may still arrive, and only ever fences more. Again.
                log.warning("%s: a claim did not reach every replica: %s", self.group, exc)
                time.sleep(random.uniform(0.2, 1.0))
                continue
            self._hand_over(replicas)
            if self.holds(claim):
                log.info(
                    "%s holds %s",
                    claim.holder,
                    ", ".join(f"{t}/{p}" for t, p in sorted(partitions)),
                )
                return claim
            # Another claim reached the same epoch, or a later one came first (from a member
            # that has not yet heard of this assignment); whoever Kafka assigns claims again.
            log.warning("%s: a claim of another holder came between; claiming again", self.group)
            time.sleep(random.uniform(0.05, 0.5))

    def holds(self, claim: Claim) -> bool:
        """Whether Kafka still assigns what `claim` is for and `claim` still holds every
        partition it claimed (asked between batches)."""
        if self._membership is None or self._membership.round != claim.round:
            return False
        return not claim.partitions or self.held(claim.holder) >= claim.partitions

    def held(self, holder: str) -> frozenset[Partition]:
        """The partitions `holder` holds now."""
        rows = self.store.query(_held_query(self.store.database, self.table, holder))
        return frozenset((str(topic), int(partition)) for topic, partition in rows)

    def fence(self, claim: Claim) -> FencedStore:
        """The store whose INSERTs keep only the rows of partitions `claim` holds."""
        held = _held_query(self.store.database, self.table, claim.holder)
        return FencedStore(self.store, where=f"(_topic, _partition) IN ({held})")

    def leave(self) -> None:
        """Leave the group: Kafka gives this process's partitions to the others at once."""
        if self._membership is not None:
            self._membership.stop()
            self._membership = None

    def _hand_over(self, replicas: Replicas | None) -> None:
        """Wait for the INSERTs that were running when the claim was made to end; on a
        replicated database on every replica, and then until this replica holds what every
        other took (the ledger and the marks read next must be the last holder's)."""
        if replicas is None:
            self.store.settle()
            return
        self.store.settle(replicas=replicas.addresses)
        for table in replicated_tables(self.store):
            self.store.execute(f"SYSTEM SYNC REPLICA {self.store.database}.{table}")

    def _claim(self, claim: Claim, replicas: Replicas | None = None) -> None:
        """Claims are written with a quorum of every replica on a replicated database: once
        written, a fenced INSERT on any replica reads them."""
        if not claim.partitions:
            return
        if replicas is not None:  # the epochs every replica took so far
            self.store.execute(f"SYSTEM SYNC REPLICA {self.store.database}.{self.table}")
        top = {
            (str(topic), int(partition)): int(epoch)
            for topic, partition, epoch in self.store.query(
                f"SELECT _topic, _partition, max(epoch) FROM {self.store.database}.{self.table} "
                "GROUP BY _topic, _partition"
            )
        }
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        rows: list[Row] = [
            (topic, partition, top.get((topic, partition), 0) + 1, claim.holder, now)
            for topic, partition in sorted(claim.partitions)
        ]
        self.store.insert(self.table, LEASE_COLUMNS, rows, quorum=replicas.count if replicas else 0)


def _held_query(database: str, table: str, holder: str) -> str:
    """The partitions `holder` holds: those whose highest epoch is its claim, and its alone."""
    return (
        f"SELECT _topic, _partition FROM ({_latest_claims(database, table)}) "
        f"WHERE holders = [{sql_string(holder)}]"
    )


def _latest_claims(database: str, table: str) -> str:
    """Per partition, its highest epoch and the holders that claimed it."""
    return (
        "SELECT _topic, _partition, epoch, groupUniqArray(holder) AS holders "
        f"FROM {database}.{table} GROUP BY _topic, _partition, epoch "
        "ORDER BY _topic, _partition, epoch DESC LIMIT 1 BY _topic, _partition"
    )


class FencedStore:
    """`store`, whose INSERTs keep only the rows `where` selects, decided by the server when it
    runs each INSERT; everything else as `store`."""

    def __init__(self, store: ClickHouseStore, *, where: str) -> None:
        self.store = store
        self.where = where
        self.database = store.database
        self.parallel_inserts = store.parallel_inserts

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        where: str | None = None,
        quorum: int = 0,
    ) -> None:
        self.store.insert(table, columns, rows, where=self._and(where), quorum=quorum)

    def insert_rowbinary(
        self, table: str, columns: Sequence[str], data: bytes, *, where: str | None = None
    ) -> None:
        self.store.insert_rowbinary(table, columns, data, where=self._and(where))

    def _and(self, where: str | None) -> str:
        return self.where if where is None else f"({self.where}) AND ({where})"

    def execute(self, sql: str) -> None:
        self.store.execute(sql)

    def query(self, sql: str) -> list[Row]:
        return self.store.query(sql)

    def query_with_columns(self, sql: str) -> tuple[list[str], list[Row]]:
        return self.store.query_with_columns(sql)

    def with_database(self, database: str) -> ClickHouseStore:
        return FencedStore(self.store.with_database(database), where=self.where)

    def limit_queries(self, *, max_execution_s: int, max_rows_to_read: int) -> None:
        self.store.limit_queries(max_execution_s=max_execution_s, max_rows_to_read=max_rows_to_read)

    def settle(self, *, replicas: Sequence[str] = ()) -> None:
        self.store.settle(replicas=replicas)

    def close(self) -> None:
        self.store.close()


class _Membership:
    """This process's place in the consumer group: the partitions Kafka gives it now. A thread
    polls the consumer, which serves the group's callbacks (and heartbeats on its own); the
    partitions stay paused, so nothing is fetched."""

    def __init__(self, config: dict[str, Any], topics: Sequence[str]) -> None:
        self.round = 0  # one more at every assignment and revocation
        self._partitions: frozenset[Partition] | None = None  # None: being assigned
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._consumer = Consumer(config | {"error_cb": self._error})
        self._consumer.subscribe(
            list(topics), on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        self._thread = threading.Thread(target=self._poll, name="projector-lease", daemon=True)
        self._thread.start()

    def assignment(self, *, timeout_s: float) -> tuple[int, frozenset[Partition]]:
        """The current assignment and its round, once Kafka has made one."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._partitions is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise KafkaUnavailable(f"Kafka assigned no partitions within {timeout_s:.0f} s")
                self._changed.wait(min(remaining, 0.5))
            return self.round, self._partitions

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()  # leaves the group

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._consumer.poll(0.2)

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = OFFSET_END
        consumer.assign(partitions)
        consumer.pause(partitions)
        with self._changed:
            self.round += 1
            self._partitions = frozenset((tp.topic, tp.partition) for tp in partitions)
            self._changed.notify_all()

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._changed:
            self.round += 1
            self._partitions = None
            self._changed.notify_all()

    def _error(self, error: KafkaError) -> None:
        # The projector's own consumer reports Kafka being away; the group is Kafka's to mend.
        log.debug("lease consumer: %s", error.str())


class SwapMarker:
    """A rebuild's notice in `store`'s database that it swaps tables in: live projectors step
    aside at their next batch until `end`, or until the notice runs out, `for_s` after its
    last `begin` by the server's clock (so a rebuild that died stops nobody for long)."""

    def __init__(self, store: ClickHouseStore, *, for_s: int = 120) -> None:
        self.store = store
        self.for_s = for_s
        self.swap_id = uuid.uuid4().hex

    def begin(self) -> None:
        """Mark the swap under way (again: a long catch-up renews its notice)."""
        _note(self.store, self.swap_id, "begun", for_s=self.for_s)

    def wait_for_projectors(self, *, timeout_s: float) -> frozenset[str]:
        """Wait until every holder of a live claim has stepped aside, or `timeout_s` has
        passed; the holders that have not (paused or dead: the swap fences them anyway)."""
        db = self.store.database
        holders = frozenset(
            str(holder)
            for (holder,) in self.store.query(
                f"SELECT DISTINCT holders[1] FROM ({_latest_claims(db, PROJECTOR_LEASES)}) "
                "WHERE length(holders) = 1"
            )
        )
        deadline = time.monotonic() + timeout_s
        while True:
            aside = {
                str(holder)
                for (holder,) in self.store.query(
                    f"SELECT DISTINCT holder FROM {db}.{SWAPS} WHERE "
                    f"swap_id = {sql_string(self.swap_id)} AND state = 'aside'"
                )
            }
            missing = holders - aside
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)

    def end(self) -> None:
        _note(self.store, self.swap_id, "ended")


def swap_under_way(store: ClickHouseStore) -> str | None:
    """The swap a rebuild is making in `store`'s database now, if any."""
    rows = store.query(
        f"SELECT swap_id FROM {store.database}.{SWAPS} GROUP BY swap_id "
        "HAVING countIf(state = 'ended') = 0 AND maxIf(until, state = 'begun') > now() LIMIT 1"
    )
    return str(rows[0][0]) if rows else None


def step_aside(store: ClickHouseStore, swap_id: str, *, holder: str) -> None:
    """Tell the rebuild making `swap_id` that `holder` writes nothing until it is done."""
    _note(store, swap_id, "aside", holder=holder)


def _note(
    store: ClickHouseStore, swap_id: str, state: str, *, holder: str = "", for_s: int = 0
) -> None:
    store.execute(
        f"INSERT INTO {store.database}.{SWAPS} (swap_id, state, holder, at, until) SELECT "
        f"{sql_string(swap_id)}, {sql_string(state)}, {sql_string(holder)}, now(), now() + {for_s}"
    )


def fence_for_swap(store: ClickHouseStore, staging: str, *, holder: str) -> None:
    """Fill `staging`'s claims table for the swap: the live claims, and above each partition's
    highest the claim of `holder` (the rebuild). Swapped in with the tables, it fences every
    projector that wrote the old ones at the instant of the swap."""
    live = f"{store.database}.{PROJECTOR_LEASES}"
    columns = ", ".join(LEASE_COLUMNS)
    store.execute(
        f"INSERT INTO {staging}.{PROJECTOR_LEASES} ({columns}) SELECT {columns} FROM {live}"
    )
    store.execute(
        f"INSERT INTO {staging}.{PROJECTOR_LEASES} ({columns}) SELECT _topic, _partition, "
        f"max(epoch) + 1, {sql_string(holder)}, now() FROM {live} GROUP BY _topic, _partition"
    )
