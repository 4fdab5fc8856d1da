"""A fake of SF Express's open platform (丰桥 sfapi, `/std/service`) for tests: SF cannot be
reached here. One local HTTP server that checks what SF documents it checks
(connectors/carriers/sf_express.py has the sources): a form POST with partnerID, requestID,
serviceCode, timestamp, msgData and msgDigest (A1001 when one is missing or msgData is not
JSON), a known partner with the service granted (A1004), the msgDigest recomputed here from
the check word with its own Java-URLEncoder emulation (A1006); then each service's required
fields with SF's business codes (1010-1016 contacts, 1023 cargo name, 6126/8119 monthly card,
6138/6139 COD, 8057 product, 8016 duplicate orderId, 8018 unknown order, 8037 already
cancelled, 8003/8013 route query). Answers are SF's envelope: `apiResultCode`, `apiErrorMsg`,
`apiResponseID`, `apiResultData` as a JSON string `{success, errorCode, errorMsg, msgData}`.

Orders and routes are kept in memory. Like SF's sandbox, an order gets two routes when it is
made (kept newest first, so a client that does not sort shows it); `add_route` adds more and
`signed_push` builds the route push SF would send for a waybill (SF signs none: see the
adapter's docstring for how a push is believed). `fail_next` makes the next call answer a
given platform or business code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fake_http import FakeHttpServer

PARTNER_ID = "OSFAKE0001"
CHECK_WORD = "fakeCheckWord0123456789abcdefXYZ"
MONTHLY_CARD = "7551234567"
BEIJING = timezone(timedelta(hours=8))
PATH = "/std/service"
SERVICES = {
    "EXP_RECE_CREATE_ORDER",
    "EXP_RECE_SEARCH_ORDER_RESP",
    "EXP_RECE_UPDATE_ORDER",
    "EXP_RECE_SEARCH_ROUTES",
    "EXP_RECE_QUERY_DELIVERTM",
}
# Products: businessType → (name, first kg in fen, each further kg in fen, days to deliver)
PRODUCTS = {"1": ("顺丰特快", 2300, 1300, 1), "2": ("顺丰标快", 1200, 200, 2)}
API_MESSAGES = {
    "A1001": "必填参数不可为空",
    "A1004": "无对应服务权限",
    "A1005": "流量受控",
    "A1006": "数字签名无效",
    "A1099": "系统异常",
}
UNRESERVED = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_")


def java_url_encode(text: str) -> str:
    """What Java's URLEncoder.encode(text, "UTF-8") gives, byte by byte."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in UNRESERVED:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def sf_digest(msg_data: str, timestamp: str, check_word: str) -> str:
    encoded = java_url_encode(msg_data + timestamp + check_word).encode("utf-8")
    return base64.b64encode(hashlib.md5(encoded).digest()).decode("ascii")


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class FakeSf:
    url: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)  # every form, as received
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # by orderId
    routes: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # by waybill
    rejected: list[str] = field(default_factory=list)
    fail_next: list[tuple[str, str]] = field(default_factory=list)  # ("api"|"biz", code)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: int = 0

    def service_codes(self) -> list[str]:
        return [form.get("serviceCode", "") for form in self.requests]

    # ------------------------------------------------------------ the platform

    def handle(self, content_type: str, raw: bytes) -> dict[str, Any]:
        form = dict(urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        with self.lock:
            self.requests.append(form)
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return self._api("A1001")
        public = ("partnerID", "requestID", "serviceCode", "timestamp", "msgData", "msgDigest")
        if any(not form.get(name) for name in public) or not form["timestamp"].isdigit():
            return self._api("A1001")
        if form["partnerID"] != PARTNER_ID or form["serviceCode"] not in SERVICES:
            return self._api("A1004")
        expected = sf_digest(form["msgData"], form["timestamp"], CHECK_WORD)
        if form["msgDigest"] != expected:
            return self._api("A1006")
        try:
            msg = json.loads(form["msgData"])
        except ValueError:
            return self._api("A1001")
        if (failure := self._failure()) is not None:
            kind, code = failure
            if kind == "api":
                return self._api(code)
            return self._business(None, Refused(code, "told to fail"))
        handler = {
            "EXP_RECE_CREATE_ORDER": self.create_order,
            "EXP_RECE_SEARCH_ORDER_RESP": self.search_order,
            "EXP_RECE_UPDATE_ORDER": self.update_order,
            "EXP_RECE_SEARCH_ROUTES": self.search_routes,
            "EXP_RECE_QUERY_DELIVERTM": self.query_delivertm,
        }[form["serviceCode"]]
        try:
            return self._business(handler(msg if isinstance(msg, dict) else {}))
        except Refused as refusal:
            return self._business(None, refusal)

    def _failure(self) -> tuple[str, str] | None:
        with self.lock:
            return self.fail_next.pop(0) if self.fail_next else None

    def _api(self, code: str) -> dict[str, Any]:
        self.rejected.append(code)
        return {
            "apiErrorMsg": API_MESSAGES.get(code, "error"),
            "apiResponseID": uuid.uuid4().hex.upper(),
            "apiResultCode": code,
            "apiResultData": None,
        }

    def _business(self, data: Any, refusal: Refused | None = None) -> dict[str, Any]:
        if refusal is not None:
            self.rejected.append(refusal.code)
            result: dict[str, Any] = {
                "success": False,
                "errorCode": refusal.code,
                "errorMsg": refusal.message,
                "msgData": None,
            }
        else:
            result = {"success": True, "errorCode": "S0000", "errorMsg": None, "msgData": data}
        text = json.dumps(result, ensure_ascii=False)
        # SF's fee is a JSON number in yuan: written from fen as text, never through a float.
        text = text.replace('"fen:', "").replace(':fen"', "")
        return {
            "apiErrorMsg": "",
            "apiResponseID": uuid.uuid4().hex.upper(),
            "apiResultCode": "A1000",
            "apiResultData": text,
        }

    # ------------------------------------------------------------ the services

    def create_order(self, msg: dict[str, Any]) -> dict[str, Any]:
        order_id = str(msg.get("orderId") or "")
        if not order_id:
            raise Refused("S0002", "必填参数orderId为空")
        contacts = {c.get("contactType"): c for c in msg.get("contactInfoList") or []}
        for contact_type, codes in ((1, ("1010", "1011", "1012")), (2, ("1014", "1015", "1016"))):
            contact = contacts.get(contact_type) or {}
            if not contact.get("address"):
                raise Refused(codes[0], "地址不能为空")
            if not contact.get("contact"):
                raise Refused(codes[1], "联系人不能为空")
            if not (contact.get("mobile") or contact.get("tel")):
                raise Refused(codes[2], "电话不能为空")
        cargo = msg.get("cargoDetails") or []
        if not cargo or not all(item.get("name") for item in cargo):
            raise Refused("1023", "拖寄物品名不能为空")
        if str(msg.get("expressTypeId", "")) not in PRODUCTS:
            raise Refused("8057", "快件类型为空或未配置")
        card = msg.get("monthlyCard")
        if card is not None:
            if not (str(card).isdigit() and len(str(card)) == 10):
                raise Refused("6126", "月结卡号不合法")
            if card != MONTHLY_CARD:
                raise Refused("8119", "月结卡号不存在或已失效")
        for service in msg.get("serviceList") or []:
            if service.get("name") == "COD":
                try:
                    value = Decimal(str(service.get("value")))
                except ArithmeticError as exc:
                    raise Refused("6138", "代收货款金额传入错误") from exc
                if value <= 0:
                    raise Refused("6139", "代收货款金额小于0错误")
        with self.lock:
            if order_id in self.orders:
                raise Refused("8016", "重复下单")
            self._serial += 1
            waybill = f"SF1{self._serial:012d}"
            self.orders[order_id] = {"waybill": waybill, "msg": msg, "status": "created"}
        at = datetime.now(BEIJING).replace(microsecond=0)
        # SF's sandbox makes two routes per order; stored newest first.
        self.add_route(
            waybill, "30", "快件在【深圳南山营业点】完成分拣,准备发往", at=at, place="深圳市"
        )
        self.add_route(waybill, "50", "顺丰速运 已收取快件", at=at - timedelta(hours=2))
        return {"orderId": order_id, "waybillNoInfoList": self._waybills(waybill)}

    def search_order(self, msg: dict[str, Any]) -> dict[str, Any]:
        order = self.orders.get(str(msg.get("orderId") or ""))
        if order is None:
            raise Refused("8018", "未获取到订单信息")
        return {
            "orderId": msg["orderId"],
            "waybillNoInfoList": self._waybills(order["waybill"]),
            "filterResult": "2",
        }

    def update_order(self, msg: dict[str, Any]) -> dict[str, Any]:
        if str(msg.get("dealType", "")) not in ("1", "2"):
            raise Refused("S0002", "必填参数dealType为空")
        order = self.orders.get(str(msg.get("orderId") or ""))
        if order is None:
            raise Refused("6150", "找不到该订单")
        if order["status"] == "cancelled":
            raise Refused("8037", "订单已消单")
        order["status"] = "cancelled" if str(msg["dealType"]) == "2" else "confirmed"
        return {
            "orderId": msg["orderId"],
            "waybillNoInfoList": self._waybills(order["waybill"]),
            "resStatus": 2,
        }

    def search_routes(self, msg: dict[str, Any]) -> dict[str, Any]:
        if str(msg.get("trackingType", "")) != "1":
            raise Refused("S0002", "trackingType")
        numbers = msg.get("trackingNumber")
        if not numbers or not isinstance(numbers, list):
            raise Refused("8013", "未传入查询单号")
        if len(numbers) > 10:
            raise Refused("8003", "查询单号超过最大限制")
        return {
            "routeResps": [
                {"mailNo": number, "routes": list(self.routes.get(number, []))}
                for number in numbers
            ]
        }

    def query_delivertm(self, msg: dict[str, Any]) -> dict[str, Any]:
        for side in ("srcAddress", "destAddress"):
            address = msg.get(side) or {}
            if not (address.get("code") or (address.get("province") and address.get("city"))):
                raise Refused("S0002", f"必填参数{side}为空")
        if msg.get("searchPrice") not in (None, "0", "1"):
            raise Refused("S0007", "searchPrice")
        weight = Decimal(str(msg.get("weight") or "1"))
        if weight <= 0:
            raise Refused("S0006", "weight不能小于0")
        card = msg.get("monthlyCard")
        if card is not None and card != MONTHLY_CARD:
            raise Refused("8119", "月结卡号不存在或已失效")
        wanted = str(msg.get("businessType") or "")
        consigned = datetime.now(BEIJING)
        if msg.get("consignedTime"):
            consigned = datetime.strptime(msg["consignedTime"], "%Y-%m-%d %H:%M:%S")
        options = []
        for product, (name, first, further, days) in PRODUCTS.items():
            if wanted and product != wanted:
                continue
            kilos = int(weight.to_integral_value(rounding=ROUND_CEILING))
            fen = first + further * max(kilos - 1, 0)
            by = (consigned + timedelta(days=days)).replace(hour=18, minute=0, second=0)
            options.append(
                {
                    "businessType": product,
                    "businessTypeDesc": name,
                    "deliverTime": f"{by:%Y-%m-%d %H:%M:%S},{by:%Y-%m-%d %H:%M:%S}",
                    "fee": f"fen:{fen // 100}.{fen % 100:02d}:fen"
                    if msg.get("searchPrice") == "1"
                    else None,
                    "searchPrice": msg.get("searchPrice") or "0",
                    "closeTime": None,
                }
            )
        return {"deliverTmDto": options}

    # ------------------------------------------------------------ routes and pushes

    @staticmethod
    def _waybills(waybill: str) -> list[dict[str, Any]]:
        return [{"waybillType": 1, "waybillNo": waybill}]

    def waybill_of(self, order_id: str) -> str:
        return str(self.orders[order_id]["waybill"])

    def add_route(
        self,
        waybill: str,
        op_code: str,
        remark: str,
        *,
        at: datetime | None = None,
        place: str = "深圳市",
    ) -> dict[str, str]:
        moment = (at or datetime.now(BEIJING)).astimezone(BEIJING)
        route = {
            "acceptTime": f"{moment:%Y-%m-%d %H:%M:%S}",
            "acceptAddress": place,
            "remark": remark,
            "opCode": op_code,
        }
        with self.lock:
            self.routes.setdefault(waybill, []).insert(0, route)  # newest first
        return route

    def signed_push(
        self,
        waybill: str,
        *,
        op_code: str = "80",
        remark: str = "已签收,感谢使用顺丰,期待再次为您服务",
    ) -> tuple[bytes, dict[str, str]]:
        """The route push SF sends (RoutePushService, JSON method) for a new route of
        `waybill`, recorded here first as SF records it. SF signs no push: the headers are
        what it sends, and the adapter confirms the route with SF's route query."""
        at = datetime.now(BEIJING).replace(microsecond=0) + timedelta(minutes=5)
        route = self.add_route(waybill, op_code, remark, at=at)
        order_id = next((o for o, v in self.orders.items() if v["waybill"] == waybill), "")
        pushed = {
            "mailno": waybill,
            "acceptTime": route["acceptTime"],
            "acceptAddress": route["acceptAddress"],
            "remark": remark,
            "opCode": op_code,
            "id": str(secrets.randbelow(10**15)),
            "orderid": order_id,
            "reasonName": "",
            "reasonCode": "",
        }
        body = json.dumps({"Body": {"WaybillRoute": [pushed]}}, ensure_ascii=False)
        return body.encode("utf-8"), {"Content-Type": "application/json;charset=UTF-8"}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSf

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urllib.parse.urlsplit(self.path).path != PATH:
            status, answer = 404, {"error": "no such path"}
        else:
            status, answer = 200, self.fake.handle(self.headers.get("Content-Type", ""), raw)
        data = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def fake_sf() -> Iterator[FakeSf]:
    """The fake SF platform at `fake.url` (its `/std/service` endpoint), for one test."""
    fake = FakeSf()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = FakeHttpServer(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}{PATH}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
