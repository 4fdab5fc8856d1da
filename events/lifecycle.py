"""The order state machine: `fold(events) -> OrderState`, refusing illegal transitions.

The table `TRANSITIONS` is the whole lifecycle (drawn in docs/order-lifecycle.md): for each
status, which event types may follow and the status each leads to. Anything else raises
`InvalidTransition` naming the order, its status and the event. Events apply in sequence;
an event whose id was already applied is a no-op (redelivery).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from events.models import (
    OrderAccepted,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderEvent,
    OrderHeld,
    OrderModified,
    OrderPartiallyReserved,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderReceived,
    OrderRefunded,
    OrderRejected,
    OrderReservationFailed,
    OrderReservationReleased,
    OrderReserved,
    OrderRouted,
    ReturnReceived,
    ReturnRequested,
    ReviewApproved,
    ReviewRejected,
    ShipmentCreated,
    ShipmentStatusUpdated,
)


class OrderStatus(StrEnum):
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    HELD = "held"
    ROUTED = "routed"
    PARTIALLY_RESERVED = "partially_reserved"
    RESERVATION_FAILED = "reservation_failed"
    RESERVED = "reserved"
    PRIORITISED = "prioritised"
    ACCEPTED_BY_STORE = "accepted_by_store"
    PREPARING = "preparing"
    READY = "ready"
    PICKED_UP = "picked_up"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    RETURN_REQUESTED = "return_requested"
    RETURNED = "returned"
    REFUNDED = "refunded"


S = OrderStatus
# Before fulfilment starts an order can still be modified (back to validation) or cancelled.
_OPEN = (S.RECEIVED, S.ACCEPTED, S.HELD, S.ROUTED, S.PARTIALLY_RESERVED, S.RESERVATION_FAILED,
         S.RESERVED, S.PRIORITISED)  # fmt: skip
_CANCELLABLE = (*_OPEN, S.ACCEPTED_BY_STORE, S.PREPARING, S.READY)

TRANSITIONS: dict[OrderStatus, dict[type[OrderEvent], OrderStatus]] = {
    S.RECEIVED: {OrderAccepted: S.ACCEPTED, OrderRejected: S.REJECTED},
    S.ACCEPTED: {
        # Rejected here when no location can take the order (closed, paused, out of range).
        OrderHeld: S.HELD, OrderRouted: S.ROUTED, OrderReserved: S.RESERVED,
        OrderRejected: S.REJECTED,
        OrderPartiallyReserved: S.PARTIALLY_RESERVED,
        OrderReservationFailed: S.RESERVATION_FAILED,
    },
    S.HELD: {ReviewApproved: S.ACCEPTED, ReviewRejected: S.CANCELLED},
    S.ROUTED: {
        # Made-to-order goods need no reservation: a routed order is prioritised directly.
        OrderRouted: S.ROUTED, OrderReserved: S.RESERVED, OrderPrioritised: S.PRIORITISED,
        OrderPartiallyReserved: S.PARTIALLY_RESERVED,
        OrderReservationFailed: S.RESERVATION_FAILED,
    },
    S.PARTIALLY_RESERVED: {
        OrderReserved: S.RESERVED, OrderRouted: S.PARTIALLY_RESERVED,
        OrderPartiallyReserved: S.PARTIALLY_RESERVED,
        OrderReservationReleased: S.ACCEPTED, OrderReservationFailed: S.RESERVATION_FAILED,
    },
    S.RESERVATION_FAILED: {
        OrderRouted: S.ROUTED, OrderReserved: S.RESERVED, OrderRejected: S.REJECTED,
        OrderReservationReleased: S.RESERVATION_FAILED,
    },
    S.RESERVED: {
        OrderRouted: S.RESERVED, OrderPrioritised: S.PRIORITISED,
        OrderAcceptedByStore: S.ACCEPTED_BY_STORE, OrderReservationReleased: S.ACCEPTED,
    },
    S.PRIORITISED: {
        OrderPrioritised: S.PRIORITISED, OrderAcceptedByStore: S.ACCEPTED_BY_STORE,
        OrderReservationReleased: S.ACCEPTED,
    },
    S.ACCEPTED_BY_STORE: {OrderPreparing: S.PREPARING},
    S.PREPARING: {OrderReady: S.READY},
    S.READY: {OrderPickedUp: S.PICKED_UP, ShipmentCreated: S.SHIPPED},
    S.PICKED_UP: {
        ShipmentStatusUpdated: S.PICKED_UP, OrderDelivered: S.DELIVERED,
        OrderCompleted: S.COMPLETED,
    },
    S.SHIPPED: {ShipmentStatusUpdated: S.SHIPPED, OrderDelivered: S.DELIVERED},
    S.DELIVERED: {OrderCompleted: S.COMPLETED, ReturnRequested: S.RETURN_REQUESTED},
    S.COMPLETED: {ReturnRequested: S.RETURN_REQUESTED, OrderRefunded: S.REFUNDED},
    S.RETURN_REQUESTED: {
        ReturnReceived: S.RETURNED, OrderRefunded: S.REFUNDED, OrderCompleted: S.COMPLETED,
    },
    S.RETURNED: {OrderRefunded: S.REFUNDED},
    S.CANCELLED: {OrderReservationReleased: S.CANCELLED, OrderRefunded: S.REFUNDED},
    S.REJECTED: {OrderReservationReleased: S.REJECTED, OrderRefunded: S.REFUNDED},
    S.REFUNDED: {},
}  # fmt: skip
for _status in _OPEN:
    TRANSITIONS[_status][OrderModified] = S.RECEIVED
for _status in _CANCELLABLE:
    TRANSITIONS[_status][OrderCancelled] = S.CANCELLED

TERMINAL = frozenset(s for s, moves in TRANSITIONS.items() if not moves)


class InvalidTransition(ValueError):
    """An event the order's current status does not allow; carries a machine-readable reason."""

    def __init__(self, *, order_id: str, status: OrderStatus | None, event: OrderEvent,
                 reason: str) -> None:  # fmt: skip
        self.order_id = order_id
        self.status = status
        self.event_type = event.event_type
        self.reason = reason
        state = status.value if status else "no history"
        super().__init__(
            f"order {order_id}: {event.event_type} (sequence {event.sequence}) is not allowed "
            f"when {state}: {reason}"
        )


@dataclass(frozen=True)
class OrderState:
    """What the history of one order adds up to."""

    order_id: str
    status: OrderStatus
    version: int
    channel: str
    external_id: str
    total: int
    currency: str
    location: str | None = None
    applied: frozenset[str] = field(default_factory=frozenset, repr=False)


def apply(state: OrderState | None, event: OrderEvent) -> OrderState:
    """The state after `event`; the same state for an event already applied."""
    if state is not None and event.event_id in state.applied:
        return state
    if state is None:
        if not isinstance(event, OrderReceived):
            raise InvalidTransition(
                order_id=event.order_id,
                status=None,
                event=event,
                reason="an order's history starts with OrderReceived",
            )
        if event.sequence != 1:
            raise InvalidTransition(
                order_id=event.order_id,
                status=None,
                event=event,
                reason=f"first sequence must be 1, got {event.sequence}",
            )
        return OrderState(order_id=event.order_id, status=S.RECEIVED, version=1,
                          channel=event.channel, external_id=event.external_id,
                          total=event.total, currency=event.currency,
                          applied=frozenset({event.event_id}))  # fmt: skip
    if event.order_id != state.order_id:
        raise InvalidTransition(
            order_id=state.order_id,
            status=state.status,
            event=event,
            reason=f"event belongs to order {event.order_id}",
        )
    if event.sequence != state.version + 1:
        raise InvalidTransition(
            order_id=state.order_id,
            status=state.status,
            event=event,
            reason=f"expected sequence {state.version + 1}",
        )
    target = TRANSITIONS[state.status].get(type(event))
    if target is None:
        allowed = ", ".join(sorted(e.__name__ for e in TRANSITIONS[state.status])) or "nothing"
        raise InvalidTransition(
            order_id=state.order_id, status=state.status, event=event, reason=f"allowed: {allowed}"
        )
    changes: dict[str, Any] = {}
    if isinstance(event, OrderModified | OrderAccepted):
        changes["total"] = event.total
    if isinstance(event, OrderRouted | OrderPrioritised | OrderAcceptedByStore):
        changes["location"] = event.location
    return replace(
        state,
        status=target,
        version=event.sequence,
        applied=state.applied | {event.event_id},
        **changes,
    )


def fold(events: Iterable[OrderEvent], state: OrderState | None = None) -> OrderState:
    """Apply `events` in order to `state` (or to nothing); refuses an empty history."""
    for event in events:
        state = apply(state, event)
    if state is None:
        raise ValueError("an order needs at least its OrderReceived")
    return state


def lifecycle_markdown() -> str:
    """The transition table and a Mermaid state diagram, as kept in docs/order-lifecycle.md."""
    rows = ["| status | event | next status |", "|---|---|---|"]
    diagram = ["```mermaid", "stateDiagram-v2", "    [*] --> received: OrderReceived"]
    for status, moves in TRANSITIONS.items():
        for event, target in sorted(moves.items(), key=lambda m: m[0].__name__):
            rows.append(f"| {status.value} | {event.__name__} | {target.value} |")
            diagram.append(f"    {status.value} --> {target.value}: {event.__name__}")
    for status in sorted(TERMINAL):
        diagram.append(f"    {status.value} --> [*]")
    diagram.append("```")
    return "\n".join([*rows, "", *diagram]) + "\n"


if __name__ == "__main__":
    print(lifecycle_markdown(), end="")
