"""The order state machine: the table held strictly (tests/events/lifecycle_checker.py) and
`next_status`, the one function the worker and the read model fold an order's status with."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.lifecycle import TRANSITIONS, OrderStatus, next_status
from events.models import (
    ORDER_EVENTS,
    OrderCancelled,
    OrderEvent,
    OrderModified,
    OrderReceived,
    OrderRouted,
    ShipmentCreated,
)
from projections import orders as read_model
from projections.orders import Position
from streams import orders as streams_orders
from tests.events.lifecycle_checker import InvalidTransition, apply, fold
from tests.factories import received, strategy_for

ORDER = "o-1"
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(data: st.DataObject, event_type: type[OrderEvent], sequence: int) -> OrderEvent:
    drawn = data.draw(strategy_for(event_type))
    return event_type.model_validate(
        drawn.model_dump() | {"order_id": ORDER, "sequence": sequence, "event_id": f"e{sequence}"}
    )


def legal_history(data: st.DataObject, *, max_steps: int = 12) -> tuple[list[OrderEvent], Any]:
    """A random walk through TRANSITIONS: the events and the status each should lead to."""
    events: list[OrderEvent] = [received(order_id=ORDER, event_id="e1")]
    statuses = [OrderStatus.RECEIVED]
    for sequence in range(2, data.draw(st.integers(2, max_steps + 1)) + 1):
        moves = TRANSITIONS[statuses[-1]]
        if not moves:
            break
        event_type = data.draw(st.sampled_from(sorted(moves, key=lambda e: e.__name__)))
        events.append(make(data, event_type, sequence))
        statuses.append(moves[event_type])
    return events, statuses


@PROPERTY
@given(data=st.data())
def test_any_legal_sequence_folds_to_the_status_the_table_says(data: st.DataObject) -> None:
    events, statuses = legal_history(data)
    state = fold(events)
    assert state.status is statuses[-1]
    assert state.version == len(events)


@PROPERTY
@given(data=st.data())
def test_an_event_the_status_does_not_allow_is_refused(data: st.DataObject) -> None:
    events, statuses = legal_history(data)
    illegal = [e for e in ORDER_EVENTS if e not in TRANSITIONS[statuses[-1]]]
    event_type = data.draw(st.sampled_from(illegal))
    event = make(data, event_type, len(events) + 1)
    state = fold(events)
    with pytest.raises(InvalidTransition) as refused:
        apply(state, event)
    message = str(refused.value)
    assert ORDER in message and event_type.__name__ in message
    assert f"when {statuses[-1].value}" in message
    assert refused.value.status is statuses[-1]


@PROPERTY
@given(data=st.data())
def test_fold_is_deterministic_and_incremental(data: st.DataObject) -> None:
    events, _ = legal_history(data)
    cut = data.draw(st.integers(1, len(events)))
    assert fold(events) == fold(events)
    assert fold(events[cut:], fold(events[:cut])) == fold(events)


@PROPERTY
@given(data=st.data())
def test_a_duplicate_event_id_is_a_no_op(data: st.DataObject) -> None:
    events, _ = legal_history(data)
    duplicate = events[data.draw(st.integers(0, len(events) - 1))]
    position = data.draw(st.integers(events.index(duplicate) + 1, len(events)))
    redelivered = [*events[:position], duplicate, *events[position:]]
    assert fold(redelivered) == fold(events)


def test_events_out_of_sequence_are_refused() -> None:
    first = received(order_id=ORDER, event_id="e1")
    late = OrderCancelled.model_validate(
        {
            "event_id": "e3",
            "order_id": ORDER,
            "sequence": 3,
            "occurred_at": first.occurred_at,
            "recorded_at": first.recorded_at,
            "correlation_id": ORDER,
            "actor": first.actor,
            "channel": "webshop",
            "external_id": "1001",
            "cancelled_by": "customer",
            "reason_code": "CHANGED_MIND",
            "reason": "ordered twice",
        }  # fmt: skip
    )
    with pytest.raises(InvalidTransition, match="expected sequence 2"):
        fold([first, late])


def test_a_history_must_start_with_order_received() -> None:
    shipped = ShipmentCreated.model_validate(
        {
            "event_id": "e1",
            "order_id": ORDER,
            "sequence": 1,
            "occurred_at": received().occurred_at,
            "recorded_at": received().recorded_at,
            "correlation_id": ORDER,
            "actor": received().actor,
            "channel": "webshop",
            "external_id": "1001",
            "shipment_id": "s1",
            "carrier": "SF",
            "tracking_number": "SF123",
        }  # fmt: skip
    )
    with pytest.raises(InvalidTransition, match="starts with OrderReceived"):
        fold([shipped])


def test_shipping_a_cancelled_order_is_refused_with_the_reason() -> None:
    order = received(order_id=ORDER, event_id="e1")
    cancelled = OrderCancelled.model_validate(
        {
            "event_id": "e2",
            "order_id": ORDER,
            "sequence": 2,
            "occurred_at": order.occurred_at,
            "recorded_at": order.recorded_at,
            "correlation_id": ORDER,
            "actor": order.actor,
            "channel": "webshop",
            "external_id": "1001",
            "cancelled_by": "customer",
            "reason_code": "CHANGED_MIND",
            "reason": "ordered twice",
        }  # fmt: skip
    )
    shipped = ShipmentCreated.model_validate(
        {
            "event_id": "e3",
            "order_id": ORDER,
            "sequence": 3,
            "occurred_at": order.occurred_at,
            "recorded_at": order.recorded_at,
            "correlation_id": ORDER,
            "actor": order.actor,
            "channel": "webshop",
            "external_id": "1001",
            "shipment_id": "s1",
            "carrier": "SF",
            "tracking_number": "SF123",
        }  # fmt: skip
    )
    with pytest.raises(InvalidTransition) as refused:
        fold([order, cancelled, shipped])
    assert "ShipmentCreated" in str(refused.value) and "when cancelled" in str(refused.value)


# ---------------------------------------------------------------- next_status: the one fold


def test_next_status_makes_every_move_the_table_allows() -> None:
    for status, moves in TRANSITIONS.items():
        for event_type, target in moves.items():
            assert next_status(status, event_type) is target, (status, event_type)


def test_a_move_the_lifecycle_does_not_allow_goes_where_its_type_always_leads_or_nowhere() -> None:
    # OrderCancelled leads to cancelled from wherever it is allowed; OrderRouted to several.
    assert next_status(OrderStatus.DELIVERED, OrderCancelled) is OrderStatus.CANCELLED
    assert next_status(OrderStatus.REFUNDED, OrderRouted) is OrderStatus.REFUNDED


def test_an_order_with_no_history_yet_starts_received() -> None:
    assert next_status(None, OrderReceived) is OrderStatus.RECEIVED
    assert next_status(None, OrderModified) is OrderStatus.RECEIVED
    assert next_status(None, OrderRouted) is OrderStatus.RECEIVED
    assert next_status(None, OrderCancelled) is OrderStatus.CANCELLED


@PROPERTY
@given(data=st.data())
def test_the_worker_and_the_read_model_fold_an_order_to_the_same_status(
    data: st.DataObject,
) -> None:
    events, statuses = legal_history(data)
    worker: Any = None
    row: Any = None
    for n, (event, status) in enumerate(zip(events, statuses, strict=True)):
        worker = streams_orders.apply(worker, event)
        change = read_model.fold(row, event, Position("oms.orders.v1", 0, n))
        assert change is not None
        row = change.row
        assert worker.status is status
        assert row["status"] == status.value
