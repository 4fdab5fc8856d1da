"""ZTO Express (中通快递) through ZTO's open platform (中通开放平台, https://open.zto.com).

**Format.** Every call is a POST of a JSON body (UTF-8) to `<api_url>/<method>`, production
`https://japi.zto.com`, test `https://japi-test.zto.com`, with the headers
- `x-appKey`: the app key (控制台 - 应用详情);
- `x-dataDigest`: Base64(MD5(the body's UTF-8 bytes + the app secret's UTF-8 bytes));
- `x-companyid`: the company id; ZTO's own SDKs send the app key under this older name, so it
  is sent too (the app key unless a separate company id is configured).
The answer is `{"status": true|false, "statusCode": "...", "message": "...", "result": ...}`,
HTTP 200 even for errors. Gateway codes (`statusCode`): S200 timeout, S202 backend error,
S203 unavailable, S206 call quota, S221 QPS flow limit - worth another try
(`TransientFailure`); S207 no such API, S210 no permission (service not bound), S211 bad
signature, S212 IP not allow-listed, S214 bad timestamp, E404 e-waybill account not bound,
E418 no site authorisation - our configuration (`CarrierMisconfigured`); anything else
(S208 "XX不能为空", business codes) is the request refused (`PermanentFailure` with code and
message; the request's own names, phones and addresses are blanked out of the message).

**Calls.**
- `zto.innovate.bagAddrMark` (大头笔: the sorting mark for a sender/recipient address pair;
  `send_province`, `send_city`, `send_district`, `send_address`, `receive_*`, `unionCode`):
  asked by `quote` to learn that ZTO routes the lane at all.
- `zto.open.createOrder`: `partnerType` "2" (非集团客户) with `orderType` "2" (预约件, which
  returns the bill code and, unlike 全网件, can be cancelled), `partnerOrderCode` = our
  reference, `accountInfo` {accountId, accountPassword, type 1} (the e-waybill account; the
  test environment takes "test"/"ZTO123"), `senderInfo` {senderName, senderMobile or
  senderPhone, senderProvince, senderCity, senderDistrict, senderAddress}, `receiveInfo`
  {receiver*}, `summaryInfo` {quantity, startTime}, `orderItems` [{name, weight (g), quantity}].
  Result: `billCode` (our tracking number), `orderCode` (ZTO's order id, kept as `carrier_id`),
  `bigMarkInfo` {mark, bagAddr} for the label, which is printed locally (76 x 130 mm).
- `zto.open.cancelPreOrder`: `cancelType` ("1" 不想寄了 ... "7"), `billCode` or `orderCode`;
  only 预约件 of the same app key can be cancelled.
- `zto.merchant.waybill.track.query`: `billCode`; result: traces with `scanType`, `scanDate`
  (epoch milliseconds), `scanSite` {name, city, prov}, `desc`.
- `zto.merchant.waybill.track.subsrcibe` (sic): `billCode`, `mobilePhone` (the last four digits
  of the recipient's phone); called after `create` so that ZTO pushes the traces.
- The push: a form POST with `data` (one trace as JSON: billCode, action, actionTime
  "yyyy-MM-dd HH:mm:ss" China time, desc, city, facilityName...), `data_digest` =
  Base64(MD5(data + app secret)), `company_id` (the app key) and `msg_type` "Traces". ZTO
  counts a push delivered when the answer is `{"status": true, ...}` (`PUSH_RECEIVED`).

**Statuses.** The query's `scanType` and the push's `action` name the same scans (ZTO's table:
GOT 收件 picked up, DEPARTURE 发件 / ARRIVAL 到件 in transit, DISPATCH 派件 out for delivery,
INBOUND 入站 put in a parcel station or locker (read as out for delivery: not in the
customer's hands yet), SIGNED 签收 / DEPARTURE_SIGNED 出站签收 / HANDOVERSCAN_SIGNED 第三方妥投
delivered, PROBLEM 问题件 exception, RETURN_SCAN 退件 (a return *or an address change*, so an
exception, not yet a return), RETURN_SIGNED 退件签收 returned to the sender). A scan type not in
the table is read as in transit and logged (its code only).

**Prices.** ZTO publishes no price or transit-time query on the open platform (express prices
are per contract with the collecting site), so `quote` prices from the rate card given to the
constructor: per (origin province, destination province), a first-kilogram price and a price
per additional started kilogram, in minor units, on the parcels' actual weight (volumetric
terms of a contract are not modelled). A lane with no rate gets no quote. One service:
`SERVICE` (ZTO's createOrder takes no product code). Ambient only (no published cold chain);
no cash on delivery (a "COD" value-added service appears in a copy of the createOrder
documentation, but its amount unit is not confirmed, so it is refused rather than guessed);
the declared value is not sent (no confirmed insurance service code).

**One shipment per reference.** ZTO publishes neither a promise that a repeated
`partnerOrderCode` answers with the first bill code nor a lookup by it (`zto.open.getOrderInfo`
takes ZTO's orderCode or billCode), so the adapter records each shipment by reference in
`shipments` (a mapping the caller may make persistent) and answers a repeated reference from
it; creation is serialised so two concurrent calls cannot both buy a label.

Sources: ZTO's SDKs, github.com/ZTO-Express/zopsdk-java (`ZopClient.java`,
`ZopDigestUtil.java`: digest over body + secret, MD5 by default, Base64; commons-codec hashes
the UTF-8 bytes), zopsdk-php (`ZopClient.php`) and zopsdk-node (`lib/index.js`); ZTO's
documentation as copied in YangLiCon/docs `document/tepbridge/logistics/zto.md` (headers
x-appKey/x-dataDigest, hosts, createOrder and cancelPreOrder bodies and answers, the gateway
error table, subscription body, logged pushes with data/data_digest/company_id/msg_type);
the push fields and action table in tyut-pengkai/ruoyi-vue-new
`xkt/src/main/java/com/ruoyi/xkt/thirdpart/zto/ZtoTrackObj.java`; the createOrder field notes
(partnerType/orderType, accountInfo) in the same project's `ZtoExpressManagerImpl.java`; the
bagAddrMark fields in
zopsdk-java's README (GETMARK) and in third-party PHP clients; the query's trace shape as the
open.zto.com page is quoted in the oltrack project's `adapters/zto.py`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
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
    "PRODUCTION_URL",
    "PUSH_RECEIVED",
    "SCAN_STATUS",
    "SERVICE",
    "TEST_URL",
    "Zto",
    "ZtoRate",
    "data_digest",
    "scan_status",
]

logger = logging.getLogger(__name__)

PRODUCTION_URL = "https://japi.zto.com"
TEST_URL = "https://japi-test.zto.com"
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")  # no daylight saving in China

CREATE_ORDER = "zto.open.createOrder"
CANCEL_ORDER = "zto.open.cancelPreOrder"
TRACK_QUERY = "zto.merchant.waybill.track.query"
TRACK_SUBSCRIBE = "zto.merchant.waybill.track.subsrcibe"  # ZTO's own spelling
BAG_ADDR_MARK = "zto.innovate.bagAddrMark"

SERVICE = "express"
SERVICE_NAME = "中通快递 (预约件)"
PARTNER_TYPE = "2"  # 非集团客户: an e-waybill account of our own
ORDER_TYPE = "2"  # 预约件 (returns the bill code; cancellable)
CANCEL_TYPE = "1"  # 不想寄了
PUSH_RECEIVED: dict[str, Any] = {"status": True, "message": "成功", "statusCode": "0000"}

TRANSIENT_CODES = frozenset({"S200", "S202", "S203", "S206", "S221"})
MISCONFIGURED_CODES = frozenset({"S207", "S210", "S211", "S212", "S214", "E404", "E418"})

# scanType (query) and action (push) to TrackingStatus: ZTO's table of scan kinds.
SCAN_STATUS: dict[str, TrackingStatus] = {
    "收件": TrackingStatus.PICKED_UP,
    "GOT": TrackingStatus.PICKED_UP,
    "发件": TrackingStatus.IN_TRANSIT,
    "DEPARTURE": TrackingStatus.IN_TRANSIT,
    "到件": TrackingStatus.IN_TRANSIT,
    "ARRIVAL": TrackingStatus.IN_TRANSIT,
    "派件": TrackingStatus.OUT_FOR_DELIVERY,
    "DISPATCH": TrackingStatus.OUT_FOR_DELIVERY,
    "入站": TrackingStatus.OUT_FOR_DELIVERY,
    "INBOUND": TrackingStatus.OUT_FOR_DELIVERY,
    "签收": TrackingStatus.DELIVERED,
    "SIGNED": TrackingStatus.DELIVERED,
    "出站签收": TrackingStatus.DELIVERED,
    "DEPARTURE_SIGNED": TrackingStatus.DELIVERED,
    "第三方签收": TrackingStatus.DELIVERED,
    "第三方妥投": TrackingStatus.DELIVERED,
    "HANDOVERSCAN_SIGNED": TrackingStatus.DELIVERED,
    "问题件": TrackingStatus.EXCEPTION,
    "PROBLEM": TrackingStatus.EXCEPTION,
    "退件": TrackingStatus.EXCEPTION,  # a return or an address change (returnType says which)
    "RETURN_SCAN": TrackingStatus.EXCEPTION,
    "退件签收": TrackingStatus.RETURNED_TO_SENDER,
    "RETURN_SIGNED": TrackingStatus.RETURNED_TO_SENDER,
}

_PROVINCE_SUFFIX = re.compile(r"(壮族自治区|回族自治区|维吾尔自治区|自治区|特别行政区|省|市)$")
_MOBILE = re.compile(r"1\d{10}")


def data_digest(data: str | bytes, *, secret: str) -> str:
    """ZTO's signature of a request body or a push's `data`: Base64(MD5(data + secret)),
    both as UTF-8 bytes."""
    raw = data if isinstance(data, bytes) else data.encode()
    return base64.b64encode(hashlib.md5(raw + secret.encode()).digest()).decode()


def scan_status(code: str) -> TrackingStatus:
    """A ZTO scan type (Chinese `scanType` or English `action`) as a `TrackingStatus`."""
    status = SCAN_STATUS.get(code.strip())
    if status is None:
        logger.warning("ZTO scan type %r is not in the table: read as in transit", code)
        return TrackingStatus.IN_TRANSIT
    return status


@dataclass(frozen=True)
class ZtoRate:
    """One lane of the contract's rate card, in minor units of `currency`: the first
    kilogram, and each further started kilogram."""

    first_kg: int
    additional_kg: int
    currency: str = "CNY"

    def price(self, weight_g: int) -> int:
        kilograms = max(1, math.ceil(weight_g / 1000))
        return self.first_kg + self.additional_kg * (kilograms - 1)


def _province(name: str | None) -> str:
    return _PROVINCE_SUFFIX.sub("", (name or "").strip()) or "*"


def _phone_fields(prefix: str, phone: str) -> dict[str, str]:
    digits = re.sub(r"[\s-]", "", phone).removeprefix("+86")
    if _MOBILE.fullmatch(digits):
        return {f"{prefix}Mobile": digits}
    return {f"{prefix}Phone": phone}


def _china_time(moment: datetime) -> str:
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def _scan_time(value: Any) -> datetime:
    """`scanDate` (epoch milliseconds) or `actionTime` ("yyyy-MM-dd HH:mm:ss", China time)."""
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    if isinstance(value, str):
        return datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
    raise ValueError(f"not a ZTO time: {value!r}")


class Zto:
    """ZTO Express: quotes from the contract's rate card (lanes ZTO confirms it routes),
    shipments through the open platform, tracking by query and by push."""

    name: ClassVar[str] = "zto"
    push_received: ClassVar[bytes] = json.dumps(PUSH_RECEIVED, ensure_ascii=False).encode()
    temperatures: ClassVar[frozenset[Temperature]] = frozenset({Temperature.AMBIENT})
    cash_on_delivery: ClassVar[bool] = False

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: SecretStr,
        account_id: str,
        account_password: SecretStr,
        rates: Mapping[tuple[str, str], ZtoRate],
        company_id: str | None = None,
        api_url: str = PRODUCTION_URL,
        transport: Transport = urllib_transport,
        shipments: MutableMapping[str, Shipment] | None = None,
        subscribe: bool = True,
    ) -> None:
        """`account_id`/`account_password`: the e-waybill account (电子面单账号) the labels
        are drawn from; `rates` by (origin province, destination province), "*" for any;
        `shipments`: the record of shipments by reference (in memory unless given)."""
        if not app_key.strip():
            raise CarrierMisconfigured("ZTO app key is not set")
        if not app_secret.get_secret_value().strip():
            raise CarrierMisconfigured("ZTO app secret is not set")
        if not account_id.strip() or not account_password.get_secret_value().strip():
            raise CarrierMisconfigured("ZTO e-waybill account (id and password) is not set")
        if not api_url.startswith(("https://", "http://")):
            raise CarrierMisconfigured(f"ZTO api_url is not an HTTP(S) URL: {api_url!r}")
        if not rates:
            raise CarrierMisconfigured("ZTO has no rate card: nothing could be quoted")
        for lane, rate in rates.items():
            if not (isinstance(rate.first_kg, int) and isinstance(rate.additional_kg, int)):
                raise CarrierMisconfigured(f"ZTO rate for {lane} is not in integer minor units")
            if rate.first_kg < 0 or rate.additional_kg < 0 or len(rate.currency) != 3:
                raise CarrierMisconfigured(f"ZTO rate for {lane} is not a price")
        self.app_key = app_key
        self._secret = app_secret
        self.company_id = company_id or app_key
        self.account_id = account_id
        self._account_password = account_password
        self.rates = {(_province(o), _province(d)): rate for (o, d), rate in rates.items()}
        self.api_url = api_url.rstrip("/")
        self.transport = transport
        self.shipments: MutableMapping[str, Shipment] = {} if shipments is None else shipments
        self.subscribe_on_create = subscribe
        self._unsubscribed: set[str] = set()
        self._create_lock = threading.Lock()

    # ------------------------------------------------------------ the Carrier protocol

    def quote(self, request: ShipmentRequest) -> list[Quote]:
        """The rate card's price, for a lane ZTO answers a sorting mark for; [] for what ZTO
        cannot carry (cold chain, cash on delivery) or a lane without a rate."""
        if request.temperature not in self.temperatures or request.cod_amount:
            return []
        rate = self._rate(request.sender, request.recipient)
        if rate is None:
            return []
        mark = self.call(BAG_ADDR_MARK, _mark_body(request), redact=_personal(request))
        if not isinstance(mark, dict) or not mark.get("mark"):
            return []  # no sorting mark: ZTO does not route this address pair
        return [
            Quote(
                carrier=self.name,
                service=SERVICE,
                service_name=SERVICE_NAME,
                price=rate.price(request.weight_g),
                currency=rate.currency,
                temperatures=self.temperatures,
                cash_on_delivery=self.cash_on_delivery,
            )
        ]

    def create(self, request: ShipmentRequest, service: str) -> Shipment:
        """The bill code for the request; the recorded shipment when the reference was
        already shipped (see the module docstring on why the record, not ZTO, decides)."""
        if service != SERVICE:
            raise Unsupported(f"ZTO has no service {service!r} (only {SERVICE!r})")
        if request.temperature not in self.temperatures:
            raise Unsupported(f"ZTO express carries no {request.temperature.value} parcels")
        if request.cod_amount:
            raise Unsupported("ZTO cash on delivery is not supported by this adapter")
        for role, party in (("sender", request.sender), ("recipient", request.recipient)):
            if party.country != "CN" or not party.province:
                raise PermanentFailure(f"ZTO needs a mainland address with a province ({role})")
        with self._create_lock:
            shipment = self.shipments.get(request.reference)
            if shipment is None:
                result = self.call(
                    CREATE_ORDER, self._order_body(request), redact=_personal(request)
                )
                shipment = self._shipment(request, result)
                self.shipments[request.reference] = shipment
                if self.subscribe_on_create:
                    self._unsubscribed.add(request.reference)
            if request.reference in self._unsubscribed:
                self.subscribe(shipment, phone=request.recipient.phone)
                self._unsubscribed.discard(request.reference)
            return shipment

    def cancel(self, shipment: Shipment) -> None:
        """Call the 预约件 off before pick-up (ZTO refuses once it is collected)."""
        body = {"cancelType": CANCEL_TYPE, "billCode": shipment.tracking_number}
        if shipment.carrier_id:
            body["orderCode"] = shipment.carrier_id
        self.call(CANCEL_ORDER, body)

    def track(self, shipment: Shipment) -> list[TrackingEvent]:
        result = self.call(TRACK_QUERY, {"billCode": shipment.tracking_number})
        traces = result if isinstance(result, list) else []
        events = [
            self._event(
                shipment.tracking_number,
                code=trace.get("scanType"),
                at=trace.get("scanDate"),
                description=trace.get("desc"),
                place=(trace.get("scanSite") or {}).get("name")
                or (trace.get("scanSite") or {}).get("city"),
            )
            for trace in traces
            if isinstance(trace, dict)
        ]
        return sorted(events, key=lambda event: event.at)

    def parse_push(self, body: bytes, headers: Mapping[str, str]) -> list[TrackingEvent]:
        """A trace push (form: data, data_digest, company_id, msg_type), its digest and app
        key checked first; answer ZTO with `PUSH_RECEIVED`."""
        try:
            form = dict(urllib.parse.parse_qsl(body.decode(), strict_parsing=True))
        except (UnicodeDecodeError, ValueError) as exc:
            raise PushRefused("not a ZTO push form") from exc
        data, digest = form.get("data", ""), form.get("data_digest", "")
        expected = data_digest(data, secret=self._secret.get_secret_value())
        if not data or not hmac.compare_digest(digest.encode(), expected.encode()):
            raise PushRefused("ZTO push digest does not verify")
        if not hmac.compare_digest(form.get("company_id", "").encode(), self.app_key.encode()):
            raise PushRefused("ZTO push is for another app key")
        if form.get("msg_type") != "Traces":
            raise PushRefused(f"not a ZTO trace push: {form.get('msg_type')!r}")
        try:
            parsed = json.loads(data)
            traces = parsed if isinstance(parsed, list) else [parsed]
            events = [
                self._event(
                    str(trace["billCode"]),
                    code=trace.get("action"),
                    at=trace.get("actionTime"),
                    description=trace.get("desc"),
                    place=trace.get("facilityName") or trace.get("city"),
                )
                for trace in traces
            ]
        except (ValueError, KeyError, TypeError, PermanentFailure) as exc:
            raise PushRefused(f"ZTO push cannot be read: {type(exc).__name__}") from exc
        return sorted(events, key=lambda event: event.at)

    # ------------------------------------------------------------ ZTO calls

    def subscribe(self, shipment: Shipment, *, phone: str) -> None:
        """Ask ZTO to push the shipment's traces (`phone`: the recipient's; only its last
        four digits are sent, as ZTO asks)."""
        digits = re.sub(r"\D", "", phone)
        self.call(
            TRACK_SUBSCRIBE, {"billCode": shipment.tracking_number, "mobilePhone": digits[-4:]}
        )

    def call(self, method: str, payload: Mapping[str, Any], *, redact: Iterable[str] = ()) -> Any:
        """One signed call; ZTO's `result`, or the failure its `statusCode` names. `redact`:
        personal values of the request, blanked out of any message ZTO echoes."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        request = urllib.request.Request(
            f"{self.api_url}/{method}",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=UTF-8",
                "x-appKey": self.app_key,
                "x-companyid": self.company_id,
                "x-dataDigest": data_digest(body, secret=self._secret.get_secret_value()),
            },
        )
        status, raw = self.transport(request)
        if status == 429 or status >= 500:
            raise TransientFailure(f"ZTO {method}: HTTP {status}")
        if status in (401, 403, 404):
            raise CarrierMisconfigured(f"ZTO {method}: HTTP {status} (app, URL or method)")
        if status >= 400:
            raise PermanentFailure(f"ZTO {method}: HTTP {status}")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise TransientFailure(f"ZTO {method}: the answer is not JSON") from exc
        if not isinstance(answer, dict) or "status" not in answer:
            raise TransientFailure(f"ZTO {method}: the answer is not ZTO's envelope")
        if answer["status"] is True:
            return answer.get("result")
        code = str(answer.get("statusCode") or answer.get("code") or "?")
        message = _redacted(str(answer.get("message") or ""), redact)[:200]
        detail = f"ZTO {method} {code}: {message}"
        if code in TRANSIENT_CODES:
            raise TransientFailure(detail)
        if code in MISCONFIGURED_CODES:
            raise CarrierMisconfigured(detail)
        raise PermanentFailure(detail)

    # ------------------------------------------------------------ helpers

    def _rate(self, sender: Party, recipient: Party) -> ZtoRate | None:
        origin, destination = _province(sender.province), _province(recipient.province)
        for lane in ((origin, destination), (origin, "*"), ("*", destination), ("*", "*")):
            if lane in self.rates:
                return self.rates[lane]
        return None

    def _order_body(self, request: ShipmentRequest) -> dict[str, Any]:
        summary: dict[str, Any] = {"quantity": len(request.parcels)}
        if request.ship_at is not None:
            summary["startTime"] = _china_time(request.ship_at)
        return {
            "partnerType": PARTNER_TYPE,
            "orderType": ORDER_TYPE,
            "partnerOrderCode": request.reference,
            "accountInfo": {
                "accountId": self.account_id,
                "accountPassword": self._account_password.get_secret_value(),
                "type": 1,
            },
            "senderInfo": _party("sender", request.sender),
            "receiveInfo": _party("receiver", request.recipient),
            "summaryInfo": summary,
            "orderItems": [
                {"name": parcel.description, "weight": parcel.weight_g, "quantity": 1}
                for parcel in request.parcels
            ],
        }

    def _shipment(self, request: ShipmentRequest, result: Any) -> Shipment:
        bill_code = result.get("billCode") if isinstance(result, dict) else None
        if not bill_code:
            raise PermanentFailure("ZTO createOrder answered without a bill code")
        return Shipment(
            carrier=self.name,
            reference=request.reference,
            tracking_number=str(bill_code),
            service=SERVICE,
            carrier_id=str(result["orderCode"]) if result.get("orderCode") else None,
            label=None,  # printed locally from bigMarkInfo (ZTO's 76 x 130 mm template)
        )

    def _event(
        self,
        tracking_number: str,
        *,
        code: Any,
        at: Any,
        description: Any,
        place: Any,
    ) -> TrackingEvent:
        if not code:
            raise PermanentFailure(f"ZTO trace of {tracking_number} without a scan type")
        try:
            moment = _scan_time(at)
        except ValueError as exc:
            raise PermanentFailure(f"ZTO trace of {tracking_number}: {exc}") from exc
        return TrackingEvent(
            tracking_number=tracking_number,
            status=scan_status(str(code)),
            carrier_status=str(code),
            at=moment,
            description=str(description) if description else None,
            place=str(place) if place else None,
        )


def _party(prefix: str, party: Party) -> dict[str, Any]:
    fields: dict[str, Any] = {
        f"{prefix}Name": party.name,
        **_phone_fields(prefix, party.phone),
        f"{prefix}Province": party.province,
        f"{prefix}City": party.city,
        f"{prefix}Address": party.street,
    }
    if party.district:
        fields[f"{prefix}District"] = party.district
    return fields


def _mark_body(request: ShipmentRequest) -> dict[str, Any]:
    sender, recipient = request.sender, request.recipient
    return {
        "unionCode": uuid.uuid4().hex,
        "send_province": sender.province or "",
        "send_city": sender.city,
        "send_district": sender.district or "",
        "send_address": sender.street,
        "receive_province": recipient.province or "",
        "receive_city": recipient.city,
        "receive_district": recipient.district or "",
        "receive_address": recipient.street,
    }


def _personal(request: ShipmentRequest) -> list[str]:
    values = []
    for party in (request.sender, request.recipient):
        values += [party.name, party.phone, party.street, party.email or "", party.company or ""]
    return [value for value in values if len(value) >= 2]


def _redacted(message: str, personal: Iterable[str]) -> str:
    for value in sorted(personal, key=len, reverse=True):
        message = message.replace(value, "***")
    return re.sub(r"(?<!\d)1\d{10}(?!\d)", "***", message)  # any mobile number ZTO echoes
