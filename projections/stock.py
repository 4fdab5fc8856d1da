"""The stock ledger folded into levels per sku@location: pure functions, no I/O.

The levels move as `events.stock_levels.next_levels` says (the inventory agent's ledger moves
them with the same function). The read model keeps only the levels, so it resumes from
`stock_levels` alone; each event's row in `stock` also shows the event's own quantity and
what it moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from events.models import (
    ExpiryBatchAdded,
    ExpiryBatchExpired,
    LowStockAlerted,
    SafetyStockSet,
    StockAdjusted,
    StockCommitted,
    StockCounted,
    StockEvent,
    StockReceived,
    StockReleased,
    StockReservationRefused,
    StockReserved,
)
from events.stock_levels import Levels, next_levels
from projections.orders import Position, seconds
from projections.store import Row

StockLevel = dict[str, Any]


@dataclass(frozen=True)
class StockChange:
    level: StockLevel
    history: Row


_WITH_QUANTITY = (
    StockReceived,
    ExpiryBatchAdded,
    StockReserved,
    StockReleased,
    StockCommitted,
    SafetyStockSet,
    ExpiryBatchExpired,
)


def _quantity(event: StockEvent) -> int:
    """The event's own figure, as the `stock` table shows it."""
    if isinstance(event, StockAdjusted):
        return event.delta
    if isinstance(event, StockCounted):
        return event.counted
    if isinstance(event, StockReservationRefused):
        return event.requested
    if isinstance(event, LowStockAlerted):
        return event.reorder_quantity
    if isinstance(event, _WITH_QUANTITY):
        return event.quantity
    return 0


def _order_and_reason(event: StockEvent) -> tuple[str, str]:
    order_id = getattr(event, "order_id", "") or ""
    reason = getattr(event, "reason", "") or ""
    if isinstance(event, StockReceived):
        reason = event.reference or ""
    elif isinstance(event, ExpiryBatchAdded | ExpiryBatchExpired):
        reason = event.batch_id
    return order_id, reason


def fold(state: StockLevel | None, event: StockEvent, where: Position) -> StockChange | None:
    """Apply one ledger event; None when its sequence was applied already."""
    if state is not None and event.sequence <= state["sequence"]:
        return None
    before = (
        Levels(state["on_hand"], state["reserved"], state["safety_stock"]) if state else Levels()
    )
    on_hand, reserved, safety = after = next_levels(before, event)
    on_hand_change, reserved_change = on_hand - before.on_hand, reserved - before.reserved
    available = after.available_to_promise
    quantity = _quantity(event)
    at = seconds(event.occurred_at)
    event_type = type(event).__name__
    order_id, reason = _order_and_reason(event)
    level: StockLevel = {
        "sku": event.sku,
        "location": event.location,
        "on_hand": on_hand,
        "reserved": reserved,
        "safety_stock": safety,
        "available": available,
        "sequence": event.sequence,
        "last_event_type": event_type,
        "updated_at": at,
        "_topic": where.topic,
        "_partition": where.partition,
        "_offset": where.offset,
    }
    history = (
        event.sku,
        event.location,
        event.sequence,
        event.event_id,
        event_type,
        at,
        quantity,
        on_hand_change,
        reserved_change,
        on_hand,
        reserved,
        safety,
        available,
        order_id,
        reason,
        where.topic,
        where.partition,
        where.offset,
    )
    return StockChange(level=level, history=history)
