"""How each stock ledger event moves a sku@location's levels: the one statement of it.

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

The inventory agent's ledger (`streams.inventory.apply`) and the read model
(`projections.stock.fold`) both move the levels with `next_levels`; the native fold
(native/avro_codec/src/projection/stock.rs) is held to it by the parity tests
(tests/projections/test_native_fold.py). An ExpiryBatchAdded is a receipt of perishable units
with their date.
"""

from __future__ import annotations

from typing import NamedTuple

from events.models import (
    ExpiryBatchAdded,
    ExpiryBatchExpired,
    SafetyStockSet,
    StockAdjusted,
    StockCommitted,
    StockCounted,
    StockEvent,
    StockReceived,
    StockReleased,
    StockReserved,
)


class Levels(NamedTuple):
    """What one sku@location's ledger holds (a ledger with no events: all zero)."""

    on_hand: int = 0
    reserved: int = 0
    safety_stock: int = 0

    @property
    def available_to_promise(self) -> int:
        return self.on_hand - self.reserved - self.safety_stock


def next_levels(levels: Levels, event: StockEvent) -> Levels:
    """The levels after ledger event `event` (the table above); any other event moves nothing."""
    on_hand, reserved, safety_stock = levels
    if isinstance(event, StockReceived | ExpiryBatchAdded):
        return Levels(on_hand + event.quantity, reserved, safety_stock)
    if isinstance(event, StockAdjusted):
        return Levels(on_hand + event.delta, reserved, safety_stock)
    if isinstance(event, StockCounted):
        return Levels(event.counted, reserved, safety_stock)
    if isinstance(event, StockReserved):
        return Levels(on_hand, reserved + event.quantity, safety_stock)
    if isinstance(event, StockReleased):
        return Levels(on_hand, reserved - event.quantity, safety_stock)
    if isinstance(event, StockCommitted):
        return Levels(on_hand - event.quantity, reserved - event.quantity, safety_stock)
    if isinstance(event, SafetyStockSet):
        return Levels(on_hand, reserved, event.quantity)
    if isinstance(event, ExpiryBatchExpired):
        return Levels(on_hand - event.quantity, reserved, safety_stock)
    return levels
