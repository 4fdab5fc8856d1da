"""A fake of JD Logistics' open platform (LOP, ECAP express) for tests: one local HTTP server
that checks what JD's gateway checks (connectors/carriers/jd_logistics.py has the format and
its sources) — the `LOP-DN` domain, app key, access token, `v`, `algorithm`, a timestamp within
ten minutes in the `lop-tz` zone, and the md5-salt sign recomputed over path and body — then
what each API requires (a JSON array of one object, orderOrigin, our customerCode, contacts,
cargoes, a known product, the cancel reason's length), answers in JD's envelope (gateway
`error_response`, API `{"code", "msg", "data", "subCode", "subMsg"}`), keeps orders and their
traces in memory, and signs pushes. Its own choices where JD's are not published: the error
code numbers, the tariff, and the trace each new order is given (390 → 510, newest first).
"""

from __future__ import annotations

import json
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any

from connectors.carriers.jd_logistics import lop_sign, push_sign
from tests.fake_http import FakeHttpServer

APP_KEY = "62d07644754843cc882fca7c0147fake"
APP_SECRET = "0c2c8b6b7c10481ea639f6daa09afake"
ACCESS_TOKEN = "78c246c0ab564e67add6296a9eaffake"
CUSTOMER_CODE = "027K1234912"
PRODUCTS = {"ed-m-0001": ("京东标快", Decimal("12"), Decimal("2"), 2),
            "ed-m-0002": ("京东特快", Decimal("23"), Decimal("6"), 1)}  # fmt: skip
CHINA = timezone(timedelta(hours=8))
FORMAT = "%Y-%m-%d %H:%M:%S"
SYSTEM_PARAMETERS = {"LOP-DN", "app_key", "access_token", "timestamp", "v", "sign", "algorithm"}
# What a new order's trace is: (category, categoryName, operationTitle, remark, hours after).
TRACE = [
    (390, "揽收中", "揽收任务分配", "揽收任务已分配给张三（联系电话：13818888888）。", 1),
    (420, "已揽收", "揽收", "京东快递 已收取快件", 2),
    (430, "运输中", "分拣验收", "您的快件已到达【分拣中心A】", 6),
    (440, "派送中", "派件", "您的快件正在派送中（快递员：卫十四，联系电话：13819999999）。", 20),
    (510, "妥投", "妥投", "您的快件已由【客户指定地点】代收，感谢您使用京东物流。", 22),
]


@dataclass
class FakeJdl:
    url: str = ""
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # by orderId
    calls: list[dict[str, Any]] = field(default_factory=list)  # path, query, headers, body
    rejected: list[str] = field(default_factory=list)  # refusals, and why
    # What the next calls meet: "http-503", "gateway-limit", "api-system", "api-refuse".
    fail_next: list[str] = field(default_factory=list)
    # Answer a repeated orderId without its waybill (JD's answer is not documented to hold it).
    repeat_without_waybill: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def signed_push(
        self, *, waybill_code: str | None = None, category: int = 510, at: datetime | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """A trace node pushed as JD pushes it (the fields of its push), signed with our app."""
        order = next(iter(self.orders.values()), None)
        waybill = waybill_code or (order["waybillCode"] if order else "JDVE00132473532")
        category, name, title, remark, _ = next(t for t in TRACE if t[0] == category)
        node = {
            "waybillCode": waybill,
            "orderId": order["orderId"] if order else "SJ202505201442",
            "category": category,
            "categoryName": name,
            "operationTitle": title,
            "operationRemark": remark,
            "operationTime": (at or datetime.now(UTC)).astimezone(CHINA).strftime(FORMAT),
            "state": "10034",
            "scanType": "150",
            "operateSite": "石景山营业部",
        }
        body = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
        timestamp = datetime.now(CHINA).strftime(FORMAT)
        sign = push_sign(app_secret=APP_SECRET, app_key=APP_KEY, body=body, timestamp=timestamp)
        return body.encode(), {"app_key": APP_KEY, "timestamp": timestamp, "sign": sign}

    def _failure(self, *kinds: str) -> str | None:
        with self.lock:
            for kind in kinds:
                if kind in self.fail_next:
                    self.fail_next.remove(kind)
                    return kind
        return None

    # ------------------------------------------------------------ the gateway

    def gateway(
        self, path: str, query: dict[str, str], headers: Any, body: str
    ) -> dict[str, Any] | None:
        """JD's gateway: an `error_response` for a bad system parameter, else None."""

        def refuse(code: int, en: str, zh: str) -> dict[str, Any]:
            self.rejected.append(f"gateway {code}: {en}")
            return {"error_response": {"en_desc": en, "zh_desc": zh, "code": code}}

        missing = SYSTEM_PARAMETERS - set(query)
        if missing:
            return refuse(100, f"Missing parameter {sorted(missing)}", "缺少系统参数")
        if query["LOP-DN"] != "ECAP":
            return refuse(101, "Invalid domain", "对接方案编码错误")
        if query["app_key"] != APP_KEY:
            return refuse(102, "Invalid app_key", "app_key无效")
        if query["access_token"] != ACCESS_TOKEN:
            return refuse(103, "Invalid access_token", "access_token无效或已过期")
        if query["v"] != "2.0" or query["algorithm"] != "md5-salt":
            return refuse(104, "Unsupported version or algorithm", "版本或签名算法不支持")
        try:
            zone = timezone(timedelta(hours=int(headers.get("lop-tz") or 8)))
            sent = datetime.strptime(query["timestamp"], FORMAT).replace(tzinfo=zone)
        except ValueError:
            return refuse(105, "Invalid timestamp", "时间戳格式错误")
        if abs(datetime.now(UTC) - sent) > timedelta(minutes=10):
            return refuse(106, "Timestamp out of range", "时间戳超出允许范围")
        expected = lop_sign(
            app_secret=APP_SECRET,
            access_token=query["access_token"],
            app_key=query["app_key"],
            method=path,
            param_json=body,
            timestamp=query["timestamp"],
        )
        if query["sign"].lower() != expected:
            return refuse(107, "Invalid signature", "签名校验失败")
        if self._failure("gateway-limit"):
            return refuse(108, "App call limited", "调用频率超限")
        return None

    # ------------------------------------------------------------ the APIs

    def api(self, path: str, body: str) -> dict[str, Any]:
        try:
            parameters = json.loads(body)
        except ValueError:
            return self._refuse(1, "参数格式错误：请求体不是JSON")
        if not (isinstance(parameters, list) and len(parameters) == 1):
            return self._refuse(1, "参数格式错误：请求体应为只含一个对象的数组")
        request = parameters[0]
        if failure := self._failure("api-system", "api-refuse"):
            if failure == "api-system":
                return self._refuse(500, "系统异常，请稍后重试")
            return self._refuse(3, "收件地址超区，请联系18600001111")
        if request.get("orderOrigin") != 1:
            return self._refuse(2, "orderOrigin不能为空")
        if request.get("customerCode") != CUSTOMER_CODE:
            return self._refuse(4, "客户编码不存在或无权限")
        handler = {
            "/ecap/v1/orders/precheck": self.precheck,
            "/ecap/v1/orders/create": self.create,
            "/ecap/v1/orders/cancel": self.cancel,
            "/ecap/v1/orders/trace/query": self.trace,
            "/ecap/v1/orders/query": self.query_order,
        }.get(path)
        if handler is None:
            return self._refuse(404, "接口不存在")
        return handler(request)

    def precheck(self, request: dict[str, Any]) -> dict[str, Any]:
        if refusal := self._contacts(request, names=False) or self._cargoes(request):
            return refusal
        code = (request.get("productsReq") or {}).get("productCode")
        if code not in PRODUCTS:
            return self._refuse(6, f"产品编码{code}不存在")
        name, first, extra, days = PRODUCTS[code]
        weight = Decimal(str(request["cargoes"][0]["weight"]))
        freight = first + extra * max(Decimal(0), (weight - 1).to_integral_value("ROUND_CEILING"))
        freight += Decimal("0.505")  # a fraction of a fen, so that the rounding is checked
        promise = datetime.now(UTC) + timedelta(days=days)
        info = {
            "productCode": code,
            "productName": name,
            "freightPre": float(freight),
            "freightStandard": float(freight),
            "deliveryPromiseTime": int(promise.timestamp() * 1000),
        }
        fee = {"currency": "CNY", "totalAmount": float(freight)}
        return self._ok({"productInfos": [info], "commonFeeInfoResponse": fee,
                         "totalFreightPre": float(freight)})  # fmt: skip

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        order_id = request.get("orderId")
        if not order_id or not 1 <= len(order_id) <= 50:
            return self._refuse(2, "orderId不能为空，长度1-50")
        if refusal := self._contacts(request, names=True) or self._cargoes(request):
            return refusal
        if (request.get("productsReq") or {}).get("productCode") not in PRODUCTS:
            return self._refuse(6, "产品编码不存在")
        if request.get("settleType") not in (1, 2, 3):
            return self._refuse(2, "settleType不合法")
        for added in request.get("addedProducts") or []:
            attrs = added.get("productAttrs") or {}
            key = {"ed-a-0009": "shouldPayMoney", "ed-a-0002": "guaranteeMoney"}.get(
                added.get("productCode")
            )
            if key is None or not _yuan_text(attrs.get(key)):
                return self._refuse(7, f"增值产品{added.get('productCode')}属性不合法")
        with self.lock:
            if order_id in self.orders:
                order = self.orders[order_id]
                data = {"orderCode": order["orderCode"]}
                if not self.repeat_without_waybill:
                    data["waybillCode"] = order["waybillCode"]
                return self._ok(data, sub_code="0_0001", sub_msg="商家订单号已被使用")
            waybill = f"JDV{secrets.randbelow(10**12):012d}"
            now = datetime.now(UTC)
            self.orders[order_id] = {
                "orderId": order_id,
                "orderCode": f"EO{secrets.randbelow(10**13):013d}",
                "waybillCode": waybill,
                "request": request,
                "cancelled": False,
                "traces": [_node(waybill, order_id, t, now) for t in reversed(TRACE)],
            }
            order = self.orders[order_id]
        return self._ok({"waybillCode": waybill, "orderCode": order["orderCode"],
                         "freightPre": 12.5})  # fmt: skip

    def cancel(self, request: dict[str, Any]) -> dict[str, Any]:
        reason = request.get("cancelReason") or ""
        if not 1 <= len(reason) <= 30:
            return self._refuse(2, "cancelReason不能为空，长度1-30")
        if request.get("cancelType") != 1:
            return self._refuse(2, "cancelType不合法")
        order = self._by_waybill(request.get("waybillCode"))
        if order is None:
            return self._refuse(8, "运单不存在")
        with self.lock:
            order["cancelled"] = True
        return self._ok({"resultType": 0})

    def trace(self, request: dict[str, Any]) -> dict[str, Any]:
        order = self._by_waybill(request.get("waybillCode"))
        if order is None:
            return self._refuse(8, "运单不存在")
        return self._ok({"waybillCode": order["waybillCode"], "traceDetails": order["traces"]})

    def query_order(self, request: dict[str, Any]) -> dict[str, Any]:
        order = self.orders.get(request.get("customerOrderId") or "")
        if order is None:
            return self._refuse(8, "订单不存在")
        return self._ok({"orderId": order["orderId"], "orderCode": order["orderCode"],
                         "waybillCode": order["waybillCode"]})  # fmt: skip

    # ------------------------------------------------------------ checks and envelopes

    def _contacts(self, request: dict[str, Any], *, names: bool) -> dict[str, Any] | None:
        for side in ("senderContact", "receiverContact"):
            contact = request.get(side) or {}
            if not contact.get("fullAddress"):
                return self._refuse(2, f"{side}.fullAddress不能为空")
            if names and not contact.get("name"):
                return self._refuse(2, f"{side}.name不能为空")
            if names and not (contact.get("mobile") or contact.get("phone")):
                return self._refuse(2, f"{side}.mobile与phone不能同时为空")
        return None

    def _cargoes(self, request: dict[str, Any]) -> dict[str, Any] | None:
        cargoes = request.get("cargoes") or []
        if len(cargoes) != 1:
            return self._refuse(2, "cargoes仅支持一个货品")
        cargo = cargoes[0]
        if not cargo.get("name") or not isinstance(cargo.get("quantity"), int):
            return self._refuse(2, "cargoes.name、quantity不能为空")
        if not isinstance(cargo.get("weight"), int | float) or cargo["weight"] <= 0:
            return self._refuse(2, "cargoes.weight必须大于0（单位kg）")
        return None

    def _by_waybill(self, waybill: Any) -> dict[str, Any] | None:
        return next((o for o in self.orders.values() if o["waybillCode"] == waybill), None)

    def _refuse(self, code: int, msg: str) -> dict[str, Any]:
        self.rejected.append(f"api {code}: {msg}")
        return {"code": code, "msg": msg, "success": False, "requestId": secrets.token_hex(8)}

    @staticmethod
    def _ok(data: Any, *, sub_code: str = "", sub_msg: str = "") -> dict[str, Any]:
        answer = {"code": 0, "msg": "成功", "success": True, "data": data,
                  "requestId": secrets.token_hex(8), "mills": 12}  # fmt: skip
        if sub_code:
            answer |= {"subCode": sub_code, "subMsg": sub_msg}
        return answer


def _node(waybill: str, order_id: str, step: tuple[Any, ...], start: datetime) -> dict[str, Any]:
    category, name, title, remark, hours = step
    return {
        "waybillCode": waybill,
        "orderId": order_id,
        "category": category,
        "categoryName": name,
        "operationTitle": title,
        "operationRemark": remark,
        "operationTime": (start + timedelta(hours=hours)).astimezone(CHINA).strftime(FORMAT),
        "operateSite": "石景山营业部",
    }


def _yuan_text(value: Any) -> bool:
    """JD's amounts in product attributes: a string of yuan with at most two decimals."""
    if not isinstance(value, str):
        return False
    whole, _, cents = value.partition(".")
    return whole.isdigit() and (cents == "" or (cents.isdigit() and len(cents) <= 2))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeJdl

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        with self.fake.lock:
            self.fake.calls.append({"path": url.path, "query": query, "body": body,
                                    "headers": dict(self.headers.items())})  # fmt: skip
        if self.fake._failure("http-503"):
            self._answer(503, {"error": "Service Unavailable"})
            return
        refusal = self.fake.gateway(url.path, query, self.headers, body)
        self._answer(200, refusal if refusal is not None else self.fake.api(url.path, body))

    def do_GET(self) -> None:
        self._answer(405, {"error": "only POST"})


@contextmanager
def fake_jdl() -> Iterator[FakeJdl]:
    fake = FakeJdl()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = FakeHttpServer(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
