"""What a delivery platform reports (streams.orders): its cancellation, a refund request and its
outcome, its rider's progress — logged on the order with the platform as actor, and the moves
they stand for derived once, whatever the order of the pushes."""

from __future__ import annotations

from typing import Any

from events.lifecycle import OrderStatus
from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    CommitStock,
    CourierStatusUpdated,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderLine,
    OrderPreparing,
    OrderReady,
    RefundRequestClosed,
    RefundRequested,
    ReleaseStock,
    ReserveStock,
)
from streams import orders
from tests.streams.test_amendments import step
from tests.streams.test_orders import NOW, answer, context, lunch, run, types

MEITUAN = Actor(kind=ActorKind.CHANNEL, id="meituan")
ENVELOPE: dict[str, Any] = dict(
    sequence=1, occurred_at=NOW, recorded_at=NOW, correlation_id="o-1", actor=MEITUAN,
    order_id="o-1", channel="meituan", external_id="1001",
)  # fmt: skip


def courier(status: str, n: int = 1) -> CourierStatusUpdated:
    return CourierStatusUpdated(event_id=f"rider-{status}-{n}", status=status,
                                platform_status=f"meituan:{n}", **ENVELOPE)  # fmt: skip


def requested(**fields: Any) -> RefundRequested:
    return RefundRequested(event_id="refund-asked", refund_id="r1", kind="refund",
                           reason="不想要了", **ENVELOPE | fields)  # fmt: skip


def closed(outcome: str, **fields: Any) -> RefundRequestClosed:
    return RefundRequestClosed(event_id=f"refund-{outcome}", refund_id="r1", outcome=outcome,
                               **ENVELOPE | fields)  # fmt: skip


def platform_cancel(n: int = 1) -> OrderCancelled:
    return OrderCancelled(event_id=f"cancel-{n}", cancelled_by=CancelledBy.CUSTOMER,
                          reason_code="meituan:1102", reason="用户取消", **ENVELOPE)  # fmt: skip


def at_store(*more: Any, stock: bool = False) -> tuple[orders.OrderState, list[Any], list[Any]]:
    """A delivery at S01 accepted by its store; with `stock`, a mug from S01's shelf."""
    if not stock:
        state, log, commands = run([lunch(), step(OrderAcceptedByStore, 1), *more], context())
        assert state is not None
        return state, log, commands
    ctx = context({("MUG-CERAMIC", "S01"): 5})
    mug = OrderLine(sku="MUG-CERAMIC", name="陶瓷杯", quantity=1, unit_price=6800)
    order = lunch(lines=[mug], delivery_fee=0, total=6800)
    state, log, commands = run([order], ctx)
    reserve = [c for c in commands if isinstance(c, ReserveStock)]
    state, log2, commands2 = run([order, *(answer(c, ok=True) for c in reserve),
                                  step(OrderAcceptedByStore, 1), *more], ctx)  # fmt: skip
    assert state is not None
    return state, log2, commands2


def test_a_rider_picking_up_a_ready_order_hands_it_off_and_commits_its_stock() -> None:
    state, log, commands = at_store(step(OrderPreparing, 2), step(OrderReady, 3),
                                    courier("picked_up"), stock=True)  # fmt: skip
    assert types(log)[-2:] == ["CourierStatusUpdated", "OrderPickedUp"]
    pickup = log[-1]
    assert pickup.actor == MEITUAN and pickup.causation_id == "rider-picked_up-1"
    assert pickup.location == "S01" and pickup.picked_up_by == "courier"
    assert state.status is OrderStatus.PICKED_UP
    committed = [c for c in commands if isinstance(c, CommitStock)]
    assert [(c.sku, c.location) for c in committed] == [("MUG-CERAMIC", "S01")]


def test_a_kitchen_that_did_not_bump_the_ticket_is_caught_up_by_the_pickup() -> None:
    state, log, _ = at_store(courier("picked_up"))
    assert types(log)[-4:] == ["CourierStatusUpdated", "OrderPreparing", "OrderReady",
                               "OrderPickedUp"]  # fmt: skip
    assert [e.sequence for e in log[-4:]] == list(range(log[-5].sequence + 1, log[-5].sequence + 5))
    assert state.status is OrderStatus.PICKED_UP


def test_a_delivery_reported_before_its_pickup_moves_the_order_once() -> None:
    state, log, _ = at_store(step(OrderPreparing, 2), step(OrderReady, 3),
                             courier("delivered"), courier("picked_up"))  # fmt: skip
    assert types(log)[-4:] == ["CourierStatusUpdated", "OrderPickedUp", "OrderDelivered",
                               "CourierStatusUpdated"]  # fmt: skip
    assert state.status is OrderStatus.DELIVERED


def test_a_repeated_rider_push_is_taken_once() -> None:
    once, log_once, _ = at_store(step(OrderPreparing, 2), step(OrderReady, 3), courier("picked_up"))
    twice, log_twice, _ = at_store(step(OrderPreparing, 2), step(OrderReady, 3),
                                   courier("picked_up"), courier("picked_up"))  # fmt: skip
    assert types(log_twice) == types(log_once) and twice.version == once.version


def test_an_assigned_or_arrived_rider_is_information_only() -> None:
    before, _, _ = at_store()
    state, log, commands = at_store(courier("assigned"), courier("arrived", 2))
    assert types(log)[-2:] == ["CourierStatusUpdated", "CourierStatusUpdated"]
    assert state.status is before.status is OrderStatus.ACCEPTED_BY_STORE
    assert commands == []


def test_a_rider_report_for_an_order_never_received_is_refused_with_the_reason() -> None:
    decision = orders.decide(None, courier("picked_up"), context())
    assert decision.to_log == [] and "never received" in (decision.refusal or "")


def test_a_platform_cancellation_releases_what_the_order_holds() -> None:
    state, log, commands = at_store(platform_cancel(), stock=True)
    assert types(log)[-1] == "OrderCancelled" and log[-1].actor == MEITUAN
    assert state.status is OrderStatus.CANCELLED
    released = [c for c in commands if isinstance(c, ReleaseStock)]
    assert [(c.sku, c.reason) for c in released] == [("MUG-CERAMIC", "CANCELLED")]


def test_a_second_platform_cancellation_is_harmless_and_not_dead_lettered() -> None:
    state, _, _ = at_store(platform_cancel())
    decision = orders.decide(state, platform_cancel(2), context())
    assert decision.to_log == [] and decision.refusal is None


def test_a_platform_cancellation_after_pickup_is_refused_with_the_reason() -> None:
    state, _, _ = at_store(courier("picked_up"))
    decision = orders.decide(state, platform_cancel(), context())
    assert decision.to_log == []
    assert "picked_up: OrderCancelled is not allowed" in (decision.refusal or "")


def test_an_agreed_full_refund_of_an_unfinished_order_cancels_it() -> None:
    state, log, commands = at_store(requested(), closed("agreed"), stock=True)
    assert types(log)[-3:] == ["RefundRequested", "RefundRequestClosed", "OrderCancelled"]
    cancel = log[-1]
    assert cancel.reason_code == orders.REFUND_AGREED and cancel.actor == MEITUAN
    assert cancel.cancelled_by is CancelledBy.CUSTOMER and cancel.causation_id == "refund-agreed"
    assert state.status is OrderStatus.CANCELLED
    assert [c.sku for c in commands if isinstance(c, ReleaseStock)] == ["MUG-CERAMIC"]
    # ... and the platform's own cancellation that follows changes nothing.
    assert orders.decide(state, platform_cancel(), context()).refusal is None


def test_a_rejected_withdrawn_or_partial_refund_leaves_the_order_as_it_is() -> None:
    for outcome, partial in (("rejected", False), ("withdrawn", False), ("agreed", True)):
        state, log, _ = at_store(requested(partial=partial), closed(outcome, partial=partial))
        assert types(log)[-2:] == ["RefundRequested", "RefundRequestClosed"], outcome
        assert state.status is OrderStatus.ACCEPTED_BY_STORE


def test_an_agreed_refund_after_delivery_is_logged_and_moves_nothing() -> None:
    state, log, _ = at_store(courier("delivered"), requested(), closed("agreed"))
    assert types(log)[-2:] == ["RefundRequested", "RefundRequestClosed"]
    assert state.status is OrderStatus.DELIVERED
