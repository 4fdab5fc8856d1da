"""Web-shop orders in the shape of Shopify's order webhooks (`orders/create`, `orders/updated`).

Signed with `X-Shopify-Hmac-Sha256`: base64 HMAC-SHA256 of the raw body, keyed with the app's
client secret (`OMS_WEBSHOP_SECRET`, required; shopify.dev/docs/apps/build/webhooks/
verify-deliveries). The signature covers no time (`X-Shopify-Triggered-At` is not signed), so
a re-sent delivery verifies whenever it comes: the deterministic event id makes it harmless.
An order whose `updated_at` is later than its `created_at` is a revision: `OrderModified`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Any

from connectors.base import (
    CHINA,
    ChannelEvent,
    ChannelPayload,
    ChannelTime,
    Connector,
    PayloadRejected,
    SignatureRejected,
    decimal_text,
    minor_units,
    same_signature,
)
from connectors.samples import SampleOrder
from events.models import Address, Customer, OrderLine, OrderMode, PaymentStatus

# Shopify's financial_status values.
_PAYMENT = {
    "paid": PaymentStatus.PAID,
    "partially_refunded": PaymentStatus.PAID,
    "authorized": PaymentStatus.PENDING,
    "pending": PaymentStatus.PENDING,
    "partially_paid": PaymentStatus.PARTIALLY_PAID,
    "unpaid": PaymentStatus.UNPAID,
}


class _Price(ChannelPayload):
    price: str = "0.00"


class _Amount(ChannelPayload):
    amount: str = "0.00"


class _LineItem(ChannelPayload):
    sku: str | None = None
    title: str
    variant_title: str | None = None
    quantity: int
    price: str  # a unit, with its tax when the order's taxes_included
    total_discount: str = "0.00"  # (deprecated by Shopify for discount_allocations)
    discount_allocations: list[_Amount] = []
    tax_lines: list[_Price] = []


class _Customer(ChannelPayload):
    id: int | str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None


class _Address(ChannelPayload):
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    zip: str | None = None
    country_code: str | None = None
    phone: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class _WebshopOrder(ChannelPayload):
    id: int | str
    created_at: ChannelTime
    updated_at: ChannelTime | None = None
    currency: str
    total_price: str
    total_discounts: str = "0.00"
    total_tax: str = "0.00"
    taxes_included: bool = False
    financial_status: str = "paid"
    line_items: list[_LineItem]
    shipping_lines: list[_Price] = []
    customer: _Customer | None = None
    shipping_address: _Address | None = None
    browser_ip: str | None = None
    note: str | None = None
    tags: str = ""


def _line(item: _LineItem, at: str, currency: str, taxes_included: bool) -> OrderLine:
    """A Shopify line: its unit `price` times its quantity, before the discounts allocated to
    it; the tax of its `tax_lines`, inside the price when the order's `taxes_included`."""
    unit_price = minor_units(item.price, currency=currency, field=f"{at}.price")
    gross = unit_price * item.quantity
    if item.discount_allocations:
        discount = sum(
            minor_units(a.amount, currency=currency, field=f"{at}.discount_allocations.{n}")
            for n, a in enumerate(item.discount_allocations)
        )
    else:
        discount = minor_units(item.total_discount, currency=currency, field=f"{at}.total_discount")
    tax = sum(
        minor_units(t.price, currency=currency, field=f"{at}.tax_lines.{n}.price")
        for n, t in enumerate(item.tax_lines)
    )
    return OrderLine(
        sku=item.sku or item.title,
        name=item.title,
        quantity=item.quantity,
        unit_price=unit_price,
        options=[item.variant_title] if item.variant_title else [],
        gross=gross,
        discount=discount,
        tax=tax,
        total=gross - discount + (0 if taxes_included else tax),
        prices_include_tax=taxes_included,
    )


class WebshopConnector(Connector):
    name = "webshop"
    signed = True
    kept_headers = ("X-Shopify-Hmac-Sha256", "X-Shopify-Topic")

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = self.require_secret()
        given = {k.lower(): v for k, v in headers.items()}.get("x-shopify-hmac-sha256", "")
        digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        if not same_signature(base64.b64encode(digest).decode(), given):
            raise SignatureRejected("signature does not match", field="X-Shopify-Hmac-Sha256")

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        order = self.validate_json(_WebshopOrder, raw)
        for name, value in (("created_at", order.created_at), ("updated_at", order.updated_at)):
            if value is not None and value.tzinfo is None:
                raise PayloadRejected("needs a UTC offset", field=name)
        currency = order.currency.upper()
        lines = [
            _line(item, f"line_items.{i}", currency, order.taxes_included)
            for i, item in enumerate(order.line_items)
        ]
        customer = order.customer or _Customer()
        address = order.shipping_address
        updated = order.updated_at
        revision = int(updated.timestamp()) if updated and updated > order.created_at else 0
        return self.order(
            external_id=str(order.id),
            placed_at=order.created_at,
            occurred_at=updated if revision else order.created_at,
            received_at=received_at,
            revision=revision,
            mode=_mode(order.tags),
            currency=currency,
            lines=lines,
            delivery_fee=sum(
                minor_units(s.price, currency=currency, field=f"shipping_lines.{i}.price")
                for i, s in enumerate(order.shipping_lines)
            ),
            discount=minor_units(order.total_discounts, currency=currency, field="total_discounts"),
            # Prices that include tax already count it in the lines.
            tax=0
            if order.taxes_included
            else minor_units(order.total_tax, currency=currency, field="total_tax"),
            total=minor_units(order.total_price, currency=currency, field="total_price"),
            payment_status=_PAYMENT.get(order.financial_status, PaymentStatus.PENDING),
            customer=Customer(
                id=None if customer.id is None else str(customer.id),
                name=" ".join(p for p in (customer.first_name, customer.last_name) if p) or None,
                phone=customer.phone or (address.phone if address else None),
                email=customer.email,
            ),
            address=None
            if address is None or not address.address1
            else Address(
                text=", ".join(p for p in (address.address1, address.address2) if p),
                city=address.city,
                postal_code=address.zip,
                country=address.country_code,
                latitude=address.latitude,
                longitude=address.longitude,
            ),
            device_id=order.browser_ip,
            notes=order.note,
        )


def _mode(tags: str) -> OrderMode:
    words = {t.strip().lower() for t in tags.split(",")}
    if "pickup" in words:
        return OrderMode.PICKUP
    if "delivery" in words:
        return OrderMode.DELIVERY
    return OrderMode.SHIP


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A Shopify-shaped `orders/create` (or, with `revision`, `orders/updated`) webhook."""
    as_text = partial(decimal_text, currency=order.currency)
    local = order.placed_at.astimezone(CHINA)
    document: dict[str, Any] = {
        "id": order.external_id,
        "name": f"#{order.external_id}",
        "created_at": local.isoformat(),
        "currency": order.currency,
        "financial_status": "paid",
        "total_price": as_text(order.total),
        "total_discounts": as_text(order.discount),
        "total_tax": as_text(order.tax),
        "line_items": [
            {
                "sku": line.sku,
                "title": line.name,
                "quantity": line.quantity,
                "price": as_text(line.unit_price),
            }
            for line in order.lines
        ],
        "shipping_lines": [{"title": "Standard", "price": as_text(order.delivery_fee)}],
        "customer": {"first_name": order.customer_name, "phone": order.customer_phone},
        "shipping_address": None
        if order.address_text is None
        else {
            "address1": order.address_text,
            "latitude": order.latitude,
            "longitude": order.longitude,
        },
        "note": order.notes,
        "tags": {OrderMode.PICKUP: "pickup", OrderMode.DELIVERY: "delivery"}.get(order.mode, ""),
    }
    if revision:
        document["updated_at"] = order.revised_at(revision).astimezone(CHINA).isoformat()
    body = json.dumps(document, ensure_ascii=False).encode()
    headers = {"X-Shopify-Topic": "orders/updated" if revision else "orders/create"}
    if secret is not None:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        headers["X-Shopify-Hmac-Sha256"] = base64.b64encode(digest).decode()
    return body, headers
