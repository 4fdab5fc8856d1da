"""Orders taken by phone and typed in by store staff: one flat object of string fields, the same
whether it is a CSV row (`oms connect phone orders.csv`, header `CSV_COLUMNS`) or a form post.

Money is in yuan with up to 2 decimals ("26", "26.5", "¥26.00"); times are Beijing time,
`placed_at` "YYYY-MM-DD HH:MM", `requested_at` the same or just "HH:MM" (that day). `mode` is
delivery / pickup / dine_in or 外卖 / 自取 / 堂食; `payment` paid / cash_on_delivery / unpaid or
已付 / 货到付款 / 未付 (blank: unpaid). The external id is the ticket number; a `revision` above 0
(with `updated_at`) re-enters a ticket the customer changed by calling back.

`items` lists the dishes, separated by ";" (or "；"), each

    [SKU] name x quantity @ unit price (option, option)

where the SKU in brackets and the options in parentheses are optional, `x` may be `×` or `*`,
and options are separated by "," "，" or "、":

    [RICE-CHICKEN] 宫保鸡丁饭 x2 @26.00 (少辣); 酸辣汤 x1 @15.50

The price after "@" is the unit price, never a line total: a line costs quantity × unit price
(its `gross`, exact in fen: 2 × 26.00 = 52.00). The format states nothing else per line: the
`discount` column is the whole ticket's, shared to no dish, and phone orders state no tax, so
a line has no discount, tax or total of its own. The ticket's `total` is typed by staff, and
the parts (lines, fees, less the discount) must come to it exactly: nothing is rounded.

An item is read from its end: the options in the last parentheses, the price after the last
"@", the quantity before it, the name what is left. Each step is one pass over the text with a
string method, and numbers are read from at most `_NUMBER_CHARS` characters, so a body of
1 MiB is read in milliseconds (a backtracking regex took about an hour).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Annotated, TypeVar

from pydantic import StringConstraints

from connectors.base import (
    CHINA,
    ChannelEvent,
    ChannelPayload,
    Connector,
    PayloadRejected,
    decimal_text,
    local_time,
    minor_units,
)
from connectors.limits import MAX_TEXT_CHARS
from connectors.samples import SampleOrder
from events.models import Address, Customer, OrderLine, OrderMode, PaymentStatus

CSV_COLUMNS: tuple[str, ...] = (
    "ticket",
    "store",
    "placed_at",
    "mode",
    "customer_name",
    "phone",
    "address",
    "items",
    "delivery_fee",
    "packaging_fee",
    "discount",
    "total",
    "payment",
    "requested_at",
    "notes",
    "revision",
    "updated_at",
)
CURRENCY = "CNY"
_MODES = {
    "delivery": OrderMode.DELIVERY,
    "外卖": OrderMode.DELIVERY,
    "pickup": OrderMode.PICKUP,
    "自取": OrderMode.PICKUP,
    "dine_in": OrderMode.DINE_IN,
    "堂食": OrderMode.DINE_IN,
}
_PAYMENTS = {
    "paid": PaymentStatus.PAID,
    "已付": PaymentStatus.PAID,
    "cash_on_delivery": PaymentStatus.CASH_ON_DELIVERY,
    "货到付款": PaymentStatus.CASH_ON_DELIVERY,
    "unpaid": PaymentStatus.UNPAID,
    "未付": PaymentStatus.UNPAID,
}
_QUANTITY_MARKS = "x×X*"
_NUMBER_CHARS = 40  # a quantity or price is read from at most this many characters
_DIGITS = re.compile(r"\d+")
_PRICE = re.compile(r"\d+(?:\.\d+)?")
_REVISION = re.compile(r"[0-9]+")
Choice = TypeVar("Choice", OrderMode, PaymentStatus)
Text = Annotated[str, StringConstraints(strip_whitespace=True)]
Required = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# Every dish of an order in one field: longer than other texts (the parser is linear), each
# dish's name and options within the text cap.
Items = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100_000)]


class _Ticket(ChannelPayload):
    ticket: Required
    store: Required
    placed_at: Required
    mode: Required
    customer_name: Text = ""
    phone: Required
    address: Text = ""
    items: Items
    delivery_fee: Text = ""
    packaging_fee: Text = ""
    discount: Text = ""
    total: Required
    payment: Text = "unpaid"
    requested_at: Text = ""
    notes: Text = ""
    revision: Text = ""
    updated_at: Text = ""


class PhoneConnector(Connector):
    name = "phone"
    delivery = "staff"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        document = self.load_json(raw)
        if isinstance(document, dict) and "_columns" in document:  # a CSV row of the wrong width
            raise PayloadRejected(
                f"row has {document['_columns']} cells, the header {document.get('_expected')}"
            )
        ticket = self.validate(_Ticket, document)
        if ticket.revision and not _REVISION.fullmatch(ticket.revision):
            raise PayloadRejected(f"{ticket.revision!r} is not a whole number", field="revision")
        placed_at = local_time(ticket.placed_at, field="placed_at")
        changed = ticket.updated_at
        occurred_at = local_time(changed, field="updated_at") if changed else placed_at
        return self.order(
            external_id=ticket.ticket,
            placed_at=placed_at,
            occurred_at=occurred_at,
            received_at=received_at,
            revision=int(ticket.revision or 0),
            mode=_word(_MODES, ticket.mode, field="mode"),
            currency=CURRENCY,
            lines=parse_items(ticket.items),
            delivery_fee=_typed_amount(ticket.delivery_fee, field="delivery_fee"),
            packaging_fee=_typed_amount(ticket.packaging_fee, field="packaging_fee"),
            discount=_typed_amount(ticket.discount, field="discount"),
            total=_typed_amount(ticket.total, field="total"),
            payment_status=_word(_PAYMENTS, ticket.payment or "unpaid", field="payment"),
            customer=Customer(name=ticket.customer_name or None, phone=ticket.phone),
            address=Address(text=ticket.address) if ticket.address else None,
            location_hint=ticket.store,
            requested_at=_requested(ticket.requested_at, placed_at=placed_at),
            notes=ticket.notes or None,
        )


def parse_items(text: str) -> list[OrderLine]:
    """The `items` column as order lines (grammar in the module docstring)."""
    pieces = [piece.strip() for piece in re.split(r"[;；]", text) if piece.strip()]
    if not pieces:
        raise PayloadRejected("no items", field="items")
    return [_line(number, piece) for number, piece in enumerate(pieces, start=1)]


def _line(number: int, text: str) -> OrderLine:
    shown = text if len(text) <= 60 else f"{text[:59]}…"
    where = f"item {number} {shown!r}"
    item = _item(text)
    if isinstance(item, str):
        raise PayloadRejected(f"{where} {item}", field="items")
    sku, name, quantity, price, options = item
    if max(len(sku), len(name), len(options)) > MAX_TEXT_CHARS:
        raise PayloadRejected(f"{where}: longer than {MAX_TEXT_CHARS} characters", field="items")
    if int(quantity) < 1:
        raise PayloadRejected(f"{where}: quantity must be at least 1", field="items")
    if len(price.partition(".")[2]) > 2:
        raise PayloadRejected(f"{where}: price has more than 2 decimals", field="items")
    unit_price = minor_units(price, currency=CURRENCY, field="items")
    return OrderLine(
        sku=sku or name,
        name=name,
        quantity=int(quantity),
        unit_price=unit_price,
        options=[option.strip() for option in re.split(r"[,，、]", options) if option.strip()],
        gross=int(quantity) * unit_price,  # the format states a unit price (module docstring)
        tax=0,
        prices_include_tax=True,  # the menu price the customer is quoted includes VAT
    )


def _item(text: str) -> tuple[str, str, str, str, str] | str:
    """(sku, name, quantity, price, options) of one item as typed, or why it is not one. Read
    from the end, in passes of string methods (module docstring): linear in the text."""
    no_match = "is not 'name x2 @26.00 (options)'"
    rest, options = text.strip(), ""
    if rest.endswith((")", "）")):
        opening = max(rest.rfind("("), rest.rfind("（"))
        if opening < 0:
            return no_match
        rest, options = rest[:opening].rstrip(), rest[opening + 1 : -1]
        if ")" in options or "）" in options:
            return no_match
    before, at, price = rest.rpartition("@")
    if not at:
        return "has no price; write it as @26.00"
    price = price.strip().lstrip("¥￥").lstrip()
    before = before.rstrip()
    quantity = _trailing_digits(before)
    head = before[: len(before) - len(quantity)].rstrip()
    if not quantity or not head.endswith(tuple(_QUANTITY_MARKS)):
        return "has no quantity; write it as x2"
    if len(price) > _NUMBER_CHARS or not _PRICE.fullmatch(price):
        return no_match
    head, sku = head[:-1].strip(), ""
    closing = head.find("]") if head.startswith("[") else -1
    if closing > 1:
        head, sku = head[closing + 1 :].strip(), head[1:closing]
    if not head:
        return no_match
    return sku, head, quantity, price, options


def _trailing_digits(text: str) -> str:
    """The decimal digits `text` ends with ("" for none, or for more than `_NUMBER_CHARS`)."""
    tail = text[-_NUMBER_CHARS - 1 :][::-1]
    digits = _DIGITS.match(tail)
    if digits is None or len(digits.group()) > _NUMBER_CHARS:
        return ""
    return digits.group()[::-1]


def _word(words: Mapping[str, Choice], text: str, *, field: str) -> Choice:
    if text.lower() not in words:
        raise PayloadRejected(f"{text!r} is not one of {', '.join(words)}", field=field)
    return words[text.lower()]


def _typed_amount(text: str, *, field: str) -> int:
    """An amount as staff type it ("26", "26.5", "¥26.00"; blank for none) in fen, never
    negative."""
    amount = minor_units(text.lstrip("¥￥") or "0", currency=CURRENCY, field=field)
    if amount < 0:
        raise PayloadRejected(f"{text!r} is negative", field=field)
    return amount


def _requested(text: str, *, placed_at: datetime) -> datetime | None:
    """`requested_at`; a bare "HH:MM" is on the day the order was placed (Beijing time)."""
    if re.fullmatch(r"\d{1,2}:\d{2}", text):
        text = f"{placed_at.astimezone(CHINA):%Y-%m-%d} {int(text[:-3]):02d}:{text[-2:]}"
    return local_time(text, field="requested_at") if text else None


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as staff would enter it (times to the minute); phone orders are unsigned, so
    `secret` is ignored. Delivery is cash on delivery, others unpaid (`extras["payment"]`)."""
    as_text = partial(decimal_text, currency=CURRENCY)
    items = "; ".join(
        f"[{line.sku}] {line.name} x{line.quantity} @{as_text(line.unit_price)}"
        for line in order.lines
    )
    placed = order.placed_at.astimezone(CHINA)
    due = "cash_on_delivery" if order.mode is OrderMode.DELIVERY else "unpaid"
    ticket = {
        "ticket": order.external_id,
        "store": order.store,
        "placed_at": f"{placed:%Y-%m-%d %H:%M}",
        "mode": order.mode.value,
        "customer_name": order.customer_name,
        "phone": order.customer_phone,
        "address": order.address_text or "",
        "items": items,
        "delivery_fee": as_text(order.delivery_fee),
        "packaging_fee": as_text(order.packaging_fee),
        "discount": as_text(order.discount),
        "total": as_text(order.total),
        "payment": order.extras.get("payment", due),
        "requested_at": "",
        "notes": order.notes or "",
        "revision": str(revision),
        "updated_at": "",
    }
    return json.dumps(ticket, ensure_ascii=False).encode(), {}
