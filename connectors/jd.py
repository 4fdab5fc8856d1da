"""JD POP (京东 SOP) orders as `jingdong.pop.order.get` / `jingdong.pop.order.search` return them.

A payload is one `OrderSearchInfo`, bare or in the get response `{"jingdong_pop_order_get_responce":
{"orderDetailInfo": {"orderInfo": ...}}}` (JD's spelling); field names in rejections are relative
to the order. Unsigned: the order comes from our own HTTPS call to JOS, whose responses carry no
signature.

Money (yuan strings): each line is `jdPrice` × `itemTotal` (together `orderTotalPrice`), delivery
is `freightPrice`, tax `taxFee`, the total is `orderPayment` — what the buyer pays, which JD
defines as `orderTotalPrice - sellerDiscount - user discounts - balanceUsed + freightPrice + taxFee
+ serviceFee`. The discount is therefore `orderTotalPrice + freightPrice + taxFee - orderPayment`:
the seller's discount plus what JD funds (京券, 京豆, balance); `serviceFee` is not modelled.

`modified` moves on every change, payment included: an order is a revision (`OrderModified`)
only when `modified` is later than both `orderStartTime` and `paymentConfirmTime`.

A line's amounts, in fen and exact: `gross` is `jdPrice` × `itemTotal` (JD states no other line
amount); its `discount` is the `couponPrice` of the `couponDetailList` entries whose `skuId` is
the line's (单品促销, 套装, 闪团, 团购: the discounts JD gives per SKU). Order-wide ones (店铺优惠,
京东券, 满返, whose `skuId` is empty) and `balanceUsed` are not split over the lines by JD, so
they stay in the order's discount only, and a line states no `total`. JD states no tax per line:
`taxFee` stays the order's. Nothing is rounded that the parts do not show: no rounding tolerance.
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
_RESPONSE = "jingdong_pop_order_get_responce"
_PAID = {
    "WAIT_SELLER_STOCK_OUT",
    "WAIT_SELLER_DELIVERY",
    "WAIT_GOODS_RECEIVE_CONFIRM",
    "SEND_TO_DISTRIBUTION_CENER",
    "DISTRIBUTION_CENTER_RECEIVED",
    "RECEIPTS_CONFIRM",
    "FINISHED_L",
    "WAIT_SEND_CODE",
}
_CASH_ON_DELIVERY = "1"  # payType "1-货到付款"
_STORE_PICKUP = "69"  # idSopShipmenttype: 68 京配, 69 京配自提
_NEVER = ("0001-01-01", "1970-01-01")  # JD's "no such time"


class _Item(ChannelPayload):
    skuId: int | str
    outerSkuId: str | None = None
    skuName: str
    jdPrice: str
    itemTotal: int


class _Coupon(ChannelPayload):
    """A `couponDetailList` entry: a discount of `couponPrice`, for one SKU when `skuId` is set
    (empty for the order-wide types 35 满返满送 and 100 店铺优惠)."""

    skuId: int | str | None = None
    couponPrice: str


class _Consignee(ChannelPayload):
    """Since JD's order encryption (数据加解密), `fullname`, `mobile`, `telephone` and
    `fullAddress` come as TDE ciphertext; the region (province, city, county, town) stays in
    clear."""

    fullname: str | None = None
    mobile: str | None = None
    telephone: str | None = None
    fullAddress: str | None = None
    province: str | None = None
    city: str | None = None
    county: str | None = None
    town: str | None = None
    desen_mobile: str | None = None  # the masked mobile JD gives for display


class _OrderInfo(ChannelPayload):
    orderId: int | str
    payType: str = "4-在线支付"
    orderState: str
    orderTotalPrice: str | None = None
    orderPayment: str
    freightPrice: str = "0.00"
    taxFee: str = "0.00"
    orderRemark: str | None = None
    orderStartTime: str
    paymentConfirmTime: str | None = None
    modified: str | None = None
    pin: str | None = None
    consigneeInfo: _Consignee | None = None
    itemInfoList: list[_Item]
    couponDetailList: list[_Coupon] = []
    storeId: int | str | None = None
    idSopShipmenttype: int | str | None = None
    oaid: str | None = None  # what `jingdong.jos.order.oaid.decrypt` opens the receiver by


class JdConnector(Connector):
    name = "jd"
    delivery = "polled"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        order = self.validate(_OrderInfo, _unwrap(self.load_json(raw)))
        placed_at = _time(order.orderStartTime, field="orderStartTime")
        if placed_at is None:
            raise PayloadRejected("no order time", field="orderStartTime")
        paid_at = _time(order.paymentConfirmTime, field="paymentConfirmTime")
        modified = _time(order.modified, field="modified")
        revised = modified if modified and modified > max(placed_at, paid_at or placed_at) else None
        discounts = _sku_discounts(order)
        lines = [
            _line(item, i, discounts.get(str(item.skuId), 0))
            for i, item in enumerate(order.itemInfoList)
        ]
        goods = sum(line.amount for line in lines)
        listed = order.orderTotalPrice
        if (
            listed is not None
            and minor_units(listed, currency=CURRENCY, field="orderTotalPrice") != goods
        ):
            raise PayloadRejected(
                f"is not Σ jdPrice × itemTotal ({goods} fen)", field="orderTotalPrice"
            )
        delivery_fee = minor_units(order.freightPrice, currency=CURRENCY, field="freightPrice")
        tax = minor_units(order.taxFee, currency=CURRENCY, field="taxFee")
        total = minor_units(order.orderPayment, currency=CURRENCY, field="orderPayment")
        consignee = order.consigneeInfo or _Consignee()
        buyer = receiver(
            "jd",
            customer_id=order.pin,
            name=consignee.fullname,
            phone=consignee.mobile or consignee.telephone,
            street=consignee.fullAddress,
            province=consignee.province,
            city=consignee.city,
            district=consignee.county,
            town=consignee.town,
            open_id=order.oaid,
            phone_mask=consignee.desen_mobile,
            street_names_region=True,  # fullAddress is the whole address
        )
        return self.order(
            external_id=str(order.orderId),
            placed_at=placed_at,
            occurred_at=revised or placed_at,
            received_at=received_at,
            revision=int(revised.timestamp()) if revised else 0,
            mode=OrderMode.PICKUP
            if str(order.idSopShipmenttype) == _STORE_PICKUP
            else OrderMode.SHIP,
            currency=CURRENCY,
            lines=lines,
            delivery_fee=delivery_fee,
            tax=tax,
            discount=goods + delivery_fee + tax - total,
            total=total,
            payment_status=_payment_status(order, paid=paid_at is not None),
            customer=buyer.customer,
            address=buyer.address,
            platform_ciphertext=buyer.ciphertext,
            location_hint=None if str(order.storeId or "0") == "0" else str(order.storeId),
            notes=order.orderRemark or None,
        )


def _line(item: _Item, index: int, discount: int) -> OrderLine:
    price = minor_units(item.jdPrice, currency=CURRENCY, field=f"itemInfoList.{index}.jdPrice")
    return OrderLine(
        sku=item.outerSkuId or str(item.skuId),
        name=item.skuName,
        quantity=item.itemTotal,
        unit_price=price,
        gross=price * item.itemTotal,
        discount=discount,
    )


def _sku_discounts(order: _OrderInfo) -> dict[str, int]:
    """Fen of the per-SKU coupons (`couponDetailList` entries naming a `skuId`), by skuId. A SKU
    on more than one line gets none: JD does not say which of its lines a coupon is for."""
    lines_of: dict[str, int] = {}
    for item in order.itemInfoList:
        lines_of[str(item.skuId)] = lines_of.get(str(item.skuId), 0) + 1
    discounts: dict[str, int] = {}
    for n, coupon in enumerate(order.couponDetailList):
        sku = str(coupon.skuId or "")
        if lines_of.get(sku) == 1:
            price = minor_units(
                coupon.couponPrice, currency=CURRENCY, field=f"couponDetailList.{n}.couponPrice"
            )
            discounts[sku] = discounts.get(sku, 0) + price
    return discounts


def _unwrap(document: Any) -> Any:
    if isinstance(document, dict) and "error_response" in document:
        raise PayloadRejected(f"JOS error {document['error_response']}", field="error_response")
    if isinstance(document, dict) and _RESPONSE in document:
        detail = document[_RESPONSE]
        detail = detail.get("orderDetailInfo") if isinstance(detail, dict) else None
        if not isinstance(detail, dict) or "orderInfo" not in detail:
            raise PayloadRejected("response holds no order", field=f"{_RESPONSE}.orderDetailInfo")
        return detail["orderInfo"]
    return document


def _time(text: str | None, *, field: str) -> datetime | None:
    return None if not text or text.startswith(_NEVER) else local_time(text, field=field)


def _payment_status(order: _OrderInfo, *, paid: bool) -> PaymentStatus:
    if order.payType.split("-")[0] == _CASH_ON_DELIVERY:
        return (
            PaymentStatus.PAID
            if order.orderState == "FINISHED_L"
            else PaymentStatus.CASH_ON_DELIVERY
        )
    if paid or order.orderState in _PAID:
        return PaymentStatus.PAID
    return PaymentStatus.PENDING  # TRADE_CANCELED, LOCKED, POP_ORDER_PAUSE before payment


def _beijing(moment: datetime) -> str:
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as a paid `jingdong.pop.order.get` response; revision n is the order as changed at
    `order.revised_at(n)`. JD ships or has it picked up (京配自提), in CNY, without packaging fee:
    other orders raise ValueError. Unsigned, so `secret` is not used."""
    if order.mode not in (OrderMode.SHIP, OrderMode.PICKUP) or order.currency != CURRENCY:
        raise ValueError(f"jd orders are shipped or picked up, in {CURRENCY}: {order.external_id}")
    if order.packaging_fee:
        raise ValueError(f"jd orders have no packaging fee: {order.external_id}")
    as_text = partial(decimal_text, currency=CURRENCY)
    created = _beijing(order.placed_at)
    goods = sum(line.quantity * line.unit_price for line in order.lines)
    items = [
        {
            "skuId": str(100_000_000_000 + zlib.crc32(line.sku.encode())),
            "outerSkuId": line.sku,
            "skuName": line.name,
            "jdPrice": as_text(line.unit_price),
            "itemTotal": str(line.quantity),
        }
        for line in order.lines
    ]
    info = {
        "orderId": order.external_id,
        "orderType": "22",
        "payType": "4-在线支付",
        "orderState": "WAIT_SELLER_STOCK_OUT",
        "orderStateRemark": "等待出库",
        "orderTotalPrice": as_text(goods),
        "sellerDiscount": as_text(order.discount),
        "orderSellerPrice": as_text(goods - order.discount),
        "balanceUsed": "0.00",
        "freightPrice": as_text(order.delivery_fee),
        "taxFee": as_text(order.tax),
        "orderPayment": as_text(order.total),
        "orderRemark": order.notes or "",
        "orderStartTime": created,
        "paymentConfirmTime": created,
        "modified": _beijing(order.revised_at(revision)),
        "pin": order.extras.get("pin", f"jd_{zlib.crc32(order.customer_phone.encode()):x}"),
        "consigneeInfo": {
            "fullname": order.customer_name,
            "mobile": order.customer_phone,
            "fullAddress": order.address_text or "",
        },
        "itemInfoList": items,
        "storeId": order.store,
        "idSopShipmenttype": _STORE_PICKUP if order.mode is OrderMode.PICKUP else "68",
    }
    body = {_RESPONSE: {"code": "0", "orderDetailInfo": {"orderInfo": info}}}
    return json.dumps(body, ensure_ascii=False).encode(), {}
