"""Web-shop orders in the shape of Shopify's order webhook (`orders/create`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from connectors.base import Connector, PayloadRejected, minor_units
from events.models import (
    Address,
    Customer,
    OrderLine,
    OrderMode,
    OrderReceived,
    PaymentStatus,
)

# Shopify's financial_status values.
_PAYMENT = {
    "paid": PaymentStatus.PAID,
    "partially_refunded": PaymentStatus.PAID,
    "authorized": PaymentStatus.PENDING,
    "pending": PaymentStatus.PENDING,
    "partially_paid": PaymentStatus.PARTIALLY_PAID,
    "unpaid": PaymentStatus.UNPAID,
}


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _LineItem(_Loose):
    sku: str | None = None
    title: str
    quantity: int
    price: str


class _ShippingLine(_Loose):
    price: str = "0.00"


class _Customer(_Loose):
    id: int | str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None


class _Address(_Loose):
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    zip: str | None = None
    country_code: str | None = None
    phone: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class _WebshopOrder(_Loose):
    id: int | str
    created_at: datetime
    currency: str
    total_price: str
    total_discounts: str = "0.00"
    line_items: list[_LineItem]
    shipping_lines: list[_ShippingLine] = []
    customer: _Customer | None = None
    shipping_address: _Address | None = None
    note: str | None = None
    tags: str = ""
    financial_status: str = "paid"
    browser_ip: str | None = None


class WebshopConnector(Connector):
    """Shopify-shaped order JSON; signed with X-Shopify-Hmac-Sha256 when a secret is set."""

    name = "webshop"

    def __init__(self, *, webhook_secret: str | None = None) -> None:
        self.webhook_secret = webhook_secret

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        if self.webhook_secret is None:
            return
        given = {k.lower(): v for k, v in headers.items()}.get("x-shopify-hmac-sha256", "")
        digest = hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), given):
            raise PayloadRejected("signature does not match", field="X-Shopify-Hmac-Sha256")

    def parse(self, raw: bytes, *, received_at: datetime) -> OrderReceived:
        try:
            document: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PayloadRejected(f"not JSON: {exc}") from None
        try:
            order = _WebshopOrder.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise PayloadRejected(
                first["msg"], field=".".join(str(p) for p in first["loc"])
            ) from None
        if order.created_at.tzinfo is None:
            raise PayloadRejected("needs a UTC offset", field="created_at")
        currency = order.currency.upper()
        lines = [
            OrderLine(
                sku=item.sku or item.title,
                name=item.title,
                quantity=item.quantity,
                unit_price=minor_units(
                    item.price, currency=currency, field=f"line_items.{i}.price"
                ),
            )
            for i, item in enumerate(order.line_items)
        ]
        shipping = sum(
            minor_units(s.price, currency=currency, field=f"shipping_lines.{i}.price")
            for i, s in enumerate(order.shipping_lines)
        )
        external_id = str(order.id)
        customer = order.customer or _Customer()
        address = order.shipping_address
        full_name = " ".join(p for p in (customer.first_name, customer.last_name) if p) or None
        return OrderReceived(
            event_id=self.received_event_id(external_id),
            order_id=self.order_id(external_id),
            sequence=1,
            occurred_at=order.created_at,
            recorded_at=received_at,
            correlation_id=self.order_id(external_id),
            actor=self.actor(),
            channel=self.name,
            external_id=external_id,
            mode=self._mode(order),
            currency=currency,
            lines=lines,
            delivery_fee=shipping,
            discount=minor_units(order.total_discounts, currency=currency, field="total_discounts"),
            total=minor_units(order.total_price, currency=currency, field="total_price"),
            payment_status=_PAYMENT.get(order.financial_status, PaymentStatus.PENDING),
            device_id=order.browser_ip,
            customer=Customer(
                id=None if customer.id is None else str(customer.id),
                name=full_name,
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
            notes=order.note,
            placed_at=order.created_at,
        )

    @staticmethod
    def _mode(order: _WebshopOrder) -> OrderMode:
        tags = {t.strip().lower() for t in order.tags.split(",")}
        if "pickup" in tags:
            return OrderMode.PICKUP
        if "delivery" in tags:
            return OrderMode.DELIVERY
        return OrderMode.SHIP
