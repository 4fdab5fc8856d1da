"""The projector's fold in native code (`BatchFold`, projections/fold.py): the same fold as
`PythonFold`, in Rust (`orderstream_avro.Projection`, native/avro_codec/src/projection/), from
Kafka messages straight to each table's rows in ClickHouse's RowBinary format, with no Python
object per event.

The Python fold is the reference and the fallback where the extension is not built; tests fold
one log both ways and compare every table (tests/projections/test_native_fold.py). This module
hands the native fold what it needs from Python: the current schemas, each table's columns
(projections/schema.py: the native fold writes the columns it is given, by name, and refuses a
column it cannot write), the lifecycle's moves (`events.lifecycle.next_status` for every status
and event type), and a way to decode what it does not (older schema versions, corrupt bytes —
the Python codec names the reason, as it does for the Python fold).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from events.codec import AvroCodec, CodecError
from events.lifecycle import OrderStatus, next_status
from events.models import (
    ORDER_EVENTS,
    STOCK_COMMANDS,
    STOCK_EVENTS,
    OrderEvent,
    StockEvent,
)
from events.privacy import masked_fields
from projections.fold import (
    DecodedBatch,
    FoldedBatch,
    HighWater,
    Partition,
    Rejected,
    Rows,
    StoredStates,
)
from projections.orders import END_STAGES, VOID
from projections.privacy import AnalystView
from projections.schema import (
    FULFILMENT_STAGES_COLUMNS,
    ORDER_ACTIVITY_COLUMNS,
    ORDER_EVENTS_COLUMNS,
    ORDER_LINES_COLUMNS,
    ORDERS_COLUMNS,
    STOCK_COLUMNS,
    STOCK_LEVELS_COLUMNS,
)
from projections.store import ClickHouseStore

try:
    import orderstream_avro as _native
except ImportError:  # pragma: no cover - exercised where the extension is not built
    _native = None

__all__ = ["AVAILABLE", "COLUMNS", "NativeFold", "native_projection"]

# OMS_NATIVE_FOLD=0 makes the projector use the Python fold even where the extension is built.
AVAILABLE = (
    _native is not None
    and hasattr(_native, "Projection")
    and os.environ.get("OMS_NATIVE_FOLD", "1") != "0"
)

# The tables the native fold writes, and their columns (in its RowBinary, in this order).
COLUMNS: dict[str, tuple[str, ...]] = {
    "order_events": ORDER_EVENTS_COLUMNS,
    "orders": ORDERS_COLUMNS,
    "order_lines": ORDER_LINES_COLUMNS,
    "fulfilment_stages": FULFILMENT_STAGES_COLUMNS,
    "order_activity_per_minute": ORDER_ACTIVITY_COLUMNS,
    "stock": STOCK_COLUMNS,
    "stock_levels": STOCK_LEVELS_COLUMNS,
}

# DateTime columns of the fold states, read back as epoch seconds (what the native fold keeps).
_DATETIMES = frozenset(
    {
        "promised_at",
        "accepted_at",
        "held_at",
        "reviewed_at",
        "handed_over_at",
        "delivered_at",
        "ready_by",
        "stage_entered_at",
        "placed_at",
        "updated_at",
    }
)
_POSITION = ("_topic", "_partition", "_offset")


def _state_select(columns: Sequence[str]) -> str:
    """A fold state as the native fold loads it: the table's columns but the position, in
    order, times as epoch seconds."""
    return ", ".join(
        f"toUInt32({c})" if c in _DATETIMES else c for c in columns if c not in _POSITION
    )


ORDER_STATE_SELECT = _state_select(ORDERS_COLUMNS)
LEVEL_STATE_SELECT = _state_select(STOCK_LEVELS_COLUMNS)


def _event_models(base: type) -> list[type]:
    """The contract's event types on `base`'s topic (an event type may subclass another:
    `OrderAmendmentRequested` is an `OrderModified`)."""
    return [m for m in (*ORDER_EVENTS, *STOCK_EVENTS, *STOCK_COMMANDS) if issubclass(m, base)]


def _check_json_order(plan: tuple[Any, ...]) -> None:
    """The native fold writes `payload` in the schema's field order; pydantic writes the
    model's. They are the same (the schemas are generated from the models); checked here so
    that a change to either cannot make the payloads differ unnoticed."""
    kind = plan[0]
    if kind in ("optional", "array"):
        _check_json_order(plan[1])
    elif kind == "record":
        model, fields = plan[1], plan[2]
        names = [name for name, role, _, _ in fields if role == "value"]
        if names != list(model.model_fields):
            raise ValueError(f"{model.__name__}: schema fields {names} are not the model's order")
        for _, _, inner, _ in fields:
            _check_json_order(inner)


def transitions() -> dict[str, dict[str, str]]:
    """`events.lifecycle.next_status` as a table: status → order event type → next status,
    for every status, and under "" for an order with no history yet (the native fold also
    reads a status it does not know as no history, as `projections.orders.fold` does)."""
    models = _event_models(OrderEvent)
    statuses: list[OrderStatus | None] = [None, *OrderStatus]
    return {
        (status.value if status is not None else ""): {
            m.__name__: next_status(status, m).value for m in models
        }
        for status in statuses
    }


def native_projection(
    *,
    codec: AvroCodec,
    orders_topic: str,
    stock_topic: str,
    capacity: int,
    analyst: AnalystView | None = None,
) -> Any:
    """The native fold's `orderstream_avro.Projection` for the two topics (the extension must
    be built: `AVAILABLE`). With `analyst`, its decoder masks personal data as the Python
    fold's `AnalystView` does: it empties the fields `events.privacy.masked_fields` names and
    sets the customer's key and masks as `analyst.native()` answers."""
    if _native is None:
        raise RuntimeError("the native extension orderstream_avro is not built")
    schemas = []
    for kind, base in (("order", OrderEvent), ("stock", StockEvent)):
        for model in _event_models(base):
            schema_id, plan = codec.current_schema(model)
            _check_json_order(plan)
            personal = [(list(path), empty) for path, empty in masked_fields(model)]
            schemas.append((schema_id, model.__name__, kind, plan, personal))

    def fallback(raw: bytes, topic: str) -> bytes | str:
        try:
            event = codec.decode(raw)
            if (topic == orders_topic and isinstance(event, OrderEvent)) or (
                topic == stock_topic and isinstance(event, StockEvent)
            ):
                return codec.encode(event)
            raise CodecError(f"{type(event).__name__} does not belong on {topic}")
        except CodecError as exc:
            return exc.reason

    return _native.Projection(
        orders_topic=orders_topic,
        stock_topic=stock_topic,
        schemas=schemas,
        columns={table: list(columns) for table, columns in COLUMNS.items()},
        transitions=transitions(),
        void=set(VOID),
        end_stages=set(END_STAGES),
        capacity=capacity,
        fallback=fallback,
        analyst=None if analyst is None else analyst.native(),
    )


@dataclass
class _RowBinary:
    """A table's rows as the native fold wrote them (a buffer it reuses once freed)."""

    columns: Sequence[str]
    count: int
    data: Any  # orderstream_avro.RowBinary: bytes-like

    def insert(self, store: ClickHouseStore, table: str) -> None:
        store.insert_rowbinary(table, self.columns, self.data)


class NativeFold:
    """Decoding and folding in Rust; the decoder runs on the reading thread, the fold lets go
    of the GIL, so both overlap with the projector's other threads."""

    inserts_in_parallel = True

    def __init__(
        self,
        *,
        codec: AvroCodec,
        orders_topic: str,
        stock_topic: str,
        capacity: int,
        analyst: AnalystView | None = None,
    ) -> None:
        self._projection = native_projection(
            codec=codec,
            orders_topic=orders_topic,
            stock_topic=stock_topic,
            capacity=capacity,
            analyst=analyst,
        )
        self._decoder = self._projection.decoder()

    def reset(self, *, complete: bool) -> None:
        self._projection.reset()
        self._projection.complete = complete

    def decode(self, chunks: Iterable[list[Message]]) -> DecodedBatch[Any]:
        """The decoder's batch, from its messages in chunks: each chunk's message objects are
        freed before the next is read, so Python reuses the same memory for every chunk, where
        a whole batch of them would be handed back to the OS and faulted in again for the next
        batch (a fifth of the projector's time went to that). The collector is not paused
        here: the native fold keeps no Python objects for it to walk."""
        batch: Any = None
        rejected: list[Rejected] = []
        ledger: dict[Partition, list[int]] = {}
        order_events = stock_events = 0
        for chunk in chunks:
            part, rejects, marks, n_orders, n_stock = self._decoder.decode(chunk)
            del chunk
            if batch is None:
                batch = part
            else:
                batch.extend(part)
            rejected += rejects
            for topic, partition, last, count in marks:
                entry = ledger.setdefault((topic, partition), [last, 0])
                entry[0] = max(entry[0], last)
                entry[1] += count
            order_events += n_orders
            stock_events += n_stock
        if batch is None:
            batch, rejected, _, _, _ = self._decoder.decode([])
        return DecodedBatch(batch, rejected, ledger, order_events, stock_events)

    def fold(
        self, batch: DecodedBatch[Any], *, states: StoredStates, high_water: HighWater
    ) -> FoldedBatch:
        projection = self._projection
        missing_orders, missing_levels = projection.missing(batch.events)
        # The states the batch names that ClickHouse may hold and the fold does not.
        if missing_orders:
            projection.load_orders(states.orders(missing_orders, ORDER_STATE_SELECT))
        if missing_levels:
            projection.load_levels(states.levels(missing_levels, LEVEL_STATE_SELECT))
        encoded, duplicates, orders_written = projection.fold(batch.events, high_water.by_table())
        tables: dict[str, Rows] = {
            table: _RowBinary(COLUMNS[table], count, data)
            for table, (count, data) in encoded.items()
        }
        return FoldedBatch(tables, duplicates, orders_written)
