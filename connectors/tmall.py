"""Tmall / Taobao trades as the TOP API `taobao.trade.fullinfo.get` returns them (polled).

A payload is one `trade`, bare or in its response `{"trade_fullinfo_get_response": {"trade":
...}}`; field names in rejections are relative to the trade. Unsigned: the trade comes from our
own HTTPS call to TOP, whose responses carry no signature (a TMC message only names the tid).

Money (yuan strings): each line is `price` × `num` (together the trade's `total_fee`), delivery
is `post_fee`, the total is `payment` — what the buyer pays. The discount is everything between:
`total_fee + post_fee - payment`, i.e. shop and platform promotions (`discount_fee` of the trade
and of its orders, coupons, points) and the seller's manual `adjust_fee` (negative when the seller
cut the price; a net upward adjustment makes a negative discount, which validation rejects).

`modified` moves on every change, payment included: a trade is a revision (`OrderModified`) only
when `modified` is later than both `created` and `pay_time`.

A line (an `order`) carries its amounts as TOP states them, all in fen and exact: `gross` is
`price` × `num`; `total` is `divide_order_fee` (分摊之后的实付金额: after the order's own
`discount_fee` and `adjust_fee` and its `part_mjz_discount` share of the trade's discounts,
without postage), else `total_fee` (应付金额 = price × num + adjust_fee - discount_fee, before the
trade's discounts); the line's `discount` is `gross - total`. Without either, the discount is
`discount_fee - adjust_fee + part_mjz_discount` and the total is not known. The order's
`payment` is not read: for a trade of one order it is the trade's payment, postage included.
Trades state no tax (a Tmall Global line's `sub_order_tax_fee` is not modelled): a line's tax is
0. Nothing is rounded that the parts do not show, so there is no rounding tolerance.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Any

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
from connectors.platform_pii import receiver
from connectors.samples import SampleOrder
from events.models import OrderLine, OrderMode, PaymentStatus

CURRENCY = "CNY"
_RESPONSE = "trade_fullinfo_get_response"
_PAID = {
    "WAIT_SELLER_SEND_GOODS",
    "SELLER_CONSIGNED_PART",
    "WAIT_BUYER_CONFIRM_GOODS",
    "TRADE_BUYER_SIGNED",
    "TRADE_FINISHED",
    "TRADE_CLOSED",
    "PAID_FORBID_CONSIGN",
}
_UNPAID = {"WAIT_BUYER_PAY", "TRADE_NO_CREATE_PAY", "TRADE_CLOSED_BY_TAOBAO"}
_COD_SETTLED = {"TRADE_BUYER_SIGNED", "TRADE_FINISHED"}  # cash on delivery collected


class _Order(ChannelPayload):
    num_iid: int | str
    outer_sku_id: str | None = None
    outer_iid: str | None = None
    title: str
    num: int
    price: str
    total_fee: str | None = None  # price × num + adjust_fee - discount_fee
    discount_fee: str | None = None  # the order's own promotions
    adjust_fee: str | None = None  # the seller's manual change, negative for a cut
    part_mjz_discount: str | None = None  # its share of the trade's discounts
    divide_order_fee: str | None = None  # total_fee less that share: what it was paid
    sku_properties_name: str | None = None
    store_code: str | None = None


class _Orders(ChannelPayload):
    order: list[_Order]


class _Trade(ChannelPayload):
    tid: int | str
    status: str
    type: str | None = None
    step_trade_status: str | None = None
    created: str
    pay_time: str | None = None
    modified: str | None = None
    payment: str
    total_fee: str | None = None
    post_fee: str = "0.00"
    buyer_nick: str | None = None
    receiver_name: str | None = None
    receiver_mobile: str | None = None
    receiver_phone: str | None = None
    receiver_state: str | None = None
    receiver_city: str | None = None
    receiver_district: str | None = None
    receiver_town: str | None = None
    receiver_address: str | None = None
    receiver_zip: str | None = None
    buyer_message: str | None = None
    orders: _Orders
    # Since Taobao's receiver protection: the receiver_* fields come masked (张**), and the
    # OAID is what `taobao.top.oaid.decrypt` opens them by; buyer_open_uid replaces the nick.
    oaid: str | None = None
    buyer_open_uid: str | None = None


class TmallConnector(Connector):
    name = "tmall"
    delivery = "polled"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        trade = self.validate(_Trade, _unwrap(self.load_json(raw)))
        placed_at = local_time(trade.created, field="created")
        paid_at = local_time(trade.pay_time, field="pay_time") if trade.pay_time else None
        modified = local_time(trade.modified, field="modified") if trade.modified else None
        revised = modified if modified and modified > max(placed_at, paid_at or placed_at) else None
        lines = [_line(item, i) for i, item in enumerate(trade.orders.order)]
        goods = sum(line.amount for line in lines)
        if (
            trade.total_fee is not None
            and minor_units(trade.total_fee, currency=CURRENCY, field="total_fee") != goods
        ):
            raise PayloadRejected(f"is not the sum of price × num ({goods} fen)", field="total_fee")
        delivery_fee = minor_units(trade.post_fee, currency=CURRENCY, field="post_fee")
        total = minor_units(trade.payment, currency=CURRENCY, field="payment")
        buyer = receiver(
            "tmall",
            customer_id=trade.buyer_nick or trade.buyer_open_uid,
            name=trade.receiver_name,
            phone=trade.receiver_mobile or trade.receiver_phone,
            street=trade.receiver_address,
            province=trade.receiver_state,
            city=trade.receiver_city,
            district=trade.receiver_district,
            town=trade.receiver_town,
            postal_code=trade.receiver_zip,
            open_id=trade.oaid,
        )
        return self.order(
            external_id=str(trade.tid),
            placed_at=placed_at,
            occurred_at=revised or placed_at,
            received_at=received_at,
            revision=int(revised.timestamp()) if revised else 0,
            mode=OrderMode.SHIP,
            currency=CURRENCY,
            lines=lines,
            delivery_fee=delivery_fee,
            discount=goods + delivery_fee - total,
            total=total,
            payment_status=_payment_status(trade),
            customer=buyer.customer,
            address=buyer.address,
            platform_ciphertext=buyer.ciphertext,
            location_hint=next((o.store_code for o in trade.orders.order if o.store_code), None),
            notes=trade.buyer_message or None,
        )


def _line(item: _Order, index: int) -> OrderLine:
    """An `order` with its amounts as TOP states them (module docstring): gross `price` × `num`,
    total `divide_order_fee` else `total_fee`, the discount between them."""
    at = f"orders.order.{index}"
    price = minor_units(item.price, currency=CURRENCY, field=f"{at}.price")
    gross = price * item.num
    paid = _fen(item.divide_order_fee, field=f"{at}.divide_order_fee")
    if paid is None:
        paid = _fen(item.total_fee, field=f"{at}.total_fee")
    if paid is not None:
        discount = gross - paid
    else:
        discount = (
            (_fen(item.discount_fee, field=f"{at}.discount_fee") or 0)
            - (_fen(item.adjust_fee, field=f"{at}.adjust_fee") or 0)
            + (_fen(item.part_mjz_discount, field=f"{at}.part_mjz_discount") or 0)
        )
    return OrderLine(
        sku=item.outer_sku_id or item.outer_iid or str(item.num_iid),
        name=item.title,
        quantity=item.num,
        unit_price=price,
        options=[p for p in (item.sku_properties_name or "").split(";") if p],
        gross=gross,
        discount=discount,
        total=paid,
    )


def _fen(amount: str | None, *, field: str) -> int | None:
    """An optional yuan amount in fen; absent or empty (TOP leaves some blank) is None."""
    return None if not amount else minor_units(amount, currency=CURRENCY, field=field)


def _unwrap(document: Any) -> Any:
    if isinstance(document, dict) and "error_response" in document:
        raise PayloadRejected(f"TOP error {document['error_response']}", field="error_response")
    if isinstance(document, dict) and _RESPONSE in document:
        response = document[_RESPONSE]
        if not isinstance(response, dict) or "trade" not in response:
            raise PayloadRejected("response holds no trade", field=f"{_RESPONSE}.trade")
        return response["trade"]
    return document


def _payment_status(trade: _Trade) -> PaymentStatus:
    if trade.step_trade_status == "FRONT_PAID_FINAL_NOPAID":  # presale: deposit paid
        return PaymentStatus.PARTIALLY_PAID
    if trade.type == "cod" and trade.status not in _COD_SETTLED:
        return PaymentStatus.CASH_ON_DELIVERY
    if trade.status in _PAID:
        return PaymentStatus.PAID
    if trade.status in _UNPAID:
        return PaymentStatus.UNPAID
    return PaymentStatus.PENDING  # PAY_PENDING, WAIT_PRE_AUTH_CONFIRM, statuses TOP adds later


def _number(text: str, *, base: int = 0) -> int:
    """A stable made-up platform number (item id, nick) for sample payloads."""
    return base + zlib.crc32(text.encode())


def _beijing(moment: datetime) -> str:
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as a paid `taobao.trade.fullinfo.get` response; revision n is the trade as changed
    at `order.revised_at(n)`. Tmall ships, in CNY, without packaging fee or separate tax: other
    orders raise ValueError. Unsigned, so `secret` is not used."""
    if order.mode is not OrderMode.SHIP or order.currency != CURRENCY:
        raise ValueError(f"tmall trades are shipped and in {CURRENCY}: {order.external_id}")
    if order.packaging_fee or order.tax:
        raise ValueError(f"tmall trades have no packaging fee or tax: {order.external_id}")
    as_text = partial(decimal_text, currency=CURRENCY)
    created = _beijing(order.placed_at)
    goods = sum(line.quantity * line.unit_price for line in order.lines)
    orders = [
        {
            "oid": f"{order.external_id}{n:02d}",
            "num_iid": _number(line.sku, base=600_000_000_000),
            "outer_sku_id": line.sku,
            "title": line.name,
            "num": line.quantity,
            "price": as_text(line.unit_price),
            "total_fee": as_text(line.quantity * line.unit_price),
            "status": "WAIT_SELLER_SEND_GOODS",
            "store_code": order.store,
        }
        for n, line in enumerate(order.lines, start=1)
    ]
    trade = {
        "tid": int(order.external_id) if order.external_id.isdigit() else order.external_id,
        "tid_str": order.external_id,
        "type": "fixed",
        "status": "WAIT_SELLER_SEND_GOODS",
        "created": created,
        "pay_time": created,
        "modified": _beijing(order.revised_at(revision)),
        "total_fee": as_text(goods),
        "post_fee": as_text(order.delivery_fee),
        "discount_fee": as_text(order.discount),
        "adjust_fee": "0.00",
        "payment": as_text(order.total),
        "shipping_type": "express" if order.delivery_fee else "free",
        "buyer_nick": order.extras.get("buyer_nick", f"tb{_number(order.customer_phone)}"),
        "receiver_name": order.customer_name,
        "receiver_mobile": order.customer_phone,
        "receiver_address": order.address_text,
        "buyer_message": order.notes,
        "orders": {"order": orders},
    }
    body = {_RESPONSE: {"trade": {k: v for k, v in trade.items() if v is not None}}}
    return json.dumps(body, ensure_ascii=False).encode(), {}
