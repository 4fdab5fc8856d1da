"""The order state machine: the statuses, the table of moves, and `next_status`.

The table `TRANSITIONS` is the whole lifecycle (drawn in docs/order-lifecycle.md): for each
status, which event types may follow and the status each leads to. `next_status` is the one
function that folds an order's status, for the order process and the read model alike. (Tests
and the fault harness hold whole histories to the table strictly:
tests/events/lifecycle_checker.py.)
"""

from __future__ import annotations

from enum import StrEnum

from events.models import (
    CourierStatusUpdated,
    OrderAccepted,
    OrderAcceptedByStore,
    OrderAmendmentAccepted,
    OrderAmendmentRefused,
    OrderAmendmentRequested,
    OrderAtRisk,
    OrderCancelled,
    OrderCompleted,
    OrderDeclinedByStore,
    OrderDelivered,
    OrderEvent,
    OrderHeld,
    OrderModified,
    OrderPartiallyReserved,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderRefunded,
    OrderRejected,
    OrderReservationFailed,
    OrderReservationReleased,
    OrderReserved,
    OrderRouted,
    RefundRequestClosed,
    RefundRequested,
    ReturnApproved,
    ReturnDenied,
    ReturnInspected,
    ReturnLabelCreated,
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
# A channel's revision applies at once while the order is open (back to validation); goes to
# the store as an amendment while the store has it; is refused once it is ready.
REVISABLE = frozenset(_OPEN)
AMENDABLE = (S.ACCEPTED_BY_STORE, S.PREPARING)
TOO_LATE_TO_AMEND = (S.READY, S.PICKED_UP, S.SHIPPED, S.DELIVERED, S.COMPLETED)
AT_RISK_STATUSES = (S.PRIORITISED, S.ACCEPTED_BY_STORE, S.PREPARING)

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
        OrderDeclinedByStore: S.ACCEPTED,
    },
    S.PRIORITISED: {
        OrderPrioritised: S.PRIORITISED, OrderAcceptedByStore: S.ACCEPTED_BY_STORE,
        OrderReservationReleased: S.ACCEPTED,
        # The store will not make it: routed again without it (or rejected, none left).
        OrderDeclinedByStore: S.ACCEPTED,
    },
    S.ACCEPTED_BY_STORE: {OrderPreparing: S.PREPARING},
    S.PREPARING: {OrderReady: S.READY},
    S.READY: {OrderPickedUp: S.PICKED_UP, ShipmentCreated: S.SHIPPED},
    S.PICKED_UP: {
        ShipmentStatusUpdated: S.PICKED_UP, OrderDelivered: S.DELIVERED,
        OrderCompleted: S.COMPLETED,
    },
    # (a split order's other location ships its part: ShipmentCreated again)
    S.SHIPPED: {
        ShipmentCreated: S.SHIPPED, ShipmentStatusUpdated: S.SHIPPED,
        OrderDelivered: S.DELIVERED,
    },
    S.DELIVERED: {OrderCompleted: S.COMPLETED, ReturnRequested: S.RETURN_REQUESTED},
    S.COMPLETED: {ReturnRequested: S.RETURN_REQUESTED, OrderRefunded: S.REFUNDED},
    # A return approved or its label bought keeps the order waiting for the goods; a denied
    # one goes to completed, not back to delivered: the sale stands either way, nobody sends a
    # carrier order its completion later, and a completed order may still ask for a return.
    S.RETURN_REQUESTED: {
        ReturnReceived: S.RETURNED, OrderRefunded: S.REFUNDED, OrderCompleted: S.COMPLETED,
        ReturnApproved: S.RETURN_REQUESTED, ReturnLabelCreated: S.RETURN_REQUESTED,
        ReturnDenied: S.COMPLETED,
    },
    # Inspection (and the restock it leads to) happens between receipt and refund.
    S.RETURNED: {OrderRefunded: S.REFUNDED, ReturnInspected: S.RETURNED},
    S.CANCELLED: {OrderReservationReleased: S.CANCELLED, OrderRefunded: S.REFUNDED},
    S.REJECTED: {OrderReservationReleased: S.REJECTED, OrderRefunded: S.REFUNDED},
    S.REFUNDED: {},
}  # fmt: skip
for _status in _OPEN:
    TRANSITIONS[_status][OrderModified] = S.RECEIVED
# Once its store has accepted it, a revision is an amendment the store accepts or refuses; the
# order keeps its status (an accepted one is logged as `OrderModified` after the acceptance).
# Once it is ready, an amendment is refused (TOO_LATE), and the refusal is on the log.
for _status in AMENDABLE:
    for _event in (OrderAmendmentRequested, OrderAmendmentAccepted, OrderAmendmentRefused,
                   OrderModified):  # fmt: skip
        TRANSITIONS[_status][_event] = _status
for _status in TOO_LATE_TO_AMEND:
    TRANSITIONS[_status][OrderAmendmentRefused] = _status
# The order's own alert before a promise is missed (`streams.orders.at_risk_due`) changes
# nothing but tells people: while it waits for its store and while the store makes it.
for _status in AT_RISK_STATUSES:
    TRANSITIONS[_status][OrderAtRisk] = _status
for _status in _CANCELLABLE:
    TRANSITIONS[_status][OrderCancelled] = S.CANCELLED
# What a delivery platform reports (its rider's progress, a customer's refund request and its
# outcome) is logged on the order as information wherever the order stands once it is judged:
# the status stays. The moves it leads to are the order agent's (`streams.orders`): a rider's
# pickup of a ready order is its hand-off, an agreed refund of an unfinished one its cancellation.
PLATFORM_NOTICES: tuple[type[OrderEvent], ...] = (
    CourierStatusUpdated, RefundRequested, RefundRequestClosed,
)  # fmt: skip
for _status in S:
    if _status not in (S.RECEIVED, S.REFUNDED):
        for _notice in PLATFORM_NOTICES:
            TRANSITIONS[_status][_notice] = _status

TERMINAL = frozenset(s for s, moves in TRANSITIONS.items() if not moves)


def _only_target() -> dict[type[OrderEvent], OrderStatus]:
    """Event types that lead to the same status from wherever the lifecycle allows them."""
    targets: dict[type[OrderEvent], set[OrderStatus]] = {}
    for moves in TRANSITIONS.values():
        for event_type, target in moves.items():
            targets.setdefault(event_type, set()).add(target)
    return {e: next(iter(t)) for e, t in targets.items() if len(t) == 1}


_ONLY_TARGET = _only_target()


def next_status(status: OrderStatus | None, event_type: type[OrderEvent]) -> OrderStatus:
    """The status an event of `event_type` leads an order to from `status` (None: the order
    has no history yet). The one transition function: the order process (`streams.orders`)
    and the read model (`projections.orders`, and the native fold through `native_fold`) fold
    an order's status with it.

    Every event the order process logs is a move TRANSITIONS allows. A log is read leniently
    all the same, so the worker and the read model agree on any log: a move the lifecycle does
    not allow goes where its event type always leads (an OrderCancelled to cancelled), else
    leaves the status as it is; a history that does not start with the order's receipt starts
    received."""
    if status is not None:
        target = TRANSITIONS[status].get(event_type)
        if target is not None:
            return target
    target = _ONLY_TARGET.get(event_type)
    if target is not None:
        return target
    return S.RECEIVED if status is None else status


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
