"""Sample orders for the demo, the simulator and tests.

`SampleOrder` describes an order independently of any channel; each channel module turns it
into that platform's payload with its `sample_payload(order, revision=0, secret=None)`, so
the simulator drives the real connectors with realistic traffic.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from connectors.money import decimal_text
from events.models import OrderMode


@dataclass(frozen=True)
class SampleLine:
    sku: str
    name: str
    quantity: int
    unit_price: int  # minor units


@dataclass(frozen=True)
class SampleOrder:
    """A channel-neutral order; `total` is what every channel's payload must add up to."""

    external_id: str
    store: str
    placed_at: datetime  # UTC
    mode: OrderMode
    lines: list[SampleLine]
    customer_name: str
    customer_phone: str
    currency: str = "CNY"
    delivery_fee: int = 0
    packaging_fee: int = 0
    discount: int = 0
    tax: int = 0
    address_text: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    notes: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    modified_at: datetime | None = None  # UTC; when its latest revision was made

    @property
    def total(self) -> int:
        lines = sum(line.quantity * line.unit_price for line in self.lines)
        return lines + self.delivery_fee + self.packaging_fee + self.tax - self.discount

    def revised_at(self, revision: int) -> datetime:
        """When revision `revision` was made: `modified_at` if set (the simulator's clock),
        else `revision` minutes after the order was placed (fixtures and tests)."""
        if revision == 0:
            return self.placed_at
        return self.modified_at or self.placed_at + timedelta(minutes=revision)


_DISHES = [
    ("DUMPLING-12", "猪肉白菜水饺 12只", "28.00"),
    ("NOODLE-BEEF", "红烧牛肉面", "32.50"),
    ("RICE-KUNGPAO", "宫保鸡丁饭", "26.00"),
    ("TEA-OOLONG", "冻顶乌龙茶", "12.00"),
    ("BUN-PORK-4", "鲜肉包 4只", "10.00"),
    ("SOUP-HOTSOUR", "酸辣汤", "15.50"),
]
# Addresses near four of the demo's stores, so the web shop's deliveries spread over them.
_ADDRESSES = [
    ("88 Nanjing East Rd", 31.2355, 121.4800),  # S01 People's Square
    ("100 Century Ave", 31.2370, 121.5050),  # S03 Lujiazui
    ("1686 West Nanjing Rd", 31.2236, 121.4464),  # S04 Jing'an Temple
    ("1 Hongqiao Rd", 31.1960, 121.4380),  # S02 Xujiahui
]


def _shipping_address(street: str, latitude: float, longitude: float) -> dict[str, Any]:
    return {
        "address1": street,
        "city": "Shanghai",
        "zip": "200000",
        "country_code": "CN",
        "latitude": latitude,
        "longitude": longitude,
    }


def web_order(
    *, external_id: str, rng: random.Random, placed_at: datetime, defect: str | None = None
) -> dict[str, Any]:
    """One Shopify-shaped order; `defect` makes it fail validation in a known way."""
    as_text = partial(decimal_text, currency="CNY")
    items = rng.sample(_DISHES, k=rng.randint(1, 3))
    quantities = [rng.randint(1, 3) for _ in items]
    line_items: list[dict[str, Any]] = [
        {"sku": sku, "title": title, "quantity": quantity, "price": price}
        for (sku, title, price), quantity in zip(items, quantities, strict=True)
    ]
    shipping = rng.choice([0, 500, 800])
    discount = rng.choice([0, 0, 300])
    subtotal = sum(
        int(price.replace(".", "")) * quantity
        for (_, _, price), quantity in zip(items, quantities, strict=True)
    )
    total = subtotal + shipping - discount
    order: dict[str, Any] = {
        "id": external_id,
        "name": f"#{external_id}",
        "created_at": placed_at.isoformat(),
        "currency": "CNY",
        "total_price": as_text(total),
        "subtotal_price": as_text(subtotal),
        "total_discounts": as_text(discount),
        "line_items": line_items,
        "shipping_lines": [{"title": "Standard", "price": as_text(shipping)}],
        "customer": {
            "first_name": "Wei",
            "last_name": rng.choice(["Zhang", "Li", "Wang"]),
            "phone": f"+86 138{rng.randint(10_000_000, 99_999_999)}",
        },
        "shipping_address": _shipping_address(*rng.choice(_ADDRESSES)),
        "note": rng.choice([None, "少辣", "no cutlery"]),
        "tags": "delivery",  # the restaurant's own web shop delivers from the nearest store
    }
    if defect == "total_mismatch":
        order["total_price"] = as_text(total + 100)
    elif defect == "zero_quantity":
        order["line_items"][0]["quantity"] = 0
    elif defect == "unknown_currency":
        order["currency"] = "XYZ"
    elif defect == "missing_address":
        order["shipping_address"] = None
    return order


DEFECTS = ("total_mismatch", "zero_quantity", "unknown_currency", "missing_address")
MALFORMED_LINES = (
    b'{"id": "broken", "currency": "CNY", "line_items": [',
    b'{"id": "no-lines", "created_at": "2026-11-25T12:00:00+08:00", "currency": "CNY", '
    b'"total_price": "10.00"}',
    b'{"id": "bad-price", "created_at": "2026-11-25T12:00:00+08:00", "currency": "CNY", '
    b'"total_price": "10.001", "line_items": [{"title": "x", "quantity": 1, "price": "10.001"}]}',
)


def sample_lines(
    *, count: int, run_id: str, seed: int = 7, invalid_share: float = 0.15
) -> tuple[list[bytes], dict[str, str | None]]:
    """`count` order lines (JSON) and, per external id, the defect planted in it (or None)."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    lines: list[bytes] = []
    planted: dict[str, str | None] = {}
    for n in range(count):
        external_id = f"{run_id}-{n:05d}"
        defect = rng.choice(DEFECTS) if rng.random() < invalid_share else None
        placed_at = start + timedelta(seconds=37 * n)
        order = web_order(external_id=external_id, rng=rng, placed_at=placed_at, defect=defect)
        lines.append(json.dumps(order, ensure_ascii=False).encode())
        planted[external_id] = defect
    return lines, planted


def payload_json(document: Any, *, compact: bool = False) -> str:
    """`document` as JSON text as `json.dumps(document, ensure_ascii=False)` writes it, except
    that a `Decimal` is written as a JSON number exactly as it reads (`decimal_number(2800,
    currency="CNY")` → 28.0). Meituan and Ele.me send money as JSON numbers; `json` writes
    numbers only from floats, and money does not go through float. `compact` writes no spaces
    after "," and ":"."""
    comma, colon = (",", ":") if compact else (", ", ": ")

    def write(value: Any) -> str:
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"{value} is not a JSON number")
            return str(value)
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise TypeError("payload keys must be strings")
            members = (f"{write(key)}{colon}{write(item)}" for key, item in value.items())
            return "{" + comma.join(members) + "}"
        if isinstance(value, list | tuple):
            return "[" + comma.join(write(item) for item in value) + "]"
        return json.dumps(value, ensure_ascii=False)

    return write(document)
