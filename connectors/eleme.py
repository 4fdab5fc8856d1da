"""Ele.me (饿了么) open-platform order messages: the pushed envelope of type 10 (订单生效)
whose `message` is the order (the OOrder of eleme.order.getOrder) as a JSON string.

`signature` is upper-case md5 of the envelope's other fields as "key=value" strings, sorted and
joined with nothing, then the app secret. The envelope's `timestamp` (Unix milliseconds, when
Ele.me sent it; e.g. `{"requestId": ..., "type": 100, "appId": ..., "message": "...",
"shopId": ..., "timestamp": 1508323694030, "signature": "81B0...", "userId": ...}` in the
open platform's push documentation, mirrored at dianj.com.cn/News/Detail/21265) is one of
those fields: `signed_at`, held to the webhooks' five minutes around receipt.

Money is yuan; `createdAt`/`deliverTime` are Beijing local times; `deliveryGeo` is
"longitude,latitude".

Simplified: Ele.me publishes no full-order modification message, so an order message carrying
an `updateTime` (Unix seconds, as its status messages do) later than `createdAt` is the
revision (`OrderModified`, revision = updateTime). 到店自取 is read from `orderBusinessType` = 1.
Discount = |shopPart| (merchant) + |elemePart| (Ele.me), the shares of activityTotal, which
Ele.me gives as negative amounts; delivery = deliverFee less 会员减配送费; dishes come from the
"normal" groups (the "extra" group repeats packageFee). Lines + delivery + packageFee -
discount = totalPrice.

A line's amounts (`_line`): an item states its `price` (商品单价), `quantity` and `total` (总价,
the line before the order's activities), all in yuan; `total` is the line's gross, and its
unit price is derived from it. Without `total`, the gross is price x quantity (exact in
yuan). The activities (满减, 红包: shopPart, elemePart) are the order's, not shared out to
items: a line's discount is 0 and its total its gross. A consumer price in China includes its
VAT and Ele.me states none: tax 0, inside the price. Everything is in whole fen: no rounding.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, Literal

from pydantic import Json

from connectors import eleme_updates
from connectors.base import (
    CHINA,
    Amount,
    ChannelEvent,
    ChannelPayload,
    Connector,
    PayloadRejected,
    PlatformUpdate,
    SignatureRejected,
    decimal_number,
    from_epoch,
    local_time,
    minor_units,
    same_signature,
    signed_epoch,
    unit_price_of,
)
from connectors.platform_pii import clear_buyer
from connectors.samples import SampleOrder, payload_json
from events.models import Address, OrderLine, OrderMode, PaymentStatus

CURRENCY = "CNY"
ORDER_EFFECTIVE = 10  # message type 订单生效: the order, once paid (or placed, if cash)
_SELF_PICKUP = 1  # orderBusinessType of a 到店自取 order
_PAYMENT = {True: PaymentStatus.PAID, False: PaymentStatus.CASH_ON_DELIVERY}  # onlinePaid


class _Spec(ChannelPayload):
    name: str = ""
    value: str = ""


class _Item(ChannelPayload):
    name: str
    price: Amount  # 商品单价, yuan
    quantity: int
    total: Amount | None = None  # 总价: the line before the order's activities, yuan
    extendCode: str | None = None  # the merchant's own dish code
    newSpecs: list[_Spec] | None = None
    attributes: list[_Spec] | None = None


class _Group(ChannelPayload):
    type: str = "normal"
    items: list[_Item]


class _ElemeOrder(ChannelPayload):
    id: int | str
    createdAt: str
    updateTime: int | None = None
    groups: list[_Group]
    totalPrice: Amount
    deliverFee: Amount = Decimal(0)
    vipDeliveryFeeDiscount: Amount = Decimal(0)
    packageFee: Amount = Decimal(0)
    shopPart: Amount = Decimal(0)
    elemePart: Amount = Decimal(0)
    onlinePaid: bool = True
    book: bool = False
    deliverTime: str | None = None
    orderBusinessType: int = 0
    consignee: str | None = None
    phoneList: list[str] | None = None
    address: str | None = None
    deliveryGeo: str | None = None  # "longitude,latitude"
    description: str | None = None
    shopId: int | str
    openId: str | None = None  # the merchant's own code for the store


class _Envelope(ChannelPayload):
    type: Literal[10, "10"]  # 订单生效; other message types are not orders
    message: Json[_ElemeOrder]


def signature(envelope: Mapping[str, Any], *, secret: str) -> str:
    pairs = sorted(f"{k}={_text(v)}" for k, v in envelope.items() if k != "signature")
    return hashlib.md5(("".join(pairs) + secret).encode()).hexdigest().upper()


class ElemeConnector(Connector):
    name = "eleme"
    signed = True

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = self.require_secret()
        envelope = self.load_json(body)
        # The signature covers the fields, not the bytes: nothing may follow the signed object.
        if not isinstance(envelope, dict) or not body.rstrip(b"\r\n").endswith(b"}"):
            raise SignatureRejected("not exactly one signed message", field="signature")
        expected = signature(envelope, secret=secret)
        given = envelope.get("signature")
        if not same_signature(expected, given.upper() if isinstance(given, str) else given):
            raise SignatureRejected("signature does not match", field="signature")

    def parse_update(
        self,
        raw: bytes,
        *,
        kind: str | None,
        received_at: datetime,
        headers: Mapping[str, str] | None = None,
    ) -> PlatformUpdate | None:
        """Cancellations, cancel and refund requests, delivery status: the same callback as
        orders, told apart by the envelope's `type` (connectors/eleme_updates.py)."""
        return eleme_updates.parse_update(self, raw, received_at=received_at)

    def signed_at(self, headers: Mapping[str, str], body: bytes) -> datetime:
        """The envelope's `timestamp` (milliseconds), a signed field: when Ele.me sent it."""
        envelope = self.load_json(body)
        return signed_epoch(envelope.get("timestamp") if isinstance(envelope, dict) else None)

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        order = self.validate(_Envelope, self.load_json(raw)).message
        placed_at = local_time(order.createdAt, field="message.createdAt")
        updated = order.updateTime
        changed_at = from_epoch(updated, field="message.updateTime") if updated else None
        if changed_at is not None and changed_at <= placed_at:
            changed_at = None  # an update time no later than creation: the original order
        pickup = order.orderBusinessType == _SELF_PICKUP
        lines = [
            _line(item, f"message.groups.{g}.items.{i}")
            for g, group in enumerate(order.groups)
            if group.type == "normal"  # the "extra" group repeats packageFee as a dish
            for i, item in enumerate(group.items)
        ]
        latitude, longitude = _geo(order.deliveryGeo)
        return self.order(
            external_id=str(order.id),
            placed_at=placed_at,
            occurred_at=changed_at or placed_at,
            received_at=received_at,
            revision=int(changed_at.timestamp()) if changed_at else 0,
            mode=OrderMode.PICKUP if pickup else OrderMode.DELIVERY,
            currency=CURRENCY,
            lines=lines,
            delivery_fee=minor_units(
                order.deliverFee - order.vipDeliveryFeeDiscount,
                currency=CURRENCY,
                field="message.deliverFee",
            ),
            packaging_fee=minor_units(
                order.packageFee, currency=CURRENCY, field="message.packageFee"
            ),
            discount=minor_units(
                abs(order.shopPart) + abs(order.elemePart),
                currency=CURRENCY,
                field="message.shopPart",
            ),
            total=minor_units(order.totalPrice, currency=CURRENCY, field="message.totalPrice"),
            payment_status=_PAYMENT[order.onlinePaid],
            customer=clear_buyer(order.consignee, next(iter(order.phoneList or []), None)),
            address=Address(
                text=order.address, country="CN", latitude=latitude, longitude=longitude
            )
            if order.address
            else None,
            location_hint=order.openId or str(order.shopId),
            requested_at=local_time(order.deliverTime, field="message.deliverTime")
            if order.book and order.deliverTime
            else None,
            notes=order.description or None,
        )


def _line(item: _Item, at: str) -> OrderLine:
    """An item as Ele.me states it: `total` (总价) is the line's gross, else `price` x
    `quantity` multiplied in decimal; the unit price is derived from the gross, so that a
    `price` finer than a fen or a total that does not divide by the quantity is no reason to
    refuse the order. Prices include VAT; Ele.me shares no activity out to an item."""
    if item.total is not None:
        gross = minor_units(item.total, currency=CURRENCY, field=f"{at}.total")
    else:
        gross = minor_units(item.price * item.quantity, currency=CURRENCY, field=f"{at}.price")
    return OrderLine(
        sku=item.extendCode or item.name,
        name=item.name,
        quantity=item.quantity,
        unit_price=unit_price_of(gross, item.quantity),
        options=[s.value for s in (*(item.newSpecs or []), *(item.attributes or []))],
        gross=gross,
        discount=0,
        tax=0,
        total=gross,
        prices_include_tax=True,
    )


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as an Ele.me type-10 push; revision r is a modification made at
    `order.revised_at(r)`. Yuan are written as Ele.me writes them: 28.0, 15.5."""
    as_number = partial(decimal_number, currency=CURRENCY)
    created = order.placed_at.astimezone(CHINA).strftime("%Y-%m-%dT%H:%M:%S")
    shop_id = zlib.crc32(order.store.encode()) % 10**9
    message: dict[str, Any] = {
        "id": order.external_id,
        "orderId": order.external_id,
        "createdAt": created,
        "activeAt": created,
        "deliverFee": as_number(order.delivery_fee),
        "deliverTime": None,
        "vipDeliveryFeeDiscount": as_number(0),
        "description": order.notes or "",
        "groups": [
            {
                "name": "1号篮子",
                "type": "normal",
                "items": [
                    {
                        "id": i + 1,
                        "name": line.name,
                        "extendCode": line.sku,
                        "categoryId": 1,
                        "price": as_number(line.unit_price),
                        "quantity": line.quantity,
                        "total": as_number(line.unit_price * line.quantity),
                        "newSpecs": [],
                        "attributes": [],
                    }
                    for i, line in enumerate(order.lines)
                ],
            }
        ],
        "book": False,
        "onlinePaid": True,
        "phoneList": [order.customer_phone],
        "shopId": shop_id,
        "openId": order.store,
        "status": "unprocessed",
        "totalPrice": as_number(order.total),
        "originalPrice": as_number(order.total + order.discount),
        "consignee": order.customer_name,
        "address": order.address_text or "",
        "deliveryGeo": "" if order.latitude is None else f"{order.longitude},{order.latitude}",
        "packageFee": as_number(order.packaging_fee),
        "activityTotal": as_number(-order.discount),
        "shopPart": as_number(-order.discount),
        "elemePart": as_number(0),
        "orderBusinessType": _SELF_PICKUP if order.mode is OrderMode.PICKUP else 0,
    }
    timestamp = int(order.revised_at(revision).timestamp())
    if revision:
        message["updateTime"] = timestamp
    envelope: dict[str, Any] = {
        "requestId": f"{order.external_id}{revision:04d}",
        "type": ORDER_EFFECTIVE,
        "appId": 20261125,
        "message": payload_json(message),
        "shopId": shop_id,
        "timestamp": timestamp * 1000 + 512,
        "userId": 286451379,
    }
    if secret is not None:
        envelope["signature"] = signature(envelope, secret=secret)
    return json.dumps(envelope, ensure_ascii=False).encode(), {}


def _geo(text: str | None) -> tuple[float | None, float | None]:
    if not text:
        return None, None
    try:
        longitude, latitude = (float(part) for part in text.split(","))
    except ValueError:
        raise PayloadRejected(
            f"{text!r} is not 'longitude,latitude'", field="message.deliveryGeo"
        ) from None
    return latitude, longitude


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
