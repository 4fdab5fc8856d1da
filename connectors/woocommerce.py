"""WooCommerce orders: the REST API v3 order object, as the `order.created` and `order.updated`
webhooks deliver it.

Signed with `X-WC-Webhook-Signature` (base64 HMAC-SHA256 of the body, keyed with the webhook's
secret, `OMS_WOOCOMMERCE_SECRET`, required); it covers no time, so a re-sent delivery verifies
whenever it comes and is recognised by its deterministic event id. Money is decimal strings;
`*_gmt` times are UTC without an offset. An order whose `date_modified_gmt` is later than its
`date_created_gmt` is a revision (`OrderModified`, revision = the modification's Unix time)
unless the delivery's `X-WC-Webhook-Topic` is `order.created`: WooCommerce saves a new order
again within seconds (payment, stock), so it often arrives already "modified".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from connectors.base import (
    ChannelEvent,
    ChannelPayload,
    ChannelTime,
    Connector,
    SignatureRejected,
    decimal_text,
    minor_units,
    same_signature,
    unit_price_of,
)
from connectors.samples import SampleOrder
from events.models import Address, Customer, OrderLine, OrderMode, PaymentStatus

# Shipping methods that are not shipping: the zone "Local pickup", the Local Pickup block's
# `pickup_location` (its line names the store), and core's old "Local delivery".
_MODES = {
    "local_pickup": OrderMode.PICKUP,
    "pickup_location": OrderMode.PICKUP,
    "local_delivery": OrderMode.DELIVERY,
}
# Order statuses; `date_paid_gmt` (set once a payment completes) wins over them.
_PAYMENT = {
    "processing": PaymentStatus.PAID,
    "completed": PaymentStatus.PAID,
    "on-hold": PaymentStatus.PENDING,
    "pending": PaymentStatus.PENDING,
    "failed": PaymentStatus.UNPAID,
    "cancelled": PaymentStatus.UNPAID,
}


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


GmtTime = Annotated[ChannelTime, AfterValidator(_as_utc)]


class _Meta(ChannelPayload):
    key: str
    value: Any = None
    display_key: str | None = None
    display_value: Any = None


class _LineItem(ChannelPayload):
    name: str
    sku: str | None = None
    quantity: int = Field(gt=0)
    subtotal: str  # before discounts, without tax
    total: str | None = None  # after discounts, without tax
    total_tax: str | None = None  # the line's tax, after discounts
    meta_data: list[_Meta] = []


class _ShippingLine(ChannelPayload):
    method_id: str = ""
    meta_data: list[_Meta] = []


class _FeeLine(ChannelPayload):
    name: str = ""
    total: str


class _Contact(ChannelPayload):
    first_name: str = ""
    last_name: str = ""
    address_1: str = ""
    address_2: str = ""
    city: str = ""
    postcode: str = ""
    country: str = ""
    email: str | None = None
    phone: str | None = None


class _WooOrder(ChannelPayload):
    id: int | str
    status: str = "pending"
    currency: str
    date_created_gmt: GmtTime
    date_modified_gmt: GmtTime | None = None
    date_paid_gmt: GmtTime | None = None
    discount_total: str = "0.00"
    shipping_total: str = "0.00"
    total_tax: str = "0.00"
    total: str
    customer_id: int = 0
    customer_ip_address: str = ""
    customer_note: str = ""
    payment_method: str = ""
    billing: _Contact = _Contact()
    shipping: _Contact = _Contact()
    line_items: list[_LineItem]
    shipping_lines: list[_ShippingLine] = []
    fee_lines: list[_FeeLine] = []


class WoocommerceConnector(Connector):
    name = "woocommerce"
    signed = True
    kept_headers = ("X-WC-Webhook-Signature", "X-WC-Webhook-Topic")

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = self.require_secret()
        given = {k.lower(): v for k, v in headers.items()}.get("x-wc-webhook-signature", "")
        if not same_signature(_signature(secret, body), given):
            raise SignatureRejected("signature does not match", field="X-WC-Webhook-Signature")

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        order = self.validate(_WooOrder, self.load_json(raw))
        currency = order.currency.upper()
        topic = {k.lower(): v for k, v in (headers or {}).items()}.get("x-wc-webhook-topic")
        created, modified = order.date_created_gmt, order.date_modified_gmt
        revision = 0
        if modified is not None and modified > created and topic != "order.created":
            revision = int(modified.timestamp())
        fees = [
            minor_units(fee.total, currency=currency, field=f"fee_lines.{i}.total")
            for i, fee in enumerate(order.fee_lines)
        ]  # a negative fee is how WooCommerce records a discount without a coupon
        shipping = order.shipping_lines[0] if order.shipping_lines else _ShippingLine()
        store = {m.key: m.value for m in shipping.meta_data}.get("pickup_location")
        billing, recipient = order.billing, order.shipping
        return self.order(
            external_id=str(order.id),
            placed_at=created,
            occurred_at=modified if revision else created,
            received_at=received_at,
            revision=revision,
            mode=_MODES.get(shipping.method_id, OrderMode.SHIP),
            currency=currency,
            lines=[_line(item, i, currency) for i, item in enumerate(order.line_items)],
            # WooCommerce rounds each line's amounts and taxes to the currency's decimals on
            # their own (from tax-inclusive prices, 12.50 with 19 % is 10.504201… a unit):
            # the parts may miss the total by a minor unit for each line, shipping and fee.
            rounding_tolerance=len(order.line_items)
            + len(order.shipping_lines)
            + len(order.fee_lines),
            delivery_fee=minor_units(
                order.shipping_total, currency=currency, field="shipping_total"
            ),
            packaging_fee=sum(fee for fee in fees if fee > 0),
            discount=minor_units(order.discount_total, currency=currency, field="discount_total")
            - sum(fee for fee in fees if fee < 0),
            tax=minor_units(order.total_tax, currency=currency, field="total_tax"),
            total=minor_units(order.total, currency=currency, field="total"),
            payment_status=_payment(order),
            customer=Customer(
                id=str(order.customer_id) if order.customer_id else None,
                name=" ".join(p for p in (billing.first_name, billing.last_name) if p) or None,
                phone=billing.phone or recipient.phone or None,
                email=billing.email or None,
            ),
            address=None
            if not recipient.address_1
            else Address(
                text=", ".join(p for p in (recipient.address_1, recipient.address_2) if p),
                city=recipient.city or None,
                postal_code=recipient.postcode or None,
                country=recipient.country or None,
            ),
            location_hint=str(store) if store else None,
            device_id=order.customer_ip_address or None,
            notes=order.customer_note or None,
        )


def _line(item: _LineItem, index: int, currency: str) -> OrderLine:
    """The line's amounts as WooCommerce states them, all without tax (whatever the shop's
    `prices_include_tax`: the API splits the tax out): `subtotal` before discounts, `total`
    after them, `total_tax` the tax on that. `price` (a float) is not read: the unit price is
    derived from the subtotal, and a subtotal that does not divide by the quantity (21.01 for
    2 at a tax-inclusive 12.50) is no reason to refuse a paid order."""
    at = f"line_items.{index}"
    gross = minor_units(item.subtotal, currency=currency, field=f"{at}.subtotal")
    after = (
        None
        if item.total is None
        else minor_units(item.total, currency=currency, field=f"{at}.total")
    )
    tax = (
        0
        if item.total_tax is None
        else minor_units(item.total_tax, currency=currency, field=f"{at}.total_tax")
    )
    options = [
        f"{meta.display_key or meta.key}: {meta.display_value or meta.value}"
        for meta in item.meta_data
        if not meta.key.startswith("_") and isinstance(meta.value, str | int | float)
    ]
    return OrderLine(
        sku=item.sku or item.name,
        name=item.name,
        quantity=item.quantity,
        unit_price=unit_price_of(gross, item.quantity),
        options=options,
        gross=gross,
        discount=0 if after is None else gross - after,
        tax=tax,
        total=None if after is None else after + tax,
    )


def _payment(order: _WooOrder) -> PaymentStatus:
    if order.payment_method == "cod" and order.status != "completed":
        return PaymentStatus.CASH_ON_DELIVERY
    if order.date_paid_gmt is not None:
        return PaymentStatus.PAID
    return _PAYMENT.get(order.status, PaymentStatus.PENDING)


def _signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as a WooCommerce webhook delivery: `order.created`, or with `revision` > 0 an
    `order.updated` saved at `order.revised_at(revision)`. WooCommerce has no dine-in: it is a
    pickup. The store is the Local Pickup block's location, so only pickup orders carry it."""
    as_text = partial(decimal_text, currency=order.currency)  # "12.50", "1200" for JPY
    created = order.placed_at.astimezone(UTC).replace(microsecond=0)
    modified = order.revised_at(revision).astimezone(UTC).replace(microsecond=0)
    first, _, last = order.customer_name.partition(" ")
    method = {OrderMode.SHIP: "flat_rate", OrderMode.DELIVERY: "local_delivery"}.get(
        order.mode, "pickup_location"
    )
    pickup = [{"id": 1, "key": "pickup_location", "value": order.store}]
    remaining_discount, line_items = order.discount, []
    for n, line in enumerate(order.lines, start=1):
        subtotal = line.unit_price * line.quantity
        share = min(remaining_discount, subtotal)  # WooCommerce spreads coupons over the lines
        remaining_discount -= share
        # `price` is WooCommerce's own float: PHP divides the line total by the quantity and the
        # API writes the result as a JSON number (3.3333333333333335). The connector never
        # reads it; it is here so the payload has the shape WooCommerce sends.
        line_items.append(
            {
                "id": n,
                "name": line.name,
                "product_id": 100 + n,
                "quantity": line.quantity,
                "subtotal": as_text(subtotal),
                "total": as_text(subtotal - share),
                "meta_data": [],
                "sku": line.sku,
                "price": float(Decimal(as_text(subtotal - share)) / line.quantity),
            }
        )
    body: dict[str, Any] = {
        "id": int(order.external_id)
        if re.fullmatch(r"[1-9]\d*", order.external_id)
        else order.external_id,
        "number": order.external_id,
        "status": "processing",
        "currency": order.currency,
        "date_created_gmt": _gmt(created),
        "date_modified_gmt": _gmt(modified),
        "discount_total": as_text(order.discount),
        "shipping_total": as_text(order.delivery_fee),
        "cart_tax": as_text(order.tax),
        "total_tax": as_text(order.tax),
        "total": as_text(order.total),
        "prices_include_tax": False,
        "customer_id": 0,
        "customer_note": order.notes or "",
        "billing": {"first_name": first, "last_name": last, "phone": order.customer_phone},
        "shipping": {
            "first_name": first,
            "last_name": last,
            "address_1": order.address_text or "",
            "phone": order.customer_phone,
        },
        "payment_method": "stripe",
        "date_paid_gmt": _gmt(created),
        "line_items": line_items,
        "tax_lines": [
            {"id": 90, "rate_code": "TAX-1", "label": "Tax", "tax_total": as_text(order.tax)}
        ]
        if order.tax
        else [],
        "shipping_lines": [
            {
                "id": 91,
                "method_id": method,
                "total": as_text(order.delivery_fee),
                "meta_data": pickup if method == "pickup_location" else [],
            }
        ],
        "fee_lines": [{"id": 92, "name": "Packaging", "total": as_text(order.packaging_fee)}]
        if order.packaging_fee
        else [],
        "coupon_lines": [{"id": 93, "code": "sample", "discount": as_text(order.discount)}]
        if order.discount
        else [],
    }
    raw = json.dumps(body, ensure_ascii=False).encode()
    event = "updated" if revision else "created"
    headers = {
        "X-WC-Webhook-Topic": f"order.{event}",
        "X-WC-Webhook-Resource": "order",
        "X-WC-Webhook-Event": event,
    }
    if secret is not None:
        headers["X-WC-Webhook-Signature"] = _signature(secret, raw)
    return raw, headers


def _gmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")
