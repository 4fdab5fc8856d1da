"""JD Logistics (京东物流) through its open platform LOP (京东物流开放平台, cloud.jdl.com), express
scheme "ECAP" (京东快递 B2C): quote, create, cancel and track a parcel, and read the trace JD
pushes to us.

**Request format** (what JD's own SDKs and samples send; sources below). Every API is a path
(`/ecap/v1/orders/create`, ...) called with `POST {api_url}{path}?<system parameters>`:
- query: `LOP-DN` = "ECAP" (the scheme's domain), `app_key`, `access_token`, `timestamp`
  ("yyyy-MM-dd HH:mm:ss" in the zone of the `lop-tz` header; JD's default is GMT+8, which we
  send as `lop-tz: 8`), `v` = "2.0", `algorithm` = "md5-salt" and `sign`;
- body: the business parameters as a JSON *array* holding the one request object
  (`[{"orderOrigin": 1, ...}]`), `Content-Type: application/json;charset=utf-8`;
- `sign` = lower-hex md5(appSecret + "access_token" + token + "app_key" + appKey + "method" +
  path + "param_json" + <the body, byte for byte> + "timestamp" + timestamp + "v" + "2.0" +
  appSecret) (`lop_sign`). JD's Java sample prints the same digest in upper case, its Python,
  PHP and C# ones in lower case: the gateway takes either.

**Answers.** The gateway refuses the system parameters (key, token, sign, timestamp, domain)
with `{"error_response": {"code", "en_desc", "zh_desc"}}`; the API answers `{"code": 0,
"msg": "成功", "success": true, "data": {...}, "subCode", "subMsg", "requestId"}`, another
`code` when it refuses the request. Here: a gateway refusal is `CarrierMisconfigured` (it
judges only what is ours: credentials, clock, signature), unless it says it is throttled or
busy (`TransientFailure`, as are HTTP 429 and 5xx); an API refusal is `JdRefused` (a
`PermanentFailure` with JD's code and message), `TransientFailure` where JD's message says its
system failed, `CarrierMisconfigured` where it refuses our customer code. JD's messages can
echo what was sent: digit runs of phone length are blanked before they reach an exception.

**The calls** (orderOrigin 1 = B2C, customerCode = our 商家编码, on every one):
- quote: `/ecap/v1/orders/precheck` with senderContact / receiverContact (`name`, `mobile`,
  `fullAddress`), `cargoes` and `productsReq.productCode`; one call per product, as JD only
  prices the product asked. Answer `data.productInfos[]`: `productCode`, `productName`,
  `freightPre` (yuan, a JSON number: read as Decimal, rounded to fen) and
  `deliveryPromiseTime` (epoch ms). Products: `ed-m-0001` 京东标快, `ed-m-0002` 京东特快.
- create: `/ecap/v1/orders/create` with `orderId` = our reference (商家订单号), `settleType`
  3 (月结), the contacts, `cargoes` (weight kg, volume cm³, length/width/`hight` cm: JD's
  spelling), `productsReq`, and `addedProducts` for 代收货款 (`ed-a-0009`, attribute
  `shouldPayMoney` in yuan) and 保价 (`ed-a-0002`, `guaranteeMoney`). Answer
  `data.waybillCode` (the tracking number) and `data.orderCode` (JD's order). An `orderId` JD
  already has is answered with code 0, `subCode` "0_0001" 商家订单号已被使用 and the first
  order's waybill: so one reference is one shipment. Where such an answer (or a refusal naming
  the order number as used) carries no waybill, it is looked up with `/ecap/v1/orders/query`
  by `customerOrderId`.
- cancel: `/ecap/v1/orders/cancel` with `waybillCode`, `cancelReason` (1-30 characters),
  `cancelReasonCode` "1" (商家发起), `cancelType` 1 (B2C). Before pick-up it cancels; after,
  JD starts an interception (拦截).
- track: `/ecap/v1/orders/trace/query` with `waybillCode`; answer `data.traceDetails[]`.
- push (物流轨迹推送, after `/ecap/v1/orders/trace/subscribe`): one JSON object per node, the
  same fields as a trace detail: `waybillCode`, `orderId`, `operationTitle`,
  `operationRemark`, `operationTime` (GMT+8), `category`, `categoryName`, `state`,
  `scanType`, `operateSite`.

**Statuses.** `category` is JD's first-level node ("与运单的物流信息中的环节 category 一致"):
390 揽收中 (a courier is assigned: not picked up), 420 已揽收, 430 运输中 (分拣, 封车, 站点收货),
440 派送中, 510 妥投. Where the category is another one, `categoryName` and `operationTitle`
decide: 取消 cancelled, 拒收/退回/返回 returned to sender, 异常/滞留 an exception, 签收/妥投
delivered, 派送/配送 out for delivery, 揽收 picked up, anything else in transit.

**What we do not offer.** Only ambient parcels: JD's cold chain (生鲜 `LL-HD-M`, `LL-SD-M`)
needs a temperature layer whose parameter we have not verified, so chilled and frozen are
neither quoted nor created. Labels are printed through JD's cloud print (云打印), not returned
by create: `Shipment.label` is None.

Sources: JD's LOP SDK for PHP as published (gangaoh/lop-opensdk-php: `Filters/IsvFilter.php`
the sign content and query, `Filters/Utils.php` md5-salt / HMac*, `Filters/
ErrorResponseFilter.php` the gateway's error_response, README for api.jdl.com); JD's Python and
Java call samples (the `lop-tz` and `User-Agent: lop-http/...` headers, "删去后默认为东八区",
the body as an array, uat-api.jdl.com); a test report of the UAT environment (precheck's
answer with productInfos, freightPre, deliveryPromiseTime, ed-a-0009 shouldPayMoney and
ed-a-0002 guaranteeMoney; create's answer with waybillCode, orderCode and subCode 0_0001
商家订单号已被使用; the pushed nodes with categories 390/420/430/440/510); the API list with
JD's doc pages (cloud.jdl.com/#/open-business-document/api-doc/267/842 precheck, 841 create,
846 cancel, 1039 trace query, 1038 trace subscribe); kfx2007's JD client (cancel's fields).

Not verified, and so stated: how JD signs its pushes (we read `app_key`, `timestamp` and
`sign` from the push's headers, `sign` = `push_sign`: the request's content without the
token and path, keyed with our app secret; a push older than ten minutes is refused);
`/ecap/v1/orders/query` and its `customerOrderId`; the numbers of JD's error codes (so they
are told apart by the gateway/API layer and JD's message, not by number); the field names of a
trace-query detail beyond those the push shows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, ClassVar

from pydantic import SecretStr

from connectors.carriers.base import (
    CarrierMisconfigured,
    Parcel,
    Party,
    PushRefused,
    Quote,
    Shipment,
    ShipmentRequest,
    Temperature,
    TrackingEvent,
    TrackingStatus,
)
from connectors.outbound import PermanentFailure, TransientFailure, Transport, urllib_transport

__all__ = [
    "PRODUCTION_URL",
    "SERVICES",
    "UAT_URL",
    "JdLogistics",
    "JdRefused",
    "lop_sign",
    "push_sign",
    "tracking_status",
]

PRODUCTION_URL = "https://api.jdl.com"
UAT_URL = "https://uat-api.jdl.com"
DOMAIN = "ECAP"
VERSION = "2.0"
ALGORITHM = "md5-salt"
CHINA = timezone(timedelta(hours=8), "GMT+8")
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
PUSH_WINDOW = timedelta(minutes=10)

PRECHECK = "/ecap/v1/orders/precheck"
CREATE = "/ecap/v1/orders/create"
CANCEL = "/ecap/v1/orders/cancel"
TRACE = "/ecap/v1/orders/trace/query"
ORDER_QUERY = "/ecap/v1/orders/query"

SERVICES: dict[str, str] = {"ed-m-0001": "京东标快", "ed-m-0002": "京东特快"}
ORDER_ORIGIN_B2C = 1
SETTLE_MONTHLY = 3  # 月结
COD = "ed-a-0009"  # 代收货款-快递, attribute shouldPayMoney (元)
INSURANCE = "ed-a-0002"  # 普通保价-快递, attribute guaranteeMoney (元)
ORDER_ID_USED = "0_0001"  # subCode: 商家订单号已被使用 (answered with the first order)
CANCEL_REASON = "商家取消订单"

# JD's first-level trace categories seen in its pushes.
CATEGORIES: dict[int, TrackingStatus] = {
    390: TrackingStatus.CREATED,  # 揽收中: a courier is assigned, nothing picked up yet
    420: TrackingStatus.PICKED_UP,  # 已揽收
    430: TrackingStatus.IN_TRANSIT,  # 运输中
    440: TrackingStatus.OUT_FOR_DELIVERY,  # 派送中
    510: TrackingStatus.DELIVERED,  # 妥投
}
# Where the category is not one of those: JD's words, first match wins.
_WORDS: tuple[tuple[tuple[str, ...], TrackingStatus], ...] = (
    (("取消",), TrackingStatus.CANCELLED),
    (("拒收", "退回", "返回", "退货"), TrackingStatus.RETURNED_TO_SENDER),
    (("异常", "滞留", "破损", "丢失"), TrackingStatus.EXCEPTION),
    (("妥投", "签收"), TrackingStatus.DELIVERED),
    (("派送", "派件", "配送"), TrackingStatus.OUT_FOR_DELIVERY),
    (("揽收中", "揽收任务", "下单", "接单"), TrackingStatus.CREATED),
    (("揽收",), TrackingStatus.PICKED_UP),
)
_OVERRIDING = {
    TrackingStatus.CANCELLED,
    TrackingStatus.RETURNED_TO_SENDER,
    TrackingStatus.EXCEPTION,
}
# What in an answer says "try again" or "our account": JD publishes no numbers we could verify.
_GATEWAY_TRANSIENT = ("limit", "busy", "timeout", "time out", "unavailable", "system error")
_API_TRANSIENT = ("系统异常", "系统繁忙", "系统错误", "稍后", "超时", "限流")
_API_OURS = ("客户编码", "商家编码", "customercode", "无权限", "未授权")
_USED_ORDER_ID = ("已被使用", "重复", "已存在")
_PHONE_LIKE = re.compile(r"\d{7,}")


def lop_sign(
    *,
    app_secret: str,
    access_token: str,
    app_key: str,
    method: str,
    param_json: str,
    timestamp: str,
) -> str:
    """LOP's md5-salt request signature: lower-hex md5 of the secret, the system parameters
    name+value in name order (`method` is the API path, `param_json` the body), the secret."""
    content = (
        f"{app_secret}access_token{access_token}app_key{app_key}method{method}"
        f"param_json{param_json}timestamp{timestamp}v{VERSION}{app_secret}"
    )
    return hashlib.md5(content.encode()).hexdigest()


def push_sign(*, app_secret: str, app_key: str, body: str, timestamp: str) -> str:
    """The signature a trace push is checked with (unverified, see the module docstring)."""
    content = (
        f"{app_secret}app_key{app_key}param_json{body}timestamp{timestamp}v{VERSION}{app_secret}"
    )
    return hashlib.md5(content.encode()).hexdigest()


def tracking_status(
    *, category: object, category_name: str = "", title: str = ""
) -> TrackingStatus:
    """JD's node normalised: cancel, return and exception words first (they can come under any
    category), then the category, then the words of its name and title, else in transit."""
    text = f"{category_name} {title}"
    by_words = next((status for words, status in _WORDS if any(w in text for w in words)), None)
    if by_words in _OVERRIDING:
        return by_words
    try:
        by_category = CATEGORIES.get(int(str(category)))
    except ValueError:
        by_category = None
    return by_category or by_words or TrackingStatus.IN_TRANSIT


class JdRefused(PermanentFailure):
    """JD's API refused the request; `code`, `sub_code` and `message` are JD's."""

    def __init__(self, detail: str, *, code: str, sub_code: str, message: str) -> None:
        super().__init__(detail)
        self.code, self.sub_code, self.message = code, sub_code, message


class JdLogistics:
    """京东物流 over LOP ECAP; credentials from JD's console (应用管理) and the merchant's
    authorisation (access token), `customer_code` the 商家编码 the parcels are billed to."""

    name: ClassVar[str] = "jdl"
    # (JD publishes no answer for its pushes: a 200 with its own envelope's success)
    push_received: ClassVar[bytes] = b'{"code": 0, "msg": "success"}'
    temperatures: ClassVar[frozenset[Temperature]] = frozenset({Temperature.AMBIENT})
    cash_on_delivery: ClassVar[bool] = True  # 代收货款 ed-a-0009

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: SecretStr,
        access_token: SecretStr,
        customer_code: str,
        api_url: str = PRODUCTION_URL,
        transport: Transport = urllib_transport,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        for value, what in (
            (app_key, "app_key"),
            (app_secret.get_secret_value(), "app_secret"),
            (access_token.get_secret_value(), "access_token"),
            (customer_code, "customer_code"),
        ):
            if not value or not value.strip():
                raise CarrierMisconfigured(f"JD Logistics {what} is not set")
        if urllib.parse.urlsplit(api_url).scheme not in ("http", "https"):
            raise CarrierMisconfigured(f"JD Logistics api_url is not an http(s) URL: {api_url!r}")
        self.app_key, self.customer_code = app_key.strip(), customer_code.strip()
        self._secret, self._token = app_secret, access_token
        self.api_url = api_url.rstrip("/")
        self.transport, self.clock = transport, clock

    # ------------------------------------------------------------ the four operations

    def quote(self, request: ShipmentRequest) -> list[Quote]:
        if request.temperature not in self.temperatures:
            return []
        quotes, refused = [], None
        for service in SERVICES:
            try:
                answer = self.call(PRECHECK, self._precheck(request, service))
            except JdRefused as exc:  # this product not on this route: the others may be
                refused = exc
                continue
            quote = self._quote(answer.get("data"), service)
            if quote is not None:
                quotes.append(quote)
        if not quotes and refused is not None:
            raise refused
        return quotes

    def create(self, request: ShipmentRequest, service: str) -> Shipment:
        if service not in SERVICES:
            raise PermanentFailure(f"JD Logistics has no product {service!r}: {list(SERVICES)}")
        if request.temperature not in self.temperatures:
            raise PermanentFailure(f"JD Logistics is not offered here for {request.temperature}")
        try:
            answer = self.call(CREATE, self._order(request, service))
        except JdRefused as exc:
            if not any(word in exc.message for word in _USED_ORDER_ID):
                raise
            answer = {"subCode": ORDER_ID_USED}  # the reference is JD's already
        data: dict[str, Any] = answer.get("data") or {}
        waybill = data.get("waybillCode")
        if not waybill and answer.get("subCode") == ORDER_ID_USED:
            waybill = self._waybill_of(request.reference)
        if not waybill:
            raise PermanentFailure("JD Logistics answered the order without a waybillCode")
        price = _fen(data.get("freightPre"))
        return Shipment(
            carrier=self.name,
            reference=request.reference,
            tracking_number=str(waybill),
            service=service,
            carrier_id=str(data["orderCode"]) if data.get("orderCode") else None,
            price=price,
            currency="CNY" if price is not None else None,
        )

    def cancel(self, shipment: Shipment) -> None:
        self.call(
            CANCEL,
            {
                "waybillCode": shipment.tracking_number,
                "orderOrigin": ORDER_ORIGIN_B2C,
                "customerCode": self.customer_code,
                "cancelReason": CANCEL_REASON,
                "cancelReasonCode": "1",
                "cancelType": 1,
            },
        )

    def track(self, shipment: Shipment) -> list[TrackingEvent]:
        answer = self.call(
            TRACE,
            {
                "waybillCode": shipment.tracking_number,
                "orderOrigin": ORDER_ORIGIN_B2C,
                "customerCode": self.customer_code,
            },
        )
        details = (answer.get("data") or {}).get("traceDetails") or []
        events = [_event(d, default_waybill=shipment.tracking_number) for d in details]
        return sorted(events, key=lambda e: e.at)

    def parse_push(self, body: bytes, headers: Mapping[str, str]) -> list[TrackingEvent]:
        given = {k.lower(): v for k, v in headers.items()}
        timestamp, sign = given.get("timestamp", ""), given.get("sign", "")
        if given.get("app_key") != self.app_key or not timestamp or not sign:
            raise PushRefused("not a JD Logistics push for our app (app_key, timestamp, sign)")
        try:
            text = body.decode()
            sent = datetime.strptime(timestamp, TIMESTAMP_FORMAT).replace(tzinfo=CHINA)
        except (UnicodeDecodeError, ValueError) as exc:
            raise PushRefused(f"unreadable JD Logistics push: {exc}") from exc
        expected = push_sign(
            app_secret=self._secret.get_secret_value(),
            app_key=self.app_key,
            body=text,
            timestamp=timestamp,
        )
        if not hmac.compare_digest(expected, sign.lower()):
            raise PushRefused("JD Logistics push signature does not verify")
        if abs(self.clock() - sent) > PUSH_WINDOW:
            raise PushRefused("JD Logistics push timestamp is outside ten minutes")
        try:
            nodes = json.loads(text)
            nodes = nodes if isinstance(nodes, list) else [nodes]
            return sorted((_event(n) for n in nodes), key=lambda e: e.at)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PushRefused(f"unreadable JD Logistics push: {type(exc).__name__}") from exc

    # ------------------------------------------------------------ the signed call

    def call(self, path: str, business: Mapping[str, Any]) -> dict[str, Any]:
        """One signed LOP call: the answer (code 0), or the failure it means."""
        body = json.dumps([business], ensure_ascii=False, separators=(",", ":"))
        timestamp = self.clock().astimezone(CHINA).strftime(TIMESTAMP_FORMAT)
        token = self._token.get_secret_value()
        sign = lop_sign(
            app_secret=self._secret.get_secret_value(),
            access_token=token,
            app_key=self.app_key,
            method=path,
            param_json=body,
            timestamp=timestamp,
        )
        query = urllib.parse.urlencode(
            {
                "LOP-DN": DOMAIN,
                "app_key": self.app_key,
                "access_token": token,
                "timestamp": timestamp,
                "v": VERSION,
                "sign": sign,
                "algorithm": ALGORITHM,
            }
        )
        request = urllib.request.Request(
            f"{self.api_url}{path}?{query}",
            data=body.encode(),
            method="POST",
            headers={
                "Content-Type": "application/json;charset=utf-8",
                "lop-tz": "8",
                "User-Agent": "lop-http/python3",
            },
        )
        status, raw = self.transport(request)
        if status == 429 or status >= 500:
            raise TransientFailure(f"JD Logistics {path}: HTTP {status}")
        try:
            answer = json.loads(raw, parse_float=Decimal)
        except ValueError as exc:
            failure = PermanentFailure if 400 <= status < 500 else TransientFailure
            raise failure(f"JD Logistics {path}: HTTP {status}, not JSON") from exc
        if not isinstance(answer, dict):
            raise TransientFailure(f"JD Logistics {path}: HTTP {status}, not an object")
        if isinstance(answer.get("error_response"), dict):
            raise _gateway_failure(path, answer["error_response"])
        if status >= 400:
            raise PermanentFailure(f"JD Logistics {path}: HTTP {status}")
        if str(answer.get("code")) != "0":
            raise _api_failure(path, answer)
        return answer

    # ------------------------------------------------------------ JD's parameters

    def _precheck(self, request: ShipmentRequest, service: str) -> dict[str, Any]:
        return {
            "orderOrigin": ORDER_ORIGIN_B2C,
            "customerCode": self.customer_code,
            "senderContact": _contact(request.sender),
            "receiverContact": _contact(request.recipient),
            "cargoes": [_cargo(request.parcels)],
            "productsReq": {"productCode": service},
        }

    def _order(self, request: ShipmentRequest, service: str) -> dict[str, Any]:
        added = []
        if request.cod_amount:
            attrs = {"shouldPayMoney": _yuan(request.cod_amount)}
            added.append({"productCode": COD, "productAttrs": attrs})
        if request.declared_value:
            attrs = {"guaranteeMoney": _yuan(request.declared_value)}
            added.append({"productCode": INSURANCE, "productAttrs": attrs})
        order: dict[str, Any] = {
            "orderId": request.reference,
            "orderOrigin": ORDER_ORIGIN_B2C,
            "customerCode": self.customer_code,
            "settleType": SETTLE_MONTHLY,
            "senderContact": _contact(request.sender),
            "receiverContact": _contact(request.recipient),
            "cargoes": [_cargo(request.parcels)],
            "productsReq": {"productCode": service},
        }
        if added:
            order["addedProducts"] = added
        if request.ship_at is not None:
            order["pickupStartTime"] = int(request.ship_at.timestamp() * 1000)
        return order

    def _quote(self, data: Any, service: str) -> Quote | None:
        infos = (data or {}).get("productInfos") or []
        info = next((i for i in infos if i.get("productCode") == service), None)
        price = _fen(info.get("freightPre") if info else None)
        if info is None or price is None:
            return None
        promised = info.get("deliveryPromiseTime")
        currency = ((data.get("commonFeeInfoResponse") or {}).get("currency")) or "CNY"
        return Quote(
            carrier=self.name,
            service=service,
            service_name=str(info.get("productName") or SERVICES[service]),
            price=price,
            currency=str(currency),
            promised_by=_from_millis(promised) if promised else None,
            temperatures=self.temperatures,
            cash_on_delivery=self.cash_on_delivery,
        )

    def _waybill_of(self, reference: str) -> str | None:
        """The waybill JD gave our reference before (a repeated create that did not name it)."""
        answer = self.call(
            ORDER_QUERY,
            {
                "orderOrigin": ORDER_ORIGIN_B2C,
                "customerCode": self.customer_code,
                "customerOrderId": reference,
            },
        )
        waybill = (answer.get("data") or {}).get("waybillCode")
        return str(waybill) if waybill else None


# ---------------------------------------------------------------- plain values


def _contact(party: Party) -> dict[str, str]:
    address = "".join(p for p in (party.province, party.city, party.district, party.street) if p)
    contact = {"name": party.name, "mobile": party.phone, "fullAddress": address}
    if party.company:
        contact["company"] = party.company
    return contact


def _cargo(parcels: list[Parcel]) -> dict[str, Any]:
    """All parcels as one cargo line: JD's quantity is the number of packages (包裹数)."""
    cargo: dict[str, Any] = {
        "name": parcels[0].description[:50],
        "quantity": len(parcels),
        "weight": _decimal_number(Decimal(sum(p.weight_g for p in parcels)) / 1000),
    }
    volumes = [p.volume_cm3 for p in parcels]
    if all(v is not None for v in volumes):
        cargo["volume"] = sum(v for v in volumes if v is not None)
    if len(parcels) == 1 and parcels[0].volume_cm3 is not None:
        parcel = parcels[0]
        sides = (("length", parcel.length_mm), ("width", parcel.width_mm))
        for key, mm in (*sides, ("hight", parcel.height_mm)):  # JD spells it "hight"
            cargo[key] = _decimal_number(Decimal(mm or 0) / 10)
    return cargo


def _decimal_number(value: Decimal) -> int | float:
    """A weight or length for JSON (never money): an int where whole."""
    return int(value) if value == value.to_integral_value() else float(value)


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _fen(yuan: Any) -> int | None:
    if yuan is None or isinstance(yuan, bool):
        return None
    try:
        amount = Decimal(str(yuan))
    except InvalidOperation:
        return None
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _from_millis(millis: Any) -> datetime:
    ms = int(millis)
    return datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)


def _event(node: Mapping[str, Any], *, default_waybill: str | None = None) -> TrackingEvent:
    category, name = node.get("category"), str(node.get("categoryName") or "")
    title = str(node.get("operationTitle") or "")
    at = datetime.strptime(str(node["operationTime"]), TIMESTAMP_FORMAT).replace(tzinfo=CHINA)
    remark = _scrub(str(node.get("operationRemark") or ""))
    carrier_status = " ".join(str(p) for p in (category, name or title) if p not in (None, ""))
    return TrackingEvent(
        tracking_number=str(node.get("waybillCode") or default_waybill or ""),
        status=tracking_status(category=category, category_name=name, title=title),
        carrier_status=carrier_status or "?",
        at=at,
        description=" ".join(p for p in (title, remark) if p) or None,
        place=str(node["operateSite"]) if node.get("operateSite") else None,
    )


def _scrub(text: str) -> str:
    """JD's text without phone-length digit runs (couriers' and customers' numbers)."""
    return _PHONE_LIKE.sub("***", text)[:200]


def _gateway_failure(path: str, error: Mapping[str, Any]) -> PermanentFailure | TransientFailure:
    en, zh = str(error.get("en_desc") or ""), str(error.get("zh_desc") or "")
    detail = f"JD Logistics gateway {error.get('code')} on {path}: {_scrub(en)} {_scrub(zh)}"
    if any(word in en.lower() for word in _GATEWAY_TRANSIENT) or "繁忙" in zh or "限流" in zh:
        return TransientFailure(detail)
    return CarrierMisconfigured(detail)


def _api_failure(path: str, answer: Mapping[str, Any]) -> PermanentFailure | TransientFailure:
    code, sub_code = str(answer.get("code")), str(answer.get("subCode") or "")
    message = _scrub(f"{answer.get('msg') or ''} {answer.get('subMsg') or ''}".strip())
    detail = f"JD Logistics {code}{'/' + sub_code if sub_code else ''} on {path}: {message}"
    if any(word in message for word in _API_TRANSIENT):
        return TransientFailure(detail)
    if any(word in message.lower() for word in _API_OURS):
        return CarrierMisconfigured(detail)
    return JdRefused(detail, code=code, sub_code=sub_code, message=message)
