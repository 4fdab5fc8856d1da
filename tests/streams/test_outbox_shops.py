"""The rows of `streams.outbox.SHOP_CALLS` for the shop platforms (Square, WooCommerce): pure
decisions, no broker."""

from __future__ import annotations

from typing import Any

from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    Event,
    LocationPaused,
    OrderAcceptedByStore,
    OrderAmendmentAccepted,
    OrderAmendmentRefused,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderMode,
    OrderPickedUp,
    OrderReady,
    OrderRouted,
    StockReceived,
    StockReserved,
)
from events.platform_calls import CallKind
from streams.catalogue import Catalogue
from streams.outbox import OutboxState, decide
from streams.reference import load_catalogue
from tests.factories import T0, received

STORE = Actor(kind=ActorKind.USER, id="cook")
SERVED = ("meituan", "eleme", "square", "woocommerce")


def _order(kind: type[Event], n: int, channel: str, **fields: Any) -> Any:
    envelope = dict(
        event_id=f"{kind.__name__}-{n}", order_id="o-1", sequence=n, occurred_at=T0,
        recorded_at=T0, correlation_id="o-1", actor=fields.pop("actor", STORE),
        channel=channel, external_id="723",
    )  # fmt: skip
    return kind.model_validate(envelope | fields)


def _placed(channel: str, mode: OrderMode = OrderMode.PICKUP) -> OutboxState:
    state = OutboxState(catalogue=load_catalogue())
    decide(
        state,
        received(order_id="o-1", channel=channel, external_id="723", mode=mode),
        platforms=SERVED,
    )
    decide(
        state,
        _order(OrderRouted, 2, channel, location="S01", groups=[], reasons=[]),
        platforms=SERVED,
    )
    return state


def _kinds(state: OutboxState, event: Event) -> list[tuple[str, CallKind]]:
    return [(c.platform, c.kind) for c in decide(state, event, platforms=SERVED)]


def test_a_square_pickup_order_is_told_each_step_and_completed_once() -> None:
    state = _placed("square")
    assert _kinds(state, _order(OrderAcceptedByStore, 3, "square", location="S01")) == [
        ("square", CallKind.CONFIRM)
    ]
    assert _kinds(state, _order(OrderReady, 4, "square", location="S01")) == [
        ("square", CallKind.READY)
    ]
    handed = _order(OrderPickedUp, 5, "square", location="S01", picked_up_by="customer")
    [call] = decide(state, handed, platforms=SERVED)
    assert (call.kind, call.platform_order_id) == (CallKind.COMPLETE, "723")
    # The order's completion afterwards tells nothing more: COMPLETE is told once per order.
    assert (
        decide(state, _order(OrderCompleted, 6, "square", location="S01"), platforms=SERVED) == []
    )


def test_a_pickup_collected_by_a_courier_completes_once_at_the_hand_over() -> None:
    state = _placed("square")
    sent = _order(OrderPickedUp, 3, "square", location="S01", picked_up_by="Lin")
    assert _kinds(state, sent) == [("square", CallKind.COMPLETE)]  # the customer sent Lin
    assert _kinds(state, _order(OrderDelivered, 4, "square", location="S01")) == []
    assert _kinds(state, _order(OrderCompleted, 5, "square", location="S01")) == []


def test_a_woocommerce_delivery_completes_on_delivery_and_is_not_told_ready() -> None:
    state = _placed("woocommerce", OrderMode.DELIVERY)
    assert _kinds(state, _order(OrderReady, 3, "woocommerce", location="S01")) == []
    courier = _order(OrderPickedUp, 4, "woocommerce", location="S01", picked_up_by="Lin")
    assert decide(state, courier, platforms=SERVED) == []  # handed to a courier, not delivered
    assert _kinds(state, _order(OrderDelivered, 5, "woocommerce", location="S01")) == [
        ("woocommerce", CallKind.COMPLETE)
    ]


def test_a_woocommerce_pickup_is_told_ready_in_a_note() -> None:
    state = _placed("woocommerce")
    assert _kinds(state, _order(OrderReady, 3, "woocommerce", location="S01")) == [
        ("woocommerce", CallKind.READY)
    ]


def test_our_cancellation_cancels_with_our_own_reason_code_on_a_shop() -> None:
    state = _placed("square")
    system = Actor(kind=ActorKind.SYSTEM, id="x")
    cancelled = _order(OrderCancelled, 3, "square", actor=system, cancelled_by=CancelledBy.SYSTEM,
                       reason_code="NOT_ACCEPTED", reason="late")  # fmt: skip
    [call] = decide(state, cancelled, platforms=SERVED)
    assert (call.kind, call.reason_code, call.reason) == (CallKind.CANCEL, "NOT_ACCEPTED", "late")


def test_amendment_answers_are_told_to_no_platform() -> None:
    refused = dict(location="S01", revision=2, reason_code="TOO_LATE", reason="ready already")
    for channel in ("woocommerce", "square", "meituan", "eleme"):
        state = _placed(channel)
        calls = decide(state, _order(OrderAmendmentRefused, 3, channel, **refused),
                       platforms=SERVED)  # fmt: skip
        accepted = decide(state, _order(OrderAmendmentAccepted, 4, channel, location="S01",
                                        revision=3), platforms=SERVED)  # fmt: skip
        assert calls == [] and accepted == [], channel


def test_shelves_and_stores_are_told_to_the_delivery_platforms_only() -> None:
    catalogue = load_catalogue()
    listed = ["meituan:7001", "eleme:168830201", "square:L8Q0J1YH3V5XP", "woocommerce:1"]
    store = catalogue.locations["S01"].model_copy(update={"aliases": listed})
    state = OutboxState(
        catalogue=Catalogue(catalogue.products, catalogue.locations | {"S01": store})
    )
    stock = dict(sequence=1, occurred_at=T0, recorded_at=T0, correlation_id="c", actor=STORE,
                 sku="MUG-CERAMIC", location="S01")  # fmt: skip
    decide(state, StockReceived(event_id="s1", quantity=1, **stock), platforms=SERVED)
    calls = decide(state, StockReserved(event_id="s2", quantity=1, reservation_id="r",
                                        order_id="o", **stock), platforms=SERVED)  # fmt: skip
    assert {c.platform for c in calls} == {"meituan", "eleme"}
    envelope = dict(sequence=1, occurred_at=T0, recorded_at=T0, correlation_id="c", actor=STORE)
    paused = LocationPaused(event_id="p1", entity_id="S01", reason="busy", **envelope)
    assert {c.platform for c in decide(state, paused, platforms=SERVED)} == {"meituan", "eleme"}
