"""Douyin shop (抖店, op.jinritemai.com) orders as `order.orderDetail` returns them (polled).

A payload is one `shop_order_detail`, bare or in its response `{"code": 10000, "msg": "success",
"data": {"shop_order_detail": ...}}`; a response whose `code` is not 10000 is refused naming
`code` and quoting `msg`/`sub_msg`. Field names in rejections are relative to the shop order.
Unsigned: the order comes from our own HTTPS call to the open platform (a 抖店 message push
only names the order id), so `delivery = "polled"`.

Sources: the official doudian SDK's generated models (Java `com.doudian.open.api.
order_orderDetail.data.ShopOrderDetail`, its `SkuOrderListItem`, `PostAddr`, `MaskPostAddr`;
the same fields in the official Go SDK and a C# port), and agiso's rendering of the order list
(open.agiso.com aldsDoudian/api/orderList), whose `shop_order_list` items have the same shape.

Money: every amount is an integer in fen (分) as a JSON number, used as it is (never scaled,
never a float). A line costs `sum_amount` (商品现价*件数), else `origin_amount` (商品现价, per
unit) × `item_num`; the unit price is derived from it and never refuses an order.
`goods_price` (商品原价) is the crossed-out list price before the item's campaign price and is
not an amount of the order. Delivery is `post_amount` (运费, already net of
`post_promotion_amount`), packing is `packing_amount` (打包费), tax is `tax_amount` (跨境税费,
0 elsewhere), the total is `pay_amount` — what the buyer pays. The discount is everything
between: Σ lines + post_amount + packing_amount + tax_amount − pay_amount, i.e. the shop,
platform and 达人 promotions and red packets (`promotion_amount`, its breakdown in
`promotion_detail`) plus the seller's manual price change (`modify_amount`, 改价变化量). A net
upward change would make a negative discount, which validation rejects.

Each sku order states its own share of these, and a line carries them: `gross` as above, `tax`
its `tax_amount` (added on top, as the order's is: not inside the price), `total` its
`pay_amount` less its `post_amount` (a sku's pay_amount holds its share of the freight), and
`discount` what lies between, `gross + tax - total` (its `promotion_amount` less its
`modify_amount`, and whatever else Douyin took off that line). A sku order without `pay_amount`
has no total, and its discount is `promotion_amount - modify_amount`. Every amount is whole fen
and the order reconciles from the order's own fields, so nothing is rounded that the parts do
not show: no rounding tolerance.

Times are Unix seconds (UTC by definition, converted with `from_epoch`); 0 means unset
(`pay_time` of an unpaid order). `update_time` moves on every change, payment included: an
order is a revision (`OrderModified`, revision = `update_time`) only when `update_time` is
later than both `create_time` and `pay_time`.

Payment: `pay_type` 0 is 货到付款 (cash on delivery) until the order is 已完成 (5); otherwise
paid once `pay_time` is set or `order_status` is 105 已支付, 2 备货中, 101 部分发货,
3 已发货 or 5 已完成; 1 待支付 is unpaid; 103 (部分支付, `main_status`) is partly paid.

Buyer: since Douyin's receiver encryption the receiver comes as `encrypt_post_receiver`,
`encrypt_post_tel` and `post_addr.encrypt_detail` (`#…#…*…#1##` / `$…$…*…$1$$`, opened by
`order.batchDecrypt` with the order id as `auth_id`), with `mask_post_receiver`,
`mask_post_tel` and `mask_post_addr.detail` for display; the region (`post_addr.province`,
`city`, `town` = district, `street` = 街道) stays in clear. Older orders carry the clear
`post_receiver`, `post_tel` and `post_addr.detail`. All go through
`connectors.platform_pii.receiver`. `doudian_open_id` is the customer id.

Simplifications: every order is shipped (`OrderMode.SHIP`; 小时达 instant retail is not told
apart); a sku line's SKU is the merchant's `out_sku_id`, else its `code` (商家后台商品编码),
else Douyin's `sku_id`; the spec (规格) becomes the line's options; `buyer_words` is the note
(`seller_words` is the merchant's own and is not carried); after-sale state is ignored.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StrictInt

from connectors.base import (
    ChannelEvent,
    ChannelPayload,
    Connector,
    PayloadRejected,
    from_epoch,
    unit_price_of,
)
from connectors.money import LONG_MAX
from connectors.platform_pii import receiver
from connectors.samples import SampleOrder
from events.models import OrderLine, OrderMode, PaymentStatus

CURRENCY = "CNY"
SUCCESS = 10000  # the open platform's `code` for success
_DETAIL = "shop_order_detail"
_CASH_ON_DELIVERY = 0  # pay_type 0: 货到付款
_UNPAID = 1  # order_status 1: 待确认/待支付
_PARTLY_PAID = 103  # main_status 103: 部分支付
_PAID = {105, 2, 101, 3, 5}  # 已支付, 备货中, 部分发货, 已发货, 已完成
_FINISHED = 5

Fen = Annotated[StrictInt, Field(ge=0, le=LONG_MAX)]
SignedFen = Annotated[StrictInt, Field(ge=-LONG_MAX, le=LONG_MAX)]
Epoch = Annotated[StrictInt, Field(ge=0, lt=253_402_300_800)]  # before the year 10000


class _Spec(ChannelPayload):
    name: str = ""
    value: str = ""


class _SkuOrder(ChannelPayload):
    order_id: str | int | None = None
    sku_id: int | str
    out_sku_id: str | None = None
    code: str | None = None
    product_name: str
    item_num: Annotated[StrictInt, Field(gt=0)]
    origin_amount: Fen  # 商品现价, per unit
    sum_amount: Fen | None = None  # 商品现价*件数
    pay_amount: Fen | None = None  # what the buyer pays for it, its freight share included
    post_amount: Fen = 0  # its share of the freight
    promotion_amount: Fen = 0  # its shop, platform and 达人 promotions
    modify_amount: SignedFen = 0  # the seller's price change, negative for a cut
    tax_amount: Fen = 0  # 跨境税费
    spec: list[_Spec] | None = None


class _Region(ChannelPayload):
    name: str | None = None
    id: str | int | None = None


class _PostAddr(ChannelPayload):
    province: _Region | None = None
    city: _Region | None = None
    town: _Region | None = None
    street: _Region | None = None
    detail: str | None = None
    encrypt_detail: str | None = None


class _ShopOrder(ChannelPayload):
    order_id: str | int
    order_status: StrictInt
    main_status: StrictInt | None = None
    create_time: Annotated[StrictInt, Field(gt=0, lt=253_402_300_800)]
    pay_time: Epoch = 0
    update_time: Epoch = 0
    pay_type: StrictInt | None = None
    pay_amount: Fen
    post_amount: Fen = 0
    packing_amount: Fen = 0
    tax_amount: Fen = 0
    promotion_amount: Fen = 0
    modify_amount: SignedFen = 0
    buyer_words: str | None = None
    doudian_open_id: str | None = None
    post_receiver: str | None = None
    encrypt_post_receiver: str | None = None
    post_tel: str | None = None
    encrypt_post_tel: str | None = None
    post_addr: _PostAddr | None = None
    mask_post_receiver: str | None = None
    mask_post_tel: str | None = None
    mask_post_addr: _PostAddr | None = None
    sku_order_list: list[_SkuOrder]


class DouyinConnector(Connector):
    name = "douyin"
    delivery = "polled"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        order = self.validate(_ShopOrder, _unwrap(self.load_json(raw)))
        placed_at = from_epoch(order.create_time, field="create_time")
        paid_at = from_epoch(order.pay_time, field="pay_time") if order.pay_time else None
        updated = from_epoch(order.update_time, field="update_time") if order.update_time else None
        revised = updated if updated and updated > max(placed_at, paid_at or placed_at) else None
        lines = [_line(sku) for sku in order.sku_order_list]
        goods = sum(line.amount for line in lines)
        charges = order.post_amount + order.packing_amount + order.tax_amount
        address = order.post_addr or _PostAddr()
        masked = order.mask_post_addr or _PostAddr()
        buyer = receiver(
            "douyin",
            customer_id=order.doudian_open_id,
            name=order.encrypt_post_receiver or order.post_receiver,
            phone=order.encrypt_post_tel or order.post_tel,
            street=address.encrypt_detail or address.detail,
            province=_name(address.province),
            city=_name(address.city),
            district=_name(address.town),
            town=_name(address.street),
            name_mask=order.mask_post_receiver or None,
            phone_mask=order.mask_post_tel or None,
            street_mask=masked.detail or None,
        )
        return self.order(
            external_id=str(order.order_id),
            placed_at=placed_at,
            occurred_at=revised or placed_at,
            received_at=received_at,
            revision=order.update_time if revised else 0,
            mode=OrderMode.SHIP,
            currency=CURRENCY,
            lines=lines,
            delivery_fee=order.post_amount,
            packaging_fee=order.packing_amount,
            tax=order.tax_amount,
            discount=goods + charges - order.pay_amount,
            total=order.pay_amount,
            payment_status=_payment_status(order),
            customer=buyer.customer,
            address=buyer.address,
            platform_ciphertext=buyer.ciphertext,
            notes=order.buyer_words or None,
        )


def _line(sku: _SkuOrder) -> OrderLine:
    """A sku order with its amounts as Douyin states them (module docstring)."""
    gross = sku.sum_amount if sku.sum_amount is not None else sku.origin_amount * sku.item_num
    total: int | None
    if sku.pay_amount is None:
        total, discount = None, sku.promotion_amount - sku.modify_amount
    else:
        total = sku.pay_amount - sku.post_amount
        discount = gross + sku.tax_amount - total
    return OrderLine(
        sku=sku.out_sku_id or sku.code or str(sku.sku_id),
        name=sku.product_name,
        quantity=sku.item_num,
        unit_price=unit_price_of(gross, sku.item_num),
        options=[f"{s.name}:{s.value}" for s in sku.spec or [] if s.name or s.value],
        gross=gross,
        discount=discount,
        tax=sku.tax_amount,
        total=total,
    )


def _unwrap(document: Any) -> Any:
    """The shop order of an `order.orderDetail` response, or the bare shop order."""
    if isinstance(document, dict) and "code" in document and "order_id" not in document:
        code = document.get("code")
        if code != SUCCESS:
            message = " / ".join(
                str(document[key]) for key in ("msg", "sub_code", "sub_msg") if document.get(key)
            )
            raise PayloadRejected(f"open platform error {code!r}: {message}", field="code")
        data = document.get("data")
        detail = data.get(_DETAIL) if isinstance(data, dict) else None
        if not isinstance(detail, dict):
            raise PayloadRejected("response holds no order", field=f"data.{_DETAIL}")
        return detail
    return document


def _name(region: _Region | None) -> str | None:
    return (region.name or None) if region else None


def _payment_status(order: _ShopOrder) -> PaymentStatus:
    if order.pay_type == _CASH_ON_DELIVERY:
        if order.order_status == _FINISHED:
            return PaymentStatus.PAID  # delivered and collected
        return PaymentStatus.CASH_ON_DELIVERY
    if order.main_status == _PARTLY_PAID:
        return PaymentStatus.PARTIALLY_PAID
    if order.pay_time or order.order_status in _PAID:
        return PaymentStatus.PAID
    if order.order_status == _UNPAID:
        return PaymentStatus.UNPAID
    return PaymentStatus.PENDING  # 4 已取消 before payment, statuses Douyin adds later


def _number(text: str, *, base: int = 0) -> int:
    """A stable made-up platform number (sku id) for sample payloads."""
    return base + zlib.crc32(text.encode())


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as a paid `order.orderDetail` response; revision n is the order as changed at
    `order.revised_at(n)`. Douyin ships, in CNY: other orders raise ValueError, as does an
    external id that is not a Douyin order number (digits). The receiver is written in clear
    (`post_receiver`, `post_tel`, `post_addr.detail`) as older orders carried it. Unsigned, so
    `secret` is not used."""
    if order.mode is not OrderMode.SHIP or order.currency != CURRENCY:
        raise ValueError(f"douyin orders are shipped and in {CURRENCY}: {order.external_id}")
    if not order.external_id.isdigit():
        raise ValueError(f"douyin order ids are digits: {order.external_id}")
    created = int(order.placed_at.timestamp())
    updated = int(order.revised_at(revision).timestamp()) if revision else created
    skus = [
        {
            "order_id": f"{order.external_id}{n:02d}",
            "parent_order_id": order.external_id,
            "sku_id": _number(line.sku, base=3_400_000_000_000_000),
            "out_sku_id": line.sku,
            "code": line.sku,
            "product_name": line.name,
            "item_num": line.quantity,
            "origin_amount": line.unit_price,
            "sum_amount": line.quantity * line.unit_price,
            "spec": [],
        }
        for n, line in enumerate(order.lines, start=1)
    ]
    detail = {
        "order_id": order.external_id,
        "order_level": 2,
        "order_status": 2,
        "order_status_desc": "备货中",
        "main_status": 2,
        "main_status_desc": "备货中",
        "create_time": created,
        "pay_time": created,
        "update_time": updated,
        "pay_type": 1,
        "b_type": 2,
        "b_type_desc": "抖音",
        "order_amount": order.total,
        "pay_amount": order.total,
        "post_amount": order.delivery_fee,
        "packing_amount": order.packaging_fee,
        "tax_amount": order.tax,
        "promotion_amount": order.discount,
        "promotion_shop_amount": order.discount,
        "modify_amount": 0,
        "buyer_words": order.notes or "",
        "seller_words": "",
        "doudian_open_id": order.extras.get(
            "doudian_open_id", f"1@#{_number(order.customer_phone):x}"
        ),
        "post_receiver": order.customer_name,
        "post_tel": order.customer_phone,
        "post_addr": {"detail": order.address_text or ""},
        "sku_order_list": skus,
    }
    body = {"code": SUCCESS, "msg": "success", "data": {_DETAIL: detail}}
    return json.dumps(body, ensure_ascii=False).encode(), {}
