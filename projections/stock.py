"""The stock ledger folded into levels per sku@location: pure functions, no I/O.

How each ledger event moves the levels (ATP = on_hand − reserved − safety_stock):

| event | on_hand | reserved | safety_stock |
|---|---|---|---|
| StockReceived, ExpiryBatchAdded | + quantity | | |
| StockAdjusted | + delta | | |
| StockCounted | = counted | | |
| StockReserved | | + quantity | |
| StockReleased | | − quantity | |
| StockCommitted | − quantity | − quantity | |
| SafetyStockSet | | | = quantity |
| ExpiryBatchExpired | − quantity | | |
| LowStockAlerted, StockReservationRefused | | | |

The same rules as the inventory agent's ledger (`streams.inventory.apply`, which a test holds
this to); an ExpiryBatchAdded is a receipt of perishable units with their date. The read model
keeps only the levels, so it resumes from `stock_levels` alone.
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
from projections.orders import Position, seconds
from projections.store import Row

StockLevel = dict[str, Any]


@dataclass(frozen=True)
class StockChange:
    level: StockLevel
    history: Row


def movement(event: StockEvent, on_hand: int) -> tuple[int, int, int, int | None]:
    """(the event's own quantity, change of on_hand, change of reserved, new safety stock)."""
    if isinstance(event, StockReceived):
        return event.quantity, event.quantity, 0, None
    if isinstance(event, StockAdjusted):
        return event.delta, event.delta, 0, None
    if isinstance(event, StockCounted):
        return event.counted, event.counted - on_hand, 0, None
    if isinstance(event, StockReserved):
        return event.quantity, 0, event.quantity, None
    if isinstance(event, StockReleased):
        return event.quantity, 0, -event.quantity, None
    if isinstance(event, StockCommitted):
        return event.quantity, -event.quantity, -event.quantity, None
    if isinstance(event, SafetyStockSet):
        return event.quantity, 0, 0, event.quantity
    if isinstance(event, ExpiryBatchExpired):
        return event.quantity, -event.quantity, 0, None
    if isinstance(event, ExpiryBatchAdded):
        return event.quantity, event.quantity, 0, None
    if isinstance(event, StockReservationRefused):
        return event.requested, 0, 0, None
    if isinstance(event, LowStockAlerted):
        return event.reorder_quantity, 0, 0, None
    return 0, 0, 0, None


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
    on_hand = state["on_hand"] if state else 0
    reserved = state["reserved"] if state else 0
    safety = state["safety_stock"] if state else 0
    quantity, on_hand_change, reserved_change, new_safety = movement(event, on_hand)
    on_hand += on_hand_change
    reserved += reserved_change
    safety = safety if new_safety is None else new_safety
    available = on_hand - reserved - safety
    at = seconds(event.occurred_at)
    event_type = type(event).__name__
    order_id, reason = _order_and_reason(event)
    level: StockLevel = {
        "sku": event.sku, "location": event.location, "on_hand": on_hand, "reserved": reserved,
        "safety_stock": safety, "available": available, "sequence": event.sequence,
        "last_event_type": event_type, "updated_at": at, "_topic": where.topic,
        "_partition": where.partition, "_offset": where.offset,
    }  # fmt: skip
    history = (
        event.sku, event.location, event.sequence, event.event_id, event_type, at, quantity,
        on_hand_change, reserved_change, on_hand, reserved, safety, available, order_id, reason,
        where.topic, where.partition, where.offset,
    )  # fmt: skip
    return StockChange(level=level, history=history)
