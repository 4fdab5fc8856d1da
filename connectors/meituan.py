"""Meituan Waimai (美团外卖) order pushes: 推送已支付订单 of the open platform
(waimaiopen.meituan.com), and revisions of such an order.

Meituan posts form parameters; the payload is those parameters as one flat JSON object of
strings (what `POST /webhooks/meituan` makes of the form), `detail` (dishes) and `extras` (活动)
being the JSON strings Meituan sends. Money is yuan, times Unix seconds. `sig` is md5(push URL
+ "?" + the other parameters sorted by name as k=v joined by "&" + app secret), the URL being
the one configured in Meituan's console (`OMS_MEITUAN_PUSH_URL`, default `oms api` locally).
`timestamp`, a system parameter (Unix seconds, when Meituan sent the push), is among the signed
parameters: `signed_at`, held to the webhooks' five minutes around receipt, so that a captured
push cannot be posted again later. A push without it is refused as unsigned.

Simplified: the order re-pushed with a `utime` later than its `ctime` is the revision
(`OrderModified`, revision = utime), as the fields of 推送订单信息修改消息 are not public.
Discount = poi_charge (merchant) + mt_charge (Meituan) of every activity; packaging = 餐盒
(box_num x box_price per dish) + 打包袋 (package_bag_money, fen). Lines + shipping + packaging
- discount = total. Values are taken as delivered once URL-decoded.

A line's amounts (`_line`): a dish states its unit `price` (菜品价格, yuan; by default the price
after the dish's own 折扣 activity, the original price when the merchant subscribes to 订阅字段
18) and its `quantity`, and no line amount of its own, so its gross is price x quantity, exact
in yuan. Its boxes are the order's packaging, not the line's. `food_discount` is a ratio that
Meituan documents as not entering the total (折扣值不参与总价计算, default 1): never an amount.
The activities in `extras` are the order's, not shared out to dishes: a line's discount is 0.
A consumer price in China includes its VAT and Meituan states none: tax 0, inside the price.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from pydantic import Json

from connectors import meituan_updates
from connectors.base import (
    Amount,
    ChannelEvent,
    ChannelPayload,
    Connector,
    PlatformUpdate,
    SignatureRejected,
    decimal_number,
    from_epoch,
    minor_units,
    same_signature,
    signed_epoch,
    unit_price_of,
)
from connectors.platform_pii import clear_buyer
from connectors.samples import SampleOrder, payload_json
from events.models import Address, OrderLine, OrderMode, PaymentStatus

CURRENCY = "CNY"
PUSH_URL = "http://127.0.0.1:8080/webhooks/meituan"  # `oms api` on its default address
# pay_type 1 货到付款, 2 在线支付
_PAYMENT = {1: PaymentStatus.CASH_ON_DELIVERY, 2: PaymentStatus.PAID}
_SELF_PICKUP = 1  # pick_type: 0 delivery, 1 到店自取


class _Dish(ChannelPayload):
    app_food_code: str = ""
    sku_id: str = ""
    food_name: str
    quantity: int
    price: Amount  # per portion, yuan
    box_num: Amount = Decimal(0)  # boxes for the whole line, not per portion
    box_price: Amount = Decimal(0)
    # `food_discount` (a ratio, 0.8) is not read: Meituan documents it as not in the total.
    spec: str = ""
    food_property: str = ""  # "少辣,不要香菜"

    def options(self) -> list[str]:
        return [o.strip() for o in (self.spec, *self.food_property.split(",")) if o.strip()]


class _Activity(ChannelPayload):
    mt_charge: Amount = Decimal(0)
    poi_charge: Amount = Decimal(0)


class _MeituanOrder(ChannelPayload):
    order_id: int | str
    app_poi_code: str
    ctime: int
    utime: int = 0
    detail: Json[list[_Dish]]
    extras: Json[list[_Activity]] = []
    total: Amount
    shipping_fee: Amount = Decimal(0)
    package_bag_money: int = 0
    pay_type: int = 2
    pick_type: int = 0
    delivery_time: int = 0
    recipient_name: str = ""
    recipient_phone: str = ""
    recipient_address: str = ""
    latitude: float = 0.0
    longitude: float = 0.0
    caution: str = ""


def signature(params: Mapping[str, Any], *, secret: str, url: str) -> str:
    signed = "&".join(f"{k}={_text(params[k])}" for k in sorted(params) if k != "sig")
    return hashlib.md5(f"{url}?{signed}{secret}".encode()).hexdigest()


class MeituanConnector(Connector):
    name = "meituan"
    signed = True
    # Cancellations, refund requests and rider status, each at its own callback URL
    # (connectors/meituan_updates.py): served at /webhooks/meituan/<kind>.
    updates = meituan_updates.UPDATES

    def __init__(self, *, secret: str | None = None, push_url: str | None = None) -> None:
        super().__init__(secret=secret)
        self.push_url = push_url or os.environ.get("OMS_MEITUAN_PUSH_URL", PUSH_URL)

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        self._verify_at(self.push_url, body)

    def verify_update(self, kind: str, headers: Mapping[str, str], body: bytes) -> None:
        """Each callback is signed with its own URL: the order push URL + "/" + kind."""
        self._verify_at(self.update_url(kind), body)

    def update_url(self, kind: str) -> str:
        return f"{self.push_url.rstrip('/')}/{kind}"

    def parse_update(
        self,
        raw: bytes,
        *,
        kind: str | None,
        received_at: datetime,
        headers: Mapping[str, str] | None = None,
    ) -> PlatformUpdate | None:
        return meituan_updates.parse_update(self, raw, kind=kind, received_at=received_at)

    def _verify_at(self, url: str, body: bytes) -> None:
        secret = self.require_secret()
        params = self.load_json(body)
        # `sig` covers the parameters, not the bytes: nothing may follow the signed object.
        if not isinstance(params, dict) or not body.rstrip(b"\r\n").endswith(b"}"):
            raise SignatureRejected("not exactly one signed parameter object", field="sig")
        expected = signature(params, secret=secret, url=url)
        given = params.get("sig")
        if not same_signature(expected, given.lower() if isinstance(given, str) else given):
            raise SignatureRejected("signature does not match", field="sig")

    def signed_at(self, headers: Mapping[str, str], body: bytes) -> datetime:
        """`timestamp`, one of the signed parameters: when Meituan sent the push."""
        params = self.load_json(body)
        return signed_epoch(params.get("timestamp") if isinstance(params, dict) else None)

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        order = self.validate(_MeituanOrder, self.load_json(raw))
        placed_at = from_epoch(order.ctime, field="ctime")
        changed_at = from_epoch(order.utime, field="utime") if order.utime > order.ctime else None
        lines = [_line(dish, i) for i, dish in enumerate(order.detail)]
        boxes = sum((d.box_num * d.box_price for d in order.detail), Decimal(0))
        charges = sum((a.mt_charge + a.poi_charge for a in order.extras), Decimal(0))
        text = order.recipient_address.replace("@#", " ").strip()  # "门牌@#地址"
        address = (
            Address(
                text=text,
                country="CN",
                latitude=order.latitude or None,
                longitude=order.longitude or None,
            )
            if text
            else None
        )
        pickup = order.pick_type == _SELF_PICKUP
        wanted = order.delivery_time  # 0: as soon as possible
        return self.order(
            external_id=str(order.order_id),
            placed_at=placed_at,
            occurred_at=changed_at or placed_at,
            received_at=received_at,
            revision=order.utime if changed_at else 0,
            mode=OrderMode.PICKUP if pickup else OrderMode.DELIVERY,
            currency=CURRENCY,
            lines=lines,
            delivery_fee=minor_units(order.shipping_fee, currency=CURRENCY, field="shipping_fee"),
            packaging_fee=minor_units(boxes, currency=CURRENCY, field="detail")
            + order.package_bag_money,
            discount=minor_units(charges, currency=CURRENCY, field="extras"),
            total=minor_units(order.total, currency=CURRENCY, field="total"),
            payment_status=_PAYMENT.get(order.pay_type, PaymentStatus.PENDING),
            customer=clear_buyer(order.recipient_name, order.recipient_phone),
            address=address,
            location_hint=order.app_poi_code,
            requested_at=from_epoch(wanted, field="delivery_time") if wanted else None,
            notes=order.caution or None,
        )


def _line(dish: _Dish, index: int) -> OrderLine:
    """A dish as Meituan states it: `price` (yuan, per portion) times `quantity` is the line's
    gross, multiplied in decimal and converted once (exact: no rounding), so that a unit price
    finer than a fen is no reason to refuse an order whose line comes to whole fen; the unit
    price is derived from that gross. The price includes VAT and Meituan states no tax; the
    activities in `extras` are the order's discount, not shared out to dishes."""
    gross = minor_units(
        dish.price * dish.quantity, currency=CURRENCY, field=f"detail.{index}.price"
    )
    return OrderLine(
        sku=dish.sku_id or dish.app_food_code or dish.food_name,
        name=dish.food_name,
        quantity=dish.quantity,
        unit_price=unit_price_of(gross, dish.quantity),
        options=dish.options(),
        gross=gross,
        discount=0,
        tax=0,
        total=gross,
        prices_include_tax=True,
    )


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as Meituan's push parameters; revision r is a modification made at
    `order.revised_at(r)`. Yuan are written as Meituan writes them: 28.0, 15.5."""
    as_number = partial(decimal_number, currency=CURRENCY)
    ctime = int(order.placed_at.timestamp())
    utime = int(order.revised_at(revision).timestamp())
    detail = [
        {
            "app_food_code": line.sku,
            "sku_id": line.sku,
            "food_name": line.name,
            "quantity": line.quantity,
            "price": as_number(line.unit_price),
            "unit": "份",
            "box_num": 1 if i == 0 and order.packaging_fee else 0,
            "box_price": as_number(order.packaging_fee) if i == 0 else 0,
            "spec": "",
            "food_property": "",
        }
        for i, line in enumerate(order.lines)
    ]
    extras = (
        [
            {
                "reduce_fee": as_number(order.discount),
                "mt_charge": 0,
                "poi_charge": as_number(order.discount),
                "remark": "满减优惠",
                "type": 2,
            }
        ]
        if order.discount
        else []
    )
    params = {
        "app_id": "6231",
        "timestamp": str(utime + 2),
        "order_id": order.external_id,
        "wm_order_id_view": order.external_id,
        "app_poi_code": order.store,
        "ctime": str(ctime),
        "utime": str(utime),
        "status": "2",
        "pay_type": "2",
        "pick_type": str(_SELF_PICKUP if order.mode is OrderMode.PICKUP else 0),
        "delivery_time": "0",
        "recipient_name": order.customer_name,
        "recipient_phone": order.customer_phone,
        "recipient_address": order.address_text or "",
        "latitude": str(order.latitude or 0),
        "longitude": str(order.longitude or 0),
        "shipping_fee": str(as_number(order.delivery_fee)),
        "total": str(as_number(order.total)),
        "original_price": str(as_number(order.total + order.discount)),
        "caution": order.notes or "",
        "detail": payload_json(detail, compact=True),
        "extras": payload_json(extras, compact=True),
    }
    if secret is not None:
        url = os.environ.get("OMS_MEITUAN_PUSH_URL", PUSH_URL)
        params["sig"] = signature(params, secret=secret, url=url)
    return json.dumps(params, ensure_ascii=False).encode(), {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
