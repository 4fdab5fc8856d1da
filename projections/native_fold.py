"""The projector's fold in native code (`orderstream_avro.Projection`, native/avro_codec):
the same fold as `projections.orders` and `projections.stock`, from Kafka messages straight to
each table's rows in ClickHouse's RowBinary format, with no Python object per event.

The Python fold is the reference and the fallback where the extension is not built; tests
project one log both ways and compare every table (tests/projections/test_native_fold.py).
This module hands the native fold what it needs from Python: the current schemas, the
lifecycle's transitions, and a way to decode what it does not (older schema versions, corrupt
bytes — the Python codec names the reason, as it does for the Python fold).
"""

from __future__ import annotations

import os
from typing import Any

from events.codec import AvroCodec, CodecError
from events.lifecycle import OrderStatus
from events.models import OrderEvent, StockEvent
from projections.orders import END_STAGES, VOID, status_after
from projections.schema import (
    FULFILMENT_STAGES_COLUMNS,
    ORDER_ACTIVITY_COLUMNS,
    ORDER_EVENTS_COLUMNS,
    ORDER_LINES_COLUMNS,
    ORDERS_COLUMNS,
    STOCK_COLUMNS,
    STOCK_LEVELS_COLUMNS,
)

try:
    import orderstream_avro as _native
except ImportError:  # pragma: no cover - exercised where the extension is not built
    _native = None

# OMS_NATIVE_FOLD=0 makes the projector use the Python fold even where the extension is built.
AVAILABLE = (
    _native is not None
    and hasattr(_native, "Projection")
    and os.environ.get("OMS_NATIVE_FOLD", "1") != "0"
)

# DateTime columns of the fold states, read back as epoch seconds (what the native fold keeps).
_DATETIMES = frozenset({
    "promised_at", "accepted_at", "held_at", "reviewed_at", "handed_over_at", "delivered_at",
    "stage_entered_at", "placed_at", "updated_at",
})  # fmt: skip
_POSITION = ("_topic", "_partition", "_offset")

# The tables the native fold writes, and their columns in its RowBinary.
COLUMNS = {
    "order_events": ORDER_EVENTS_COLUMNS,
    "orders": ORDERS_COLUMNS,
    "order_lines": ORDER_LINES_COLUMNS,
    "fulfilment_stages": FULFILMENT_STAGES_COLUMNS,
    "order_activity_per_minute": ORDER_ACTIVITY_COLUMNS,
    "stock": STOCK_COLUMNS,
    "stock_levels": STOCK_LEVELS_COLUMNS,
}

ORDER_STATE_SELECT = ", ".join(
    f"toUInt32({c})" if c in _DATETIMES else c for c in ORDERS_COLUMNS if c not in _POSITION
)
LEVEL_STATE_SELECT = (
    "sku, location, on_hand, reserved, safety_stock, sequence, last_event_type, "
    "toUInt32(updated_at)"
)


def _event_models(base: type) -> list[type]:
    return [m for m in _all_subclasses(base) if not m.__subclasses__()]


def _all_subclasses(base: type) -> list[type]:
    found: list[type] = []
    sub: type
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


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


def transitions() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Every (status, order event type) → next status, as `projections.orders.status_after`
    answers, and the target of each event type from an unknown status."""
    models = _event_models(OrderEvent)
    table = {
        status: {m.__name__: status_after(status, m) for m in models}
        for status in [s.value for s in OrderStatus]
    }
    unknown = "\x00not a status"
    only = {m.__name__: status_after(unknown, m) for m in models}
    return table, {name: target for name, target in only.items() if target != unknown}


def native_fold(*, codec: AvroCodec, orders_topic: str, stock_topic: str, capacity: int) -> Any:
    """A native fold for the two topics, or None where the extension is not built."""
    if not AVAILABLE or _native is None:
        return None
    schemas = []
    for kind, base in (("order", OrderEvent), ("stock", StockEvent)):
        for model in _event_models(base):
            schema_id, plan = codec.current_schema(model)
            _check_json_order(plan)
            schemas.append((schema_id, model.__name__, kind, plan))
    table, only = transitions()

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

    fold = _native.Projection(
        orders_topic=orders_topic,
        stock_topic=stock_topic,
        schemas=schemas,
        transitions=table,
        only_target=only,
        received=OrderStatus.RECEIVED.value,
        void=set(VOID),
        end_stages=set(END_STAGES),
        capacity=capacity,
        fallback=fallback,
    )
    if {name: tuple(c) for name, c in _native.Projection.columns().items()} != COLUMNS:
        raise ValueError("the native fold's columns are not projections/schema.py's")
    return fold
