"""An order's whole history held to the lifecycle, strictly: `fold(events) -> OrderState`
raises `InvalidTransition` on a move `events.lifecycle.TRANSITIONS` does not allow, a gap in
the sequence, another order's event or a history that does not start with OrderReceived; an
event whose id was already applied is a no-op (redelivery).

Only tests and the fault harness use it (tests/faults/checker.py, the reservation protocol's
model test, tests/projections/scenario.py): the worker and the projector fold an order's
status with `events.lifecycle.next_status`, which reads any log leniently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from events.lifecycle import TRANSITIONS, OrderStatus
from events.models import (
    OrderAccepted,
    OrderAcceptedByStore,
    OrderEvent,
    OrderModified,
    OrderPrioritised,
    OrderReceived,
    OrderRouted,
)

S = OrderStatus


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
