"""Square orders: the Orders API `Order` object, bare or as RetrieveOrder returns it
(`{"order": {...}}`); amounts are already integer minor units. Square's own `order.*`
notifications carry only a summary (id, version, state): the order itself is what RetrieveOrder
returns for it, posted here signed the same way.

Signed like Square's webhooks: `x-square-hmacsha256-signature` is the base64 HMAC-SHA256 of the
notification URL followed by the body, keyed with the subscription's signature key (the
secret). The URL must be exactly the one registered with Square: `notification_url`, else
OMS_SQUARE_NOTIFICATION_URL, else where `oms api` listens by default (NOTIFICATION_URL).
The signature covers no time (developer.squareup.com/docs/webhooks: duplicates are expected
and recognised by their id): a re-sent order is recognised by its deterministic event id.
Square bumps `version` on every committed update: version N > 1 is `OrderModified` with
revision N - 1, so its intake sequence is N.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Literal

from pydantic import Field, StrictInt

from connectors.base import (
    AwareChannelTime,
    ChannelEvent,
    ChannelPayload,
    Connector,
    PayloadRejected,
    SignatureRejected,
    exact_quantity,
    same_signature,
    unit_price_of,
)
from connectors.samples import SampleOrder
from events.models import MILLIONTHS, Address, Customer, OrderLine, OrderMode, PaymentStatus

NOTIFICATION_URL = "http://127.0.0.1:8080/webhooks/square"
_MODES = {"PICKUP": OrderMode.PICKUP, "SHIPMENT": OrderMode.SHIP, "DELIVERY": OrderMode.DELIVERY}
# A service charge named like a delivery fee is one.
_DELIVERY_WORDS = ("deliver", "shipping")


class _Money(ChannelPayload):
    amount: StrictInt  # minor units; "3.00" or 3.5 is a mistake, not 3
    currency: str | None = None


_ZERO = _Money(amount=0)


class _Total(_Money):
    currency: str


class _Modifier(ChannelPayload):
    name: str = ""
    quantity: int = Field(default=1, ge=0)  # per unit of the line item
    base_price_money: _Money = _ZERO


class _AppliedTax(ChannelPayload):
    tax_uid: str = ""
    applied_money: _Money = _ZERO


class _MeasurementUnit(ChannelPayload):
    weight_unit: str | None = None
    volume_unit: str | None = None
    generic_unit: str | None = None  # "UNIT"
    custom_unit: dict[str, Any] | None = None
    length_unit: str | None = None
    area_unit: str | None = None
    time_unit: str | None = None


class _QuantityUnit(ChannelPayload):
    measurement_unit: _MeasurementUnit | None = None
    precision: int | None = None  # digits after the point, 0 to 5


class _LineItem(ChannelPayload):
    name: str = "Custom amount"
    quantity: str | StrictInt  # a decimal string: "2", or "1.50" of a weighed item
    quantity_unit: _QuantityUnit | None = None
    catalog_object_id: str | None = None
    variation_name: str | None = None
    base_price_money: _Money
    modifiers: list[_Modifier] = []
    gross_sales_money: _Money | None = None  # base and modifiers times the quantity
    total_discount_money: _Money = _ZERO
    total_tax_money: _Money = _ZERO  # inclusive and additive
    total_money: _Money | None = None  # gross - discounts + additive taxes
    applied_taxes: list[_AppliedTax] = []


class _Tax(ChannelPayload):
    uid: str = ""
    type: str = "ADDITIVE"
    applied_money: _Money = _ZERO


class _ServiceCharge(ChannelPayload):
    name: str = ""
    applied_money: _Money | None = None
    amount_money: _Money = _ZERO


class _Address(ChannelPayload):
    address_line_1: str | None = None
    address_line_2: str | None = None
    locality: str | None = None
    postal_code: str | None = None
    country: str | None = None


class _Recipient(ChannelPayload):
    customer_id: str | None = None
    display_name: str | None = None
    email_address: str | None = None
    phone_number: str | None = None
    address: _Address | None = None


class _Details(ChannelPayload):
    """pickup_details, delivery_details or shipment_details: what this connector reads of them."""

    recipient: _Recipient = _Recipient()
    pickup_at: AwareChannelTime | None = None
    deliver_at: AwareChannelTime | None = None
    note: str | None = None
    shipping_note: str | None = None


class _Fulfillment(ChannelPayload):
    type: Literal["PICKUP", "SHIPMENT", "DELIVERY"]
    pickup_details: _Details | None = None
    delivery_details: _Details | None = None
    shipment_details: _Details | None = None


class _CardDetails(ChannelPayload):
    status: str | None = None  # AUTHORIZED, CAPTURED, VOIDED, FAILED


class _Tender(ChannelPayload):
    type: str
    amount_money: _Money  # includes the tender's tip
    card_details: _CardDetails | None = None


class _SquareOrder(ChannelPayload):
    id: str
    location_id: str
    customer_id: str | None = None
    created_at: AwareChannelTime
    updated_at: AwareChannelTime | None = None
    version: int | None = None
    state: str = "OPEN"
    ticket_name: str | None = None
    metadata: dict[str, str] = {}
    line_items: list[_LineItem]
    taxes: list[_Tax] = []
    service_charges: list[_ServiceCharge] = []
    fulfillments: list[_Fulfillment] = []
    tenders: list[_Tender] = []
    total_money: _Total
    total_tax_money: _Money = _ZERO
    total_discount_money: _Money = _ZERO
    total_tip_money: _Money = _ZERO


class SquareConnector(Connector):
    name = "square"
    signed = True
    kept_headers = ("x-square-hmacsha256-signature",)

    def __init__(self, *, secret: str | None = None, notification_url: str | None = None) -> None:
        super().__init__(secret=secret)
        self.notification_url = notification_url or _notification_url()

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = self.require_secret()
        given = {k.lower(): v for k, v in headers.items()}.get("x-square-hmacsha256-signature")
        expected = _signature(secret, self.notification_url, body)
        if not same_signature(expected, given):
            raise SignatureRejected(
                "signature does not match", field="x-square-hmacsha256-signature"
            )

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        document = self.load_json(raw)
        if isinstance(document, dict) and isinstance(document.get("order"), dict):
            document = document["order"]
        order = self.validate(_SquareOrder, document)
        revision = order.version - 1 if order.version and order.version > 1 else 0
        fulfillment = order.fulfillments[0] if order.fulfillments else None
        details = _details(fulfillment) or _Details()
        recipient, extra = details.recipient, order.metadata
        delivery_fee, service_fee = _fees(order)
        inclusive = sum(t.applied_money.amount for t in order.taxes if t.type == "INCLUSIVE")
        inclusive_taxes = {t.uid for t in order.taxes if t.type == "INCLUSIVE"}
        address = recipient.address
        return self.order(
            external_id=order.id,
            placed_at=order.created_at,
            occurred_at=(order.updated_at or order.created_at) if revision else order.created_at,
            received_at=received_at,
            revision=revision,
            mode=_MODES[fulfillment.type] if fulfillment else OrderMode.DINE_IN,
            currency=order.total_money.currency.upper(),
            lines=[_line(item, inclusive_taxes, n) for n, item in enumerate(order.line_items)],
            delivery_fee=delivery_fee,
            packaging_fee=service_fee,
            tip=order.total_tip_money.amount,
            discount=order.total_discount_money.amount,
            tax=order.total_tax_money.amount - inclusive,  # inclusive tax is in the prices
            total=order.total_money.amount,
            payment_status=_payment(order),
            # An in-store sale has no fulfillment: who ordered it is in the ordering app's
            # metadata, or at least on the ticket.
            customer=Customer(
                id=order.customer_id or recipient.customer_id,
                name=recipient.display_name or extra.get("customer_name") or order.ticket_name,
                phone=recipient.phone_number or extra.get("customer_phone"),
                email=recipient.email_address or extra.get("customer_email"),
            ),
            address=None
            if address is None or not address.address_line_1
            else Address(
                text=", ".join(p for p in (address.address_line_1, address.address_line_2) if p),
                city=address.locality,
                postal_code=address.postal_code,
                country=address.country,
            ),
            location_hint=order.location_id,
            requested_at=details.pickup_at or details.deliver_at,
            notes=details.note or details.shipping_note or extra.get("note"),
        )


def _details(fulfillment: _Fulfillment | None) -> _Details | None:
    if fulfillment is None:
        return None
    return (
        fulfillment.pickup_details or fulfillment.delivery_details or fulfillment.shipment_details
    )


def _fees(order: _SquareOrder) -> tuple[int, int]:
    """(delivery fee, other service charges): Square has no delivery-fee field, so a service
    charge named for delivery or shipping is one. (The tip, in `total_money`, is the order's
    `tip`.)"""
    delivery_fee, service_fee = 0, 0
    for charge in order.service_charges:
        amount = (charge.applied_money or charge.amount_money).amount
        if any(word in charge.name.lower() for word in _DELIVERY_WORDS):
            delivery_fee += amount
        else:
            service_fee += amount
    return delivery_fee, service_fee


_UNITS = {
    "IMPERIAL_POUND": "lb",
    "IMPERIAL_WEIGHT_OUNCE": "oz",
    "METRIC_GRAM": "g",
    "METRIC_KILOGRAM": "kg",
    "METRIC_LITER": "l",
    "METRIC_MILLILITER": "ml",
    "UNIT": "each",
}
"""Square's measurement units the contract counts in (a standard unit with an exact
equivalent, such as a stone, is not sold by the stores we serve; it is refused, named)."""


def _unit(item: _LineItem, n: int) -> str:
    measured = item.quantity_unit.measurement_unit if item.quantity_unit else None
    if measured is None:
        return "each"
    named = measured.weight_unit or measured.volume_unit or measured.generic_unit
    if named in _UNITS:
        return _UNITS[named]
    other = named or ("custom_unit" if measured.custom_unit else "length, area or time unit")
    raise PayloadRejected(
        f"measurement unit {other} is not one of {', '.join(sorted(_UNITS))}",
        field=f"line_items.{n}.quantity_unit.measurement_unit",
    )


def _line(item: _LineItem, inclusive_taxes: set[str], n: int) -> OrderLine:
    """A line's amounts as Square states them: `gross_sales_money` before discounts (else the
    unit price with its modifiers times the quantity), its discounts and taxes. Its prices
    include its tax when every tax applied to it is an INCLUSIVE one; with additive taxes
    beside inclusive ones (rare), `tax` is the additive part and the rest is inside gross."""
    quantity, millionths = exact_quantity(item.quantity, field=f"line_items.{n}.quantity")
    measure = Fraction(millionths, MILLIONTHS) if millionths is not None else quantity
    unit = _unit(item, n)
    chosen = [m for m in item.modifiers if m.quantity > 0]
    variation = [item.variation_name] if item.variation_name not in (None, "", "Regular") else []
    unit_price = item.base_price_money.amount + sum(
        m.base_price_money.amount * m.quantity for m in chosen
    )
    gross = (
        item.gross_sales_money.amount
        if item.gross_sales_money is not None
        else round(unit_price * measure)
    )
    inside = sum(t.applied_money.amount for t in item.applied_taxes if t.tax_uid in inclusive_taxes)
    included = bool(item.applied_taxes) and inside == item.total_tax_money.amount
    tax = item.total_tax_money.amount if included else item.total_tax_money.amount - inside
    discount = item.total_discount_money.amount
    return OrderLine(
        sku=item.catalog_object_id or item.name,
        name=item.name,
        quantity=quantity,
        unit_price=unit_price_of(gross, measure),
        unit=unit,
        quantity_millionths=millionths,
        options=[
            *variation,
            *(m.name if m.quantity == 1 else f"{m.name} x{m.quantity}" for m in chosen),
        ],
        gross=gross,
        discount=discount,
        tax=tax,
        total=item.total_money.amount
        if item.total_money is not None
        else gross - discount + (0 if included else tax),
        prices_include_tax=included,
    )


def _payment(order: _SquareOrder) -> PaymentStatus:
    statuses = {t.card_details.status for t in order.tenders if t.card_details}
    if "AUTHORIZED" in statuses:
        return PaymentStatus.PENDING
    paid = sum(
        t.amount_money.amount
        for t in order.tenders
        if t.card_details is None or t.card_details.status in (None, "CAPTURED")
    )
    if order.state == "COMPLETED" or (paid and paid >= order.total_money.amount):
        return PaymentStatus.PAID
    return PaymentStatus.PARTIALLY_PAID if paid else PaymentStatus.UNPAID


def _notification_url() -> str:
    return os.environ.get("OMS_SQUARE_NOTIFICATION_URL") or NOTIFICATION_URL


def _signature(secret: str, notification_url: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), notification_url.encode() + body, hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as a RetrieveOrder response at `version` revision + 1, updated at
    `order.revised_at(revision)`; signed for the configured notification URL when `secret` is
    given."""

    def money(amount: int) -> dict[str, Any]:
        return {"amount": amount, "currency": order.currency}

    created = order.placed_at.astimezone(UTC)
    recipient: dict[str, Any] = {
        "display_name": order.customer_name,
        "phone_number": order.customer_phone,
    }
    if order.address_text and order.mode in (OrderMode.DELIVERY, OrderMode.SHIP):
        recipient["address"] = {"address_line_1": order.address_text}
    kind, key, note = {
        OrderMode.PICKUP: ("PICKUP", "pickup_details", "note"),
        OrderMode.DELIVERY: ("DELIVERY", "delivery_details", "note"),
        OrderMode.SHIP: ("SHIPMENT", "shipment_details", "shipping_note"),
    }.get(order.mode, ("", "", ""))
    details = (
        {"recipient": recipient, note: order.notes} if order.notes else {"recipient": recipient}
    )
    charges = [("Delivery fee", order.delivery_fee), ("Packaging", order.packaging_fee)]
    body: dict[str, Any] = {
        "id": order.external_id,
        "location_id": order.store,
        "source": {"name": "OrderStream"},
        "line_items": [
            {
                "uid": f"line-{n}",
                "catalog_object_id": line.sku,
                "name": line.name,
                "quantity": str(line.quantity),
                "item_type": "ITEM",
                "base_price_money": money(line.unit_price),
                "gross_sales_money": money(line.unit_price * line.quantity),
            }
            for n, line in enumerate(order.lines, start=1)
        ],
        "taxes": [
            {
                "uid": "tax",
                "name": "Sales tax",
                "type": "ADDITIVE",
                "scope": "ORDER",
                "applied_money": money(order.tax),
            }
        ]
        if order.tax
        else [],
        "discounts": [
            {
                "uid": "discount",
                "name": "Promotion",
                "type": "FIXED_AMOUNT",
                "scope": "ORDER",
                "amount_money": money(order.discount),
                "applied_money": money(order.discount),
            }
        ]
        if order.discount
        else [],
        "service_charges": [
            {
                "uid": name.lower().replace(" ", "-"),
                "name": name,
                "amount_money": money(amount),
                "applied_money": money(amount),
                "total_money": money(amount),
                "calculation_phase": "SUBTOTAL_PHASE",
                "taxable": False,
            }
            for name, amount in charges
            if amount
        ],
        "fulfillments": [{"uid": "fulfillment", "type": kind, "state": "PROPOSED", key: details}]
        if kind
        else [],
        "tenders": [
            {
                "id": f"{order.external_id}-tender",
                "type": "CARD",
                "amount_money": money(order.total),
                "card_details": {"status": "CAPTURED"},
            }
        ],
        "created_at": _rfc3339(created),
        "updated_at": _rfc3339(order.revised_at(revision).astimezone(UTC)),
        "state": "OPEN",
        "version": revision + 1,
        "total_money": money(order.total),
        "total_tax_money": money(order.tax),
        "total_discount_money": money(order.discount),
        "total_tip_money": money(0),
        "total_service_charge_money": money(order.delivery_fee + order.packaging_fee),
    }
    if not kind:  # an in-store sale: the ticket and the ordering app's metadata say who
        body["ticket_name"] = order.customer_name[:30]
        extra = {
            "customer_name": order.customer_name,
            "customer_phone": order.customer_phone,
            "note": order.notes,
        }
        body["metadata"] = {k: v for k, v in extra.items() if v}
    raw = json.dumps({"order": body}, ensure_ascii=False).encode()
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers["x-square-hmacsha256-signature"] = _signature(secret, _notification_url(), raw)
    return raw, headers


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
