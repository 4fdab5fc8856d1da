"""Last-minute changes (streams.orders): a channel's revision after the store accepted the order
is an amendment the store answers; once the order is ready it is refused, on the log."""

from __future__ import annotations

from typing import Any

from events.lifecycle import OrderStatus
from events.models import (
    Actor,
    ActorKind,
    OrderAcceptedByStore,
    OrderAmendmentAccepted,
    OrderAmendmentRefused,
    OrderAmendmentRequested,
    OrderLine,
    OrderModified,
    OrderPreparing,
    OrderReady,
)
from streams import orders
from tests.streams.test_orders import NOW, answer, context, lunch, run, teapots, types

STAFF = Actor(kind=ActorKind.USER, id="chef.wang")


def step(kind: type, n: int, order_id: str = "o-1", location: str = "S01", **fields: Any) -> Any:
    return kind(event_id=f"{order_id}-step-{n}", sequence=1, occurred_at=NOW, recorded_at=NOW,
                correlation_id=order_id, actor=STAFF, order_id=order_id, channel="",
                external_id="", location=location, **fields)  # fmt: skip


def revised(revision: int, bowls: int, order_id: str = "o-1", **changes: Any) -> OrderModified:
    """The lunch order as its channel revises it: `bowls` dumplings instead of two."""
    line = lunch().lines[0].model_copy(update={"quantity": bowls})
    fields = dict(
        event_id=f"{order_id}-rev-{revision}", order_id=order_id, sequence=1, occurred_at=NOW,
        recorded_at=NOW, correlation_id=order_id, actor=lunch().actor, channel="webshop",
        external_id="1001", revision=revision, lines=[line],
        delivery_fee=lunch().delivery_fee, total=line.unit_price * bowls + lunch().delivery_fee,
    )  # fmt: skip
    return OrderModified.model_validate(fields | changes)


def accepted_lunch(*more: Any) -> tuple[orders.OrderState, list[Any], list[Any]]:
    state, log, commands = run([lunch(), step(OrderAcceptedByStore, 1), *more], context())
    assert state is not None
    return state, log, commands


def test_a_revision_after_acceptance_waits_for_the_store_and_changes_nothing_yet() -> None:
    before, _, _ = accepted_lunch()
    state, log, commands = accepted_lunch(revised(1, bowls=3))
    assert types(log)[-1] == "OrderAmendmentRequested"
    request = log[-1]
    assert isinstance(request, OrderAmendmentRequested) and request.revision == 1
    assert request.lines[0].quantity == 3 and request.actor == lunch().actor
    assert state.status is OrderStatus.ACCEPTED_BY_STORE
    assert state.order == before.order and state.pending == request
    assert commands == []


def test_the_store_accepts_and_the_revision_follows_without_leaving_the_kitchen() -> None:
    state, log, commands = accepted_lunch(
        step(OrderPreparing, 2), revised(1, bowls=3), step(OrderAmendmentAccepted, 3, revision=0)
    )
    assert types(log)[-2:] == ["OrderAmendmentAccepted", "OrderModified"]
    accepted, applied = log[-2:]
    assert accepted.revision == 1  # 0: whichever is pending
    assert type(applied) is OrderModified and applied.causation_id == accepted.event_id
    assert state.status is OrderStatus.PREPARING and state.pending is None
    assert state.order.lines[0].quantity == 3 and state.order.total == applied.total
    assert commands == []  # made to order: nothing to reserve again


def test_the_store_refuses_with_a_reason_and_the_order_stays_as_it_was() -> None:
    before, _, _ = accepted_lunch()
    refusal = step(OrderAmendmentRefused, 3, revision=1, reason_code="COOKED", reason="in the pot")
    state, log, _ = accepted_lunch(revised(1, bowls=3), refusal)
    assert types(log)[-1] == "OrderAmendmentRefused"
    assert (log[-1].reason_code, log[-1].actor) == ("COOKED", STAFF)
    assert state.order == before.order and state.pending is None


def test_after_ready_a_revision_is_refused_on_the_log_as_too_late() -> None:
    state, log, _ = accepted_lunch(
        step(OrderPreparing, 2), step(OrderReady, 3), revised(1, bowls=3)
    )
    refused = log[-1]
    assert isinstance(refused, OrderAmendmentRefused)
    assert (refused.reason_code, refused.revision, refused.location) == ("TOO_LATE", 1, None)
    assert refused.causation_id == "o-1-rev-1" and state.order.lines[0].quantity == 2
    again = orders.decide(state, revised(1, bowls=3), context())
    assert (again.to_log, again.refusal) == ([], None)  # a redelivery: answered already


def test_an_amendment_still_open_when_the_order_is_ready_is_refused_then() -> None:
    state, log, _ = accepted_lunch(
        step(OrderPreparing, 2), revised(1, bowls=3), step(OrderReady, 3)
    )
    assert types(log)[-2:] == ["OrderReady", "OrderAmendmentRefused"]
    assert log[-1].reason_code == "TOO_LATE" and state.pending is None
    late = orders.decide(state, step(OrderAmendmentAccepted, 4, revision=1), context())
    assert late.refusal is not None and "not allowed" in late.refusal and late.to_log == []


def test_a_newer_revision_supersedes_the_pending_one() -> None:
    state, log, _ = accepted_lunch(revised(1, bowls=3), revised(2, bowls=4))
    assert types(log)[-2:] == ["OrderAmendmentRefused", "OrderAmendmentRequested"]
    assert (log[-2].reason_code, log[-2].revision) == ("SUPERSEDED", 1)
    assert state.pending is not None and state.pending.revision == 2
    stale_answer = orders.decide(state, step(OrderAmendmentAccepted, 5, revision=1), context())
    assert stale_answer.refusal is not None and "not the pending one (2)" in stale_answer.refusal
    stale = orders.decide(
        state, revised(1, bowls=9).model_copy(update={"event_id": "x"}), context()
    )
    assert stale.refusal is not None and "stale" in stale.refusal


def test_answers_need_a_pending_amendment_and_the_order_s_own_store() -> None:
    state, _, _ = accepted_lunch()
    nothing = orders.decide(state, step(OrderAmendmentAccepted, 3, revision=0), context())
    assert nothing.refusal is not None and "no amendment" in nothing.refusal
    state, _, _ = accepted_lunch(revised(1, bowls=3))
    other = step(OrderAmendmentAccepted, 3, revision=0, location="S02")
    elsewhere = orders.decide(state, other, context())
    assert elsewhere.refusal is not None and "not S02's to send" in elsewhere.refusal


def test_a_revision_that_would_not_pass_validation_is_refused_at_once() -> None:
    state, log, _ = accepted_lunch(revised(1, bowls=3, total=1))
    assert isinstance(log[-1], OrderAmendmentRefused) and log[-1].reason_code == "INVALID"
    assert "validation" in log[-1].reason and state.pending is None


def test_a_revision_that_changes_goods_from_stock_is_refused_and_the_reservation_kept() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, _, (reserve,) = run([teapots()], ctx)
    three = revised(1, bowls=3, order_id="o-ship").model_copy(
        update={"lines": [OrderLine(sku="KETTLE-IRON", name="铸铁茶壶", quantity=3,
                                    unit_price=45900)], "total": 45900 * 3, "delivery_fee": 0}
    )  # fmt: skip
    accept = step(OrderAcceptedByStore, 1, order_id="o-ship", location="WH-BJ")
    state, log, commands = run([teapots(), answer(reserve, ok=True), accept, three], ctx)
    assert isinstance(log[-1], OrderAmendmentRefused) and log[-1].reason_code == "STOCKED_GOODS"
    assert state is not None and reserve.reservation_id in state.held
    assert [c.event_type for c in commands] == ["ReserveStock"]  # nothing given back


def test_the_amendment_request_is_not_an_input_anyone_may_send() -> None:
    state, log, _ = accepted_lunch(revised(1, bowls=3))
    forged = log[-1].model_copy(update={"event_id": "forged", "revision": 5})
    decision = orders.decide(state, forged, context())
    assert decision.refusal is not None and decision.to_log == []


def test_the_state_folded_from_an_amended_log_is_the_state_the_agent_kept() -> None:
    state, log, _ = accepted_lunch(
        revised(1, bowls=3), revised(2, bowls=4), step(OrderAmendmentAccepted, 3, revision=2),
        revised(3, bowls=1), step(OrderAmendmentRefused, 4, revision=3, reason_code="NO",
                                  reason="no"),
    )  # fmt: skip
    assert orders.fold(log) == state
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert state.order.lines[0].quantity == 4 and state.revision == 3


def test_a_revision_that_changes_nothing_is_passed_over_at_every_stage() -> None:
    """Square and WooCommerce send the whole order back on every status change, ours too: an
    echo must not become an amendment, a refusal or a second routing."""
    echo = revised(1, bowls=2, payment_status="paid")
    ready = [step(OrderAcceptedByStore, 1), step(OrderPreparing, 2), step(OrderReady, 3)]
    for before in ([], ready[:1], ready):
        state, log, _ = run([lunch(), *before], context())
        assert state is not None
        passed = orders.decide(state, echo, context())
        assert (passed.to_log, passed.commands, passed.refusal) == ([], [], None), before
    state, _, _ = accepted_lunch()
    changed = orders.decide(state, revised(1, bowls=3), context())
    assert [type(e) for e in changed.to_log] == [OrderAmendmentRequested]
