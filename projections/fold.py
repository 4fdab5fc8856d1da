"""How the projector turns a batch of Kafka messages into each table's rows: the `BatchFold`
protocol, and the values it passes to and from the projector.

Two implementations, chosen once when the projector is built:
- `PythonFold` (projections/python_fold.py): the reference, `projections.orders.fold` and
  `projections.stock.fold` over events the Python codec decodes;
- `NativeFold` (projections/native_fold.py): the same fold in Rust, messages in and each
  table's rows out as RowBinary, held to the reference by tests/projections/test_native_fold.py.

A fold keeps the fold states (orders, stock levels) of the keys it has seen and asks the
projector for the ones ClickHouse holds (`StoredStates`); it never writes. The projector owns
everything else: consuming, the offset ledger, the high-water marks, threads, the lease.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from confluent_kafka import Message

from projections.orders import Position
from projections.store import ClickHouseStore, Row

__all__ = [
    "BatchFold",
    "DecodedBatch",
    "FoldedBatch",
    "HighWater",
    "Partition",
    "Rejected",
    "Rows",
    "StoredStates",
    "ValueRows",
]

Partition = tuple[str, int]  # (topic, partition)
# A message that cannot be projected: (topic, partition, offset, raw bytes, the codec's reason).
Rejected = tuple[str, int, int, bytes, str]

Events = TypeVar("Events")


@dataclass
class DecodedBatch(Generic[Events]):
    """A batch as read from Kafka and decoded (on the reading thread), not yet folded."""

    events: Events  # in the fold's own form
    rejected: list[Rejected]
    ledger: dict[Partition, list[int]]  # (topic, partition) -> [last offset, messages]
    order_events: int
    stock_events: int


class Rows(Protocol):
    """One table's rows of a batch, ready to insert."""

    @property
    def count(self) -> int: ...

    def insert(self, store: ClickHouseStore, table: str) -> None: ...


@dataclass
class ValueRows:
    """Rows as tuples of Python values, in the order of `columns`."""

    columns: Sequence[str]
    rows: list[Row]

    @property
    def count(self) -> int:
        return len(self.rows)

    def insert(self, store: ClickHouseStore, table: str) -> None:
        store.insert(table, self.columns, self.rows)


@dataclass
class FoldedBatch:
    """What a fold made of a batch: each table's rows (every table it writes, empty or not)."""

    tables: dict[str, Rows]
    duplicates: int  # events skipped: their sequence was applied before
    orders_written: int
    # Events the fold raised on (a bug, or an event no check foresaw): dead-lettered like
    # undecodable messages, so one event never stops the projection (infra/poison.py).
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class HighWater:
    """Per table and partition, the highest source offset the table holds beyond the offset
    ledger: rows a crash left behind, which the replay must not write again (empty but for the
    batches right after a restart)."""

    marks: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (table, topic, p)

    def written(self, table: str, where: Position) -> bool:
        """Whether `table` already holds the rows of the message at `where`."""
        mark = self.marks.get((table, where.topic, where.partition))
        return mark is not None and where.offset <= mark

    def unwritten(self, table: str) -> Callable[[Position], bool] | None:
        """None when `table` takes the rows of every message (checked once per batch rather
        than once per message); else a test of whether it still needs a message's rows."""
        if not any(key[0] == table for key in self.marks):
            return None
        return lambda where: not self.written(table, where)

    def by_table(self) -> dict[str, dict[Partition, int]]:
        marks: dict[str, dict[Partition, int]] = {}
        for (table, topic, partition), mark in self.marks.items():
            marks.setdefault(table, {})[(topic, partition)] = mark
        return marks

    def passed(self, ledger: dict[Partition, list[int]]) -> HighWater:
        """The marks the ledger of a batch just written has not passed yet."""
        return HighWater(
            {
                (table, topic, partition): mark
                for (table, topic, partition), mark in self.marks.items()
                if mark > ledger.get((topic, partition), (-1, 0))[0]
            }
        )


class StoredStates(Protocol):
    """The fold states ClickHouse holds, for the keys a fold does not have (read once the
    batch being written, if any, is in)."""

    def orders(self, order_ids: Sequence[str], columns: str) -> list[Row]:
        """`columns` (a SELECT list) of `orders` FINAL for these orders."""
        ...

    def levels(self, keys: Collection[tuple[str, str]], columns: str) -> list[Row]:
        """`columns` of `stock_levels` FINAL for these (sku, location) keys; each row must
        start with sku and location."""
        ...


class BatchFold(Protocol[Events]):
    """Messages → fold states → each table's rows."""

    # Whether a batch's INSERTs of its rows may go from several threads at once: RowBinary
    # goes over one HTTP connection per thread (where the store has `parallel_inserts`), while
    # value rows share the store's one native-protocol client.
    inserts_in_parallel: bool

    def decode(self, chunks: Iterable[list[Message]]) -> DecodedBatch[Events]:
        """Decode a batch from its messages, read in chunks (on the reading thread)."""
        ...

    def fold(
        self, batch: DecodedBatch[Events], *, states: StoredStates, high_water: HighWater
    ) -> FoldedBatch:
        """Fold a decoded batch: the fold states move on; nothing is written. No rows for a
        message a table holds already (`high_water`)."""
        ...

    def reset(self, *, complete: bool) -> None:
        """Forget every fold state (the projector starts again from what ClickHouse holds).
        `complete`: ClickHouse holds no state at all, so a key never seen is new."""
        ...
