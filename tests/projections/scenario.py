"""A business's order log and stock ledger, built with the event models, and the facts a test
expects from it — computed here in plain Python (and `tests.events.lifecycle_checker`), never
with the projector's code.

`build(orders=..., stock_events=..., seed=...)` makes deterministic histories: orders from seven
channels in two currencies that are rejected, held and reviewed, modified, routed (some split
across locations), prioritised with a promised time, fulfilled by pickup, delivery or shipment,
cancelled, completed and refunded — some left open in a store's queue — plus a stock ledger per
sku@location. A few events appear twice on the log, as a restarted worker re-sends them.
"""

from __future__ import annotations

import base64
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from events.models import (
    Actor,
    ActorKind,
    Address,
    CancelledBy,
    Customer,
    Event,
    ExpiryBatchAdded,
    ExpiryBatchExpired,
    FulfilmentGroup,
    LineQuantity,
    LowStockAlerted,
    OrderAccepted,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderEvent,
    OrderHeld,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderReceived,
    OrderRefunded,
    OrderRejected,
    OrderReserved,
    OrderRouted,
    PaymentStatus,
    RejectionReason,
    ReviewApproved,
    ReviewRejected,
    SafetyStockSet,
    ShipmentCreated,
    ShipmentStatusUpdated,
    StockAdjusted,
    StockCommitted,
    StockCounted,
    StockEvent,
    StockReceived,
    StockReleased,
    StockReservationRefused,
    StockReserved,
)
from events.privacy import customer_identity, customer_key
from infra.keystore import MasterKey
from infra.publisher import Publisher
from infra.settings import Settings
from tests.conftest import TEST_MASTER_KEY
from tests.events.lifecycle_checker import apply

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
DAYS = 2
DISHES = [
    ("DUMPLING-12", "猪肉白菜水饺 12只", 2800),
    ("NOODLE-BEEF", "红烧牛肉面", 3250),
    ("RICE-KUNGPAO", "宫保鸡丁饭", 2600),
    ("SOUP-HOTSOUR", "酸辣汤", 1550),
    ("TEA-OOLONG", "冻顶乌龙茶", 1200),
]
GOODS = [
    ("TEA-GIFT-M", "中秋茶叶礼盒", 19800),
    ("MUG-CERAMIC", "手绘陶瓷杯", 6800),
    ("TEA-LONGJING-250", "明前龙井 250g", 12800),
    ("HONEY-500", "Wildflower honey", 4500),
]
STORES = ["S1", "S2", "S3"]
WAREHOUSES = ["W1", "W2"]
CITIES = ["上海", "杭州", "苏州"]
CHANNELS = {  # channel → (modes, products, currency)
    "meituan": ([OrderMode.DELIVERY], DISHES, "CNY"),
    "eleme": ([OrderMode.DELIVERY], DISHES, "CNY"),
    "wechat": ([OrderMode.PICKUP, OrderMode.DINE_IN, OrderMode.DELIVERY], DISHES, "CNY"),
    "phone": ([OrderMode.DELIVERY, OrderMode.PICKUP], DISHES, "CNY"),
    "tmall": ([OrderMode.SHIP], GOODS, "CNY"),
    "jd": ([OrderMode.SHIP], GOODS, "CNY"),
    "webshop": ([OrderMode.SHIP], GOODS, "USD"),
}
SYSTEM = Actor(kind=ActorKind.SYSTEM, id="oms")
REVIEWER = Actor(kind=ActorKind.USER, id="reviewer-li")


@dataclass
class Scenario:
    order_histories: dict[str, list[OrderEvent]]
    stock_histories: dict[tuple[str, str], list[StockEvent]]
    order_log: list[OrderEvent]  # as published, with the re-sent duplicates
    stock_log: list[StockEvent]

    @property
    def messages(self) -> int:
        return len(self.order_log) + len(self.stock_log)

    def publish(self, settings: Settings) -> None:
        publisher = Publisher(settings)
        for event in self.order_log:
            publisher.publish(settings.topics.orders, event)
        for stock_event in self.stock_log:
            publisher.publish(settings.topics.inventory, stock_event)
        count = publisher.flush()
        assert count.acknowledged[settings.topics.orders] == len(self.order_log)
        assert count.acknowledged[settings.topics.inventory] == len(self.stock_log)


class _History:
    """One order's events as they are made: sequence numbers and an advancing clock."""

    def __init__(
        self, rng: random.Random, order_id: str, channel: str, external_id: str, at: datetime
    ) -> None:
        self.rng = rng
        self.order_id, self.channel, self.external_id = order_id, channel, external_id
        self.at = at
        self.events: list[OrderEvent] = []

    def add(
        self,
        model: type[OrderEvent],
        *,
        actor: Actor = SYSTEM,
        gap: tuple[int, int] = (30, 600),
        **fields: Any,
    ) -> OrderEvent:
        if self.events:
            self.at += timedelta(seconds=self.rng.randint(*gap))
        sequence = len(self.events) + 1
        event = model.model_validate(
            dict(
                event_id=f"{self.order_id}-{sequence}",
                sequence=sequence,
                occurred_at=self.at,
                recorded_at=self.at,
                correlation_id=self.order_id,
                actor=actor,
                order_id=self.order_id,
                channel=self.channel,
                external_id=self.external_id,
                **fields,
            )
        )
        self.events.append(event)
        return event


def _lines(
    rng: random.Random, products: list[tuple[str, str, int]], weigh: random.Random
) -> list[OrderLine]:
    """An order's lines; `weigh` (its own stream, so the rest of a seed's log is unchanged)
    picks the lines sold by weight."""
    chosen = rng.sample(products, rng.randint(1, min(4, len(products))))
    lines = []
    for sku, name, price in chosen:
        quantity = rng.randint(1, 3)
        line = OrderLine(sku=sku, name=name, quantity=quantity, unit_price=price)
        if quantity > 1 and rng.random() < 0.3:
            # A channel's own line amount, a minor unit off the unit price times the quantity
            # (tax-inclusive prices): reports must count what the channel states.
            line = line.model_copy(update={"gross": quantity * price + rng.choice((-1, 1))})
        elif weigh.random() < 0.1:
            # Sold by weight without a stated amount: an exact measure (0.25 to 2.5 kg), a
            # quantity rounded up, and an amount the measure × price rounded half to even.
            millionths = weigh.randrange(250_000, 2_500_001, 125_000)
            line = line.model_copy(
                update={"unit": "kg", "quantity_millionths": millionths,
                        "quantity": -(-millionths // 1_000_000)}
            )  # fmt: skip
        lines.append(line)
    return lines


def _order(rng: random.Random, n: int, customers: list[str]) -> list[OrderEvent]:
    channel = rng.choice(list(CHANNELS))
    modes, products, currency = CHANNELS[channel]
    mode = rng.choice(modes)
    placed = T0 + timedelta(seconds=rng.randint(0, DAYS * 86400 - 7200))
    history = _History(rng, f"ord-{n:05d}", channel, f"{channel}-{n}", placed)
    lines = _lines(rng, products, random.Random(n))
    fee = 500 if mode in (OrderMode.DELIVERY, OrderMode.SHIP) else 0
    total = sum(line.amount for line in lines) + fee
    city = rng.choice(CITIES)
    address = (
        Address(text=f"{n} Nanjing Rd", city=city)
        if mode in (OrderMode.DELIVERY, OrderMode.SHIP)
        else None
    )
    history.add(
        OrderReceived,
        actor=Actor(kind=ActorKind.CHANNEL, id=channel),
        mode=mode,
        currency=currency,
        lines=lines,
        delivery_fee=fee,
        total=total,
        payment_status=PaymentStatus.PAID,
        address=address,
        placed_at=placed,
        customer=Customer(name=f"客户{n}", phone=rng.choice(customers)),
    )
    if rng.random() < 0.10:
        history.add(OrderRejected, reasons=[RejectionReason(code="UNKNOWN_SKU", message="no")])
        return history.events
    history.add(OrderAccepted, total=total, currency=currency)
    if rng.random() < 0.10:  # the channel revises the order: validated again
        lines = (
            lines[:-1]
            if len(lines) > 1
            else [
                lines[0].model_copy(
                    update={"quantity": 5, "gross": None, "quantity_millionths": None}
                )
            ]
        )
        total = sum(line.amount for line in lines) + fee
        history.add(
            OrderModified,
            actor=Actor(kind=ActorKind.CHANNEL, id=channel),
            revision=2,
            lines=lines,
            delivery_fee=fee,
            total=total,
        )
        history.add(OrderAccepted, total=total, currency=currency)
    if rng.random() < 0.12:
        history.add(OrderHeld, risk_score=rng.randint(60, 99), threshold=50, signals=[])
        outcome = rng.random()
        if outcome < 0.35:
            return history.events  # still waiting for a reviewer
        if outcome < 0.65:
            history.add(ReviewRejected, actor=REVIEWER, reason="stolen card", gap=(60, 3600))
            return history.events
        history.add(ReviewApproved, actor=REVIEWER, gap=(60, 3600))
    if rng.random() < 0.04:
        history.add(
            OrderCancelled,
            cancelled_by=CancelledBy.CUSTOMER,
            reason_code="CHANGED_MIND",
            reason="changed mind",
        )
        return history.events
    home = rng.choice(WAREHOUSES if mode is OrderMode.SHIP else STORES)
    groups = [
        FulfilmentGroup(
            location=home,
            lines=[LineQuantity(sku=line.sku, quantity=line.quantity) for line in lines],
        )
    ]
    if len(lines) > 1 and rng.random() < 0.2:  # split: the last line from another location
        other = rng.choice(
            [s for s in (WAREHOUSES if mode is OrderMode.SHIP else STORES) if s != home]
        )
        groups = [
            FulfilmentGroup(
                location=home,
                lines=[LineQuantity(sku=line.sku, quantity=line.quantity) for line in lines[:-1]],
            ),
            FulfilmentGroup(
                location=other, lines=[LineQuantity(sku=lines[-1].sku, quantity=lines[-1].quantity)]
            ),
        ]
    history.add(OrderRouted, location=home, groups=groups, reasons=["NEAREST_WITH_STOCK"])
    history.add(
        OrderReserved,
        lines=[LineQuantity(sku=line.sku, quantity=line.quantity, location=home) for line in lines],
    )
    for _ in range(2 if rng.random() < 0.2 else 1):
        promised = history.at + timedelta(minutes=rng.choice([20, 30, 45, 60]))
        history.add(
            OrderPrioritised,
            location=home,
            score=rng.randint(1, 100),
            promised_at=None if rng.random() < 0.1 else promised,
        )
    depth = rng.choices([0, 1, 2, 3, 4, 5], weights=[2, 1, 1, 1, 2, 6])[0]
    steps: list[type[OrderEvent]] = [OrderAcceptedByStore, OrderPreparing, OrderReady]
    for model in steps[: min(depth, 3)]:
        history.add(model, location=home)
    if depth <= 3:
        if rng.random() < 0.1:
            history.add(
                OrderCancelled,
                cancelled_by=CancelledBy.MERCHANT,
                reason_code="SOLD_OUT",
                reason="sold out",
            )
        return history.events
    if mode is OrderMode.SHIP:
        history.add(ShipmentCreated, shipment_id=f"sh-{n}", carrier="SF", tracking_number=f"SF{n}")
        history.add(
            ShipmentStatusUpdated,
            shipment_id=f"sh-{n}",
            tracking_number=f"SF{n}",
            status="IN_TRANSIT",
        )
        if depth == 5:
            history.add(OrderDelivered, gap=(3600, 86400))
    else:
        by = "courier" if mode is OrderMode.DELIVERY else "customer"
        history.add(OrderPickedUp, location=home, picked_up_by=by)
        if depth == 5 and mode is OrderMode.DELIVERY:
            history.add(OrderDelivered, gap=(300, 1800))
    if depth == 5:
        history.add(OrderCompleted)
        if rng.random() < 0.05:
            history.add(
                OrderRefunded,
                refund_id=f"rf-{n}",
                amount=total // 2,
                currency=currency,
                reason="cold food",
            )
    return history.events


def _stock(rng: random.Random, sku: str, location: str, count: int) -> list[StockEvent]:
    events: list[StockEvent] = []
    at = T0 + timedelta(seconds=rng.randint(0, 3600))
    on_hand = reserved = 0
    safety = 5
    open_reservations: list[tuple[str, int]] = []

    def add(model: type[StockEvent], **fields: Any) -> None:
        nonlocal at
        at += timedelta(seconds=rng.randint(60, DAYS * 86400 // max(count, 1)))
        sequence = len(events) + 1
        events.append(
            model.model_validate(
                dict(
                    event_id=f"{sku}@{location}-{sequence}",
                    sequence=sequence,
                    occurred_at=at,
                    recorded_at=at,
                    correlation_id=f"{sku}@{location}",
                    actor=SYSTEM,
                    sku=sku,
                    location=location,
                    **fields,
                )
            )
        )

    add(SafetyStockSet, quantity=safety)
    add(StockReceived, quantity=40, reference="PO-1")
    on_hand = 40
    while len(events) < count:
        roll = rng.random()
        available = on_hand - reserved - safety
        if roll < 0.40:
            quantity = rng.randint(1, 4)
            reservation = f"r-{len(events)}"
            if quantity <= available:
                add(
                    StockReserved,
                    order_id=f"o-{len(events)}",
                    reservation_id=reservation,
                    quantity=quantity,
                )
                reserved += quantity
                open_reservations.append((reservation, quantity))
            else:
                add(
                    StockReservationRefused,
                    order_id=f"o-{len(events)}",
                    reservation_id=reservation,
                    requested=quantity,
                    available=available,
                    reason="INSUFFICIENT_STOCK",
                )
        elif roll < 0.70 and open_reservations:
            reservation, quantity = open_reservations.pop(0)
            if rng.random() < 0.8:
                add(StockCommitted, order_id="o", reservation_id=reservation, quantity=quantity)
                on_hand -= quantity
            else:
                add(
                    StockReleased,
                    order_id="o",
                    reservation_id=reservation,
                    quantity=quantity,
                    reason="CANCELLED",
                )
            reserved -= quantity
        elif roll < 0.80:
            add(StockReceived, quantity=20, reference=f"PO-{len(events)}")
            on_hand += 20
        elif roll < 0.86:
            delta = rng.choice([-2, -1, 1])
            add(StockAdjusted, delta=delta, reason="DAMAGED" if delta < 0 else "FOUND")
            on_hand += delta
        elif roll < 0.89:
            on_hand = max(on_hand - rng.randint(0, 2), reserved)
            add(StockCounted, counted=on_hand)
        elif roll < 0.92:
            add(
                ExpiryBatchAdded,
                batch_id=f"b-{len(events)}",
                quantity=10,
                expires_on=(at + timedelta(days=30)).date(),
            )
            on_hand += 10
        elif roll < 0.94 and on_hand - reserved >= 2:
            add(ExpiryBatchExpired, batch_id="b-old", quantity=2)
            on_hand -= 2
        elif roll < 0.97:
            add(LowStockAlerted, available=available, threshold=10, reorder_quantity=50)
        else:
            safety = rng.choice([3, 5, 8])
            add(SafetyStockSet, quantity=safety)
    return events


def build(*, orders: int, stock_events: int, seed: int = 7, duplicates: float = 0.01) -> Scenario:
    rng = random.Random(seed)
    customers = [f"+86138{n:08d}" for n in range(max(orders * 2 // 3, 1))]
    histories = {f"ord-{n:05d}": _order(rng, n, customers) for n in range(orders)}
    keys = [(sku, location) for sku, _, _ in GOODS for location in WAREHOUSES + STORES[:1]]
    per_key = max(stock_events // len(keys), 3)
    stock = {key: _stock(rng, key[0], key[1], per_key) for key in keys}
    order_log: list[OrderEvent] = sorted(
        (e for events in histories.values() for e in events),
        key=lambda e: (e.occurred_at, e.order_id, e.sequence),
    )
    stock_log: list[StockEvent] = sorted(
        (e for events in stock.values() for e in events),
        key=lambda e: (e.occurred_at, e.sku, e.location, e.sequence),
    )
    # A restarted worker re-sends a few of its outputs: the same event again, right after.
    return Scenario(
        histories, stock, _resent(rng, order_log, duplicates), _resent(rng, stock_log, duplicates)
    )


def _resent(rng: random.Random, log: list[Any], share: float) -> list[Any]:
    out = []
    for event in log:
        out.append(event)
        if rng.random() < share:
            out.append(event)
    return out


# ---------------------------------------------------------------- the facts a test expects


def seconds(at: datetime) -> datetime:
    return at.replace(tzinfo=None, microsecond=0)


@dataclass
class OrderFacts:
    """What an order's history means, worked out directly from its events."""

    order_id: str
    channel: str
    mode: str
    currency: str
    placed_at: datetime
    customer_key: str
    city: str
    status: str
    total: int
    lines: list[tuple[str, str, int, int]]  # sku, name, quantity, unit price
    line_amounts: list[int]  # each line's stated amount, else quantity × unit price
    line_measures: list[tuple[str, int]]  # unit, exact quantity in millionths of it
    line_locations: list[str]
    location: str
    accepted: bool
    is_sale: bool
    held: bool
    held_at: datetime | None
    risk_score: int
    review: str
    priority_score: int
    promised_at: datetime | None
    handed_over_at: datetime | None
    delivered_at: datetime | None
    cancelled: bool
    stages: list[tuple[str, datetime, datetime | None]] = field(default_factory=list)

    @property
    def region(self) -> str:
        return self.city or self.location

    @property
    def fulfilled_at(self) -> datetime | None:
        return self.handed_over_at if self.mode in ("pickup", "dine_in") else self.delivered_at


END = {"rejected", "cancelled", "completed", "refunded"}


def _customer_key(order: OrderReceived) -> str:
    """The pseudonymous key the projector stores (events/privacy.py), under the suite's
    master key."""
    identity = customer_identity(order.customer, order.channel)
    pepper = MasterKey(base64.b64decode(TEST_MASTER_KEY)).pepper
    return customer_key(identity, pepper) if identity else ""


def order_facts(events: list[OrderEvent]) -> OrderFacts:
    first = events[0]
    assert isinstance(first, OrderReceived)
    facts = OrderFacts(
        order_id=first.order_id,
        channel=first.channel,
        mode=first.mode.value,
        currency=first.currency,
        placed_at=seconds(first.placed_at),
        customer_key=_customer_key(first),
        city=first.address.city or "" if first.address else "",
        status="received",
        total=first.total,
        lines=[],
        line_amounts=[],
        line_measures=[],
        line_locations=[],
        location="",
        accepted=False,
        is_sale=False,
        held=False,
        held_at=None,
        risk_score=0,
        review="",
        priority_score=0,
        promised_at=None,
        handed_over_at=None,
        delivered_at=None,
        cancelled=False,
    )
    state = None
    void = False
    for event in events:
        at = seconds(event.occurred_at)
        state = apply(state, event)
        if isinstance(event, OrderReceived | OrderModified):
            facts.lines = [(x.sku, x.name, x.quantity, x.unit_price) for x in event.lines]
            facts.line_amounts = [x.amount for x in event.lines]
            facts.line_measures = [
                (x.unit, x.quantity_millionths or x.quantity * 1_000_000) for x in event.lines
            ]
            facts.line_locations = ["" for _ in event.lines]
            facts.total = event.total
        if isinstance(event, OrderAccepted):
            facts.accepted = True
        if isinstance(event, OrderHeld):
            facts.held, facts.held_at, facts.risk_score = True, at, event.risk_score
        if isinstance(event, ReviewApproved | ReviewRejected):
            facts.review = "approved" if isinstance(event, ReviewApproved) else "rejected"
        if isinstance(event, OrderCancelled | ReviewRejected):
            facts.cancelled = True
        if isinstance(event, OrderRouted):
            where = {line.sku: g.location for g in event.groups for line in g.lines}
            facts.line_locations = [where.get(sku, event.location) for sku, *_ in facts.lines]
        if getattr(event, "location", None):  # (a delivery or completion may name none)
            facts.location = event.location
        if isinstance(event, OrderPrioritised):
            facts.priority_score = event.score
            facts.promised_at = seconds(event.promised_at) if event.promised_at else None
        if isinstance(event, OrderPickedUp | ShipmentCreated) and facts.handed_over_at is None:
            facts.handed_over_at = at
        if isinstance(event, OrderDelivered):
            facts.delivered_at = at
        status = state.status.value
        if status != facts.status or not facts.stages:
            if facts.stages and facts.stages[-1][2] is None:
                stage, entered, _ = facts.stages[-1]
                facts.stages[-1] = (stage, entered, at)
            if status not in END:
                facts.stages.append((status, at, None))
        facts.status = status
        void = void or status in ("rejected", "cancelled")
    facts.is_sale = facts.accepted and not void
    return facts


def all_order_facts(scenario: Scenario) -> list[OrderFacts]:
    return [order_facts(events) for events in scenario.order_histories.values()]


@dataclass
class StockFacts:
    on_hand: int = 0
    reserved: int = 0
    safety_stock: int = 0
    # (time, on_hand after, committed quantity) per ledger event, in sequence
    timeline: list[tuple[datetime, int, int]] = field(default_factory=list)
    # time, available then, suggested reorder quantity
    alerts: list[tuple[datetime, int, int]] = field(default_factory=list)

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved - self.safety_stock


def stock_facts(events: list[StockEvent]) -> StockFacts:
    facts = StockFacts()
    for event in events:
        committed = 0
        if isinstance(event, StockReceived | ExpiryBatchAdded):
            facts.on_hand += event.quantity
        elif isinstance(event, StockAdjusted):
            facts.on_hand += event.delta
        elif isinstance(event, StockCounted):
            facts.on_hand = event.counted
        elif isinstance(event, StockReserved):
            facts.reserved += event.quantity
        elif isinstance(event, StockReleased):
            facts.reserved -= event.quantity
        elif isinstance(event, StockCommitted):
            facts.reserved -= event.quantity
            facts.on_hand -= event.quantity
            committed = event.quantity
        elif isinstance(event, SafetyStockSet):
            facts.safety_stock = event.quantity
        elif isinstance(event, ExpiryBatchExpired):
            facts.on_hand -= event.quantity
        elif isinstance(event, LowStockAlerted):
            facts.alerts.append(
                (seconds(event.occurred_at), facts.available, event.reorder_quantity)
            )
        facts.timeline.append((seconds(event.occurred_at), facts.on_hand, committed))
    return facts


def group_sum(items: list[Any], key: Any, *values: Any) -> dict[Any, list[int]]:
    totals: dict[Any, list[int]] = defaultdict(lambda: [0] * len(values))
    for item in items:
        total = totals[key(item)]
        for n, value in enumerate(values):
            total[n] += value(item)
    return dict(totals)


E = TypeVar("E", bound=Event)


def distinct_events(log: list[E]) -> list[E]:
    """The log without the re-sent copies (what a reader that dedups by event id sees)."""
    seen: set[str] = set()
    out = []
    for event in log:
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out
