"""Meituan Waimai (美团外卖) pushes about an order sent before: cancellations, refund requests and
the rider's status, each to its own callback URL (`MeituanConnector.updates`).

Each is form parameters like the order push (what `POST /webhooks/meituan/{kind}` reads as one
flat JSON object of strings), signed the same way: `sig` = md5(callback URL + "?" + the other
parameters sorted by name + app secret), the URL being the one configured for that callback in
Meituan's console, `OMS_MEITUAN_PUSH_URL` + "/" + kind. `timestamp` is signed and held to the
webhooks' five minutes.

- `cancel` — 推送已取消订单: `order_id`, `reason_code`, `reason`. Codes 10xx are the system's
  (1001 超时未确认, 1002 未支付), 11xx the customer's (1101 支付中取消, 1102 商家确认前取消,
  1103 用户退款取消), 12xx Meituan's service (客服), 1301 other, 20xx the merchant's own
  (2001-2016, e.g. 2009 商品已售完); kept as `meituan:<code>` with the text.
- `refund` — 推送全额退款信息: `order_id`, `notify_type` (apply 发起退款, agree 确认退款, reject
  驳回退款, cancelRefund 用户取消退款申请, cancelRefundComplaint 取消退款申诉), `refund_id`,
  `ctime`, `reason`, `res_type` (0 未处理 ... 2 商家同意, 4 客服同意, 5 超时自动同意, 7/8 用户取消),
  `is_appeal` (1: the customer appealed the merchant's refusal; Meituan's service decides).
- `partial-refund` — 推送部分退款信息: the same, with `notify_type` part (the request), agree or
  reject, `money` (yuan) and `food` (a JSON list of the dishes: `app_food_code`, `sku_id`,
  `food_name`, `count`, `refund_price`).
- `logistics` — 推送美团配送状态: `order_id`, `logistics_status` (0 配送单发往配送, 5 已分配骑手
  待接单, 10 骑手已接单, 15 骑手已到店, 20 骑手已取餐, 40 骑手已送达, 100 配送单已取消), `time`
  (Unix seconds), `dispatcher_name`, `dispatcher_mobile` (the rider: not kept).

Sources (Meituan's own pages are behind its developer login): the field lists of the four pushes
as integrators model them (e.g. the C# `OrderCanceled` push model with notify_type, refund_id,
ctime, res_type and is_appeal; a Java push model with reason_code, reason, notify_type, time,
dispatcher_name, dispatcher_mobile and logistics_status), and the code tables as mirrored from
the developer documentation at support.hexcloud.cn/topic/2195 (美团外卖补充相关字段说明: 取消原因
code, 配送状态 logisticsStatus, 退款 notifyType). The dish fields of `food` are taken from
integrators' code, not checked against Meituan's page: a dish without them is still read, by
name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Json

from connectors.base import (
    Amount,
    ChannelPayload,
    Connector,
    PayloadRejected,
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
UPDATES = ("cancel", "refund", "partial-refund", "logistics")
# logistics_status → CourierStatusUpdated.status
COURIER = {
    0: "dispatching",
    5: "dispatching",
    10: "assigned",
    15: "arrived",
    20: "picked_up",
    40: "delivered",
    100: "cancelled",
}
# notify_type → the request (None) or its outcome
REFUND_STEPS: dict[str, str | None] = {
    "apply": None,
    "part": None,
    "agree": "agreed",
    "reject": "rejected",
    "cancelRefund": "withdrawn",
    "cancelRefundComplaint": "withdrawn",
}


class _Push(ChannelPayload):
    order_id: int | str
    timestamp: int | str


class _Cancellation(_Push):
    reason_code: int | str = ""
    reason: str = ""


class _Dish(ChannelPayload):
    app_food_code: str = ""
    sku_id: str = ""
    food_name: str = ""
    count: int = 1
    refund_price: Amount | None = None


class _Refund(_Push):
    notify_type: str
    refund_id: int | str = ""
    ctime: int | str = ""
    reason: str = ""
    is_appeal: int | str = 0
    money: Amount | None = None
    food: Json[list[_Dish]] = []


class _Logistics(_Push):
    logistics_status: int
    time: int | str = ""


def parse_update(
    connector: Connector, raw: bytes, *, kind: str | None, received_at: datetime
) -> PlatformUpdate | None:
    """The event a Meituan push to the `kind` callback reports; None at the order URL."""
    if kind is None:
        return None
    document = connector.load_json(raw)
    if kind == "cancel":
        return _cancelled(connector, connector.validate(_Cancellation, document), received_at)
    if kind in ("refund", "partial-refund"):
        refund = connector.validate(_Refund, document)
        return _refund(connector, refund, partial=kind == "partial-refund", at=received_at)
    if kind == "logistics":
        return _courier(connector, connector.validate(_Logistics, document), received_at)
    raise PayloadRejected(f"{kind!r} is not one of {', '.join(UPDATES)}")


def cancelled_by(code: str) -> CancelledBy:
    """Who cancelled, by the code's family (10xx system, 11xx customer, 12xx/13xx Meituan's
    service, 20xx the merchant on Meituan's side)."""
    family = code[:2]
    return {
        "10": CancelledBy.CHANNEL,
        "11": CancelledBy.CUSTOMER,
        "20": CancelledBy.MERCHANT,
    }.get(family, CancelledBy.CHANNEL)


def _cancelled(connector: Connector, push: _Cancellation, at: datetime) -> PlatformUpdate:
    code = str(push.reason_code).strip()
    return connector.update_event(
        OrderCancelled,
        external_id=str(push.order_id),
        identity=(),  # an order is cancelled once, however often it is pushed
        occurred_at=from_epoch(push.timestamp, field="timestamp"),
        received_at=at,
        cancelled_by=cancelled_by(code),
        reason_code=f"meituan:{code}" if code else "meituan",
        reason=push.reason or "cancelled on Meituan",
    )


def _refund(connector: Connector, push: _Refund, *, partial: bool, at: datetime) -> PlatformUpdate:
    if push.notify_type not in REFUND_STEPS:
        raise PayloadRejected(
            f"{push.notify_type!r} is not one of {', '.join(REFUND_STEPS)}", field="notify_type"
        )
    outcome = REFUND_STEPS[push.notify_type]
    # A request without Meituan's id is named by when it was made (its steps share `ctime`).
    refund_id = str(push.refund_id) if push.refund_id else f"{kind_of(partial)}-{push.ctime}"
    amount = (
        minor_units(push.money, currency=CURRENCY, field="money")
        if push.money is not None
        else None
    )
    appeal = str(push.is_appeal) == "1"
    when = from_epoch(push.timestamp, field="timestamp")
    common: dict[str, Any] = {
        "external_id": str(push.order_id),
        "occurred_at": when,
        "received_at": at,
        "refund_id": refund_id,
        "partial": partial,
        "amount": amount,
        "currency": CURRENCY if amount is not None else None,
    }
    if outcome is None:
        lines = [
            ReturnLine(
                sku=dish.sku_id or dish.app_food_code or dish.food_name or f"food.{n}",
                quantity=dish.count,
                reason=None,
            )
            for n, dish in enumerate(push.food)
        ]
        return connector.update_event(
            RefundRequested,
            identity=(refund_id, "apply", "appeal" if appeal else ""),
            kind="refund",
            lines=lines,
            reason=push.reason or "refund requested on Meituan",
            appeal=appeal,
            **common,
        )
    return connector.update_event(
        RefundRequestClosed,
        identity=(refund_id, push.notify_type),
        outcome=outcome,
        reason=push.reason,
        **common,
    )


def _courier(connector: Connector, push: _Logistics, at: datetime) -> PlatformUpdate:
    status = COURIER.get(push.logistics_status)
    if status is None:
        raise PayloadRejected(
            f"{push.logistics_status} is not a documented status ({', '.join(map(str, COURIER))})",
            field="logistics_status",
        )
    when = push.time or push.timestamp
    return connector.update_event(
        CourierStatusUpdated,
        external_id=str(push.order_id),
        identity=(str(push.logistics_status), str(when)),
        occurred_at=from_epoch(when, field="time"),
        received_at=at,
        status=status,
        platform_status=f"meituan:{push.logistics_status}",
    )


def kind_of(partial: bool) -> str:
    return "part" if partial else "whole"
