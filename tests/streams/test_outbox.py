"""Which calls the platforms get (streams/outbox.py): pure decisions, no broker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    Event,
    Location,
    LocationPaused,
    LocationResumed,
    LocationUpdated,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderDeclinedByStore,
    OrderDelivered,
    OrderMode,
    OrderReady,
    OrderRejected,
    OrderRouted,
    RejectionReason,
    StockReceived,
    StockReserved,
)
from events.platform_calls import CallKind
from streams.catalogue import Catalogue
from streams.outbox import OutboxState, decide, shop_id
from streams.reference import load_catalogue
from tests.factories import T0, received

STORE = Actor(kind=ActorKind.USER, id="cook")
PLATFORM = Actor(kind=ActorKind.CHANNEL, id="meituan")


def _order(kind: type[Event], n: int, *, channel: str = "meituan", **fields: Any) -> Any:
    envelope = dict(
        event_id=f"{kind.__name__}-{n}", order_id="o-1", sequence=n, occurred_at=T0,
        recorded_at=T0, correlation_id="o-1", actor=fields.pop("actor", STORE),
        channel=channel, external_id="27001",
    )  # fmt: skip
    return kind.model_validate(envelope | fields)


def _state(**locations: list[str]) -> OutboxState:
    catalogue = load_catalogue()
    for location_id, aliases in locations.items():
        changed = catalogue.locations[location_id].model_copy(update={"aliases": aliases})
        catalogue = Catalogue(catalogue.products, {**catalogue.locations, location_id: changed})
    return OutboxState(catalogue=catalogue)


def _placed(state: OutboxState, channel: str = "meituan") -> None:
    decide(state, received(order_id="o-1", channel=channel, external_id="27001"))
    decide(state, _order(OrderRouted, 2, channel=channel, location="S01", groups=[], reasons=[]))


def test_a_store_accepting_a_meituan_order_confirms_it_on_meituan_only() -> None:
    state = _state()
    _placed(state)
    [call] = decide(state, _order(OrderAcceptedByStore, 3, location="S01"))
    assert (call.platform, call.kind, call.platform_order_id) == (
        "meituan",
        CallKind.CONFIRM,
        "27001",
    )
    assert call.shop_id == "S01"  # no meituan: alias: our id is the app_poi_code


def test_orders_of_other_channels_tell_no_platform() -> None:
    state = _state()
    _placed(state, channel="webshop")
    assert decide(state, _order(OrderAcceptedByStore, 3, channel="webshop", location="S01")) == []


def test_the_same_event_twice_names_the_same_call() -> None:
    first, second = _state(), _state()
    _placed(first)
    _placed(second)
    accepted = _order(OrderAcceptedByStore, 3, location="S01")
    assert decide(first, accepted)[0].idempotency_key == decide(second, accepted)[0].idempotency_key
    other = _order(OrderReady, 4, location="S01")
    assert decide(first, other)[0].idempotency_key != decide(second, accepted)[0].idempotency_key


def test_a_rejection_after_a_busy_decline_cancels_with_each_platforms_busy_code() -> None:
    for platform, code in (("meituan", "2008"), ("eleme", "restaurantTooBusy")):
        state = _state()
        _placed(state, channel=platform)
        declined = _order(OrderDeclinedByStore, 3, channel=platform, location="S01",
                          reason_code="BUSY", reason="rush")  # fmt: skip
        assert decide(state, declined) == []  # routed again: the platform still gets it made
        rejected = _order(
            OrderRejected,
            4,
            channel=platform,
            actor=Actor(kind=ActorKind.SYSTEM, id="x"),
            reasons=[RejectionReason(code="STORE_DECLINED", message="all declined")],
        )
        [call] = decide(state, rejected)
        assert (call.kind, call.reason_code) == (CallKind.CANCEL, code)


def test_a_cancellation_the_platform_sent_is_not_echoed_back() -> None:
    state = _state()
    _placed(state)
    by_platform = _order(OrderCancelled, 3, actor=PLATFORM, cancelled_by=CancelledBy.CHANNEL,
                         reason_code="USER", reason="user cancelled")  # fmt: skip
    assert decide(state, by_platform) == []
    state = _state()
    _placed(state)
    by_system = _order(
        OrderCancelled,
        3,
        actor=Actor(kind=ActorKind.SYSTEM, id="x"),
        cancelled_by=CancelledBy.SYSTEM,
        reason_code="NOT_ACCEPTED",
        reason="late",
    )
    [call] = decide(state, by_system)
    assert (call.kind, call.reason_code) == (CallKind.CANCEL, "2001")


def test_ready_is_reported_and_delivered_only_for_a_store_that_delivers_itself() -> None:
    state = _state()
    _placed(state)
    assert [c.kind for c in decide(state, _order(OrderReady, 3, location="S01"))] == [
        CallKind.READY
    ]
    assert decide(state, _order(OrderDelivered, 4, location="S01")) == []  # Meituan's riders
    state = _state()
    state.self_delivery = frozenset({"S01"})
    _placed(state)
    [call] = decide(state, _order(OrderDelivered, 4, location="S01"))
    assert call.kind is CallKind.DELIVERED


def test_pickup_orders_report_no_delivery() -> None:
    state = _state()
    state.self_delivery = frozenset({"S01"})
    decide(
        state,
        received(order_id="o-1", channel="meituan", external_id="27001", mode=OrderMode.PICKUP),
    )
    decide(state, _order(OrderRouted, 2, location="S01", groups=[], reasons=[]))
    assert decide(state, _order(OrderDelivered, 4, location="S01")) == []


def _stock(kind: type[Event], n: int, sku: str, **fields: Any) -> Any:
    return kind.model_validate(dict(
        event_id=f"{kind.__name__}-{sku}-{n}", sequence=n, occurred_at=T0, recorded_at=T0,
        correlation_id="c", actor=STORE, sku=sku, location="S01",
    ) | fields)  # fmt: skip


def test_atp_at_zero_takes_the_dish_off_every_shelf_and_restock_puts_it_back() -> None:
    state = _state(S01=["meituan:7001", "eleme:168830201"])
    sku = "MUG-CERAMIC"
    assert state.catalogue.products[sku].stock_tracked
    assert decide(state, _stock(StockReceived, 1, sku, quantity=2)) == []
    assert (
        decide(state, _stock(StockReserved, 2, sku, quantity=1, reservation_id="r1", order_id="o"))
        == []
    )
    calls = decide(
        state, _stock(StockReserved, 3, sku, quantity=1, reservation_id="r2", order_id="o")
    )
    assert {(c.platform, c.kind, c.shop_id, c.sku) for c in calls} == {
        ("meituan", CallKind.SOLD_OUT, "7001", sku),
        ("eleme", CallKind.SOLD_OUT, "168830201", sku),
    }
    assert (
        decide(state, _stock(StockReserved, 4, sku, quantity=0, reservation_id="r3", order_id="o"))
        == []
    )
    back = decide(state, _stock(StockReceived, 5, sku, quantity=5))
    assert {c.kind for c in back} == {CallKind.BACK_ON_SHELF} and len(back) == 2


def test_made_to_order_dishes_never_sell_out() -> None:
    state = _state()
    sku = "DUMPLING-12"
    assert not state.catalogue.products[sku].stock_tracked
    decide(state, _stock(StockReceived, 1, sku, quantity=1))
    assert (
        decide(state, _stock(StockReserved, 2, sku, quantity=1, reservation_id="r", order_id="o"))
        == []
    )


def test_a_pause_closes_the_store_on_the_platforms_and_a_resume_opens_it() -> None:
    state = _state(S01=["meituan:S01", "eleme:168830201"], S02=["eleme:168830202"])
    envelope = dict(sequence=1, occurred_at=T0, recorded_at=T0, correlation_id="c", actor=STORE,
                    entity_id="S01", reason="kitchen fire")  # fmt: skip
    closed = decide(state, LocationPaused(event_id="p1", **envelope))
    assert {(c.platform, c.kind, c.shop_id) for c in closed} == {
        ("meituan", CallKind.CLOSE, "S01"), ("eleme", CallKind.CLOSE, "168830201"),
    }  # fmt: skip
    # A store is told about only where it is listed: S02 is on Ele.me, S03 on neither.
    elsewhere = decide(state, LocationPaused(event_id="p3", **envelope | {"entity_id": "S02"}))
    assert [(c.platform, c.shop_id) for c in elsewhere] == [("eleme", "168830202")]
    assert decide(state, LocationPaused(event_id="p4", **envelope | {"entity_id": "S03"})) == []
    opened = decide(
        state, LocationResumed(event_id="p2", **envelope | {"occurred_at": T0 + timedelta(hours=1)})
    )
    assert {c.kind for c in opened} == {CallKind.OPEN}


def test_a_store_without_an_eleme_id_gets_a_call_its_client_will_refuse() -> None:
    catalogue = load_catalogue()
    assert shop_id("S01", "eleme", catalogue) is None
    assert shop_id("S01", "meituan", catalogue) == "S01"
    state = OutboxState(catalogue=catalogue)
    store = catalogue.locations["S02"].model_copy(update={"aliases": ["mt-7", "meituan:7002"]})
    decide(
        state,
        LocationUpdated(
            event_id="u",
            sequence=1,
            occurred_at=T0,
            recorded_at=T0,
            correlation_id="c",
            actor=STORE,
            entity_id="S02",
            location=store,
        ),
    )
    assert shop_id("S02", "meituan", state.catalogue) == "7002"
    assert isinstance(state.catalogue.locations["S02"], Location)
