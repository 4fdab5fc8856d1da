"""Pinduoduo (拼多多) orders as `pdd.order.information.get` (订单详情) returns them (polled).

A payload is one `order_info`, bare or in its response `{"order_info_get_response":
{"order_info": ...}}`; field names in rejections are relative to the order. Unsigned: the order
comes from our own HTTPS call to the PDD gateway (gw-api.pinduoduo.com/api/router), whose
responses carry no signature. Sources for the fields, their types and the formulas below: the
open platform's API doc for pdd.order.information.get as the public SDKs transcribe it —
Cherrs/pdd-rs `src/requests/pdd_order_information_get.rs` (current fields, money as f64) and
lywzx/pdd-node-sdk `packages/pdd-origin-api/src/dingDan/PddOrderInformationGet.ts` — and a
real response shape (money as JSON numbers, `198.0`; encrypted receiver with its masks) seen in
public front-end code.

Money is yuan as JSON numbers (29.9; text is read too): each goes through the payload model's
`Amount` (a Decimal from the number's shortest text, never float arithmetic) and `minor_units`.
A line's `gross` is `goods_price` (the unit price) × `goods_count`; PDD states no per-item
discount, tax or total, so those stay unset (its discounts are the order's, and it states no
tax). PDD defines `goods_amount = Σ goods_price × goods_count - order_change_amount` (the
seller's 改价), `discount_amount = platform_discount + seller_discount + capital_free_discount`
and `pay_amount = goods_amount - discount_amount + postage + 服务费` (`service_fee_detail`:
顺丰加价, installation), all exact in fen: no rounding is carried. So delivery is `postage` plus the
service fees (OrderStream has no service-fee field), the total is `pay_amount` and the discount
is what lies between: `Σ lines + delivery - pay_amount`, i.e. `order_change_amount +
discount_amount` (platform coupons included: the total is what the buyer pays). A
`goods_amount` that does not match the lines and `order_change_amount` is refused.

Times are Beijing time "yyyy-MM-dd HH:mm:ss"; PDD writes "" for a time not reached. `updated_at`
(订单最近一次更新时间) also moves on payment, 成团 (`confirm_time`), shipment and receipt: an
order is a revision (`OrderModified`, revision = `updated_at` in Unix seconds) only when
`updated_at` is later than all of those.

The receiver: `receiver_name`, `receiver_phone`, `receiver_address` (the street, without the
region) and `address` (the whole address) are PDD ciphertexts while the order awaits shipment,
"" afterwards; `*_mask` are PDD's display masks; `province`, `city`, `town` (区县) stay clear.
All go through `connectors.platform_pii.receiver`; `pdd.open.decrypt.batch` opens them by the
order_sn (connectors/platform_decrypt.py). `order_info` holds no buyer id (`open_address_id` is
an address-merging key, not a person): the customer id is None.

Simplified: orders are shipped (`self_contained` 门店自提 → pickup at `store_info`); 定金 orders
(`trade_type` 1) whose balance is unpaid are partially paid; gifts (`gift_list`), the 送货入户
values and `duo_duo_pay_reduction` (多多支付立减, paid by PDD's wallet) are not modelled.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from connectors.base import (
    CHINA,
    Amount,
    ChannelEvent,
    ChannelPayload,
    Connector,
    PayloadRejected,
    decimal_number,
    local_time,
    minor_units,
)
from connectors.platform_pii import receiver
from connectors.samples import SampleOrder, payload_json
from events.models import OrderLine, OrderMode, PaymentStatus

CURRENCY = "CNY"
_RESPONSE = "order_info_get_response"
_CONFIRMED = 1  # confirm_status: 0 未成交, 1 已成交, 2 已取消
_SHIPPED = {2, 3}  # order_status: 1 待发货, 2 已发货待签收, 3 已签收
_DEPOSIT_ORDER = 1  # trade_type: 0 普通订单, 1 定金订单
_ZERO = Decimal(0)


class _Item(ChannelPayload):
    goods_id: int | str
    sku_id: int | str
    outer_id: str | None = None  # the seller's SKU code
    outer_goods_id: str | None = None  # the seller's goods code
    goods_name: str
    goods_spec: str | None = None  # "规格值1,规格值2"
    goods_price: Amount
    goods_count: int


class _ServiceFee(ChannelPayload):
    service_fee: Amount = _ZERO
    service_name: str | None = None


class _StepOrder(ChannelPayload):
    step_trade_status: int  # 0 定金未付尾款未付, 1 定金已付尾款未付, 2 定金已付尾款已付


class _Store(ChannelPayload):
    store_id: int | str | None = None
    store_number: str | None = None  # the seller's own store code


class _OrderInfo(ChannelPayload):
    order_sn: str
    order_status: int
    confirm_status: int = _CONFIRMED
    trade_type: int = 0
    step_order_info: _StepOrder | None = None
    created_time: str
    pay_time: str | None = None
    confirm_time: str | None = None
    shipping_time: str | None = None
    receive_time: str | None = None
    updated_at: str | None = None
    pay_amount: Amount
    goods_amount: Amount | None = None
    order_change_amount: Amount = _ZERO
    postage: Amount = _ZERO
    service_fee_detail: list[_ServiceFee] | None = None
    item_list: list[_Item]
    province: str | None = None
    city: str | None = None
    town: str | None = None
    receiver_name: str | None = None
    receiver_phone: str | None = None
    receiver_address: str | None = None
    address: str | None = None
    receiver_name_mask: str | None = None
    receiver_phone_mask: str | None = None
    receiver_address_mask: str | None = None
    address_mask: str | None = None
    buyer_memo: str | None = None
    self_contained: int = 0
    store_info: _Store | None = None


class PinduoduoConnector(Connector):
    name = "pinduoduo"
    delivery = "polled"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        order = self.validate(_OrderInfo, _unwrap(self.load_json(raw)))
        placed_at = _time(order.created_time, field="created_time")
        if placed_at is None:
            raise PayloadRejected("no order time", field="created_time")
        paid_at = _time(order.pay_time, field="pay_time")
        moves = [
            moment
            for moment in (
                placed_at,
                paid_at,
                _time(order.confirm_time, field="confirm_time"),
                _time(order.shipping_time, field="shipping_time"),
                _time(order.receive_time, field="receive_time"),
            )
            if moment is not None
        ]
        updated = _time(order.updated_at, field="updated_at")
        revised = updated if updated and updated > max(moves) else None
        lines = [_line(item, i) for i, item in enumerate(order.item_list)]
        goods = sum(line.amount for line in lines)
        changed = minor_units(
            order.order_change_amount, currency=CURRENCY, field="order_change_amount"
        )
        if (
            order.goods_amount is not None
            and minor_units(order.goods_amount, currency=CURRENCY, field="goods_amount")
            != goods - changed
        ):
            raise PayloadRejected(
                f"is not Σ goods_price × goods_count - order_change_amount ({goods - changed} fen)",
                field="goods_amount",
            )
        delivery_fee = minor_units(order.postage, currency=CURRENCY, field="postage") + sum(
            minor_units(fee.service_fee, currency=CURRENCY, field=f"service_fee_detail.{i}")
            for i, fee in enumerate(order.service_fee_detail or [])
        )
        total = minor_units(order.pay_amount, currency=CURRENCY, field="pay_amount")
        street, whole = order.receiver_address or None, False
        if street is None and order.address:
            street, whole = order.address, True  # the whole address, region included
        buyer = receiver(
            "pinduoduo",
            customer_id=None,  # order_info names no buyer
            name=order.receiver_name,
            phone=order.receiver_phone,
            street=street,
            province=order.province,
            city=order.city,
            district=order.town,
            name_mask=order.receiver_name_mask,
            phone_mask=order.receiver_phone_mask,
            street_mask=order.receiver_address_mask or order.address_mask,
            street_names_region=whole,
        )
        pickup = order.self_contained == 1
        store = order.store_info
        return self.order(
            external_id=order.order_sn,
            placed_at=placed_at,
            occurred_at=revised or placed_at,
            received_at=received_at,
            revision=int(revised.timestamp()) if revised else 0,
            mode=OrderMode.PICKUP if pickup else OrderMode.SHIP,
            currency=CURRENCY,
            lines=lines,
            delivery_fee=delivery_fee,
            discount=goods + delivery_fee - total,
            total=total,
            payment_status=_payment_status(order, paid=paid_at is not None),
            customer=buyer.customer,
            address=buyer.address,
            platform_ciphertext=buyer.ciphertext,
            location_hint=(store.store_number or str(store.store_id or "") or None)
            if pickup and store
            else None,
            notes=order.buyer_memo or None,
        )


def _line(item: _Item, index: int) -> OrderLine:
    """A line as `item_list[]` states it: `goods_price` (商品销售价格, the unit price, in yuan
    to the fen) times `goods_count`, exactly the product PDD's own `goods_amount` formula
    multiplies. PDD states nothing else per item: its discounts (改价, platform, seller, 团长免单)
    and service fees are the order's, allocated to no item, and it states no tax (the price is
    what the buyer pays). So the line has no discount or tax of its own and no stated total."""
    unit_price = minor_units(
        item.goods_price, currency=CURRENCY, field=f"item_list.{index}.goods_price"
    )
    return OrderLine(
        sku=item.outer_id or item.outer_goods_id or str(item.sku_id),
        name=item.goods_name,
        quantity=item.goods_count,
        unit_price=unit_price,
        options=[s.strip() for s in (item.goods_spec or "").split(",") if s.strip()],
        gross=unit_price * item.goods_count,
        tax=0,
        prices_include_tax=True,  # a consumer price in China includes its VAT
    )


def _unwrap(document: Any) -> Any:
    if isinstance(document, dict) and "error_response" in document:
        error = document["error_response"]
        message = error.get("error_msg", error) if isinstance(error, dict) else error
        raise PayloadRejected(f"PDD error {message}", field="error_response")
    if isinstance(document, dict) and _RESPONSE in document:
        response = document[_RESPONSE]
        if not isinstance(response, dict) or not isinstance(response.get("order_info"), dict):
            raise PayloadRejected("response holds no order", field=f"{_RESPONSE}.order_info")
        return response["order_info"]
    return document


def _time(text: str | None, *, field: str) -> datetime | None:
    return local_time(text, field=field) if text and text.strip() else None


def _payment_status(order: _OrderInfo, *, paid: bool) -> PaymentStatus:
    if order.trade_type == _DEPOSIT_ORDER and order.step_order_info is not None:
        step = order.step_order_info.step_trade_status
        if step == 0:
            return PaymentStatus.UNPAID
        if step == 1:
            return PaymentStatus.PARTIALLY_PAID  # 定金 paid, the balance not yet
    if paid or order.confirm_status == _CONFIRMED or order.order_status in _SHIPPED:
        return PaymentStatus.PAID
    return PaymentStatus.PENDING  # neither paid nor 成交 (cancelled before payment)


def _beijing(moment: datetime) -> str:
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as a paid, 成团 `pdd.order.information.get` response awaiting shipment, money as
    JSON numbers; revision n is the order as updated at `order.revised_at(n)`. The receiver is
    written in clear (as before PDD's encryption), so that it parses back. PDD ships or has it
    picked up at a store (门店自提), in CNY, without packaging fee or tax: other orders raise
    ValueError. Unsigned, so `secret` is not used."""
    if order.mode not in (OrderMode.SHIP, OrderMode.PICKUP) or order.currency != CURRENCY:
        raise ValueError(
            f"pinduoduo orders are shipped or picked up, in {CURRENCY}: {order.external_id}"
        )
    if order.packaging_fee or order.tax:
        raise ValueError(f"pinduoduo orders have no packaging fee or tax: {order.external_id}")
    as_number = partial(decimal_number, currency=CURRENCY)
    created = _beijing(order.placed_at)
    goods = sum(line.quantity * line.unit_price for line in order.lines)
    items = [
        {
            "goods_id": 300_000_000 + zlib.crc32(line.sku.encode()) % 100_000_000,
            "sku_id": 800_000_000_000 + zlib.crc32(line.sku.encode()),
            "outer_id": line.sku,
            "outer_goods_id": "",
            "goods_name": line.name,
            "goods_spec": "",
            "goods_price": as_number(line.unit_price),
            "goods_count": line.quantity,
        }
        for line in order.lines
    ]
    pickup = order.mode is OrderMode.PICKUP
    info: dict[str, Any] = {
        "order_sn": order.external_id,
        "order_status": 1,
        "confirm_status": _CONFIRMED,
        "group_status": 1,
        "refund_status": 1,
        "trade_type": 0,
        "created_time": created,
        "pay_time": created,
        "confirm_time": created,
        "updated_at": _beijing(order.revised_at(revision)),
        "goods_amount": as_number(goods),
        "order_change_amount": as_number(0),
        "seller_discount": as_number(order.discount),
        "platform_discount": as_number(0),
        "capital_free_discount": as_number(0),
        "discount_amount": as_number(order.discount),
        "postage": as_number(order.delivery_fee),
        "pay_amount": as_number(order.total),
        "item_list": items,
        "receiver_name": order.customer_name,
        "receiver_phone": order.customer_phone,
        "receiver_address": order.address_text or "",
        "address": order.address_text or "",
        "buyer_memo": order.notes or "",
        "remark": "",
        "self_contained": 1 if pickup else 0,
    }
    if pickup:
        info["store_info"] = {"store_id": 0, "store_name": order.store, "store_number": order.store}
    body = {_RESPONSE: {"order_info": info}}
    return payload_json(body).encode(), {}
