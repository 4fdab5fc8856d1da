"""Ele.me (饿了么) open-platform messages about an order sent before: cancellations, cancel and
refund requests, and the delivery's status. Ele.me pushes every message to the one callback URL
in the signed envelope of connectors/eleme.py; its `type` says what the `message` (a JSON
string) is:

- 14 订单被取消 (before the merchant accepted it), 15 订单置为无效 (after), 17 订单强制无效 (the
  merchant cancelled an accepted order, or the customer within a minute): `OrderCancelled`,
  kept as `eleme:<type>`. Message: `orderId`, `state`, `shopId`, `updateTime` (Unix seconds),
  `role`.
- 取消单 (a cancel request, before delivery) 20 用户申请取消单, 21 用户取消取消单申请, 22 商户拒绝
  取消单, 23 商户同意取消单, 24 用户申请仲裁取消单, 25 客服仲裁取消单申请有效, 26 ... 无效; and
  退单 (a refund request, after) 30 用户申请退单, 31 用户取消退单, 32 商户拒绝退单, 33 商户同意退单,
  34 用户申请仲裁, 35 客服仲裁退单有效, 36 ... 无效: `RefundRequested` (20, 24, 30, 34; kind
  cancel or refund) or `RefundRequestClosed` (agreed 23, 25, 33, 35; rejected 22, 26, 32, 36;
  withdrawn 21, 31). Message: `orderId`, `refundStatus`, `reason`, `shopId`, `refundType`
  (normal, or part: some items), `totalPrice` (yuan, of a partial refund), `goodsList` (`name`,
  `quantity`, `price`), `updateTime`.
- 运单追踪 51 待分配配送商, 52 待分配配送员 (dispatching), 53 配送员取餐中 (assigned),
  54 配送员已到店 (arrived), 55 配送员配送中 (picked up), 56 配送成功 (delivered),
  57-59 配送取消 (cancelled), 60-70 配送失败 (failed): `CourierStatusUpdated`. Message:
  `orderId`, `state`, `subState`, `name`, `phone` (the rider: not kept), `updateAt` (Unix
  milliseconds), `shopId`.

Any other type (10 is the order itself: `ElemeConnector.parse`) is not an update.

Sources: the message type table of the open platform's 订单消息推送 documentation (as mirrored in
integrators' callback models, e.g. hiylo's `CallbackVO` listing types 10-105, and the
`ElemeDeliveryStatusModel` of type 55 with orderId, shopId, state, subState, name, phone,
updateAt). The refund message's `refundType`/`goodsList`/`totalPrice` are as integrators read
them, not checked against Ele.me's page: a message without them is read as a whole-order request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Json

from connectors.base import (
    Amount,
    ChannelPayload,
    Connector,
    PlatformUpdate,
    from_epoch,
    minor_units,
)
from events.models import (
    CancelledBy,
    CourierStatusUpdated,
    OrderCancelled,
    RefundRequestClosed,
    RefundRequested,
    ReturnLine,
)

CURRENCY = "CNY"
CANCELLED = {14: "订单被取消 (接单前)", 15: "订单置为无效 (接单后)", 17: "订单强制无效"}
# type → (kind of request, outcome; None: the request itself, with `appeal` for 24 and 34)
REFUND_STEPS: dict[int, tuple[str, str | None]] = {
    20: ("cancel", None),
    21: ("cancel", "withdrawn"),
    22: ("cancel", "rejected"),
    23: ("cancel", "agreed"),
    24: ("cancel", None),
    25: ("cancel", "agreed"),
    26: ("cancel", "rejected"),
    30: ("refund", None),
    31: ("refund", "withdrawn"),
    32: ("refund", "rejected"),
    33: ("refund", "agreed"),
    34: ("refund", None),
    35: ("refund", "agreed"),
    36: ("refund", "rejected"),
}
APPEALS = (24, 34)
COURIER = {
    51: "dispatching",
    52: "dispatching",
    53: "assigned",
    54: "arrived",
    55: "picked_up",
    56: "delivered",
    57: "cancelled",
    58: "cancelled",
    59: "cancelled",
    **{code: "failed" for code in range(60, 71)},
}


class _Kind(ChannelPayload):
    type: int | str
    timestamp: int | str = 0


class _Goods(ChannelPayload):
    name: str = ""
    quantity: int = 1
    price: Amount | None = None


class _StatusMessage(ChannelPayload):
    orderId: int | str
    updateTime: int | None = None


class _RefundMessage(_StatusMessage):
    reason: str | None = None
    refundType: str | None = None
    totalPrice: Amount | None = None
    goodsList: list[_Goods] | None = None


class _DeliveryMessage(ChannelPayload):
    orderId: int | str
    state: str | None = None
    subState: str | None = None
    updateAt: int | None = None


class _Cancellation(_Kind):
    message: Json[_StatusMessage]


class _Refund(_Kind):
    message: Json[_RefundMessage]


class _Delivery(_Kind):
    message: Json[_DeliveryMessage]


def message_type(connector: Connector, raw: bytes) -> int | None:
    """The envelope's `type`, or None where it is not a whole number."""
    envelope = connector.load_json(raw)
    kind = envelope.get("type") if isinstance(envelope, dict) else None
    if isinstance(kind, bool):
        return None
    if isinstance(kind, int):
        return kind
    return int(kind) if isinstance(kind, str) and kind.isascii() and kind.isdigit() else None


def parse_update(
    connector: Connector, raw: bytes, *, received_at: datetime
) -> PlatformUpdate | None:
    """The event an Ele.me message reports; None for a message that is not an update (10, the
    order, and the types this does not read)."""
    kind = message_type(connector, raw)
    if kind in CANCELLED:
        push = connector.validate(_Cancellation, connector.load_json(raw))
        return connector.update_event(
            OrderCancelled,
            external_id=str(push.message.orderId),
            identity=(),  # an order is cancelled once, whichever message says so
            occurred_at=_when(push.message.updateTime, push.timestamp, "message.updateTime"),
            received_at=received_at,
            cancelled_by=CancelledBy.CHANNEL,
            reason_code=f"eleme:{kind}",
            reason=CANCELLED[kind],
        )
    if kind in REFUND_STEPS:
        return _refund(connector, raw, kind, received_at)
    if kind in COURIER:
        push_d = connector.validate(_Delivery, connector.load_json(raw))
        at = push_d.message.updateAt or push_d.timestamp
        return connector.update_event(
            CourierStatusUpdated,
            external_id=str(push_d.message.orderId),
            identity=(str(kind), str(at)),
            occurred_at=_when(at, push_d.timestamp, "message.updateAt"),
            received_at=received_at,
            status=COURIER[kind],
            platform_status=f"eleme:{kind}",
        )
    return None


def _refund(connector: Connector, raw: bytes, kind: int, at: datetime) -> PlatformUpdate:
    push = connector.validate(_Refund, connector.load_json(raw))
    message = push.message
    request_kind, outcome = REFUND_STEPS[kind]
    partial = message.refundType == "part"
    amount = (
        minor_units(message.totalPrice, currency=CURRENCY, field="message.totalPrice")
        if partial and message.totalPrice is not None
        else None
    )
    common: dict[str, Any] = {
        "external_id": str(message.orderId),
        "occurred_at": _when(message.updateTime, push.timestamp, "message.updateTime"),
        "received_at": at,
        # Ele.me names no request id: one cancel request and one refund request per order.
        "refund_id": request_kind,
        "partial": partial,
        "amount": amount,
        "currency": CURRENCY if amount is not None else None,
    }
    if outcome is None:
        return connector.update_event(
            RefundRequested,
            identity=(request_kind, str(kind), str(message.updateTime or "")),
            kind=request_kind,
            lines=[
                ReturnLine(sku=goods.name or f"goods.{n}", quantity=goods.quantity)
                for n, goods in enumerate(message.goodsList or [])
            ]
            if partial
            else [],
            reason=message.reason or f"{request_kind} requested on Ele.me",
            appeal=kind in APPEALS,
            **common,
        )
    return connector.update_event(
        RefundRequestClosed,
        identity=(request_kind, str(kind), str(message.updateTime or "")),
        outcome=outcome,
        reason=message.reason or "",
        **common,
    )


def _when(seconds: int | str | None, envelope_ms: int | str, field: str) -> datetime:
    """The message's own time when it has one, else when Ele.me sent it."""
    if seconds:
        return from_epoch(seconds, field=field)
    return from_epoch(envelope_ms, field="timestamp")
