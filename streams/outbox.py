"""Which calls the platforms get: a pure decision per event of the order log, the stock ledger
or the catalogue (no I/O, no clock), folded over those logs by `oms outbox run`.

- Order events: the rows of `ORDER_CALLS` for the delivery platforms (Meituan, Ele.me) and of
  `SHOP_CALLS` for the shop platforms (Square, WooCommerce), one function per event type (add
  a row to tell the platforms of a new event). Only orders of a platform's own channel get
  calls, and never of what the platform itself told us (an event whose actor is the channel).
- Stock ledger: the levels of each sku@location are folded with `events.stock_levels`; when
  available to promise reaches 0 the dish goes off the shelf (SOLD_OUT) on every delivery
  platform, and back on (BACK_ON_SHELF) once it is above 0 again. Made-to-order dishes
  (`Product.stock_tracked` false) have no stock to run out of.
- Catalogue: `LocationPaused` closes the store on the delivery platforms (busy / resting),
  `LocationResumed` opens it; every catalogue event also updates the catalogue fold.
  The shop platforms get no shelf or store calls: their clients make none.

A call names the platform's own ids: the order's `external_id`; the store's id on the
platform (`shop_id`), from the location's aliases written `<platform>:<id>` (e.g.
`meituan:7001`, `eleme:168830201`), else, for Meituan only, our location id (Meituan's
app_poi_code is the merchant's own store code); the dish's code on the platform, which is our
sku (Meituan's app_food_code and Ele.me's extendCode are the merchant's own codes). A call
whose store has no id on the platform is still decided: its client refuses it, and the
refusal is dead-lettered where an operator sees it. The shop platforms need only the order's
id: a Square order names its own location, and a WooCommerce deployment is one store
(OMS_WOOCOMMERCE_URL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from events.models import (
    ActorKind,
    CatalogueEvent,
    Event,
    LocationPaused,
    LocationResumed,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderCompleted,
    OrderDeclinedByStore,
    OrderDelivered,
    OrderEvent,
    OrderMode,
    OrderPickedUp,
    OrderReady,
    OrderReceived,
    OrderRefunded,
    OrderRejected,
    OrderRouted,
    StockEvent,
)
from events.platform_calls import CallKind, PlatformCall, call_key
from events.stock_levels import Levels, next_levels
from streams.catalogue import Catalogue

PLATFORMS = ("meituan", "eleme")  # the delivery platforms: orders, shelves and stores
SHOPS = ("square", "woocommerce")  # the shop platforms: their orders' progress only

# Our reason codes (store declines, rejections, system cancellations) in each platform's own
# codes: Meituan's 取消订单原因code of order/cancel (APP方 codes 2001-2016), Ele.me's
# OInvalidateType of eleme.order.cancelOrderLite. Sources: docs/connectors.md.
CANCEL_REASONS: dict[str, dict[str, str]] = {
    "meituan": {
        "BUSY": "2008",  # 店铺太忙
        "SOLD_OUT": "2009",  # 商品已售完
        "OUT_OF_STOCK": "2009",
        "INSUFFICIENT_STOCK": "2009",
        "CLOSING": "2011",  # 店铺已打烊
        "CLOSED": "2011",
        "OUT_OF_AREA": "2010",  # 地址无法配送
        "NOT_ACCEPTED": "2001",  # APP方商家超时接单
        "DUPLICATE": "2013",  # 重复订单
        "OTHER": "2007",  # APP方其他原因取消
    },
    "eleme": {
        "BUSY": "restaurantTooBusy",
        "SOLD_OUT": "foodSoldOut",
        "OUT_OF_STOCK": "foodSoldOut",
        "INSUFFICIENT_STOCK": "foodSoldOut",
        "CLOSING": "restaurantClosed",
        "CLOSED": "restaurantClosed",
        "OUT_OF_AREA": "distanceTooFar",
        "NOT_ACCEPTED": "restaurantTooBusy",
        "DUPLICATE": "others",
        "OTHER": "others",
    },
}
STORE_DECLINED = "STORE_DECLINED"  # streams.orders: no store was left that would take it


def cancel_reason(platform: str, code: str | None) -> str:
    """The platform's code for our reason `code` (its "other" code when it has none); ours
    for a platform that takes no reason code (Square, WooCommerce)."""
    codes = CANCEL_REASONS.get(platform)
    if codes is None:
        return code or "OTHER"
    return codes.get(code or "OTHER", codes["OTHER"])


@dataclass
class OrderView:
    """What the calls of one order need from its history."""

    channel: str
    external_id: str
    mode: OrderMode | None = None
    location: str | None = None
    declined_for: str | None = None  # the last store decline's reason code
    with_courier: bool = False  # picked up by a courier, not yet delivered
    completed: bool = False  # (shops) COMPLETE was told


@dataclass(frozen=True)
class Told:
    """A row's answer: the call to make, with our reason code and text for a cancellation."""

    kind: CallKind
    reason_code: str | None = None
    reason: str | None = None


@dataclass
class OutboxState:
    """The fold the decisions read: the catalogue, the orders still open, the shelves."""

    catalogue: Catalogue
    self_delivery: frozenset[str] = frozenset()  # locations whose own riders deliver
    orders: dict[str, OrderView] = field(default_factory=dict)
    levels: dict[str, Levels] = field(default_factory=dict)
    off_shelf: set[str] = field(default_factory=set)  # sku@location taken off the shelves


OrderRule = Callable[[OrderEvent, OrderView, OutboxState], Told | None]


def _not_from_the_platform(event: Event) -> bool:
    return event.actor.kind is not ActorKind.CHANNEL


def _confirm(event: OrderEvent, view: OrderView, state: OutboxState) -> Told | None:
    return Told(CallKind.CONFIRM)


def _rejected(event: OrderEvent, view: OrderView, state: OutboxState) -> Told | None:
    assert isinstance(event, OrderRejected)
    first = event.reasons[0] if event.reasons else None
    code = first.code if first else "OTHER"
    if code == STORE_DECLINED and view.declined_for:
        code = view.declined_for
    return Told(CallKind.CANCEL, code, first.message if first else "rejected")


def _cancelled(event: OrderEvent, view: OrderView, state: OutboxState) -> Told | None:
    assert isinstance(event, OrderCancelled)
    if not _not_from_the_platform(event):
        return None  # the platform cancelled it (its own message): nothing to tell it
    return Told(CallKind.CANCEL, event.reason_code, event.reason)


def _ready(event: OrderEvent, view: OrderView, state: OutboxState) -> Told | None:
    return Told(CallKind.READY) if _not_from_the_platform(event) else None


def _self_delivered(kind: CallKind) -> OrderRule:
    """A step of the delivery only the merchant's own riders report (自配送): the platform's
    riders report theirs to the platform, which tells us (inbound), not the other way."""

    def rule(event: OrderEvent, view: OrderView, state: OutboxState) -> Told | None:
        if view.mode is not OrderMode.DELIVERY or not _not_from_the_platform(event):
            return None
        if view.location not in state.self_delivery:
            return None
        if isinstance(event, OrderPickedUp) and event.picked_up_by == "customer":
            return None
        return Told(kind)

    return rule


# Event type → what the platform is told. One row per event that tells the platforms anything.
ORDER_CALLS: dict[type[OrderEvent], OrderRule] = {
    OrderAcceptedByStore: _confirm,
    OrderRejected: _rejected,
    OrderCancelled: _cancelled,
    OrderReady: _ready,
    OrderPickedUp: _self_delivered(CallKind.DELIVERING),
    OrderDelivered: _self_delivered(CallKind.DELIVERED),
}


def _shop_ready(event: OrderEvent, view: OrderView, state: OutboxState) -> Told | None:
    """Square: PREPARED for every order. WooCommerce has no such status: the customer gets a
    note, which only one who collects the order has a use for."""
    if not _not_from_the_platform(event):
        return None
    if view.channel == "woocommerce" and view.mode is not OrderMode.PICKUP:
        return None
    return Told(CallKind.READY)


def _handed_over(event: OrderEvent, view: OrderView, state: OutboxState) -> Told | None:
    """COMPLETE, once per order: when the customer has the order (collected, or delivered),
    or when it is completed after a courier took it and no delivery was reported."""
    if view.completed or not _not_from_the_platform(event):
        return None
    if isinstance(event, OrderPickedUp):
        courier = event.picked_up_by != "customer"
        if courier and view.mode in (OrderMode.DELIVERY, OrderMode.SHIP):
            return None  # on its way: complete once delivered
    elif isinstance(event, OrderCompleted) and not view.with_courier:
        return None  # handed over and told already, or an order already over
    return Told(CallKind.COMPLETE)


# Event type → what a shop platform (Square, WooCommerce) is told: the fulfilment steps its
# published order API takes. An amendment's answer is not told. Square's Orders API has no
# message for it; WooCommerce could take a customer note, but its revisions are the shop's own
# edits, and our own status updates come back from it as revisions (`order.updated`), so a
# note would answer, to the customer, a change nobody asked for.
SHOP_CALLS: dict[type[OrderEvent], OrderRule] = {
    OrderAcceptedByStore: _confirm,
    OrderRejected: _rejected,
    OrderCancelled: _cancelled,
    OrderReady: _shop_ready,
    OrderPickedUp: _handed_over,
    OrderDelivered: _handed_over,
    OrderCompleted: _handed_over,
}
# An order with one of these is over: its view is dropped (the fold stays bounded).
_FINAL = (OrderRejected, OrderCancelled, OrderCompleted, OrderDelivered, OrderRefunded)


def listed_as(location_id: str, platform: str, catalogue: Catalogue) -> str | None:
    """The store's id on `platform` when the catalogue lists it there (alias
    `<platform>:<id>`); None when the store is not known to be on the platform."""
    location = catalogue.locations.get(location_id)
    prefix = f"{platform}:"
    for alias in location.aliases if location else []:
        if alias.startswith(prefix) and alias[len(prefix) :]:
            return alias[len(prefix) :]
    return None


def shop_id(location_id: str | None, platform: str, catalogue: Catalogue) -> str | None:
    """The id of the store an order of `platform` came through: its alias, else (Meituan,
    whose app_poi_code is the merchant's own code) our location id; None when unknown."""
    if location_id is None:
        return None
    listed = listed_as(location_id, platform, catalogue)
    return listed or (location_id if platform == "meituan" else None)


def decide(
    state: OutboxState, event: Event, *, platforms: Iterable[str] = PLATFORMS
) -> list[PlatformCall]:
    """The calls `event` causes; the fold in `state` is moved past it (in place)."""
    served = tuple(platforms)
    if isinstance(event, OrderEvent):
        return _order_calls(state, event, served)
    if isinstance(event, StockEvent):
        return _shelf_calls(state, event, served)
    if isinstance(event, CatalogueEvent):
        return _store_calls(state, event, served)
    return []


def _order_calls(
    state: OutboxState, event: OrderEvent, served: tuple[str, ...]
) -> list[PlatformCall]:
    if event.channel not in served:
        return []
    rules = SHOP_CALLS if event.channel in SHOPS else ORDER_CALLS
    rule = rules.get(type(event))
    view = state.orders.get(event.order_id)
    if view is None:
        if rule is None and not isinstance(event, OrderReceived):
            return []  # nothing to tell, and no order to remember (one already over)
        view = state.orders[event.order_id] = OrderView(event.channel, event.external_id)
    if isinstance(event, OrderReceived):
        view.mode = event.mode
    elif isinstance(event, OrderRouted | OrderAcceptedByStore):
        view.location = event.location
    elif isinstance(event, OrderDeclinedByStore):
        view.declined_for = event.reason_code
    told = rule(event, view, state) if rule else None
    if isinstance(event, OrderPickedUp):
        view.with_courier = event.picked_up_by != "customer"
    if told is not None and told.kind is CallKind.COMPLETE:
        view.completed = True
    if isinstance(event, _FINAL):
        state.orders.pop(event.order_id, None)
    if told is None:
        return []
    platform = view.channel
    return [
        PlatformCall(
            idempotency_key=call_key(
                platform=platform, kind=told.kind, cause_event_id=event.event_id
            ),
            platform=platform,
            kind=told.kind,
            cause_event_id=event.event_id,
            cause_type=event.event_type,
            caused_at=event.occurred_at,
            order_id=event.order_id,
            platform_order_id=event.external_id,
            location=view.location,
            shop_id=shop_id(view.location, platform, state.catalogue),
            reason_code=cancel_reason(platform, told.reason_code)
            if told.kind is CallKind.CANCEL
            else None,
            reason=told.reason,
        )
    ]


def _shelf_calls(
    state: OutboxState, event: StockEvent, served: tuple[str, ...]
) -> list[PlatformCall]:
    key = event.aggregate_id
    levels = state.levels[key] = next_levels(state.levels.get(key, Levels()), event)
    product = state.catalogue.products.get(event.sku)
    if product is not None and not product.stock_tracked:
        return []
    available = levels.available_to_promise > 0
    if not available and key not in state.off_shelf:
        state.off_shelf.add(key)
        kind = CallKind.SOLD_OUT
    elif available and key in state.off_shelf:
        state.off_shelf.discard(key)
        kind = CallKind.BACK_ON_SHELF
    else:
        return []
    return [
        _store_call(state, event, platform, kind, location=event.location, sku=event.sku)
        for platform in served
        if platform in PLATFORMS and listed_as(event.location, platform, state.catalogue)
    ]


def _store_calls(
    state: OutboxState, event: CatalogueEvent, served: tuple[str, ...]
) -> list[PlatformCall]:
    state.catalogue = state.catalogue.apply(event)
    if isinstance(event, LocationPaused):
        kind = CallKind.CLOSE
    elif isinstance(event, LocationResumed):
        kind = CallKind.OPEN
    else:
        return []
    # Only the platforms the store is listed on (a shop and a shelf are told about only
    # where the catalogue names the store's id there: no call for a shop that is not there).
    return [
        _store_call(state, event, platform, kind, location=event.entity_id)
        for platform in served
        if platform in PLATFORMS and listed_as(event.entity_id, platform, state.catalogue)
    ]


def _store_call(
    state: OutboxState,
    event: Event,
    platform: str,
    kind: CallKind,
    *,
    location: str,
    sku: str | None = None,
) -> PlatformCall:
    return PlatformCall(
        idempotency_key=call_key(platform=platform, kind=kind, cause_event_id=event.event_id),
        platform=platform,
        kind=kind,
        cause_event_id=event.event_id,
        cause_type=event.event_type,
        caused_at=event.occurred_at,
        location=location,
        shop_id=shop_id(location, platform, state.catalogue),
        sku=sku,
        reason=getattr(event, "reason", None),
    )
