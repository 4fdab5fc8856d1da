"""Calls to the delivery platforms' open APIs: Meituan Waimai (美团外卖) and Ele.me (饿了么); the
shop platforms' clients (Square, WooCommerce) are in `connectors.outbound_shops`, and
`clients` builds the ones served.
Each client makes one `PlatformCall`, signed in the platform's published format, and, for the
outbox's reconciliation after a crash, asks the platform whether what the call would do is
already done (`already_done`). Formats, endpoints and sources: docs/connectors.md, "Telling
the platforms".

Meituan (https://waimaiopen.meituan.com/api/v1/<path>): system parameters `app_id` and
`timestamp` (Unix seconds) with the call's own, `sig` = md5(the request URL without query +
"?" + every parameter but sig sorted by name as k=v joined by "&" + app secret), the same
scheme as its pushes (`connectors.meituan.signature`); GET with everything in the query, or
POST with the system parameters in the query and the call's in the form. Answers
`{"data": "ok"}` or `{"data": "ng", "error": {"code": 808, "msg": "..."}}`; a query answers
its `data`. Sources: Meituan's API documentation as mirrored by the Go SDK
easynet-cn/go-meituan (`utility.go` Sign; `order/order_confirm_request.go`, `order_cancel_
request.go`, `order_preparation_meal_complete_request.go`, `order_delivering_request.go`,
`order_arrived_request.go`, `order_viewstatus_request.go`; `poi/poi_open_request.go`,
`poi_close_request.go`, `poi_mget_request.go` (open_level 1 营业, 3 休息中); `error_code.go`;
`app_cancel_order_reason.go`) and, for `food/sku/sellStatus` (sell_status 1 下架, 0 上架;
food_data [{app_food_code, skus: [{sku_id}]}]), Meituan's docDetail/70 as the SDKs of
TonySteven/genesis-meituan-openapi-java-sdk (`foodSkuSellStatusUpdate`) state it.

Ele.me (POST https://open-api.shop.ele.me/api/v1/, JSON-RPC style): `{"nop": "1.0.0", "id",
"action", "token", "metas": {"app_key", "timestamp"}, "params", "signature"}`, signature =
upper(md5(action + token + the params and metas sorted by name as k=<JSON of the value>
joined by nothing + app secret)). Answers `{"id", "result", "error": null}` or with `error:
{"code": "BIZ_...", "message"}`. Sources: dllen/eleme-openapi-java-sdk (`SignatureUtil`,
`WebUtils.call`, `OrderService`, `ProductService`, `ShopService`, `OInvalidateType`,
`OShopProperty`, `OSpec.onShelf`, `OShop.isOpen`) and lwnmengjing/eleme-openapi-go-sdk
(`order.go`: `eleme.order.setOrderPrepared`, `eleme.order.getPreparedTimesByOrderIds`).

What a platform cannot be told is refused here as `Unsupported` (the outbox records it as
skipped with the reason), never guessed: Ele.me's "rider left" (`startDeliveryBySelf`) needs
the rider's phone, which the event does not carry.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from connectors.meituan import signature as meituan_signature
from events.platform_calls import CallKind, PlatformCall
from infra.settings import Settings

TIMEOUT_S = 10.0
Transport = Callable[[urllib.request.Request], tuple[int, bytes]]


class CallFailed(Exception):
    """The platform did not do what the call asked; `detail` is its answer."""

    permanent = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TransientFailure(CallFailed):
    """Worth trying again: the network, a 5xx, a rate limit, the platform's system error."""


class PermanentFailure(CallFailed):
    """Trying again will not help (a refused parameter, a wrong state, a wrong secret)."""

    permanent = True


class Unsupported(PermanentFailure):
    """The platform publishes no call for this (or it needs what the event does not carry)."""


class MissingCredentials(ValueError):
    """A platform's credentials are not set; names the variable (fail closed)."""


class PlatformClient(Protocol):
    name: str

    def send(self, call: PlatformCall, *, now: datetime) -> str:
        """Make the call; the platform's answer, or raise `CallFailed`."""

    def already_done(self, call: PlatformCall, *, now: datetime) -> bool | None:
        """Whether the platform is already where the call would take it (True), not (False),
        or cannot be asked (None). Raises `CallFailed` when the question itself fails."""


def urllib_transport(request: urllib.request.Request) -> tuple[int, bytes]:
    """One HTTP exchange: (status, body); a network failure is a `TransientFailure`."""
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - configured
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read()
        except (http.client.HTTPException, OSError):
            return exc.code, b""
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as exc:
        raise TransientFailure(f"no answer: {exc}") from exc


def _http_failure(status: int, body: bytes) -> CallFailed | None:
    if status == 429 or status >= 500:
        return TransientFailure(f"HTTP {status}: {body[:200]!r}")
    if status >= 400:
        return PermanentFailure(f"HTTP {status}: {body[:200]!r}")
    return None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise TransientFailure(f"not JSON: {body[:200]!r}") from exc


# ---------------------------------------------------------------- Meituan

# Meituan's error codes worth another try: 700 系统错误, 711 流控 (rate limited).
MEITUAN_TRANSIENT = frozenset({700, 711})
# order/viewstatus: 1 用户已提交, 2 向商家推送, 4 商家已确认, 8 已完成, 9 已取消
_CONFIRMED, _COMPLETED, _CANCELLED = 4, 8, 9
_OPEN_LEVEL = {CallKind.OPEN: 1, CallKind.CLOSE: 3}  # poi/mget open_level
# Each call: (method, path); the parameters come from `_meituan_params`.
MEITUAN_CALLS: dict[CallKind, tuple[str, str]] = {
    CallKind.CONFIRM: ("GET", "order/confirm"),
    CallKind.CANCEL: ("GET", "order/cancel"),
    CallKind.READY: ("GET", "order/preparationMealComplete"),
    CallKind.DELIVERING: ("GET", "order/delivering"),
    CallKind.DELIVERED: ("GET", "order/arrived"),
    CallKind.SOLD_OUT: ("POST", "food/sku/sellStatus"),
    CallKind.BACK_ON_SHELF: ("POST", "food/sku/sellStatus"),
    CallKind.CLOSE: ("POST", "poi/close"),
    CallKind.OPEN: ("POST", "poi/open"),
}


class MeituanClient:
    name = "meituan"

    def __init__(
        self, *, app_id: str, secret: str, api_url: str, transport: Transport = urllib_transport
    ) -> None:
        self.app_id, self.secret = app_id, secret
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.transport = transport

    @classmethod
    def from_settings(cls, settings: Settings) -> MeituanClient:
        secret = settings.meituan_secret.get_secret_value() if settings.meituan_secret else ""
        if not settings.meituan_app_id:
            raise MissingCredentials("OMS_MEITUAN_APP_ID is not set: Meituan cannot be called")
        if not secret.strip():
            raise MissingCredentials("OMS_MEITUAN_SECRET is not set: Meituan cannot be called")
        return cls(app_id=settings.meituan_app_id, secret=secret, api_url=settings.meituan_api_url)

    def send(self, call: PlatformCall, *, now: datetime) -> str:
        method, path = MEITUAN_CALLS[call.kind]
        answer = self.request(method, path, _meituan_params(call), now=now)
        return json.dumps(answer, ensure_ascii=False)

    def already_done(self, call: PlatformCall, *, now: datetime) -> bool | None:
        if call.kind in _OPEN_LEVEL:
            shops = self.request("GET", "poi/mget", {"app_poi_codes": _shop(call)}, now=now)
            level = shops[0].get("open_level") if isinstance(shops, list) and shops else None
            return level == _OPEN_LEVEL[call.kind]
        if call.kind in (CallKind.CONFIRM, CallKind.CANCEL, CallKind.DELIVERED):
            answer = self.request("GET", "order/viewstatus", {"order_id": _order(call)}, now=now)
            status = answer.get("status") if isinstance(answer, dict) else None
            if call.kind is CallKind.CONFIRM:
                return status in (_CONFIRMED, _COMPLETED, _CANCELLED)  # past confirming
            if call.kind is CallKind.CANCEL:
                return status == _CANCELLED
            return status == _COMPLETED
        return None  # 出餐, 配送中 and sell status: no published query of their state

    def request(self, method: str, path: str, params: Mapping[str, Any], *, now: datetime) -> Any:
        """One signed request; the answer's `data`, or `CallFailed`."""
        url = self.api_url + path
        system = {"app_id": self.app_id, "timestamp": str(int(now.timestamp()))}
        texts = {
            k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for k, v in params.items()
        }
        sig = meituan_signature({**texts, **system}, secret=self.secret, url=url)
        if method == "GET":
            query = urllib.parse.urlencode({**texts, **system, "sig": sig})
            request = urllib.request.Request(f"{url}?{query}", method="GET")
        else:
            query = urllib.parse.urlencode({**system, "sig": sig})
            request = urllib.request.Request(
                f"{url}?{query}",
                data=urllib.parse.urlencode(texts).encode(),
                method="POST",
                headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
            )
        status, body = self.transport(request)
        if (failure := _http_failure(status, body)) is not None:
            raise failure
        answer = _json(body)
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:
            code = error.get("code")
            detail = f"Meituan {code}: {error.get('msg', '')}"
            raise (
                TransientFailure(detail) if code in MEITUAN_TRANSIENT else PermanentFailure(detail)
            )
        if not isinstance(answer, dict) or "data" not in answer:
            raise TransientFailure(f"no data in the answer: {body[:200]!r}")
        return answer["data"]


def _meituan_params(call: PlatformCall) -> dict[str, Any]:
    if call.kind is CallKind.CANCEL:
        return {
            "order_id": _order(call),
            "reason": (call.reason or "商家取消")[:100],
            "reason_code": call.reason_code or "2007",
        }
    if call.kind in (CallKind.SOLD_OUT, CallKind.BACK_ON_SHELF):
        sku = _sku(call)
        return {
            "app_poi_code": _shop(call),
            "food_data": [{"app_food_code": sku, "skus": [{"sku_id": sku}]}],
            "sell_status": "1" if call.kind is CallKind.SOLD_OUT else "0",  # 1 下架, 0 上架
        }
    if call.kind in (CallKind.CLOSE, CallKind.OPEN):
        return {"app_poi_code": _shop(call)}
    return {"order_id": _order(call)}


# ---------------------------------------------------------------- Ele.me

# Ele.me's error codes worth another try; BIZ_* and the others are answers about the call.
ELEME_TRANSIENT = frozenset({"SERVER_ERROR", "EXCEED_LIMIT"})
ELEME_ACTIONS: dict[CallKind, str] = {
    CallKind.CONFIRM: "eleme.order.confirmOrderLite",
    CallKind.CANCEL: "eleme.order.cancelOrderLite",
    CallKind.READY: "eleme.order.setOrderPrepared",
    CallKind.DELIVERED: "eleme.order.receivedOrderLite",
    CallKind.SOLD_OUT: "eleme.product.item.batchOffShelf",
    CallKind.BACK_ON_SHELF: "eleme.product.item.batchOnShelf",
    CallKind.CLOSE: "eleme.shop.updateShop",
    CallKind.OPEN: "eleme.shop.updateShop",
}
# eleme.order.getOrder status (OOrderStatus) once the call is moot or done
_ELEME_PAST = {
    CallKind.CONFIRM: {"valid", "settled", "invalid", "refunding"},
    CallKind.CANCEL: {"invalid"},
    CallKind.DELIVERED: {"settled"},
}


def eleme_signature(
    *, action: str, token: str, params: Mapping[str, Any], metas: Mapping[str, Any], secret: str
) -> str:
    """Ele.me's request signature: upper md5 of action + token + sorted k=JSON(v) + secret."""
    merged = {**params, **metas}
    pairs = "".join(
        f"{k}={json.dumps(merged[k], ensure_ascii=False, separators=(',', ':'))}"
        for k in sorted(merged)
    )
    return hashlib.md5(f"{action}{token}{pairs}{secret}".encode()).hexdigest().upper()


class ElemeClient:
    name = "eleme"

    def __init__(
        self,
        *,
        app_key: str,
        secret: str,
        token: str,
        api_url: str,
        transport: Transport = urllib_transport,
    ) -> None:
        self.app_key, self.secret, self.token = app_key, secret, token
        self.api_url, self.transport = api_url, transport

    @classmethod
    def from_settings(cls, settings: Settings) -> ElemeClient:
        def secret(value: Any, variable: str) -> str:
            text = value.get_secret_value() if value is not None else ""
            if not text.strip():
                raise MissingCredentials(f"{variable} is not set: Ele.me cannot be called")
            return str(text)

        if not settings.eleme_app_key:
            raise MissingCredentials("OMS_ELEME_APP_KEY is not set: Ele.me cannot be called")
        return cls(
            app_key=settings.eleme_app_key,
            secret=secret(settings.eleme_secret, "OMS_ELEME_SECRET"),
            token=secret(settings.eleme_token, "OMS_ELEME_TOKEN"),
            api_url=settings.eleme_api_url,
        )

    def send(self, call: PlatformCall, *, now: datetime) -> str:
        if call.kind not in ELEME_ACTIONS:
            raise Unsupported(
                f"Ele.me has no call for {call.kind.value} without the rider's phone "
                "(eleme.order.startDeliveryBySelf)"
            )
        action = ELEME_ACTIONS[call.kind]
        if call.kind in (CallKind.SOLD_OUT, CallKind.BACK_ON_SHELF):
            item = self._item(call, now=now)
            specs = [spec["specId"] for spec in item.get("specs", []) if spec.get("specId")]
            params: dict[str, Any] = {"specIds": [{"itemId": item["id"], "itemSpecIds": specs}]}
        elif call.kind in (CallKind.CLOSE, CallKind.OPEN):
            is_open = 1 if call.kind is CallKind.OPEN else 0
            params = {"shopId": _numeric_shop(call), "properties": {"isOpen": is_open}}
        elif call.kind is CallKind.CANCEL:
            params = {
                "orderId": _order(call),
                "type": call.reason_code or "others",
                "remark": call.reason or "",
            }
        else:
            params = {"orderId": _order(call)}
        result = self.request(action, params, now=now, request_id=call.idempotency_key)
        return json.dumps(result, ensure_ascii=False)

    def already_done(self, call: PlatformCall, *, now: datetime) -> bool | None:
        key = call.idempotency_key
        if call.kind in _ELEME_PAST:
            order = self.request(
                "eleme.order.getOrder", {"orderId": _order(call)}, now=now, request_id=key
            )
            return isinstance(order, dict) and order.get("status") in _ELEME_PAST[call.kind]
        if call.kind is CallKind.READY:
            prepared = self.request(
                "eleme.order.getPreparedTimesByOrderIds",
                {"orderIds": [_order(call)]},
                now=now,
                request_id=key,
            )
            return isinstance(prepared, dict) and _order(call) in prepared
        if call.kind in (CallKind.SOLD_OUT, CallKind.BACK_ON_SHELF):
            item = self._item(call, now=now)
            on_shelf = 1 if call.kind is CallKind.BACK_ON_SHELF else 0
            return all(spec.get("onShelf") == on_shelf for spec in item.get("specs", []))
        if call.kind in (CallKind.CLOSE, CallKind.OPEN):
            shop = self.request(
                "eleme.shop.getShop", {"shopId": _numeric_shop(call)}, now=now, request_id=key
            )
            return isinstance(shop, dict) and shop.get("isOpen") == (
                1 if call.kind is CallKind.OPEN else 0
            )
        return None

    def _item(self, call: PlatformCall, *, now: datetime) -> dict[str, Any]:
        """The dish whose extendCode is our sku (Ele.me's ids are its own)."""
        item = self.request(
            "eleme.product.item.getItemByShopIdAndExtendCode",
            {"shopId": _numeric_shop(call), "extendCode": _sku(call)},
            now=now,
            request_id=call.idempotency_key,
        )
        if not isinstance(item, dict) or "id" not in item:
            raise PermanentFailure(f"Ele.me has no dish with extendCode {call.sku!r}")
        return item

    def request(
        self, action: str, params: Mapping[str, Any], *, now: datetime, request_id: str
    ) -> Any:
        """One signed JSON-RPC request; the answer's `result`, or `CallFailed`."""
        metas = {"app_key": self.app_key, "timestamp": int(now.timestamp())}
        body = {
            "nop": "1.0.0",
            "id": request_id.replace("-", ""),
            "action": action,
            "token": self.token,
            "metas": metas,
            "params": dict(params),
            "signature": eleme_signature(
                action=action, token=self.token, params=params, metas=metas, secret=self.secret
            ),
        }
        request = urllib.request.Request(
            self.api_url,
            data=json.dumps(body, ensure_ascii=False).encode(),
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        status, raw = self.transport(request)
        if (failure := _http_failure(status, raw)) is not None:
            raise failure
        answer = _json(raw)
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:
            code = str(error.get("code", ""))
            detail = f"Ele.me {code}: {error.get('message', '')}"
            raise TransientFailure(detail) if code in ELEME_TRANSIENT else PermanentFailure(detail)
        if not isinstance(answer, dict) or "result" not in answer:
            raise TransientFailure(f"no result in the answer: {raw[:200]!r}")
        return answer["result"]


# ---------------------------------------------------------------- the ids a call needs


def _order(call: PlatformCall) -> str:
    if not call.platform_order_id:
        raise PermanentFailure(f"{call.kind.value} names no {call.platform} order")
    return call.platform_order_id


def _shop(call: PlatformCall) -> str:
    if not call.shop_id:
        raise PermanentFailure(
            f"location {call.location!r} has no {call.platform} store id: add the alias "
            f"'{call.platform}:<id>' to it in the catalogue"
        )
    return call.shop_id


def _numeric_shop(call: PlatformCall) -> int:
    shop = _shop(call)
    if not shop.isdigit():
        raise PermanentFailure(
            f"Ele.me's shopId is a number, not {shop!r} (location {call.location!r})"
        )
    return int(shop)


def _sku(call: PlatformCall) -> str:
    if not call.sku:
        raise PermanentFailure(f"{call.kind.value} names no dish")
    return call.sku


def clients(settings: Settings, platforms: list[str] | None = None) -> dict[str, PlatformClient]:
    """A client per platform served (`OMS_OUTBOX_PLATFORMS`); `MissingCredentials` names the
    first variable that is not set. A platform not named there is not served: its orders get
    no calls, whatever credentials are set."""
    from connectors.outbound_shops import SquareClient, WooCommerceClient  # (it imports this)

    makers: dict[str, Callable[[Settings], PlatformClient]] = {
        "meituan": MeituanClient.from_settings,
        "eleme": ElemeClient.from_settings,
        "square": SquareClient.from_settings,
        "woocommerce": WooCommerceClient.from_settings,
    }
    served = platforms if platforms is not None else settings.outbox_platforms
    unknown = [p for p in served if p not in makers]
    if unknown:
        raise MissingCredentials(
            f"OMS_OUTBOX_PLATFORMS names {', '.join(unknown)}: only {', '.join(makers)} are served"
        )
    return {platform: makers[platform](settings) for platform in served}
