"""Toast POS orders: the Orders API v2 `Order` object as GET /orders/v2/orders/{guid} (and
/ordersBulk, one order at a time) returns it (polled).

A payload is one `Order`, bare or as the orders webhook wraps it (`{"details": {"order": ...}}`);
field names in rejections are relative to the order. The restaurant is the request's
`Toast-Restaurant-External-ID` header, kept as the location hint when given.

Sources: doc.toasttab.com — the orders API reference (openapi/orders: data definitions Order,
Check, Selection, AppliedDiscount, AppliedServiceCharge, Payment, DeliveryInfo, Customer), the
developer guide's "Orders webhook" (devguide/devOrdersWebhookRef.html) and "Message signing"
(devguide/apiMessageSigning.html).

Polled, not a webhook: Toast signs a webhook with `Toast-Signature`, the base64 HMAC-SHA256 of
the body concatenated with "the timestamp of the message", keyed with the subscription's secret.
The published page does not say where that timestamp is taken from (a header, or the message's
own `timestamp` field, and in which text form), so a verifier would be guessing; an unverifiable
push is refused by the house rules. The order's own GET needs the API client's OAuth token, so a
fetched order is authentic without a signature.

Money is dollars as JSON numbers (12.5): each goes through the payload model's `Amount` (a
Decimal from the number's shortest text, never float arithmetic) and `minor_units` in USD (an
Order names no currency; Toast's orders API prices in the restaurant's currency, USD for the US
restaurants this connector serves). Per check, `amount` is after discounts and service charges,
before tax; `totalAmount` adds `taxAmount` and excludes tips. So:

- a line is a non-voided selection: sku = `item.guid` (else `displayName`), name =
  `displayName`, options = its modifiers' names ("Name xN" for N > 1). Its amounts are the
  selection's, each already for the whole quantity, modifiers included, and without tax (the
  Selection reference: `preDiscountPrice` "gross sale price ... excludes tax", `price` the net
  price "after considering discounts (including discounts at the check level), quantity
  adjustments, and modifier prices", `tax` "the total tax amount for this selection"): gross =
  `preDiscountPrice`, discount = gross - `price` (its item discounts and its share of the
  check's), tax = `tax`, total = `price` + `tax`. Toast prices are tax-exclusive in the US; a
  menu item priced with tax included (`taxInclusion` INCLUDED) is split by Toast into a price
  without tax and its tax, so the amounts are without tax either way (`prices_include_tax`
  false). Without `preDiscountPrice`, gross is `price` plus the selection's own discounts; without
  `tax`, the line states no total. The unit price is gross / `quantity` rounded half to even
  (10.00 for 3 → 3.33), for information: it never refuses an order;
- delivery fee = service charges marked `delivery`; packaging fee = the other service charges
  (gratuities included: the contract has no service-charge field); the order's `tip` = the
  sum of the check's payments' `tipAmount` (voided, denied, cancelled and failed payments left
  out), the check's own `tipAmount` when it has no payments;
- discount = Σ `appliedDiscounts.discountAmount` of the checks and of their non-voided
  selections; tax = Σ `taxAmount`; total = Σ (`totalAmount` + tips), what the guests pay;
- an order whose lines' gross, fees, tax and discounts do not add up to that total is refused,
  naming the first check's `totalAmount`: every part is stated in cents and Toast's check
  arithmetic (`totalAmount` = `amount` + `taxAmount`, `amount` = Σ `price` + service charges)
  leaves no rounding the parts do not show, so no rounding tolerance is given.

A selection sold by weight (`unitOfMeasure` LB, OZ, KG, G) keeps its exact measure: 1.5 LB is
a line of unit `lb`, `quantity_millionths` 1500000 and `quantity` 2 (rounded up), its unit price
per pound; a whole measure (2 LB) is a line of 2 `lb`. A selection counted in items
(`unitOfMeasure` NONE or absent) must be whole: a fractional one is refused naming its
`quantity`, not rounded, as is a unit of measure the contract does not count in.

Times are ISO 8601 with an offset ("2026-11-25T11:32:05.000+0000"), converted to UTC. The order
was placed at `openedDate` (else `createdDate`); `promisedDate` is the requested time. Toast
moves `modifiedDate` on every change: an order whose `modifiedDate` is later than its
`openedDate` is a revision (`OrderModified`, revision = `modifiedDate` in Unix milliseconds).

Mode: the dining option's `behavior` when the payload carries it (DINE_IN, TAKE_OUT → pickup,
DELIVERY, CURBSIDE → pickup; the Order itself names the dining option only by GUID, its
behavior lives in the configuration API); else dine-in when a `table` is set, delivery when
`deliveryInfo` is set, else pickup. The table is named by its GUID (the Order holds no table
name).

The guest: the first non-voided check's `customer` (Toast sends it in clear):
firstName + " " + lastName, phone, email, guid as id. The address is `deliveryInfo` (address1,
address2 → text; city; state → province; zipCode; latitude/longitude); its `notes` are the
order's notes.

Refused: a voided or deleted order (a cancellation is not a new order), an order whose checks
are all voided or deleted, a whole-order `quantity` that is not whole, unknown behaviors.
Simplified: voided/deleted checks and voided selections are skipped; payment status comes from
the checks' `paymentStatus` (all PAID/CLOSED → paid, some → partially paid, else unpaid);
nested modifiers, per-item discounts' split and refunds are not modelled.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from pydantic import Field

from connectors.base import (
    Amount,
    AwareChannelTime,
    ChannelEvent,
    ChannelPayload,
    Connector,
    PayloadRejected,
    decimal_number,
    exact_quantity,
    minor_units,
    unit_price_of,
)
from connectors.samples import SampleOrder, payload_json
from events.models import MILLIONTHS, Address, Customer, OrderLine, OrderMode, PaymentStatus

CURRENCY = "USD"
RESTAURANT_HEADER = "Toast-Restaurant-External-ID"
_ZERO = Decimal(0)
_BEHAVIORS = {
    "DINE_IN": OrderMode.DINE_IN,
    "TAKE_OUT": OrderMode.PICKUP,
    "CURBSIDE": OrderMode.PICKUP,
    "DELIVERY": OrderMode.DELIVERY,
}
_PAID = {"PAID", "CLOSED"}
_NOT_PAYMENTS = {"VOIDED", "DENIED", "CANCELLED", "ERROR", "ERROR_NETWORK"}


class _Reference(ChannelPayload):
    guid: str | None = None
    entityType: str | None = None  # noqa: N815 (Toast's field names)


class _DiningOption(_Reference):
    behavior: str | None = None  # the configuration API's DiningOption, when a feed adds it


class _Discount(ChannelPayload):
    name: str | None = None
    discountAmount: Amount = _ZERO  # noqa: N815


class _Modifier(ChannelPayload):
    displayName: str = ""  # noqa: N815
    quantity: Amount = Decimal(1)
    voided: bool = False


class _Selection(ChannelPayload):
    guid: str | None = None
    displayName: str  # noqa: N815
    item: _Reference | None = None
    quantity: Amount
    unitOfMeasure: str | None = None  # noqa: N815 (NONE, LB, OZ, KG, G, ...: sold by measure)
    price: Amount = _ZERO  # after every discount, times the quantity, without tax
    preDiscountPrice: Amount | None = None  # noqa: N815 (before discounts, without tax)
    tax: Amount | None = None  # the selection's tax
    modifiers: list[_Modifier] = []
    appliedDiscounts: list[_Discount] = []  # noqa: N815
    voided: bool = False


class _ServiceCharge(ChannelPayload):
    name: str | None = None
    chargeAmount: Amount = _ZERO  # noqa: N815
    delivery: bool = False
    gratuity: bool = False


class _Payment(ChannelPayload):
    type: str | None = None
    amount: Amount = _ZERO
    tipAmount: Amount = _ZERO  # noqa: N815
    paymentStatus: str | None = None  # noqa: N815


class _Customer(ChannelPayload):
    guid: str | None = None
    firstName: str | None = None  # noqa: N815
    lastName: str | None = None  # noqa: N815
    email: str | None = None
    phone: str | None = None


class _Check(ChannelPayload):
    guid: str
    displayNumber: str | None = None  # noqa: N815
    amount: Amount = _ZERO
    taxAmount: Amount = _ZERO  # noqa: N815
    totalAmount: Amount  # noqa: N815
    tipAmount: Amount | None = None  # noqa: N815
    appliedDiscounts: list[_Discount] = []  # noqa: N815
    appliedServiceCharges: list[_ServiceCharge] = []  # noqa: N815
    customer: _Customer | None = None
    selections: list[_Selection] = []
    payments: list[_Payment] = []
    voided: bool = False
    deleted: bool = False
    paymentStatus: str | None = None  # noqa: N815


class _DeliveryInfo(ChannelPayload):
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    state: str | None = None
    zipCode: str | None = None  # noqa: N815
    latitude: float | None = None
    longitude: float | None = None
    notes: str | None = None


class _Order(ChannelPayload):
    guid: str
    entityType: str = "Order"  # noqa: N815
    displayNumber: str | None = None  # noqa: N815
    openedDate: AwareChannelTime | None = None  # noqa: N815
    createdDate: AwareChannelTime | None = None  # noqa: N815
    modifiedDate: AwareChannelTime | None = None  # noqa: N815
    promisedDate: AwareChannelTime | None = None  # noqa: N815
    diningOption: _DiningOption | None = None  # noqa: N815
    table: _Reference | None = None
    numberOfGuests: int | None = Field(default=None, ge=0, le=10_000)  # noqa: N815
    deliveryInfo: _DeliveryInfo | None = None  # noqa: N815
    checks: list[_Check]
    voided: bool = False
    deleted: bool = False
    approvalStatus: str | None = None  # noqa: N815
    source: str | None = None


class ToastConnector(Connector):
    name = "toast"
    delivery = "polled"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        order = self.validate(_Order, _unwrap(self.load_json(raw)))
        if order.entityType != "Order":
            raise PayloadRejected(f"{order.entityType!r} is not an Order", field="entityType")
        if order.voided or order.deleted:
            raise PayloadRejected(
                "the order is voided or deleted: a cancellation, not an order",
                field="voided" if order.voided else "deleted",
            )
        placed_at = order.openedDate or order.createdDate
        if placed_at is None:
            raise PayloadRejected("no order time", field="openedDate")
        checks = [(i, c) for i, c in enumerate(order.checks) if not (c.voided or c.deleted)]
        if not checks:
            raise PayloadRejected("every check is voided or deleted", field="checks")

        def cents(amount: Decimal, field: str) -> int:
            return minor_units(amount, currency=CURRENCY, field=field)

        lines: list[OrderLine] = []
        delivery_fee = packaging_fee = discount = tax = tip = total = 0
        for i, check in checks:
            at = f"checks.{i}"
            for j, selection in enumerate(check.selections):
                if not selection.voided:
                    lines.append(_line(selection, f"{at}.selections.{j}"))
                    discount += sum(
                        cents(d.discountAmount, f"{at}.selections.{j}.appliedDiscounts.{k}")
                        for k, d in enumerate(selection.appliedDiscounts)
                    )
            discount += sum(
                cents(d.discountAmount, f"{at}.appliedDiscounts.{k}")
                for k, d in enumerate(check.appliedDiscounts)
            )
            for k, charge in enumerate(check.appliedServiceCharges):
                amount = cents(charge.chargeAmount, f"{at}.appliedServiceCharges.{k}")
                if charge.delivery:
                    delivery_fee += amount
                else:
                    packaging_fee += amount
            if check.payments:  # the tips the guests gave, on their payments
                tips = sum(
                    cents(p.tipAmount, f"{at}.payments.{k}.tipAmount")
                    for k, p in enumerate(check.payments)
                    if p.paymentStatus not in _NOT_PAYMENTS
                )
            else:
                tips = cents(check.tipAmount or _ZERO, f"{at}.tipAmount")
            tip += tips
            tax += cents(check.taxAmount, f"{at}.taxAmount")
            total += cents(check.totalAmount, f"{at}.totalAmount") + tips
        goods = sum(line.amount for line in lines)
        if goods + delivery_fee + packaging_fee + tax + tip - discount != total:
            raise PayloadRejected(
                f"selections {goods} + service charges {delivery_fee + packaging_fee} + tips "
                f"{tip} + tax {tax} - discounts {discount} is not the checks' total {total} "
                "(cents)",
                field=f"checks.{checks[0][0]}.totalAmount",
            )

        revised = order.modifiedDate is not None and order.modifiedDate > placed_at
        revision = _unix_millis(order.modifiedDate) if revised and order.modifiedDate else 0
        guest = next((c.customer for _, c in checks if c.customer), None) or _Customer()
        info = order.deliveryInfo
        name = " ".join(p for p in (guest.firstName, guest.lastName) if p) or None
        restaurant = {k.lower(): v for k, v in (headers or {}).items()}.get(
            RESTAURANT_HEADER.lower()
        )
        mode = _mode(order)
        return self.order(
            external_id=order.guid,
            placed_at=placed_at,
            occurred_at=order.modifiedDate if revised else placed_at,
            received_at=received_at,
            revision=revision,
            mode=mode,
            currency=CURRENCY,
            lines=lines,
            delivery_fee=delivery_fee,
            packaging_fee=packaging_fee,
            tip=tip,
            discount=discount,
            tax=tax,
            total=total,
            payment_status=_payment([c for _, c in checks]),
            customer=Customer(id=guest.guid, name=name, phone=guest.phone, email=guest.email),
            address=None
            if info is None or not info.address1
            else Address(
                text=", ".join(p for p in (info.address1, info.address2) if p),
                city=info.city,
                province=info.state,
                postal_code=info.zipCode,
                latitude=info.latitude,
                longitude=info.longitude,
            ),
            location_hint=restaurant,
            requested_at=order.promisedDate,
            notes=info.notes if info else None,
            table=order.table.guid if order.table else None,
            # the guests at the table; 0 (not counted) is no count
            covers=(order.numberOfGuests or None) if mode is OrderMode.DINE_IN else None,
        )


def _unwrap(document: Any) -> Any:
    """The order of an orders-webhook message (`details.order`), else the document itself."""
    if isinstance(document, dict):
        details = document.get("details")
        if isinstance(details, dict) and isinstance(details.get("order"), dict):
            return details["order"]
    return document


def _whole(amount: Decimal, field: str) -> int:
    if amount != amount.to_integral_value() or amount <= 0:
        raise PayloadRejected(
            f"{amount} is not a whole positive quantity of items (a measure names its "
            "unitOfMeasure)",
            field=field,
        )
    return int(amount)


_UNITS = {"NONE": "each", "LB": "lb", "OZ": "oz", "KG": "kg", "G": "g"}
"""Toast's `unitOfMeasure` values and the contract's unit for each."""


def _line(selection: _Selection, at: str) -> OrderLine:
    """A selection's amounts as Toast states them (module docstring): all for the whole
    quantity and without tax, so the unit price is derived and never refuses the order."""
    unit = _UNITS.get(selection.unitOfMeasure or "NONE")
    if unit is None:
        raise PayloadRejected(
            f"unit of measure {selection.unitOfMeasure!r} is not one of {', '.join(_UNITS)}",
            field=f"{at}.unitOfMeasure",
        )
    millionths: int | None = None
    if unit == "each":
        quantity = _whole(selection.quantity, f"{at}.quantity")
    elif selection.quantity <= 0:
        raise PayloadRejected(
            f"{selection.quantity} is not a positive quantity", field=f"{at}.quantity"
        )
    else:
        quantity, millionths = exact_quantity(
            format(selection.quantity, "f"), field=f"{at}.quantity"
        )
    measure = Fraction(millionths, MILLIONTHS) if millionths is not None else quantity

    def cents(amount: Decimal, field: str) -> int:
        return minor_units(amount, currency=CURRENCY, field=f"{at}.{field}")

    net = cents(selection.price, "price")
    if selection.preDiscountPrice is not None:
        gross = cents(selection.preDiscountPrice, "preDiscountPrice")
    else:  # the price is after the selection's own discounts: add them back
        gross = net + sum(
            cents(d.discountAmount, f"appliedDiscounts.{k}.discountAmount")
            for k, d in enumerate(selection.appliedDiscounts)
        )
    tax = None if selection.tax is None else cents(selection.tax, "tax")
    options = []
    for k, modifier in enumerate(selection.modifiers):
        if modifier.voided:
            continue
        count = _whole(modifier.quantity, f"{at}.modifiers.{k}.quantity")
        options.append(modifier.displayName if count == 1 else f"{modifier.displayName} x{count}")
    return OrderLine(
        sku=(selection.item.guid if selection.item else None) or selection.displayName,
        name=selection.displayName,
        quantity=quantity,
        unit_price=unit_price_of(gross, measure),
        unit=unit,
        quantity_millionths=millionths,
        options=options,
        gross=gross,
        discount=gross - net,
        tax=tax or 0,
        total=None if tax is None else net + tax,
    )


def _mode(order: _Order) -> OrderMode:
    behavior = order.diningOption.behavior if order.diningOption else None
    if behavior:
        if behavior not in _BEHAVIORS:
            raise PayloadRejected(
                f"{behavior!r} is not a dining behavior", field="diningOption.behavior"
            )
        return _BEHAVIORS[behavior]
    if order.table is not None and order.table.guid:
        return OrderMode.DINE_IN
    if order.deliveryInfo is not None:
        return OrderMode.DELIVERY
    return OrderMode.PICKUP


def _payment(checks: list[_Check]) -> PaymentStatus:
    paid = [c.paymentStatus in _PAID for c in checks]
    if all(paid):
        return PaymentStatus.PAID
    return PaymentStatus.PARTIALLY_PAID if any(paid) else PaymentStatus.UNPAID


def _unix_millis(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _toast_time(moment: datetime) -> str:
    """Toast's ISO 8601 form: milliseconds and a "+0000" offset."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}+0000"
    )


def _guid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "toast:" + ":".join(parts)))


def _shares(amount: int, weights: list[int]) -> list[int]:
    """`amount` split in proportion to `weights`, the cents left over going to the largest
    remainders, so that the shares add up to it exactly."""
    whole = sum(weights)
    if not whole:
        return [amount] + [0] * (len(weights) - 1) if weights else []
    shares = [amount * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: -(amount * weights[i] % whole))
    for i in by_remainder[: amount - sum(shares)]:
        shares[i] += 1
    return shares


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as GET /orders/v2/orders/{guid} returns it, one check, modified at
    `order.revised_at(revision)`; `secret` is unused (polled). Refuses (ValueError) what a Toast
    order cannot say: another currency than USD, shipping, notes on an order without
    delivery info, a delivery without an address."""
    if order.currency != CURRENCY:
        raise ValueError(f"Toast orders are priced in {CURRENCY}, not {order.currency}")
    if order.mode == OrderMode.SHIP:
        raise ValueError("a restaurant POS order is not shipped")
    if order.mode == OrderMode.DELIVERY and not order.address_text:
        raise ValueError("a Toast delivery order needs deliveryInfo.address1")
    if order.notes and order.mode != OrderMode.DELIVERY:
        raise ValueError("a Toast order carries notes only in deliveryInfo")

    def money(cents: int) -> Decimal:
        return decimal_number(cents, currency=CURRENCY)

    guid = order.external_id  # a GUID on Toast; the sample's id stands for it
    opened = _toast_time(order.placed_at)
    behavior = {
        OrderMode.DINE_IN: "DINE_IN",
        OrderMode.PICKUP: "TAKE_OUT",
        OrderMode.DELIVERY: "DELIVERY",
    }[order.mode]
    first, _, last = order.customer_name.partition(" ")
    charges = [
        ("Delivery Fee", order.delivery_fee, True),
        ("Packaging", order.packaging_fee, False),
    ]
    amount = order.total - order.tax
    # Each selection's price is after its share of the check's discount, and its tax is its
    # share of the check's, as Toast states them (shared in proportion to the selections' gross).
    grosses = [line.unit_price * line.quantity for line in order.lines]
    discounts, taxes = _shares(order.discount, grosses), _shares(order.tax, grosses)
    check: dict[str, Any] = {
        "guid": _guid(guid, "check"),
        "entityType": "Check",
        "displayNumber": "1",
        "openedDate": opened,
        "amount": money(amount),
        "taxAmount": money(order.tax),
        "totalAmount": money(order.total),
        "tipAmount": money(0),
        "customer": {
            "guid": _guid(order.customer_phone, "customer"),
            "entityType": "Customer",
            "firstName": first,
            "lastName": last or None,
            "phone": order.customer_phone,
            "email": None,
        },
        "selections": [
            {
                "guid": _guid(guid, "selection", str(n)),
                "entityType": "MenuItemSelection",
                "item": {"guid": line.sku, "entityType": "MenuItem"},
                "displayName": line.name,
                "quantity": Decimal(f"{line.quantity}.0"),
                "price": money(gross - off),
                "preDiscountPrice": money(gross),
                "tax": money(tax),
                "modifiers": [],
                "appliedDiscounts": [],
                "voided": False,
            }
            for n, (line, gross, off, tax) in enumerate(
                zip(order.lines, grosses, discounts, taxes, strict=True), start=1
            )
        ],
        "appliedDiscounts": [
            {
                "guid": _guid(guid, "discount"),
                "name": "Promotion",
                "discountAmount": money(order.discount),
            }
        ]
        if order.discount
        else [],
        "appliedServiceCharges": [
            {
                "guid": _guid(guid, name),
                "entityType": "AppliedServiceCharge",
                "name": name,
                "chargeAmount": money(cents),
                "delivery": delivery,
                "gratuity": False,
            }
            for name, cents, delivery in charges
            if cents
        ],
        "payments": [
            {
                "guid": _guid(guid, "payment"),
                "entityType": "OrderPayment",
                "type": "CREDIT",
                "amount": money(order.total),
                "tipAmount": money(0),
                "paymentStatus": "CAPTURED",
            }
        ],
        "voided": False,
        "paymentStatus": "PAID",
    }
    body: dict[str, Any] = {
        "guid": guid,
        "entityType": "Order",
        "externalId": order.external_id,
        "displayNumber": order.external_id[-4:],
        "openedDate": opened,
        "createdDate": opened,
        "modifiedDate": _toast_time(order.revised_at(revision)),
        "diningOption": {
            "guid": _guid(order.store, behavior),
            "entityType": "DiningOption",
            "behavior": behavior,
        },
        "checks": [check],
        "voided": False,
        "deleted": False,
        "approvalStatus": "APPROVED",
        "source": "API",
    }
    if order.mode == OrderMode.DINE_IN:
        body["table"] = {
            "guid": _guid(order.store, "table", order.external_id),
            "entityType": "Table",
        }
    if order.mode == OrderMode.DELIVERY:
        body["deliveryInfo"] = {
            "address1": order.address_text,
            "latitude": order.latitude,
            "longitude": order.longitude,
            "notes": order.notes,
        }
    headers = {"content-type": "application/json", RESTAURANT_HEADER: order.store}
    return payload_json(body).encode(), headers
