"""A fake of the Meituan and Ele.me open APIs for tests (the real ones cannot be reached here):
one local HTTP server that checks every request's signature and required parameters as the
platform documents them (connectors/outbound.py has the sources), answers in the platform's
response format, keeps the state the calls change (order status, 出餐, shelves, shop open)
so that the status queries answer truthfully, records every call, and can be told to fail.

Meituan under `/meituan/api/v1/<path>`, Ele.me at `/eleme/api/v1/`.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from connectors.meituan import signature as meituan_signature
from connectors.outbound import eleme_signature

MEITUAN_APP_ID, MEITUAN_SECRET = "4821", "fake-meituan-secret"
ELEME_APP_KEY, ELEME_SECRET, ELEME_TOKEN = "eleme-key", "fake-eleme-secret", "fake-eleme-token"

# Required parameters of each Meituan path besides app_id, timestamp, sig.
MEITUAN_REQUIRED = {
    "order/confirm": {"order_id"},
    "order/cancel": {"order_id", "reason", "reason_code"},
    "order/preparationMealComplete": {"order_id"},
    "order/delivering": {"order_id"},
    "order/arrived": {"order_id"},
    "order/viewstatus": {"order_id"},
    "food/sku/sellStatus": {"app_poi_code", "food_data", "sell_status"},
    "poi/open": {"app_poi_code"},
    "poi/close": {"app_poi_code"},
    "poi/mget": {"app_poi_codes"},
}
MEITUAN_QUERIES = {"order/viewstatus", "poi/mget"}
ELEME_REQUIRED = {
    "eleme.order.confirmOrderLite": {"orderId"},
    "eleme.order.cancelOrderLite": {"orderId", "type", "remark"},
    "eleme.order.setOrderPrepared": {"orderId"},
    "eleme.order.receivedOrderLite": {"orderId"},
    "eleme.order.getOrder": {"orderId"},
    "eleme.order.getPreparedTimesByOrderIds": {"orderIds"},
    "eleme.product.item.getItemByShopIdAndExtendCode": {"shopId", "extendCode"},
    "eleme.product.item.batchOffShelf": {"specIds"},
    "eleme.product.item.batchOnShelf": {"specIds"},
    "eleme.shop.updateShop": {"shopId", "properties"},
    "eleme.shop.getShop": {"shopId"},
}
ELEME_QUERIES = {
    "eleme.order.getOrder",
    "eleme.order.getPreparedTimesByOrderIds",
    "eleme.product.item.getItemByShopIdAndExtendCode",
    "eleme.shop.getShop",
}
ELEME_INVALIDATE_TYPES = {
    "others", "fakeOrder", "contactUserFailed", "foodSoldOut", "restaurantClosed",
    "distanceTooFar", "restaurantTooBusy", "forceRejectOrder", "deliveryFault",
    "notSatisfiedDeliveryRequirement",
}  # fmt: skip


@dataclass(frozen=True)
class Recorded:
    platform: str
    action: str  # Meituan's path, Ele.me's action
    params: dict[str, Any]

    @property
    def target(self) -> str:
        """What the call is about: the order, the shop, or shop:dish."""
        p = self.params
        if "order_id" in p or "orderId" in p:
            return str(p.get("order_id") or p.get("orderId"))
        if "food_data" in p:
            return f"{p['app_poi_code']}:{json.loads(p['food_data'])[0]['app_food_code']}"
        if "specIds" in p:
            return str(p["specIds"][0]["itemId"])
        return str(p.get("app_poi_code") or p.get("shopId"))


@dataclass
class FakePlatforms:
    url: str = ""
    calls: list[Recorded] = field(default_factory=list)  # every call that changes something
    queries: list[Recorded] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # why requests were refused
    meituan_orders: dict[str, int] = field(default_factory=dict)  # order → viewstatus
    eleme_orders: dict[str, str] = field(default_factory=dict)  # order → OOrderStatus
    prepared: set[str] = field(default_factory=set)
    off_shelf: set[str] = field(default_factory=set)  # "platform:shop:sku"
    closed: set[str] = field(default_factory=set)  # "platform:shop"
    fail_next: int = 0  # answer this many requests with HTTP 503
    delay_s: float = 0.0  # each answer takes this long (a sender can be killed mid-call)
    refuse: dict[str, tuple[Any, str]] = field(default_factory=dict)  # action → (code, msg)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- Meituan

    def meituan(self, path: str, query: dict[str, str], form: dict[str, str]) -> Any:
        params = {**query, **form}
        missing = ({"app_id", "timestamp", "sig"} | MEITUAN_REQUIRED.get(path, {"?"})) - set(params)
        if path not in MEITUAN_REQUIRED or missing:
            return self._mt_error(701, f"缺少参数 {sorted(missing)} ({path})")
        if params["app_id"] != MEITUAN_APP_ID:
            return self._mt_error(702, "app_id不存在")
        unsigned = {k: v for k, v in params.items() if k != "sig"}
        expected = meituan_signature(
            unsigned, secret=MEITUAN_SECRET, url=f"{self.url}/meituan/api/v1/{path}"
        )
        if params["sig"] != expected:
            return self._mt_error(703, "签名验证错误")
        if path in self.refuse:
            code, msg = self.refuse[path]
            return self._mt_error(code, msg)
        if path in MEITUAN_QUERIES:
            self.queries.append(Recorded("meituan", path, params))
            if path == "order/viewstatus":
                return {"data": {"status": self.meituan_orders.get(params["order_id"], 2)}}
            codes = params["app_poi_codes"].split(",")
            return {
                "data": [
                    {"app_poi_code": c, "open_level": 3 if f"meituan:{c}" in self.closed else 1}
                    for c in codes
                ]
            }
        self.calls.append(
            Recorded(
                "meituan",
                path,
                {k: v for k, v in params.items() if k not in ("sig", "timestamp", "app_id")},
            )
        )
        order = params.get("order_id", "")
        status = self.meituan_orders.get(order, 2)
        if path == "order/confirm":
            if status == 9:
                return self._mt_error(808, "操作失败，订单状态已变更")
            self.meituan_orders[order] = 4
        elif path == "order/cancel":
            self.meituan_orders[order] = 9
        elif path == "order/preparationMealComplete":
            self.prepared.add(f"meituan:{order}")
        elif path == "order/arrived":
            self.meituan_orders[order] = 8
        elif path == "food/sku/sellStatus":
            if params["sell_status"] not in ("0", "1"):
                return self._mt_error(705, "参数格式错误 sell_status")
            for food in json.loads(params["food_data"]):
                key = f"meituan:{params['app_poi_code']}:{food['app_food_code']}"
                (self.off_shelf.add if params["sell_status"] == "1" else self.off_shelf.discard)(
                    key
                )
        elif path in ("poi/open", "poi/close"):
            key = f"meituan:{params['app_poi_code']}"
            (self.closed.add if path == "poi/close" else self.closed.discard)(key)
        return {"data": "ok"}

    def _mt_error(self, code: int, msg: str) -> dict[str, Any]:
        self.rejected.append(f"meituan {code} {msg}")
        return {"data": "ng", "error": {"code": code, "msg": msg}}

    # -- Ele.me

    def eleme(self, body: dict[str, Any]) -> dict[str, Any]:
        request_id = body.get("id")
        action, params, metas = body.get("action"), body.get("params"), body.get("metas")
        if (
            body.get("nop") != "1.0.0"
            or not isinstance(params, dict)
            or not isinstance(metas, dict)
        ):
            return self._el_error(request_id, "VALIDATION_FAILED", "not a request of the open API")
        if metas.get("app_key") != ELEME_APP_KEY or body.get("token") != ELEME_TOKEN:
            return self._el_error(request_id, "UNAUTHORIZED", "app_key or token")
        expected = eleme_signature(
            action=str(action), token=ELEME_TOKEN, params=params, metas=metas, secret=ELEME_SECRET
        )
        if body.get("signature") != expected:
            return self._el_error(request_id, "INVALID_SIGNATURE", "signature does not match")
        missing = ELEME_REQUIRED.get(str(action), {"?"}) - set(params)
        if action not in ELEME_REQUIRED or missing:
            return self._el_error(
                request_id, "VALIDATION_FAILED", f"{action}: missing {sorted(missing)}"
            )
        if action in self.refuse:
            code, msg = self.refuse[str(action)]
            return self._el_error(request_id, str(code), msg)
        if action in ELEME_QUERIES:
            self.queries.append(Recorded("eleme", str(action), params))
            return {
                "id": request_id,
                "result": self._eleme_query(str(action), params),
                "error": None,
            }
        self.calls.append(Recorded("eleme", str(action), params))
        order = str(params.get("orderId", ""))
        if action == "eleme.order.confirmOrderLite":
            if self.eleme_orders.get(order) == "invalid":
                return self._el_error(request_id, "BIZ_ORDER_STATUS_ERROR", "订单状态已变更")
            self.eleme_orders[order] = "valid"
        elif action == "eleme.order.cancelOrderLite":
            if params["type"] not in ELEME_INVALIDATE_TYPES:
                return self._el_error(request_id, "VALIDATION_FAILED", f"type {params['type']}")
            self.eleme_orders[order] = "invalid"
        elif action == "eleme.order.setOrderPrepared":
            self.prepared.add(f"eleme:{order}")
        elif action == "eleme.order.receivedOrderLite":
            self.eleme_orders[order] = "settled"
        elif action in ("eleme.product.item.batchOffShelf", "eleme.product.item.batchOnShelf"):
            for spec in params["specIds"]:
                key = f"eleme-item:{spec['itemId']}"
                (self.off_shelf.add if action.endswith("OffShelf") else self.off_shelf.discard)(key)
        elif action == "eleme.shop.updateShop":
            key = f"eleme:{params['shopId']}"
            is_open = params["properties"].get("isOpen")
            (self.closed.discard if is_open == 1 else self.closed.add)(key)
        return {"id": request_id, "result": None, "error": None}

    def _eleme_query(self, action: str, params: dict[str, Any]) -> Any:
        if action == "eleme.order.getOrder":
            order = str(params["orderId"])
            return {"id": order, "status": self.eleme_orders.get(order, "unprocessed")}
        if action == "eleme.order.getPreparedTimesByOrderIds":
            return {
                o: "2026-11-25 12:00:00"
                for o in params["orderIds"]
                if f"eleme:{o}" in self.prepared
            }
        if action == "eleme.product.item.getItemByShopIdAndExtendCode":
            item_id = eleme_item_id(params["shopId"], params["extendCode"])
            on = 0 if f"eleme-item:{item_id}" in self.off_shelf else 1
            return {
                "id": item_id,
                "specs": [
                    {"specId": item_id * 10, "extendCode": params["extendCode"], "onShelf": on}
                ],
            }
        return {
            "id": params["shopId"],
            "isOpen": 0 if f"eleme:{params['shopId']}" in self.closed else 1,
        }

    def _el_error(self, request_id: Any, code: str, message: str) -> dict[str, Any]:
        self.rejected.append(f"eleme {code} {message}")
        return {"id": request_id, "result": None, "error": {"code": code, "message": message}}


def eleme_item_id(shop_id: int, extend_code: str) -> int:
    """The fake's id for the dish `extend_code` of a shop (Ele.me's ids are its own)."""
    return zlib.crc32(f"{shop_id}:{extend_code}".encode()) % 10**9


class _Handler(BaseHTTPRequestHandler):
    fake: FakePlatforms

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(b"")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(self.rfile.read(length))

    def _answer(self, body: bytes) -> None:
        fake = self.fake
        parsed = urllib.parse.urlsplit(self.path)
        if fake.delay_s:
            time.sleep(fake.delay_s)
        with fake.lock:
            if fake.fail_next > 0:
                fake.fail_next -= 1
                self._send(503, {"error": "unavailable"})
                return
            if parsed.path.startswith("/meituan/api/v1/"):
                query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
                form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
                answer = fake.meituan(parsed.path.removeprefix("/meituan/api/v1/"), query, form)
            elif parsed.path == "/eleme/api/v1/":
                answer = fake.eleme(json.loads(body))
            else:
                self._send(404, {"error": "no such path"})
                return
        self._send(200, answer)

    def _send(self, status: int, answer: Any) -> None:
        raw = json.dumps(answer, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A sender killed mid-call leaves its answer unread (a broken pipe): not an error."""


@contextmanager
def fake_platforms() -> Iterator[FakePlatforms]:
    """The fake on a free local port, for the block's duration."""
    fake = FakePlatforms()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = _Server(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def platform_env(fake: FakePlatforms) -> dict[str, str]:
    """The settings that point `oms outbox` at the fake."""
    return {
        "OMS_MEITUAN_APP_ID": MEITUAN_APP_ID,
        "OMS_MEITUAN_SECRET": MEITUAN_SECRET,
        "OMS_MEITUAN_API_URL": f"{fake.url}/meituan/api/v1/",
        "OMS_ELEME_APP_KEY": ELEME_APP_KEY,
        "OMS_ELEME_SECRET": ELEME_SECRET,
        "OMS_ELEME_TOKEN": ELEME_TOKEN,
        "OMS_ELEME_API_URL": f"{fake.url}/eleme/api/v1/",
    }
