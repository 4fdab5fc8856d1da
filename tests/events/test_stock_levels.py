"""`events.stock_levels.next_levels`: how each ledger event moves on_hand, reserved and safety
stock (the inventory agent's ledger and the read model both move them with it)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from events.models import (
    Actor,
    ActorKind,
    CommitStock,
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

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
BEFORE = Levels(on_hand=40, reserved=6, safety_stock=5)
HELD = {"order_id": "o1", "reservation_id": "r1", "quantity": 3}


def ledger_event(model: type[StockEvent], **fields: Any) -> StockEvent:
    return model.model_validate(
        dict(event_id="s-1", sequence=1, occurred_at=NOW, recorded_at=NOW, correlation_id="x",
             actor=Actor(kind=ActorKind.SYSTEM, id="t"), sku="TEA", location="W1", **fields)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("model", "fields", "after"),
    [
        (StockReceived, {"quantity": 10}, (50, 6, 5)),
        (ExpiryBatchAdded, {"batch_id": "b", "quantity": 10, "expires_on": date(2027, 1, 1)},
         (50, 6, 5)),
        (StockAdjusted, {"delta": -4, "reason": "DAMAGED"}, (36, 6, 5)),
        (StockCounted, {"counted": 38}, (38, 6, 5)),
        (StockReserved, HELD, (40, 9, 5)),
        (StockReleased, {**HELD, "reason": "CANCELLED"}, (40, 3, 5)),
        (StockCommitted, HELD, (37, 3, 5)),
        (SafetyStockSet, {"quantity": 8}, (40, 6, 8)),
        (ExpiryBatchExpired, {"batch_id": "b", "quantity": 2}, (38, 6, 5)),
        (LowStockAlerted, {"available": 29, "threshold": 30, "reorder_quantity": 50}, (40, 6, 5)),
        (StockReservationRefused, {"order_id": "o2", "reservation_id": "r2", "requested": 99,
                                   "available": 29, "reason": "INSUFFICIENT_STOCK"}, (40, 6, 5)),
        (CommitStock, {"order_id": "o1", "reservation_id": "r1"}, (40, 6, 5)),  # a command
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)  # fmt: skip
def test_each_ledger_event_moves_the_levels_as_the_table_says(
    model: type[StockEvent], fields: dict[str, Any], after: tuple[int, int, int]
) -> None:
    assert next_levels(BEFORE, ledger_event(model, **fields)) == after


def test_available_to_promise_is_on_hand_less_reserved_and_safety_stock() -> None:
    assert BEFORE.available_to_promise == 29
    assert Levels() == (0, 0, 0)
