"""SF Express (顺丰速运) through SF's open platform (丰桥, sfapi): quote, create, cancel, track,
and SF's route pushes. Domestic (CN to CN) parcels, ambient only.

The request format (every call): HTTP POST to `https://sfapi.sf-express.com/std/service`
(sandbox `https://sfapi-sbox.sf-express.com/std/service`; SF's overview also lists
`https://bspgw.sf-express.com/std/service` for production), `Content-Type:
application/x-www-form-urlencoded;charset=UTF-8`, form fields `partnerID` (顾客编码), `requestID`
(a UUID), `serviceCode`, `timestamp` (Unix milliseconds), `msgData` (the call's JSON as a string)
and `msgDigest` = Base64(MD5(URLEncoder.encode(msgData + timestamp + checkWord, "UTF-8"))), Java's
URLEncoder (space as "+", only `A-Za-z0-9.-*_` left as they are). SF's published example:
msgData `{"language":"zh-CN","orderId":"QIAO-20200618-004"}`, timestamp `12312334453453`,
checkWord `fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci` gives `IIKJtuLVzoFTu4kHI8M8vA==` (a test pins it).
The answer: `{"apiResultCode", "apiErrorMsg", "apiResponseID", "apiResultData"}`; A1000 means the
platform accepted the call and `apiResultData` is a JSON string `{"success", "errorCode" (S0000
is success), "errorMsg", "msgData"}`. Platform codes: A1001 required parameter missing, A1002
token expired, A1003 IP not allowed, A1004 no permission for the service (partner not linked to
it, or sandbox/production mixed up), A1005 rate limited, A1006 digital signature invalid, A1009
target service unreachable, A1099 system error. We read A1003, A1004 and A1006 as our own
credentials (`CarrierMisconfigured`), A1005, A1009 and A1099 as worth another try
(`TransientFailure`), and any other refusal as `PermanentFailure` naming SF's code and message.

The calls:
- quote: `EXP_RECE_QUERY_DELIVERTM` (时效标准及价格查询), one call per product we offer, with
  `businessType` (the product), `weight` (kg), `volume` (cm³), `consignedTime`, `searchPrice` "1",
  `srcAddress`/`destAddress` {province, city, district, address} and `monthlyCard` (the price is
  the one agreed for that card); the answer's `deliverTmDto` [{businessType, businessTypeDesc,
  deliverTime "start,end", fee (yuan, a JSON number read as a Decimal, never a float)}].
- create: `EXP_RECE_CREATE_ORDER` with `orderId` (our reference), `expressTypeId` (the product),
  `payMethod` 1 (寄方付, with `monthlyCard`), `parcelQty`, `totalWeight`, `cargoDetails`,
  `contactInfoList` (contactType 1 sender, 2 recipient), `isReturnRoutelabel` 1 and `serviceList`
  (added services: `INSURE` declared value, `COD` 代收货款, values in yuan); the answer's
  `waybillNoInfoList` [{waybillType (1 master, 2 child, 3 signed-return), waybillNo}]. SF refuses
  an `orderId` it has seen with errorCode 8016 (重复下单): the reference is then looked up with
  `EXP_RECE_SEARCH_ORDER_RESP` ({orderId, searchType 1}) and the first shipment returned, so one
  reference is one shipment however often it is asked. Labels come from SF's cloud print
  (`COM_RECE_CLOUD_PRINT_WAYBILLS`), not called here: `label` is None.
- cancel: `EXP_RECE_UPDATE_ORDER` with `dealType` 2 (取消); 8037 (订单已消单) counts as done.
- track: `EXP_RECE_SEARCH_ROUTES` with `trackingType` 1 and `trackingNumber` [waybill]; the
  answer's `routeResps` [{mailNo, routes: [{acceptTime "YYYY-MM-DD HH:MM:SS" Beijing time,
  acceptAddress, remark, opCode}]}], sorted here by time (SF's order is not promised).

Route pushes (`RoutePushService`, 路由推送): SF POSTs `{"Body": {"WaybillRoute": [{mailno,
orderid, acceptTime, acceptAddress, remark, opCode, id, ...}]}}` (at most 10 routes) as
`application/json` to the URL configured in SF's console and expects `{"return_code": "0000",
"return_msg": ...}` back (1000 to have it pushed again). SF's route-push page (as mirrored, see
Sources) shows no signature, token or digest on this push, so nothing in the body or headers can
prove it is SF's.
`parse_push` therefore believes a push only as far as SF itself confirms it: every pushed route
must be one of the routes SF's signed route query (`EXP_RECE_SEARCH_ROUTES`, over TLS, with our
check word) answers for that waybill, equal in waybill, time, opCode, remark and place; one that
is not, or a body that is not SF's JSON, is `PushRefused`. A query that fails is not a refusal:
its `TransientFailure` makes us answer 1000, and SF pushes again.

opCode → `TrackingStatus` (`OP_CODES`): SF's 路由操作码 table (50 顺丰已收件, 51 一票多件的子件,
54 上门收件; 30 装车/完成分拣 准备发往, 31 快件到达, 36 封车/快件离开, 302 车辆发车, 304 离开经停点,
3036 准备送往下一站, 10/11 发车/到车, 105/106 航空起飞/落地, 123 快件正送往顺丰店/站, 130 快件到达
顺丰店/站; 44 正在派送途中, 204 派件责任交接; 80 已签收, 8000 签收人信息; 33 派件异常原因, 70 派件
不成功, 72 标记异常, 77 中转滞留; 631 新单退回, 648 快件已退回/转寄; 99 应客户要求 快件正在转寄中)
as listed in yeyong123/express_api `express/sf.go`, checked against a real SF trace in
honghua-kd/website `src/views/archive/logistics/register/logisticsRoutes.ts` (54 收取快件 → 30 →
36 → 31 … → 44 分配快递员 → 204 交给快递员 正在派送途中 → 80 已签收). A code not listed is a
handling step on the way and reads as `IN_TRANSIT`.

Sources: SF's API overview and `EXP_RECE_QUERY_DELIVERTM` pages (platform codes A1000-A1099,
business codes 8016 重复下单, 8037 订单已消单, 8057, 8119, 6126, 6138/6139 COD, the digest and its
example; as mirrored in English with SF's worked example), SF's digest guide
(open.sf-express.com/developSupport/976720, "数字签名示例", the same example), SF's route-push page
(RoutePushService, mirrored at https://www.showdoc.com.cn/hnqiao/9157102515696868), SF's
增值服务产品表 (serviceList `{"name": "COD", "value": 货款}`, `INSURE`), and the SDKs
1101124154/sf-express-sdk (`src/Client.php`: form fields, `base64_encode(md5(urlencode(msgData .
timestamp . checkword), true))`), yeyong123/express_api (`express/sf.go`: opCodes, create,
routes, QUERY_DELIVERTM with `deliverTmDto`). Cold chain: SF sells 冷运 products (e.g.
expressTypeId 201 冷运标快 in SF's product table) but publishes no temperature range per product
in the sources found, so none is offered: `temperatures` is ambient only and a chilled or frozen
request gets no quote.

Personal data (names, phones, addresses) goes to SF in the request only; it is never logged and
never put in an exception (SF's own error message is quoted, cut short, with its code).
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any, ClassVar

from pydantic import SecretStr

from connectors.carriers.base import (
    CarrierMisconfigured,
    Party,
    PushRefused,
    Quote,
    Shipment,
    ShipmentRequest,
    Temperature,
    TrackingEvent,
    TrackingStatus,
)
from connectors.outbound import (
    PermanentFailure,
    TransientFailure,
    Transport,
    Unsupported,
    urllib_transport,
)

__all__ = [
    "OP_CODES",
    "PRODUCTION_URL",
    "PRODUCTS",
    "SANDBOX_URL",
    "SfExpress",
    "SfRefused",
    "msg_digest",
    "status_of",
]

PRODUCTION_URL = "https://sfapi.sf-express.com/std/service"
SANDBOX_URL = "https://sfapi-sbox.sf-express.com/std/service"
BEIJING = timezone(timedelta(hours=8), "CST")  # SF's times carry no zone; China has no DST
SF_TIME = "%Y-%m-%d %H:%M:%S"

# The products offered: expressTypeId / businessType → SF's name (快件产品类别表).
PRODUCTS: dict[str, str] = {"1": "顺丰特快", "2": "顺丰标快"}

# Platform answers (apiResultCode): our credentials, or worth another try.
MISCONFIGURED = frozenset({"A1003", "A1004", "A1006"})
TRANSIENT = frozenset({"A1005", "A1009", "A1099"})
DUPLICATE_ORDER = "8016"  # 重复下单
ALREADY_CANCELLED = "8037"  # 订单已消单

_S = TrackingStatus
OP_CODES: dict[str, TrackingStatus] = {
    "50": _S.PICKED_UP,
    "51": _S.PICKED_UP,
    "54": _S.PICKED_UP,
    "30": _S.IN_TRANSIT,
    "31": _S.IN_TRANSIT,
    "36": _S.IN_TRANSIT,
    "302": _S.IN_TRANSIT,
    "304": _S.IN_TRANSIT,
    "3036": _S.IN_TRANSIT,
    "10": _S.IN_TRANSIT,
    "11": _S.IN_TRANSIT,
    "105": _S.IN_TRANSIT,
    "106": _S.IN_TRANSIT,
    "123": _S.IN_TRANSIT,
    "130": _S.IN_TRANSIT,
    "44": _S.OUT_FOR_DELIVERY,
    "204": _S.OUT_FOR_DELIVERY,
    "80": _S.DELIVERED,
    "8000": _S.DELIVERED,
    "33": _S.EXCEPTION,
    "70": _S.EXCEPTION,
    "72": _S.EXCEPTION,
    "77": _S.EXCEPTION,
    # 99 is forwarding at a customer's request (转寄), not a return: off the planned way.
    "99": _S.EXCEPTION,
    "631": _S.RETURNED_TO_SENDER,
    "648": _S.RETURNED_TO_SENDER,
}


class SfRefused(PermanentFailure):
    """SF refused the call itself (its business answer): `code` is SF's errorCode."""

    def __init__(self, detail: str, *, code: str) -> None:
        super().__init__(detail)
        self.code = code


def status_of(op_code: str) -> TrackingStatus:
    """SF's opCode as a `TrackingStatus`; an unlisted code is a handling step on the way."""
    return OP_CODES.get(op_code.strip(), TrackingStatus.IN_TRANSIT)


def _java_url_encode(text: str) -> str:
    """`java.net.URLEncoder.encode(text, "UTF-8")`: Python's quote_plus also keeps "~" and
    encodes "*", Java does the opposite; SF signs the Java form."""
    return urllib.parse.quote_plus(text, safe="*").replace("~", "%7E")


def msg_digest(msg_data: str, timestamp: str, check_word: str) -> str:
    """SF's msgDigest: Base64(MD5(URL-encode(msgData + timestamp + checkWord, UTF-8)))."""
    encoded = _java_url_encode(msg_data + timestamp + check_word)
    return base64.b64encode(hashlib.md5(encoded.encode("utf-8")).digest()).decode("ascii")


def _yuan(minor: int) -> str:
    """Minor units (fen) as SF's yuan text: 1234 → "12.34"."""
    return f"{minor // 100}.{minor % 100:02d}"


def _fen(yuan: object) -> int:
    """SF's fee (yuan, read as Decimal or int) in fen."""
    if isinstance(yuan, bool) or not isinstance(yuan, int | Decimal | str):
        raise TransientFailure(f"SF: unreadable fee {yuan!r}")
    return int((Decimal(yuan) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _kg(grams: int) -> float:
    """Grams as kg, up to the next 10 g (SF takes two decimals; a weight, not money)."""
    return float((Decimal(grams) / 1000).quantize(Decimal("0.01"), rounding=ROUND_CEILING))


def _sf_time(moment: datetime) -> str:
    return moment.astimezone(BEIJING).strftime(SF_TIME)


def _parse_sf_time(text: str) -> datetime:
    return datetime.strptime(text.strip(), SF_TIME).replace(tzinfo=BEIJING)


def _address(party: Party) -> dict[str, str]:
    fields = {
        "province": party.province or "",
        "city": party.city,
        "district": party.district or "",
        "address": party.street,
    }
    return {k: v for k, v in fields.items() if v}


def _contact(party: Party, contact_type: int) -> dict[str, Any]:
    contact: dict[str, Any] = {
        "contactType": contact_type,
        "contact": party.name,
        "mobile": party.phone,
        "country": party.country,
        "province": party.province or "",
        "city": party.city,
        "county": party.district or "",
        "address": party.street,
    }
    if party.postal_code:
        contact["postCode"] = party.postal_code
    if party.company:
        contact["company"] = party.company
    return contact


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


class SfExpress:
    """SF Express (顺丰速运) in SF's open-platform format; see the module docstring."""

    name: ClassVar[str] = "sf"
    push_received: ClassVar[bytes] = json.dumps(
        {"return_code": "0000", "return_msg": "成功"}, ensure_ascii=False
    ).encode()
    temperatures: ClassVar[frozenset[Temperature]] = frozenset({Temperature.AMBIENT})
    cash_on_delivery: ClassVar[bool] = True  # the COD (代收货款) added service

    def __init__(
        self,
        *,
        partner_id: str,
        check_word: SecretStr,
        monthly_card: str | None = None,
        api_url: str = PRODUCTION_URL,
        transport: Transport = urllib_transport,
    ) -> None:
        if not partner_id or not partner_id.strip():
            raise CarrierMisconfigured("SF: the partner id (顾客编码) is empty")
        if not isinstance(check_word, SecretStr) or not check_word.get_secret_value().strip():
            raise CarrierMisconfigured("SF: the check word (校验码) is empty")
        if monthly_card is not None and not (monthly_card.isdigit() and len(monthly_card) == 10):
            raise CarrierMisconfigured("SF: the monthly card (月结卡号) is not 10 digits")
        if not api_url.startswith(("https://", "http://")):
            raise CarrierMisconfigured(f"SF: the API URL is not http(s): {api_url!r}")
        self.partner_id = partner_id.strip()
        self._check_word = check_word
        self.monthly_card = monthly_card
        self.api_url = api_url
        self.transport = transport

    # ------------------------------------------------------------ the Carrier protocol

    def quote(self, request: ShipmentRequest) -> list[Quote]:
        if request.temperature not in self.temperatures or not self._domestic(request):
            return []
        quotes = []
        for product, product_name in PRODUCTS.items():
            query: dict[str, Any] = {
                "businessType": product,
                "weight": _kg(request.weight_g),
                "searchPrice": "1",
                "srcAddress": _address(request.sender),
                "destAddress": _address(request.recipient),
            }
            volume = sum(p.volume_cm3 or 0 for p in request.parcels)
            if volume:
                query["volume"] = volume
            if request.ship_at is not None:
                query["consignedTime"] = _sf_time(request.ship_at)
            if self.monthly_card:
                query["monthlyCard"] = self.monthly_card
            answer = self.call("EXP_RECE_QUERY_DELIVERTM", query)
            for option in (answer or {}).get("deliverTmDto") or []:
                if _text(option.get("businessType")) != product or option.get("fee") is None:
                    continue  # another product, or no price for this card
                quotes.append(
                    Quote(
                        carrier=self.name,
                        service=product,
                        service_name=_text(option.get("businessTypeDesc")) or product_name,
                        price=_fen(option["fee"]),
                        currency="CNY",
                        promised_by=self._promised_by(option.get("deliverTime")),
                        temperatures=self.temperatures,
                        cash_on_delivery=self.cash_on_delivery,
                    )
                )
                break
        return quotes

    def create(self, request: ShipmentRequest, service: str) -> Shipment:
        if service not in PRODUCTS:
            raise Unsupported(f"SF: product {service!r} is not offered here ({sorted(PRODUCTS)})")
        if request.temperature not in self.temperatures:
            raise Unsupported(f"SF: no {request.temperature.value} product offered here")
        if not self._domestic(request):
            raise Unsupported("SF: only domestic (CN) parcels are offered here")
        if (request.cod_amount or request.declared_value) and request.currency != "CNY":
            raise PermanentFailure("SF: COD and declared value are taken in CNY only")
        order: dict[str, Any] = {
            "language": "zh-CN",
            "orderId": request.reference,
            "expressTypeId": int(service),
            "payMethod": 1,
            "parcelQty": len(request.parcels),
            "totalWeight": _kg(request.weight_g),
            "isReturnRoutelabel": 1,
            "cargoDetails": [
                {
                    "name": parcel.description,
                    "count": 1,
                    "unit": "件",
                    "weight": _kg(parcel.weight_g),
                }
                for parcel in request.parcels
            ],
            "contactInfoList": [_contact(request.sender, 1), _contact(request.recipient, 2)],
        }
        if self.monthly_card:
            order["monthlyCard"] = self.monthly_card
        if request.ship_at is not None:
            order["sendStartTm"] = _sf_time(request.ship_at)
        services = []
        if request.declared_value:
            services.append({"name": "INSURE", "value": _yuan(request.declared_value)})
        if request.cod_amount:
            cod: dict[str, str] = {"name": "COD", "value": _yuan(request.cod_amount)}
            if self.monthly_card:
                cod["value1"] = self.monthly_card  # the card the collected money goes to
            services.append(cod)
        if services:
            order["serviceList"] = services
        try:
            answer = self.call("EXP_RECE_CREATE_ORDER", order)
        except PermanentFailure as exc:
            if not isinstance(exc, SfRefused) or exc.code != DUPLICATE_ORDER:
                raise
            # SF already has this orderId: answer with the shipment it made then.
            answer = self.call(
                "EXP_RECE_SEARCH_ORDER_RESP",
                {"orderId": request.reference, "searchType": "1", "language": "zh-CN"},
            )
        return Shipment(
            carrier=self.name,
            reference=request.reference,
            tracking_number=self._master_waybill(answer),
            service=service,
        )

    def cancel(self, shipment: Shipment) -> None:
        try:
            self.call(
                "EXP_RECE_UPDATE_ORDER",
                {"orderId": shipment.reference, "dealType": 2, "language": "zh-CN"},
            )
        except PermanentFailure as exc:
            if not isinstance(exc, SfRefused) or exc.code != ALREADY_CANCELLED:
                raise

    def track(self, shipment: Shipment) -> list[TrackingEvent]:
        return self._routes([shipment.tracking_number]).get(shipment.tracking_number, [])

    def parse_push(self, body: bytes, headers: Mapping[str, str]) -> list[TrackingEvent]:
        try:
            pushed = json.loads(body)
            routes = pushed["Body"]["WaybillRoute"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PushRefused("SF push: not SF's route-push JSON") from exc
        if isinstance(routes, dict):
            routes = [routes]
        if not isinstance(routes, list) or not routes or len(routes) > 10:
            raise PushRefused("SF push: no WaybillRoute, or more than SF's 10")
        events = []
        for route in routes:
            if not isinstance(route, dict) or not _text(route.get("mailno")):
                raise PushRefused("SF push: a route without its waybill (mailno)")
            try:
                events.append(self._event(_text(route["mailno"]), route))
            except (KeyError, ValueError) as exc:
                raise PushRefused("SF push: a route without a readable time or opCode") from exc
        # No signature to check (SF publishes none): SF's own signed answer is the proof.
        confirmed = self._routes(sorted({e.tracking_number for e in events}))
        for event in events:
            if event not in confirmed.get(event.tracking_number, []):
                raise PushRefused(
                    f"SF push: route {event.carrier_status} of {event.tracking_number} at "
                    f"{event.at.isoformat()} is not one SF's route query knows"
                )
        return sorted(events, key=lambda e: e.at)

    # ------------------------------------------------------------ one signed request

    def call(self, service_code: str, msg_data: Mapping[str, Any]) -> Any:
        """One signed request to SF; the business answer's `msgData`, or a `CallFailed`
        (a business refusal is `SfRefused`, with SF's errorCode)."""
        text = json.dumps(msg_data, ensure_ascii=False, separators=(",", ":"))
        timestamp = str(int(datetime.now(UTC).timestamp() * 1000))
        form = {
            "partnerID": self.partner_id,
            "requestID": str(uuid.uuid4()),
            "serviceCode": service_code,
            "timestamp": timestamp,
            "msgData": text,
            "msgDigest": msg_digest(text, timestamp, self._check_word.get_secret_value()),
        }
        request = urllib.request.Request(
            self.api_url,
            data=urllib.parse.urlencode(form).encode("utf-8"),
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"},
        )
        status, body = self.transport(request)
        if status == 429 or status >= 500:
            raise TransientFailure(f"SF {service_code}: HTTP {status}")
        if status >= 400:
            raise PermanentFailure(f"SF {service_code}: HTTP {status}")
        try:
            envelope = json.loads(body)
        except ValueError as exc:
            raise TransientFailure(f"SF {service_code}: the answer is not JSON") from exc
        if not isinstance(envelope, dict):
            raise TransientFailure(f"SF {service_code}: the answer is not SF's envelope")
        api_code = _text(envelope.get("apiResultCode"))
        if api_code != "A1000":
            detail = f"SF {service_code} {api_code}: {_text(envelope.get('apiErrorMsg'))[:120]}"
            if api_code in MISCONFIGURED:
                raise CarrierMisconfigured(detail)
            if api_code in TRANSIENT or not api_code:
                raise TransientFailure(detail)
            raise PermanentFailure(detail)
        try:
            result = json.loads(envelope.get("apiResultData") or "", parse_float=Decimal)
        except (ValueError, TypeError) as exc:
            raise TransientFailure(f"SF {service_code}: apiResultData is not JSON") from exc
        if not isinstance(result, dict):
            raise TransientFailure(f"SF {service_code}: apiResultData is not an object")
        code = _text(result.get("errorCode"))
        if str(result.get("success")).lower() != "true" or code not in ("", "S0000"):
            raise SfRefused(
                f"SF {service_code} {code}: {_text(result.get('errorMsg'))[:120]}", code=code
            )
        return result.get("msgData")

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _domestic(request: ShipmentRequest) -> bool:
        return request.sender.country == "CN" and request.recipient.country == "CN"

    @staticmethod
    def _promised_by(deliver_time: object) -> datetime | None:
        """`deliverTime` is "earliest,latest" (Beijing time); the promise is the latest."""
        parts = [p for p in _text(deliver_time).split(",") if p.strip()]
        try:
            return _parse_sf_time(parts[-1]) if parts else None
        except ValueError:
            return None

    @staticmethod
    def _master_waybill(answer: object) -> str:
        infos = (answer or {}).get("waybillNoInfoList") if isinstance(answer, dict) else None
        numbers = [
            _text(info.get("waybillNo"))
            for info in infos or []
            if isinstance(info, dict) and _text(info.get("waybillType")) in ("1", "")
        ]
        if not numbers or not numbers[0]:
            raise TransientFailure("SF: the order answer has no master waybill number")
        return numbers[0]

    def _event(self, tracking_number: str, route: Mapping[str, Any]) -> TrackingEvent:
        op_code = _text(route["opCode"])
        if not op_code:
            raise KeyError("opCode")
        return TrackingEvent(
            tracking_number=tracking_number,
            status=status_of(op_code),
            carrier_status=op_code,
            at=_parse_sf_time(_text(route["acceptTime"])),
            description=_text(route.get("remark")) or None,
            place=_text(route.get("acceptAddress")) or None,
        )

    def _routes(self, tracking_numbers: list[str]) -> dict[str, list[TrackingEvent]]:
        """SF's routes of up to 10 waybills, each waybill's in time order."""
        answer = self.call(
            "EXP_RECE_SEARCH_ROUTES",
            {
                "language": "zh-CN",
                "trackingType": 1,
                "trackingNumber": tracking_numbers,
                "methodType": 1,
            },
        )
        found: dict[str, list[TrackingEvent]] = {}
        for entry in (answer or {}).get("routeResps") or []:
            number = _text(entry.get("mailNo"))
            try:
                events = [self._event(number, route) for route in entry.get("routes") or []]
            except (KeyError, ValueError) as exc:
                raise TransientFailure(f"SF: an unreadable route of {number}") from exc
            found[number] = sorted(events, key=lambda e: e.at)
        return found
