"""The event contract as frozen pydantic models (docs/architecture.md, "Events"; every
event in docs/events.md).

Money is an int in minor units (fen, cents) of the order's ISO-4217 currency; times are UTC.
The Avro schemas in schemas/ are generated from these models (`events.avro_schema`), and
`oms schemas check` fails if the committed .avsc files drift from them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import StrEnum
from fractions import Fraction
from hashlib import sha1 as _sha1
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

# Namespace for deterministic ids: the same input always maps to the same ids (idempotency).
ORDERSTREAM_NAMESPACE = uuid.UUID("6f0b7c52-3f7e-4b4e-9a57-0a8f2a7f3c11")


def deterministic_id(*parts: str) -> str:
    """A UUID (version 5) derived from `parts`, so a redelivered input yields the same id.

    Same value as `str(uuid.uuid5(ORDERSTREAM_NAMESPACE, "\x1f".join(parts)))`, computed
    without building UUID objects (it runs for every order on the intake path)."""
    digest = bytearray(_sha1(_NAMESPACE_BYTES + "\x1f".join(parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE_BYTES = ORDERSTREAM_NAMESPACE.bytes


def utc_now() -> datetime:
    return datetime.now(UTC)


def stock_key(sku: str, location: str) -> str:
    """The stock ledger's aggregate id and Kafka key."""
    return f"{sku}@{location}"


# Every time in the contract is UTC: whatever offset it arrives with is converted on the way in.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda value: value.astimezone(UTC))]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- values


class ActorKind(StrEnum):
    SYSTEM = "system"
    CHANNEL = "channel"
    USER = "user"


class Actor(Frozen):
    """Who caused an event: a system component, a sales channel, or a person."""

    kind: ActorKind
    id: str


class OrderMode(StrEnum):
    DELIVERY = "delivery"
    PICKUP = "pickup"
    DINE_IN = "dine_in"
    SHIP = "ship"


class PaymentStatus(StrEnum):
    PAID = "paid"
    PENDING = "pending"
    UNPAID = "unpaid"
    CASH_ON_DELIVERY = "cash_on_delivery"
    PARTIALLY_PAID = "partially_paid"


MILLIONTHS = 1_000_000
"""A line's exact quantity travels in millionths of its unit (Square records up to 5 decimals)."""

UNITS = ("each", "kg", "g", "lb", "oz", "l", "ml")
"""What a line's quantity counts: whole items, or a measure of weight or volume (validation
rejects an order with any other unit, as it does an unknown currency)."""


_MEASURE = re.compile(r"\s*(-?\d{1,12}(?:\.\d{1,6})?)\s*(kg|g|lb|oz|l|ml)?\s*")


def parse_amount(text: str) -> tuple[Fraction, str | None]:
    """An operator's quantity: "3" is (3, None), "2.5" (5/2, None), "12.5kg" or "12.5 kg"
    (25/2, "kg"). ValueError says what is wrong."""
    measured = _MEASURE.fullmatch(text)
    if measured is None:
        raise ValueError(
            f"{text!r} is neither a whole number nor a measure such as 12.5kg "
            f"(units: {', '.join(UNITS[1:])}; at most 6 decimals)"
        )
    return Fraction(measured.group(1)), measured.group(2)


def measure_text(millionths: int) -> str:
    """A measure in millionths as exact decimal text: 1500000 → "1.5", 2000000 → "2"."""
    whole, part = divmod(abs(millionths), MILLIONTHS)
    sign = "-" if millionths < 0 else ""
    return f"{sign}{whole}.{part:06d}".rstrip("0").rstrip(".") if part else f"{sign}{whole}"


class CancelledBy(StrEnum):
    CUSTOMER = "customer"
    MERCHANT = "merchant"
    CHANNEL = "channel"
    REVIEWER = "reviewer"
    SYSTEM = "system"


class OrderLine(Frozen):
    """One line. Its amounts are the channel's own (v4/v5 of OrderReceived/OrderModified):
    `gross` is what the line costs before its discounts, as the channel states it, and the
    order's arithmetic uses it; `unit_price` is derived from it (gross ÷ quantity, rounded
    half to even) and never a reason to refuse an order. A line without `gross` (earlier
    versions, channels that state no line amount) costs quantity × unit_price."""

    sku: str = Field(description="SKU, or the dish name where the channel has no SKU")
    name: str
    quantity: int
    unit_price: int = Field(description="minor units of the order's currency")
    options: list[str] = Field(default_factory=list, description="e.g. 少辣, no ice")
    gross: int | None = Field(
        default=None,
        description="(v4/v5) the line before its discounts as the channel states it, minor "
        "units; its tax inside when prices_include_tax; absent: quantity × unit_price",
    )
    discount: int = Field(default=0, description="(v4/v5) the line's share of the discounts")
    tax: int = Field(
        default=0, description="(v4/v5) the line's tax, inside gross when prices_include_tax"
    )
    total: int | None = Field(
        default=None,
        description="(v4/v5) what the line comes to as the channel states it: gross - "
        "discount, plus tax unless prices_include_tax",
    )
    prices_include_tax: bool = Field(
        default=False, description="(v4/v5) whether gross and total hold the line's tax"
    )
    unit: str = Field(
        default="each",
        description="(v5/v6) what the quantity counts: each, or a measure (kg, g, lb, oz, l, ml)",
    )
    quantity_millionths: int | None = Field(
        default=None,
        description="(v5/v6) the exact quantity in millionths of `unit` when it is not a whole "
        "number (1.5 lb: 1500000); `quantity` is then that measure rounded up to whole units",
    )

    @property
    def measure(self) -> Fraction:
        """The exact quantity in `unit`: 3/2 for 1.5 lb; `quantity` when it is whole."""
        if self.quantity_millionths is None:
            return Fraction(self.quantity)
        return Fraction(self.quantity_millionths, MILLIONTHS)

    @property
    def stock_quantity(self) -> int:
        """What the line draws from its SKU's stock ledger: whole items for `each`, and for a
        measure its millionths (the ledger of a product sold by weight or volume counts those,
        so 1.5 kg reserves 1500000 and nothing is rounded)."""
        if self.unit == "each":
            return self.quantity
        measured = self.quantity_millionths
        return measured if measured is not None else self.quantity * MILLIONTHS

    @property
    def amount(self) -> int:
        """What the line costs before its discounts: `gross`, else the measure × unit_price
        (rounded half to even when the measure is fractional)."""
        if self.gross is not None:
            return self.gross
        if self.quantity_millionths is None:
            return self.quantity * self.unit_price
        return round(self.measure * self.unit_price)


def personal(description: str | None = None, *, required: bool = False) -> Any:
    """A field that holds personal data: the Avro contract marks it `"pii": true`, and the
    codec seals it under the customer's data key on the log (events/privacy.py)."""
    extra: dict[str, Any] = {"pii": True}
    if required:
        return Field(description=description, json_schema_extra=extra)
    return Field(default=None, description=description, json_schema_extra=extra)


class PlatformCiphertext(Frozen):
    """(v2) The buyer's details as a platform encrypted them (JD, Taobao/Tmall, Douyin,
    Pinduoduo return the receiver's name, phone and street only as ciphertext, which the
    merchant decrypts through the platform; connectors/platform_pii.py). Kept whole so it
    can be decrypted later; never taken for clear text. The masks are the platform's own
    display values (张**, 138****5678), shown where the clear value is not held."""

    platform: str = Field(description="jd, tmall, douyin or pinduoduo")
    name: str | None = personal("ciphertext of the receiver's name")
    phone: str | None = personal("ciphertext of the receiver's phone")
    address: str | None = personal("ciphertext of the street address")
    open_id: str | None = personal("the platform's id for the receiver data (Taobao OAID)")
    name_mask: str | None = None
    phone_mask: str | None = None
    address_mask: str | None = None


SEALED_DOC = (
    "the personal fields, encrypted under the customer's data key (events/privacy.py); "
    "those fields are then empty"
)


class Address(Frozen):
    text: str = personal("street address; empty on the log where it is sealed", required=True)
    city: str | None = None
    postal_code: str | None = personal()
    country: str | None = None
    latitude: float | None = personal()
    longitude: float | None = personal()
    # (v2) What a platform sends in clear when it encrypts the street (JD, Taobao, Douyin,
    # Pinduoduo): enough to route, rate a carrier and report by region.
    province: str | None = None
    district: str | None = Field(default=None, description="区/县 (county or district)")


class Customer(Frozen):
    id: str | None = personal("the channel's customer id")
    name: str | None = personal()
    phone: str | None = personal()
    email: str | None = personal()
    phone_extension: str | None = personal(
        "(v2) with a virtual number (隐私号 13012345678_8421): `phone` is the platform's relay "
        "number, shared by many buyers, and this the buyer's extension on it"
    )
    key: str | None = Field(
        default=None,
        description="the customer's pseudonymous key (a keyed hash of who they are), set "
        "where personal fields are sealed; what ClickHouse stores as customer_key",
    )


class RejectionReason(Frozen):
    code: str = Field(description="machine-readable, e.g. TOTAL_MISMATCH")
    field: str | None = None
    message: str


class FraudSignal(Frozen):
    rule: str = Field(description="e.g. VELOCITY_PHONE, AMOUNT_OUTLIER")
    points: int
    detail: str


class LineQuantity(Frozen):
    """A quantity of one SKU, at a location when one is decided."""

    sku: str
    quantity: int
    location: str | None = None


class FulfilmentGroup(Frozen):
    """The lines one location fulfils; an order split across locations has several."""

    location: str
    lines: list[LineQuantity]
    distance_m: int | None = None
    cost: int | None = Field(default=None, description="fulfilment cost, minor units")


class ReturnLine(Frozen):
    sku: str
    quantity: int
    reason: str | None = None


class InspectedLine(Frozen):
    """(ReturnInspected) What came back of one SKU in one condition, and where it went:
    resellable units back into stock at `restock_location`, damaged ones written off."""

    sku: str
    quantity: int
    condition: str = Field(description="resellable or damaged")
    restock_location: str | None = Field(
        default=None, description="where resellable units go back into stock; none: written off"
    )
    note: str | None = None


class RefundedLine(Frozen):
    """(OrderRefunded v2) One SKU's returned units and what was paid for them."""

    sku: str
    quantity: int
    amount: int = Field(description="minor units: the line's paid amount for these units")


# ---------------------------------------------------------------- envelope


class Event(Frozen):
    """The envelope every event carries; subclasses add the aggregate id and the payload."""

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    event_id: str
    sequence: int = Field(ge=1, description="position of the event in its aggregate's history")
    occurred_at: UtcDatetime
    recorded_at: UtcDatetime
    correlation_id: str
    causation_id: str | None = None
    actor: Actor

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.event_type = cls.__name__

    @property
    def aggregate_id(self) -> str:
        raise NotImplementedError


class OrderEvent(Event):
    """An event in one order's history, on `oms.orders.v1` keyed by `order_id`."""

    order_id: str = Field(description="the aggregate id")
    channel: str
    external_id: str = Field(description="the order's id on its channel")

    @property
    def aggregate_id(self) -> str:
        return self.order_id


def follow_up(
    order: OrderEvent, *, sequence: int, causation_id: str, actor: Actor, now: datetime
) -> dict[str, Any]:
    """The envelope of an event that follows `order` in its history: same order, channel and
    correlation, caused by `causation_id`, at `now` (the event id is the caller's to derive)."""
    return {
        "order_id": order.order_id,
        "sequence": sequence,
        "occurred_at": now,
        "recorded_at": now,
        "correlation_id": order.correlation_id,
        "causation_id": causation_id,
        "actor": actor,
        "channel": order.channel,
        "external_id": order.external_id,
    }


class StockEvent(Event):
    """An event in one `sku@location` stock ledger, on `oms.inventory.v1`."""

    sku: str
    location: str

    @property
    def aggregate_id(self) -> str:
        return stock_key(self.sku, self.location)


# ---------------------------------------------------------------- order events


class OrderReceived(OrderEvent):
    """A channel's order, normalised by its connector; not yet validated."""

    mode: OrderMode
    currency: str = Field(description="ISO-4217 code; checked by validation, not here")
    lines: list[OrderLine]
    delivery_fee: int = 0
    packaging_fee: int = 0
    discount: int = 0
    total: int
    payment_status: PaymentStatus
    tax: int = Field(default=0, description="tax not included in line prices, minor units")
    customer: Customer
    address: Address | None = None
    location_hint: str | None = Field(default=None, description="store the channel placed it at")
    device_id: str | None = personal()
    requested_at: UtcDatetime | None = Field(default=None, description="wanted for, UTC")
    notes: str | None = personal("free text: may hold anything")
    placed_at: UtcDatetime
    sealed: str | None = Field(default=None, description=SEALED_DOC)
    platform_ciphertext: PlatformCiphertext | None = Field(
        default=None, description="(v4) the buyer's details as the platform encrypted them"
    )
    table: str | None = Field(default=None, description="(v4) a dine-in order's table")
    covers: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="(v6) how many guests a dine-in order seats (covers)",
    )
    rounding: int = Field(
        default=0,
        description="(v4) total minus (lines + fees + tax - discount): the channel's own "
        "rounding, within the rule its connector documents",
    )
    tip: int = Field(
        default=0, description="(v7) the tip the customer gave, in the total, minor units"
    )


class OrderModified(OrderEvent):
    """The channel revised the order before fulfilment; replaces lines, amounts and details."""

    revision: int = Field(description="the channel's revision number, increasing")
    lines: list[OrderLine]
    delivery_fee: int = 0
    packaging_fee: int = 0
    discount: int = 0
    total: int
    tax: int = Field(default=0, description="tax not included in line prices, minor units")
    address: Address | None = None
    requested_at: UtcDatetime | None = None
    notes: str | None = personal("free text: may hold anything")
    # The rest of the order as the channel sent it with this revision (v3). A channel whose
    # revision counter also moves on payment can show an order first as a revision; intake
    # then takes these as the order itself.
    mode: OrderMode | None = None
    currency: str | None = None
    payment_status: PaymentStatus | None = None
    customer: Customer | None = None
    location_hint: str | None = None
    device_id: str | None = personal()
    placed_at: UtcDatetime | None = None
    sealed: str | None = Field(default=None, description=SEALED_DOC)
    platform_ciphertext: PlatformCiphertext | None = Field(
        default=None, description="(v5) the buyer's details as the platform encrypted them"
    )
    table: str | None = Field(default=None, description="(v5) a dine-in order's table")
    covers: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="(v7) how many guests a dine-in order seats (covers)",
    )
    rounding: int = Field(
        default=0,
        description="(v5) total minus (lines + fees + tax - discount): the channel's own "
        "rounding, within the rule its connector documents",
    )
    tip: int = Field(
        default=0, description="(v8) the tip the customer gave, in the total, minor units"
    )


class OrderAccepted(OrderEvent):
    """The order passed validation."""

    total: int
    currency: str


class OrderRejected(OrderEvent):
    """The order failed validation (or could not be fulfilled); `reasons` say why."""

    reasons: list[RejectionReason]


class OrderHeld(OrderEvent):
    """Fraud screening scored the order over the threshold: it waits for a reviewer."""

    risk_score: int
    threshold: int
    signals: list[FraudSignal]


class ReviewApproved(OrderEvent):
    """A reviewer (the actor) released a held order."""

    note: str | None = None


class ReviewRejected(OrderEvent):
    """A reviewer (the actor) refused a held order; it is cancelled."""

    reason: str


class OrderReserved(OrderEvent):
    """Every line is reserved."""

    lines: list[LineQuantity]
    expires_at: UtcDatetime | None = None


class OrderPartiallyReserved(OrderEvent):
    """Some lines are reserved, others are not (yet)."""

    reserved: list[LineQuantity]
    missing: list[LineQuantity]


class OrderReservationFailed(OrderEvent):
    """No stock could be reserved for the lines in `missing`."""

    missing: list[LineQuantity]
    reason: str


class OrderReservationReleased(OrderEvent):
    """Reserved units given back: on cancel, expiry, modification or partial failure."""

    lines: list[LineQuantity]
    reason: str = Field(description="CANCELLED, EXPIRED, MODIFIED, COMPENSATION, REROUTED")


class OrderRouted(OrderEvent):
    """Where the order is fulfilled; several groups when it is split."""

    location: str = Field(description="the primary fulfilment location")
    groups: list[FulfilmentGroup]
    reasons: list[str]


class OrderPrioritised(OrderEvent):
    """Its place in the location's fulfilment queue: higher score goes first."""

    location: str
    score: int
    promised_at: UtcDatetime | None = None
    factors: list[str] = Field(default_factory=list)
    estimated_ready_at: UtcDatetime | None = Field(
        default=None,
        description="(v2) when the store is expected to have it ready (prep-time estimate, "
        "median); `promised_at` adds the p90 margin and the handoff",
    )
    eta_source: str | None = Field(
        default=None,
        description="(v2) what the estimate came from: the model's level (store×dish, store, "
        "...) or default (the fixed promise)",
    )
    eta_model: str | None = Field(
        default=None, description="(v2) the version of the prep-time model that estimated it"
    )


class OrderAcceptedByStore(OrderEvent):
    location: str
    estimated_ready_at: UtcDatetime | None = None
    eta_source: str | None = Field(
        default=None,
        description="(v2) where `estimated_ready_at` came from: store (the store gave it), a "
        "prep-time model level (store×dish, store, ...), default or promise (the promised time)",
    )
    eta_model: str | None = Field(
        default=None, description="(v2) the version of the prep-time model that estimated it"
    )


class OrderDeclinedByStore(OrderEvent):
    """The store the order was routed to will not make it (too busy, out of an ingredient,
    closing): the order is routed again without that store, or rejected when none is left."""

    location: str
    reason_code: str = Field(description="BUSY, SOLD_OUT, CLOSING, OTHER, ...")
    reason: str


class OrderAtRisk(OrderEvent):
    """An alert from the order's own timer, before a promise is missed: its store has not
    accepted it and half its acceptance window is gone (NOT_ACCEPTED, the escalation follows
    when the window closes), or it is not ready within `AT_RISK_MINUTES` of the time it is due
    (LATE: the store's ETA, else the promised time)."""

    location: str
    risk: str = Field(description="NOT_ACCEPTED or LATE")
    due_at: UtcDatetime = Field(description="when the acceptance or the order is due")
    reason: str


class OrderAmendmentRequested(OrderModified):
    """A channel's revision of an order its store has already accepted (and may be preparing):
    held for the store to accept or refuse (`OrderAmendmentAccepted`, `OrderAmendmentRefused`);
    the order stays as it was until then. Carries the revision as the channel sent it."""


class OrderAmendmentAccepted(OrderEvent):
    """The store takes the pending amendment on; the revision follows as `OrderModified`."""

    location: str
    revision: int = Field(description="the channel's revision the store accepted")


class OrderAmendmentRefused(OrderEvent):
    """A revision that reached the order after its store accepted it, not applied: refused by
    the store, or by the order process (TOO_LATE once the order is ready, INVALID, STOCKED_GOODS
    when it changes goods reserved from stock, SUPERSEDED by a newer revision)."""

    location: str | None = Field(default=None, description="the refusing store; none: the system")
    revision: int = Field(description="the channel's revision refused")
    reason_code: str = Field(
        description="TOO_LATE, INVALID, STOCKED_GOODS, SUPERSEDED, or the store's own"
    )
    reason: str


class OrderPreparing(OrderEvent):
    location: str


class OrderReady(OrderEvent):
    location: str


class OrderPickedUp(OrderEvent):
    """Collected by the customer or a courier."""

    location: str
    picked_up_by: str = Field(description="customer, or the courier's name")
    courier_phone: str | None = None


class ShippingAlternative(Frozen):
    """(ShipmentCreated v2) A carrier's quote that rate shopping did not buy, and why."""

    carrier: str
    service: str
    price: int = Field(description="minor units of `currency`, with the rules' surcharge")
    currency: str
    promised_by: datetime | None = None
    lost: str = Field(
        description="price, speed, late, temperature, cash_on_delivery, weight, volume, "
        "destination, disabled (streams/rate_shopping.py `Lost`)"
    )
    detail: str = ""


class ShipmentCreated(OrderEvent):
    shipment_id: str
    carrier: str
    service: str | None = None
    tracking_number: str
    label_ref: str | None = Field(default=None, description="where the label document is kept")
    cost: int | None = Field(default=None, description="minor units of `cost_currency`")
    cost_currency: str | None = Field(
        default=None, description="(v2) the carrier's currency; absent: the order's"
    )
    location: str | None = Field(default=None, description="(v2) the location it ships from")
    temperature: str | None = Field(
        default=None, description="(v2) ambient, chilled or frozen: what it must be kept at"
    )
    promised_by: datetime | None = Field(
        default=None, description="(v2) the delivery the carrier promised"
    )
    wave: str | None = Field(default=None, description="(v2) the shipping wave that bought it")
    orders: list[str] = Field(
        default_factory=list,
        description="(v2) every order in this consolidated shipment (this one included); "
        "empty: this order alone",
    )
    alternatives: list[ShippingAlternative] = Field(
        default_factory=list, description="(v2) the quotes rate shopping did not buy, and why"
    )


class ShipmentStatusUpdated(OrderEvent):
    shipment_id: str
    tracking_number: str
    status: str = Field(
        description="picked_up, in_transit, out_for_delivery, delivered, exception, "
        "returned_to_sender, cancelled (events.shipping.TrackingStatus; before v2 the "
        "carrier's own word)"
    )
    description: str | None = None
    place: str | None = None
    carrier: str | None = Field(default=None, description="(v2) the carrier that reports it")
    carrier_status: str | None = Field(
        default=None, description="(v2) the carrier's own code or word for it"
    )


class OrderDelivered(OrderEvent):
    proof: str | None = Field(default=None, description="signature or photo reference")
    location: str | None = Field(
        default=None, description="(v2) the store that reports it (none from a carrier)"
    )


class OrderCompleted(OrderEvent):
    """Nothing more will happen to the order in the normal flow."""

    location: str | None = Field(default=None, description="(v2) the store that reports it")


class OrderCancelled(OrderEvent):
    cancelled_by: CancelledBy
    reason_code: str
    reason: str


class ReturnRequested(OrderEvent):
    """The customer wants to send goods back (asked the service desk or a store, or a
    platform's refund request with goods to return: `refund_request_id`)."""

    return_id: str
    lines: list[ReturnLine]
    reason: str
    refund_request_id: str | None = Field(
        default=None, description="(v2) the platform's RefundRequested this return answers"
    )


class ReturnApproved(OrderEvent):
    """The return may come back, to `return_location`; the order stays return_requested."""

    return_id: str
    return_location: str = Field(description="the store or warehouse the goods go back to")
    note: str | None = None


class ReturnDenied(OrderEvent):
    """The return is refused: the sale stands and the order is completed."""

    return_id: str
    reason: str


class ReturnLabelCreated(OrderEvent):
    """A return label bought from a carrier, the customer the sender and the return location
    the recipient; `reference` (`return_id@location`) was the carrier's idempotency key."""

    return_id: str
    reference: str
    carrier: str
    service: str | None = None
    tracking_number: str
    return_location: str
    cost: int | None = Field(default=None, description="minor units of `cost_currency`")
    cost_currency: str | None = None


class ReturnReceived(OrderEvent):
    return_id: str
    lines: list[ReturnLine]
    condition: str = Field(description="e.g. RESELLABLE, DAMAGED, MIXED")
    return_location: str | None = Field(
        default=None, description="(v2) where the goods were received"
    )


class ReturnInspected(OrderEvent):
    """The returned goods inspected line by line. The order agent sends a `StockReceived`
    (reference `return:RETURN_ID`) to the ledger of each resellable line's restock location;
    damaged lines are written off: recorded here, no stock."""

    return_id: str
    lines: list[InspectedLine]


class OrderRefunded(OrderEvent):
    refund_id: str
    amount: int = Field(description="minor units")
    currency: str
    reason: str
    return_id: str | None = None
    lines: list[RefundedLine] = Field(
        default_factory=list, description="(v2) the returned lines refunded, with their amounts"
    )
    shipping_refunded: int = Field(
        default=0, description="(v2) the delivery fee refunded, minor units (in `amount`)"
    )
    restocking_fee: int = Field(
        default=0, description="(v2) kept back for restocking, minor units (out of `amount`)"
    )


# ---- what a delivery platform reports of an order (connectors/*_updates.py): the platform is the
# actor; each is logged on the order as it stands, and the order agent derives what follows.

COURIER_STATUSES = (
    "dispatching",
    "assigned",
    "arrived",
    "picked_up",
    "delivered",
    "cancelled",
    "failed",
)


class CourierStatusUpdated(OrderEvent):
    """The platform's rider (Meituan 配送, Ele.me 运单) moved on: being found (dispatching),
    assigned to the order, arrived at the store, picked it up, delivered it; or the delivery
    was cancelled, or failed. Logged as information
    on the order; a pickup of a ready order also moves it as the store's hand-off would
    (`OrderPickedUp`, committing its reservation), a delivery as `OrderDelivered`. The rider's
    name and phone are not carried (personal data the order process has no use for)."""

    status: str = Field(
        description="dispatching, assigned, arrived, picked_up, delivered, cancelled or failed"
    )
    platform_status: str = Field(description="the platform's own code, e.g. meituan:20, eleme:55")


class RefundRequested(OrderEvent):
    """The customer asked the platform for money back: `cancel` (to call the order off before it
    is delivered: Ele.me 取消单) or `refund` (退款/退单: for an order made or delivered); the
    whole order, or `lines` (and `amount`) of it. The store or the platform's service answers on
    the platform; its answer follows as `RefundRequestClosed`."""

    refund_id: str = Field(description="the platform's id of the request, else derived")
    kind: str = Field(description="cancel or refund")
    partial: bool = Field(default=False, description="some lines only (`lines`, `amount`)")
    lines: list[ReturnLine] = Field(default_factory=list)
    amount: int | None = Field(default=None, description="minor units, when the platform says")
    currency: str | None = None
    reason: str
    appeal: bool = Field(
        default=False, description="the customer appealed a refusal: the platform's service decides"
    )


class RefundRequestClosed(OrderEvent):
    """What became of a refund request: `agreed` (by the store, the platform's service, or on
    time-out), `rejected`, or `withdrawn` by the customer. An agreed request for the whole order
    cancels it while it is not yet picked up (the order agent derives `OrderCancelled`)."""

    refund_id: str
    outcome: str = Field(description="agreed, rejected or withdrawn")
    partial: bool = False
    amount: int | None = Field(default=None, description="minor units, when the platform says")
    currency: str | None = None
    reason: str = ""


# ---------------------------------------------------------------- stock ledger events


class StockReceived(StockEvent):
    """Goods in: on_hand grows."""

    quantity: int
    reference: str | None = Field(default=None, description="purchase order, transfer id")


class StockAdjusted(StockEvent):
    """A correction of on_hand by `delta` (negative for damage, loss, kitchen use)."""

    delta: int
    reason: str = Field(description="DAMAGED, LOST, FOUND, CORRECTION, CONSUMED, ...")
    note: str | None = None


class StockCounted(StockEvent):
    """A physical count: on_hand becomes `counted`."""

    counted: int


class StockReserved(StockEvent):
    order_id: str
    reservation_id: str
    quantity: int
    expires_at: UtcDatetime | None = None


class StockReleased(StockEvent):
    order_id: str
    reservation_id: str
    quantity: int
    reason: str


class StockCommitted(StockEvent):
    """Shipped or handed over: the reservation leaves on_hand."""

    order_id: str
    reservation_id: str
    quantity: int


class SafetyStockSet(StockEvent):
    quantity: int


class ExpiryBatchAdded(StockEvent):
    batch_id: str
    quantity: int
    expires_on: date


class ExpiryBatchExpired(StockEvent):
    """A perishable batch passed its date: its remaining units leave on_hand."""

    batch_id: str
    quantity: int


class LowStockAlerted(StockEvent):
    available: int = Field(description="available to promise when the alert fired")
    threshold: int
    reorder_quantity: int = Field(description="suggested quantity to reorder")


# ---------------------------------------------------------------- stock commands
# Requests to the inventory agent, on `oms.stock-commands.v1` keyed by `sku@location`; it
# answers each one with ledger events (and, for reservations, a reply to the order).


class ReserveStock(StockEvent):
    """Reserve `quantity` for one line of an order (one writer per key: no locks)."""

    order_id: str
    reservation_id: str = Field(description="deterministic: order, routing attempt and line")
    quantity: int
    expires_at: UtcDatetime | None = None


class ReleaseStock(StockEvent):
    order_id: str
    reservation_id: str
    reason: str = Field(description="CANCELLED, COMPENSATION, REROUTED, MODIFIED")


class CommitStock(StockEvent):
    """The goods left (shipped or picked up): the reservation leaves on_hand for good."""

    order_id: str
    reservation_id: str


class StockReservationRefused(StockEvent):
    """A reservation the ledger could not honour; the order's agent re-routes or rejects."""

    order_id: str
    reservation_id: str
    requested: int
    available: int
    reason: str = Field(description="e.g. INSUFFICIENT_STOCK")


# ---------------------------------------------------------------- catalogue events
# The product catalogue and the location registry, loaded from a file and kept current by
# these events on `oms.catalogue.v1` (keyed by `entity_id`: a SKU or a location id).


class OpeningHours(Frozen):
    weekday: int = Field(description="0 = Monday … 6 = Sunday, in the location's time zone")
    opens: str = Field(description="HH:MM local time")
    closes: str = Field(description="HH:MM local time; before `opens` means after midnight")


class Product(Frozen):
    sku: str
    name: str
    unit_price: int | None = Field(default=None, description="list price, minor units")
    perishable: bool = False
    stock_tracked: bool = Field(
        default=True, description="false: made to order (dishes), limited by capacity instead"
    )
    reorder_point: int = Field(default=0, description="alert when ATP falls to this")
    reorder_quantity: int = 0
    unit: str = Field(
        default="each",
        description="(v2) what it is sold and stocked in: each, or a measure (kg, g, lb, oz, l, "
        "ml) whose stock ledger counts millionths of the unit",
    )


class WhenNotAccepted(StrEnum):
    """What becomes of an order its store has not accepted in time (`Location` v2)."""

    REROUTE = "reroute"  # as if the store declined: routed elsewhere, rejected when none is left
    CANCEL = "cancel"  # cancelled by the system


class Location(Frozen):
    id: str
    name: str
    kind: str = Field(default="store", description="store or warehouse")
    latitude: float
    longitude: float
    timezone: str = "UTC"
    capabilities: list[OrderMode] = Field(description="the modes it can fulfil")
    delivery_radius_m: int = 0
    opening_hours: list[OpeningHours] = Field(
        default_factory=list, description="empty: always open"
    )
    slot_minutes: int = 30
    capacity_per_slot: int = Field(default=0, description="orders per slot; 0 = unlimited")
    cost_per_order: int = Field(default=0, description="minor units")
    cost_per_km: int = Field(default=0, description="minor units")
    aliases: list[str] = Field(default_factory=list, description="channels' ids for it")
    paused: bool = False
    auto_accept_channels: list[str] = Field(
        default_factory=list,
        description="(v2) channels whose orders the store takes on as soon as they reach it",
    )
    accept_within_minutes: int = Field(
        default=0,
        ge=0,
        le=24 * 60,
        description="(v2) an order the store has not accepted this long after it reached it "
        "is escalated (`when_not_accepted`); 0: it waits",
    )
    when_not_accepted: WhenNotAccepted = Field(
        default=WhenNotAccepted.REROUTE,
        description="(v2) reroute: as if the store declined (routed elsewhere, rejected when "
        "no store is left); cancel: cancelled by the system",
    )


class CatalogueEvent(Event):
    entity_id: str

    @property
    def aggregate_id(self) -> str:
        return self.entity_id


class ProductUpdated(CatalogueEvent):
    product: Product


class LocationUpdated(CatalogueEvent):
    location: Location


class LocationPaused(CatalogueEvent):
    reason: str
    automatic: bool = Field(default=False, description="paused by the capacity monitor")


class LocationResumed(CatalogueEvent):
    reason: str
    automatic: bool = False


ORDER_EVENTS: tuple[type[OrderEvent], ...] = (
    OrderReceived,
    OrderModified,
    OrderAccepted,
    OrderRejected,
    OrderHeld,
    ReviewApproved,
    ReviewRejected,
    OrderReserved,
    OrderPartiallyReserved,
    OrderReservationFailed,
    OrderReservationReleased,
    OrderRouted,
    OrderPrioritised,
    OrderAcceptedByStore,
    OrderDeclinedByStore,
    OrderAtRisk,
    OrderAmendmentRequested,
    OrderAmendmentAccepted,
    OrderAmendmentRefused,
    OrderPreparing,
    OrderReady,
    OrderPickedUp,
    ShipmentCreated,
    ShipmentStatusUpdated,
    OrderDelivered,
    OrderCompleted,
    OrderCancelled,
    ReturnRequested,
    ReturnReceived,
    OrderRefunded,
    CourierStatusUpdated,
    RefundRequested,
    RefundRequestClosed,
    ReturnApproved,
    ReturnDenied,
    ReturnLabelCreated,
    ReturnInspected,
)

STOCK_EVENTS: tuple[type[StockEvent], ...] = (
    StockReceived,
    StockAdjusted,
    StockCounted,
    StockReserved,
    StockReleased,
    StockCommitted,
    SafetyStockSet,
    ExpiryBatchAdded,
    ExpiryBatchExpired,
    LowStockAlerted,
    StockReservationRefused,
)

STOCK_COMMANDS: tuple[type[StockEvent], ...] = (ReserveStock, ReleaseStock, CommitStock)

CATALOGUE_EVENTS: tuple[type[CatalogueEvent], ...] = (
    ProductUpdated,
    LocationUpdated,
    LocationPaused,
    LocationResumed,
)


class KeptHeader(Frozen):
    """One HTTP request header a dead letter keeps (a webhook's signature, its timestamp)."""

    name: str
    value: str


class DeadLetter(Frozen):
    """Anything rejected: the original bytes, where they came from and why. Nothing is dropped.

    Version 2 adds `headers` (those the channel's connector reads to verify a webhook, so that
    a replay verifies again) and `replayable` (false for a message refused as not authentic:
    a forged, unsigned or replayed webhook is never sent on, whatever is fixed later).
    """

    schema_version: ClassVar[int] = 2

    dead_letter_id: str
    source: str = Field(description="connector name or `topic` the bytes were read from")
    source_ref: str = Field(description="file:line, topic/partition/offset, or request id")
    reason: str
    raw: bytes
    failed_at: UtcDatetime
    headers: list[KeptHeader] = Field(
        default_factory=list, description="the request headers the connector verifies"
    )
    replayable: bool = Field(
        default=True, description="false: refused as not authentic; `oms dlq replay` refuses it"
    )

    @classmethod
    def of(
        cls,
        *,
        source: str,
        source_ref: str,
        reason: str,
        raw: bytes,
        headers: Mapping[str, str] | None = None,
        replayable: bool = True,
    ) -> DeadLetter:
        """A dead letter whose id is derived from where the bytes came from (re-sends dedup)."""
        return cls(
            dead_letter_id=deterministic_id("dead-letter", source, source_ref, reason),
            source=source,
            source_ref=source_ref,
            reason=reason,
            raw=raw,
            failed_at=utc_now(),
            headers=[KeptHeader(name=k, value=v) for k, v in (headers or {}).items()],
            replayable=replayable,
        )
