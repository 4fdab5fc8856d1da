"""A fake of Square's Orders API and WooCommerce's REST API v3 for tests (the real ones cannot be
reached here): one local HTTP server that checks each request's authentication and required
fields as the platforms document them (connectors/outbound_shops.py has the sources), keeps
the orders the calls change, and records every call.

Square under `/square/v2/orders/<id>` (GET RetrieveOrder, PUT UpdateOrder): Bearer token and
`Square-Version` required; an update needs `idempotency_key`, `order.location_id` and the
order's current `order.version` (else VERSION_MISMATCH), and names fulfillments by `uid`. A
key seen before with the same request answers the first answer and changes nothing; with a
different request it answers the order as it is, unchanged (as Square documents). Orders in
state COMPLETED or CANCELED cannot be updated.

WooCommerce under `/woocommerce/wp-json/wc/v3/orders/<id>` (GET, PUT `status`) and
`.../orders/<id>/notes` (GET with `type`, POST `note` and `customer_note`): HTTP Basic with the
consumer key and secret.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SQUARE_TOKEN, SQUARE_VERSION = "fake-square-token", "2026-08-19"
WOO_KEY, WOO_SECRET = "ck_fake", "cs_fake"
SQUARE_STATES = {"PROPOSED", "RESERVED", "PREPARED", "COMPLETED", "CANCELED", "FAILED"}
WOO_STATUSES = {
    "pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed", "trash",
}  # fmt: skip


@dataclass(frozen=True)
class ShopCall:
    platform: str  # square or woocommerce
    action: str  # UpdateOrder, status, note
    order: str
    params: dict[str, Any]

    @property
    def what(self) -> str:
        """The call told apart by its content: the state, status or note it sets."""
        p = self.params
        if self.action == "UpdateOrder":
            return ",".join(f["state"] for f in p["order"]["fulfillments"])
        return str(p.get("status") or p.get("note"))


@dataclass
class FakeShops:
    url: str = ""
    calls: list[ShopCall] = field(default_factory=list)  # every call that changed something
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of all
    rejected: list[str] = field(default_factory=list)  # why requests were refused
    square: dict[str, dict[str, Any]] = field(default_factory=dict)  # order id → Order
    square_keys: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    woo: dict[int, dict[str, Any]] = field(default_factory=dict)  # order id → order
    woo_notes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    concurrent_updates: int = 0  # this many updates: someone else updates the order first
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- seeding

    def square_order(self, order_id: str, *, state: str = "PROPOSED", version: int = 1) -> None:
        self.square[order_id] = {
            "id": order_id,
            "location_id": "L8Q0J1YH3V5XP",
            "version": version,
            "state": "OPEN",
            "fulfillments": [{"uid": f"f-{order_id}", "type": "PICKUP", "state": state}],
        }

    def woo_order(self, order_id: int, *, status: str = "pending") -> None:
        self.woo[order_id] = {"id": order_id, "status": status}
        self.woo_notes[order_id] = []

    def square_state(self, order_id: str) -> str:
        return str(self.square[order_id]["fulfillments"][0]["state"])

    # -- Square

    def square_api(
        self, method: str, order_id: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        if headers.get("authorization") != f"Bearer {SQUARE_TOKEN}":
            return self._sq_error(401, "AUTHENTICATION_ERROR", "UNAUTHORIZED", "token")
        if not headers.get("square-version"):
            return self._sq_error(400, "INVALID_REQUEST_ERROR", "BAD_REQUEST", "Square-Version")
        order = self.square.get(order_id)
        if order is None:
            return self._sq_error(404, "INVALID_REQUEST_ERROR", "NOT_FOUND", "order_id")
        if method == "GET":
            return 200, {"order": order}
        if not isinstance(body, dict) or not body.get("idempotency_key"):
            return self._sq_error(400, "INVALID_REQUEST_ERROR", "MISSING_REQUIRED_PARAMETER",
                                  "idempotency_key")  # fmt: skip
        key, sparse = str(body["idempotency_key"]), body.get("order") or {}
        if key in self.square_keys:
            first, answer = self.square_keys[key]
            same = first == json.dumps(body, sort_keys=True)
            return 200, answer if same else {"order": order}  # Square: a reused key changes nothing
        if self.concurrent_updates > 0:  # another app's update lands between GET and PUT
            self.concurrent_updates -= 1
            order["version"] += 1
        if not sparse.get("location_id"):
            return self._sq_error(400, "INVALID_REQUEST_ERROR", "MISSING_REQUIRED_PARAMETER",
                                  "order.location_id")  # fmt: skip
        if "version" not in sparse:
            return self._sq_error(400, "INVALID_REQUEST_ERROR", "BAD_REQUEST", "order.version")
        if sparse["version"] != order["version"]:
            return self._sq_error(400, "INVALID_REQUEST_ERROR", "VERSION_MISMATCH",
                                  "order.version")  # fmt: skip
        if order["state"] in ("COMPLETED", "CANCELED"):
            return self._sq_error(400, "INVALID_REQUEST_ERROR", "BAD_REQUEST", "order.state")
        by_uid = {f["uid"]: f for f in order["fulfillments"]}
        for change in sparse.get("fulfillments") or []:
            if change.get("uid") not in by_uid or change.get("state") not in SQUARE_STATES:
                return self._sq_error(400, "INVALID_REQUEST_ERROR", "INVALID_VALUE",
                                      "order.fulfillments")  # fmt: skip
        for change in sparse.get("fulfillments") or []:
            by_uid[change["uid"]]["state"] = change["state"]
        order["version"] += 1
        answer = {"order": json.loads(json.dumps(order))}
        self.square_keys[key] = (json.dumps(body, sort_keys=True), answer)
        self.calls.append(ShopCall("square", "UpdateOrder", order_id, body))
        return 200, answer

    def _sq_error(self, status: int, category: str, code: str, field: str) -> tuple[int, Any]:
        self.rejected.append(f"square {code} {field}")
        return status, {"errors": [{"category": category, "code": code, "detail": code,
                                    "field": field}]}  # fmt: skip

    # -- WooCommerce

    def woo_api(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        expected = "Basic " + base64.b64encode(f"{WOO_KEY}:{WOO_SECRET}".encode()).decode()
        if headers.get("authorization") != expected:
            return self._woo_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot.")
        parts = path.split("/")  # orders/<id>[/notes]
        if len(parts) < 2 or parts[0] != "orders" or not parts[1].isdigit():
            return self._woo_error(404, "rest_no_route", "No route was found")
        order_id = int(parts[1])
        order = self.woo.get(order_id)
        if order is None:
            return self._woo_error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        if len(parts) == 2 and method == "GET":
            return 200, order
        if len(parts) == 2 and method == "PUT":
            status = body.get("status") if isinstance(body, dict) else None
            if status not in WOO_STATUSES:
                return self._woo_error(400, "rest_invalid_param", f"status {status!r}")
            order["status"] = status
            self.calls.append(ShopCall("woocommerce", "status", str(order_id), body))
            return 200, order
        if parts[2:] == ["notes"] and method == "GET":
            kind = query.get("type", "any")
            notes = self.woo_notes[order_id]
            if kind != "any":
                notes = [n for n in notes if n["customer_note"] is (kind == "customer")]
            return 200, notes
        if parts[2:] == ["notes"] and method == "POST":
            if not isinstance(body, dict) or not str(body.get("note") or "").strip():
                return self._woo_error(400, "rest_missing_callback_param", "note")
            note = {
                "id": 1000 + len(self.calls),
                "author": "system",
                "note": body["note"],
                "customer_note": bool(body.get("customer_note", False)),
            }
            self.woo_notes[order_id].append(note)
            self.calls.append(ShopCall("woocommerce", "note", str(order_id), body))
            return 201, note
        return self._woo_error(404, "rest_no_route", "No route was found")

    def _woo_error(self, status: int, code: str, message: str) -> tuple[int, Any]:
        self.rejected.append(f"woocommerce {code} {message}")
        return status, {"code": code, "message": message, "data": {"status": status}}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeShops

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer("GET")

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        self._answer("PUT")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._answer("POST")

    def _answer(self, method: str) -> None:
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        parsed = urllib.parse.urlsplit(self.path)
        with fake.lock:
            fake.requests.append((method, parsed.path))
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            if raw and headers.get("content-type", "").split(";")[0] != "application/json":
                status, answer = 415, {"error": "not JSON"}
            elif parsed.path.startswith("/square/v2/orders/"):
                order_id = urllib.parse.unquote(parsed.path.removeprefix("/square/v2/orders/"))
                status, answer = fake.square_api(method, order_id, headers, body)
            elif parsed.path.startswith("/woocommerce/wp-json/wc/v3/"):
                query = dict(urllib.parse.parse_qsl(parsed.query))
                path = parsed.path.removeprefix("/woocommerce/wp-json/wc/v3/")
                status, answer = fake.woo_api(method, path, query, headers, body)
            else:
                status, answer = 404, {"error": "no such path"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A sender killed mid-call leaves its answer unread (a broken pipe): not an error."""


@contextmanager
def fake_shops() -> Iterator[FakeShops]:
    """The fake on a free local port, for the block's duration."""
    fake = FakeShops()
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


def shop_env(fake: FakeShops) -> dict[str, str]:
    """The settings that point `oms outbox` at the fake."""
    return {
        "OMS_SQUARE_ACCESS_TOKEN": SQUARE_TOKEN,
        "OMS_SQUARE_API_URL": f"{fake.url}/square/",
        "OMS_SQUARE_VERSION": SQUARE_VERSION,
        "OMS_WOOCOMMERCE_URL": f"{fake.url}/woocommerce",
        "OMS_WOOCOMMERCE_CONSUMER_KEY": WOO_KEY,
        "OMS_WOOCOMMERCE_CONSUMER_SECRET": WOO_SECRET,
    }
