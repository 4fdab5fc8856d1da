"""A fake of ZTO's open platform (connectors/carriers/zto.py has the format and its sources):
one local HTTP server that checks what ZTO's gateway documents it checks - the app key
(`x-appKey`, or `x-companyid` as ZTO's SDKs send it) and the data digest recomputed over the
raw body (S210 no permission, S211 bad signature), the e-waybill account (E404), the fields
each method requires (S208 "XX不能为空") - answers in ZTO's envelope, keeps orders and traces
in memory, can be told to fail, and signs trace pushes as ZTO does.

The fake does not deduplicate `partnerOrderCode`: ZTO publishes no such promise, so a repeated
createOrder gets a new bill code here, and the adapter's own record has to keep one shipment
per reference.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

from connectors.carriers.zto import CHINA, data_digest
from tests.fake_http import FakeHttpServer

APP_KEY, APP_SECRET = "a227a62c216cdc328273d", "fake-zto-secret-密钥"
ACCOUNT_ID, ACCOUNT_PASSWORD = "test", "ZTO123"  # ZTO's test e-waybill account
_PARTY_FIELDS = ("Name", "Province", "City", "Address")


@dataclass
class FakeZto:
    url: str = ""
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # by bill code
    traces: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by bill code
    subscriptions: dict[str, str] = field(default_factory=dict)  # bill code -> mobilePhone
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # requests refused, and why
    fail_next: list[tuple[str, Any]] = field(default_factory=list)  # (method, code or HTTP)
    routed: set[str] = field(default_factory=lambda: {"广东省", "浙江省", "上海", "北京"})
    lock: threading.Lock = field(default_factory=threading.Lock)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(73100196611386))

    # ------------------------------------------------------------ test controls

    def scan(self, bill_code: str, scan_type: str, at: datetime, *, site: str = "杭州中转") -> None:
        """Record a scan of the parcel, as the network would."""
        trace = {
            "billCode": bill_code,
            "scanType": scan_type,
            "scanDate": int(at.timestamp() * 1000),
            "scanSite": {"name": site, "city": "杭州市", "prov": "浙江省"},
            "desc": f"【{site}】{scan_type}",
        }
        with self.lock:
            self.traces.setdefault(bill_code, []).append(trace)

    def signed_push(
        self,
        bill_code: str,
        *,
        action: str = "SIGNED",
        at: datetime | None = None,
        secret: str = APP_SECRET,
    ) -> tuple[bytes, dict[str, str]]:
        """A trace push for `bill_code` as ZTO sends it: form fields data, data_digest,
        company_id and msg_type."""
        moment = (at or datetime(2026, 12, 9, 15, 8, 27, tzinfo=UTC)).astimezone(CHINA)
        data = json.dumps(
            {
                "billCode": bill_code,
                "action": action,
                "actionTime": moment.strftime("%Y-%m-%d %H:%M:%S"),
                "city": "深圳市",
                "facilityName": "深圳南山",
                "desc": "【深圳市】快件已签收",
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        form = {
            "data": data,
            "data_digest": data_digest(data, secret=secret),
            "company_id": APP_KEY,
            "msg_type": "Traces",
        }
        body = urllib.parse.urlencode(form).encode()
        return body, {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}

    def _failure(self, method: str) -> Any:
        with self.lock:
            for i, (name, code) in enumerate(self.fail_next):
                if name in (method, "*"):
                    del self.fail_next[i]
                    return code
        return None

    # ------------------------------------------------------------ the gateway

    def answer(self, method: str, headers: Any, raw: bytes) -> tuple[int, dict[str, Any]]:
        def refuse(code: str, message: str) -> tuple[int, dict[str, Any]]:
            self.rejected.append(f"{method} {code}: {message}")
            return 200, {"status": False, "statusCode": code, "message": message, "result": None}

        self.calls.append((method, {k.lower(): v for k, v in headers.items()}, raw))
        key = headers.get("x-appKey") or headers.get("x-companyid")
        if key != APP_KEY:
            return refuse("S210", "无权限访问")
        if headers.get("x-dataDigest") != data_digest(raw, secret=APP_SECRET):
            return refuse("S211", "签名错误")
        if (failure := self._failure(method)) is not None:
            if isinstance(failure, int):
                return failure, {"message": "told to fail"}
            return refuse(str(failure), "told to fail")
        try:
            body = json.loads(raw)
        except ValueError:
            return refuse("S208", "请求报文不是JSON")
        handler = {
            "zto.open.createOrder": self.create_order,
            "zto.open.cancelPreOrder": self.cancel_order,
            "zto.merchant.waybill.track.query": self.track_query,
            "zto.merchant.waybill.track.subsrcibe": self.track_subscribe,
            "zto.innovate.bagAddrMark": self.bag_addr_mark,
        }.get(method)
        if handler is None:
            return refuse("S207", "API不存在")
        outcome = handler(body)
        if isinstance(outcome, tuple):
            return refuse(*outcome)
        code, message, result = outcome["statusCode"], outcome["message"], outcome["result"]
        return 200, {"status": True, "statusCode": code, "message": message, "result": result}

    def create_order(self, body: dict[str, Any]) -> dict[str, Any] | tuple[str, str]:
        for name in ("partnerType", "orderType", "partnerOrderCode"):
            if not body.get(name):
                return "S208", f"{name}不能为空"
        if body["partnerType"] != "2" or body["orderType"] not in ("1", "2", "3", "4"):
            return "S208", "partnerType/orderType不合法"
        account = body.get("accountInfo") or {}
        if not account.get("accountId") or not account.get("accountPassword"):
            return "S208", "accountInfo不能为空"
        if (account["accountId"], account["accountPassword"]) != (ACCOUNT_ID, ACCOUNT_PASSWORD):
            return "E404", "鉴权失败,未绑定电子面单账号"
        for group, prefix in (("senderInfo", "sender"), ("receiveInfo", "receiver")):
            party = body.get(group) or {}
            for suffix in _PARTY_FIELDS:
                if not party.get(prefix + suffix):
                    return "S208", f"{prefix}{suffix}不能为空"
            if not party.get(f"{prefix}Mobile") and not party.get(f"{prefix}Phone"):
                return "S208", f"{prefix}Mobile不能为空"
        with self.lock:
            bill_code = str(next(self._numbers))
            order_code = "2512" + bill_code[-14:]
            self.orders[bill_code] = {**body, "orderCode": order_code, "cancelled": False}
        return {
            "statusCode": "0000",
            "message": "成功",
            "result": {
                "billCode": bill_code,
                "orderCode": order_code,
                "partnerOrderCode": body["partnerOrderCode"],
                "bigMarkInfo": {"bagAddr": "深圳", "mark": "300- H12 09"},
                "siteCode": "02100",
                "siteName": "杭州",
            },
        }

    def cancel_order(self, body: dict[str, Any]) -> dict[str, Any] | tuple[str, str]:
        if body.get("cancelType") not in {str(n) for n in range(1, 8)}:
            return "S208", "cancelType不能为空"
        bill_code, order_code = body.get("billCode"), body.get("orderCode")
        if not bill_code and not order_code:
            return "S208", "orderCode与billCode必传其一"
        order = self.orders.get(bill_code or "") or next(
            (o for o in self.orders.values() if o["orderCode"] == order_code), None
        )
        if order is None:
            return "E001", "订单不存在"
        if order["orderType"] not in ("2", "3"):
            return "E002", "全网件不支持取消"
        if order["cancelled"]:
            return "E003", "订单已取消"
        order["cancelled"] = True
        return {"statusCode": "SYS000", "message": "请求成功", "result": {}}

    def track_query(self, body: dict[str, Any]) -> dict[str, Any] | tuple[str, str]:
        bill_code = body.get("billCode")
        if not bill_code:
            return "S208", "billCode不能为空"
        if not str(bill_code).isdigit():
            return "E416", "不符合中通运单号规则校验"
        with self.lock:
            traces = list(self.traces.get(bill_code, []))
        return {"statusCode": "SYS000", "message": "请求成功", "result": traces}

    def track_subscribe(self, body: dict[str, Any]) -> dict[str, Any] | tuple[str, str]:
        bill_code, phone = body.get("billCode"), str(body.get("mobilePhone") or "")
        if not bill_code:
            return "S208", "billCode不能为空"
        if len(phone) != 4 or not phone.isdigit():
            return "E413", "鉴权失败,请输入收寄人任一方电话号码后4位"
        self.subscriptions[bill_code] = phone
        return {"statusCode": "SYS000", "message": "操作成功", "result": None}

    def bag_addr_mark(self, body: dict[str, Any]) -> dict[str, Any] | tuple[str, str]:
        for name in ("send_province", "receive_province", "receive_city"):
            if not body.get(name):
                return "S208", f"{name}不能为空"
        if body["receive_province"] not in self.routed:
            return {"statusCode": "SYS000", "message": "请求成功", "result": None}
        return {
            "statusCode": "SYS000",
            "message": "请求成功",
            "result": {"mark": "300- H12 09", "bagAddr": "深圳"},
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeZto

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        method = urllib.parse.urlsplit(self.path).path.strip("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, answer = self.fake.answer(method, self.headers, raw)
        encoded = json.dumps(answer, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)


@contextmanager
def fake_zto() -> Iterator[FakeZto]:
    fake = FakeZto()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = FakeHttpServer(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
