"""A fake of EasyPost's API for tests (the real one cannot be reached here): one local HTTP
server that checks what EasyPost documents it checks (connectors/carriers/easypost.py has
the sources) — the API key (HTTP Basic username, or Bearer as the official client sends
it), the `shipment` wrapper and its addresses and parcel, the rate bought belonging to the
shipment, a label bought once (422 `SHIPMENT.POSTAGE.EXISTS`) — answers with EasyPost's
objects (Shipment, Rate, PostageLabel, Tracker, TrackingDetail, Event, error), keeps
shipments and trackers in memory, finds a shipment by its `reference` where an id goes,
serves label files without a key (as EasyPost's file host does), signs webhook Events, and
can be told to fail.

Where EasyPost's exact words are not published (the code of a 401, the message for a
missing customs form), the fake's are its own; the adapter decides on HTTP statuses.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any

from connectors.carriers.easypost import signature
from tests.fake_http import FakeHttpServer

API_KEY = "EZTK" + "f" * 32
WEBHOOK_SECRET = "s\u00e9cret"  # not ASCII: NFKD normalisation changes its bytes
PDF = b"%PDF-1.4\n% fake EasyPost label\n%%EOF\n"
NOT_FOUND = {"code": "NOT_FOUND", "message": "The requested resource could not be found."}
# (carrier, service, base price, price per ounce, days): what the fake's carriers charge
# (a flat rate written without decimals, "10", to exercise the conversion).
DOMESTIC = [
    ("USPS", "GroundAdvantage", "5.40", "0.05", 3),
    ("USPS", "Priority", "7.58", "0.10", 2),
    ("UPS", "Ground", "9.00", "0.08", 4),
    ("FedEx", "FEDEX_2_DAY", "10", "0", 2),
]
INTERNATIONAL = [
    ("USPS", "PriorityMailInternational", "45.25", "0.40", 8),
    ("DHLExpress", "ExpressWorldwide", "62.10", "0.55", 3),
]


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(code: str, message: str, errors: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "errors": errors or []}}


@dataclass
class FakeEasyPost:
    url: str = ""  # the API root, ".../v2"
    api_key: str = API_KEY
    webhook_secret: str = WEBHOOK_SECRET
    shipments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, in order
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) asked
    rejected: list[str] = field(default_factory=list)  # requests refused, and why
    fail_next: list[tuple[int, str]] = field(default_factory=list)  # (HTTP status, code)
    purchases: int = 0  # labels bought
    files_asked_with_key: int = 0  # label files fetched with our API key (a leak)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ what tests drive

    def advance(self, tracking_code: str, status: str, message: str, *, city: str = "") -> None:
        """The carrier scans a parcel: a TrackingDetail added to its tracker, an hour on."""
        with self.lock:
            tracker = next(t for t in self.trackers.values() if t["tracking_code"] == tracking_code)
            last = (
                tracker["tracking_details"][-1]["datetime"]
                if tracker["tracking_details"]
                else _now()
            )
            at = datetime.fromisoformat(last.replace("Z", "+00:00")) + timedelta(hours=1)
            tracker["tracking_details"].append(_detail(status, message, at, city=city))
            tracker["status"], tracker["updated_at"] = status, _now()

    def signed_push(
        self, *, tracking_code: str | None = None, status: str = "in_transit"
    ) -> tuple[bytes, dict[str, str]]:
        """A `tracker.updated` Event as EasyPost POSTs it to a webhook: the body and its
        headers, signed with the webhook secret. Without a tracking code, a tracker of its
        own (a USPS parcel)."""
        if tracking_code is None:
            tracking_code = "9400100208303109" + f"{secrets.randbelow(10**6):06d}"
            with self.lock:
                self._tracker(tracking_code, "USPS", shipment_id=None)
        self.advance(tracking_code, status, f"Status now {status}", city="CHICAGO")
        with self.lock:
            tracker = next(t for t in self.trackers.values() if t["tracking_code"] == tracking_code)
            event = {
                "object": "Event",
                "id": _id("evt"),
                "mode": "test",
                "description": "tracker.updated",
                "previous_attributes": {"status": "pre_transit"},
                "created_at": _now(),
                "updated_at": _now(),
                "pending_urls": ["https://oms.example/webhooks/easypost"],
                "completed_urls": [],
                "status": "pending",
                "result": json.loads(json.dumps(tracker)),
            }
        body = json.dumps(event, separators=(",", ":")).encode()
        return body, {
            "Content-Type": "application/json",
            "X-Hmac-Signature": signature(body, self.webhook_secret),
        }

    # ------------------------------------------------------------ the API

    def answer(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        self.requests.append((method, path))
        if not self._authorised(headers.get("Authorization", "")):
            return self._refuse(401, "UNAUTHORIZED", "Authentication failed: API key invalid.")
        with self.lock:
            if self.fail_next:
                status, code = self.fail_next.pop(0)
                return self._refuse(status, code, "told to fail")
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            return self._refuse(400, "BAD_REQUEST", "The request body is not JSON.")
        if not isinstance(params, dict):
            return self._refuse(400, "BAD_REQUEST", "The request body is not an object.")
        parts = path.removeprefix("/v2/").split("/")
        with self.lock:
            if method == "POST" and parts == ["shipments"]:
                return self._create(params)
            if method == "POST" and parts == ["trackers"]:
                return self._track(params)
            if method == "GET" and len(parts) == 2 and parts[0] == "trackers":
                tracker = self.trackers.get(parts[1])
                return (200, tracker) if tracker else (404, {"error": NOT_FOUND})
            if parts[0] != "shipments" or len(parts) < 2:
                return 404, {"error": NOT_FOUND}
            shipment = self._find(urllib.parse.unquote(parts[1]))
            if shipment is None:
                return 404, {"error": NOT_FOUND}
            action = parts[2] if len(parts) > 2 else None
            if method == "GET" and action is None:
                return 200, shipment
            if method == "POST" and action == "buy":
                return self._buy(shipment, params)
            if method == "GET" and action == "label":
                return self._convert(shipment, query)
            if method == "POST" and action == "refund":
                return self._refund(shipment)
        return 404, {"error": NOT_FOUND}

    def label_file(self, headers: Any) -> bytes:
        if headers.get("Authorization"):
            self.files_asked_with_key += 1
        return PDF

    def _authorised(self, given: str) -> bool:
        basic = "Basic " + base64.b64encode(f"{self.api_key}:".encode()).decode()
        return given in (basic, f"Bearer {self.api_key}")

    def _refuse(
        self, status: int, code: str, message: str, errors: list[Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        self.rejected.append(f"{status} {code}: {message}")
        return status, _error(code, message, errors)

    def _find(self, key: str) -> dict[str, Any] | None:
        """By id, or by reference (the first made with it: references are not unique)."""
        if key in self.shipments:
            return self.shipments[key]
        return next((s for s in self.shipments.values() if s.get("reference") == key), None)

    def _create(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        shipment = params.get("shipment")
        if not isinstance(shipment, dict) or not shipment:
            return self._refuse(
                422,
                "PARAMETER.REQUIRED",
                "Missing required parameter.",
                [{"field": "shipment", "message": "cannot be blank"}],
            )
        missing = []
        for name in ("to_address", "from_address"):
            address = shipment.get(name) or {}
            for part in ("street1", "city", "country", "zip"):
                if not str(address.get(part) or "").strip():
                    missing.append(f"{name}.{part}")
        parcel = shipment.get("parcel") or {}
        weight = parcel.get("weight")
        if not isinstance(weight, int | float) or weight <= 0:
            missing.append("parcel.weight")
        sides = [parcel.get(k) for k in ("length", "width", "height")]
        if any(s is not None for s in sides) and not all(
            isinstance(s, int | float) and s > 0 for s in sides
        ):
            missing.append("parcel.length/width/height")
        if missing:
            errors = [{"field": m, "message": "cannot be blank"} for m in missing]
            return self._refuse(422, "PARAMETER.REQUIRED", "Missing required parameter.", errors)
        options = dict(shipment.get("options") or {})
        options.setdefault("currency", "USD")
        shipment_id = _id("shp")
        abroad = shipment["to_address"]["country"] != shipment["from_address"]["country"]
        rates, messages = [], []
        if abroad and not shipment.get("customs_info", {}).get("customs_items"):
            messages.append(
                {
                    "carrier": "USPS",
                    "type": "rate_error",
                    "message": "Customs information is required for international shipments.",
                }
            )
        else:
            for carrier, service, base, per_ounce, days in INTERNATIONAL if abroad else DOMESTIC:
                price = Decimal(base) + Decimal(per_ounce) * Decimal(str(weight))
                text = base if per_ounce == "0" else str(price.quantize(Decimal("0.01")))
                rates.append({
                    "id": _id("rate"), "object": "Rate", "mode": "test", "carrier": carrier,
                    "service": service, "rate": text, "currency": "USD",
                    "retail_rate": None, "list_rate": text, "list_currency": "USD",
                    "delivery_days": days, "est_delivery_days": days,
                    "delivery_date": "2026-12-10T18:00:00Z" if service == "Priority" else None,
                    "delivery_date_guaranteed": False, "shipment_id": shipment_id,
                    "carrier_account_id": "ca_" + carrier.lower(),
                    "created_at": _now(), "updated_at": _now(),
                })  # fmt: skip
        made = {
            "id": shipment_id, "object": "Shipment", "mode": "test",
            "reference": shipment.get("reference"), "status": "unknown",
            "to_address": {"id": _id("adr"), "object": "Address", **shipment["to_address"]},
            "from_address": {"id": _id("adr"), "object": "Address", **shipment["from_address"]},
            "parcel": {"id": _id("prcl"), "object": "Parcel", **parcel},
            "customs_info": shipment.get("customs_info"), "options": options,
            "rates": rates, "messages": messages, "selected_rate": None,
            "postage_label": None, "tracking_code": None, "tracker": None,
            "refund_status": None, "insurance": None, "fees": [], "forms": [],
            "created_at": _now(), "updated_at": _now(),
        }  # fmt: skip
        self.shipments[shipment_id] = made
        return 201, made

    def _buy(self, shipment: dict[str, Any], params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        rate_id = (params.get("rate") or {}).get("id")
        if not rate_id:
            return self._refuse(
                422,
                "PARAMETER.REQUIRED",
                "Missing required parameter.",
                [{"field": "rate", "message": "cannot be blank"}],
            )
        if shipment["postage_label"] is not None:
            return self._refuse(422, "SHIPMENT.POSTAGE.EXISTS", "The shipment already has postage.")
        rate = next((r for r in shipment["rates"] if r["id"] == rate_id), None)
        if rate is None:
            return self._refuse(
                422, "SHIPMENT.RATE.NOT_FOUND", "The rate does not belong to this shipment."
            )
        code = "9400100208303109" + f"{secrets.randbelow(10**6):06d}"
        pdf = shipment["options"].get("label_format") == "PDF"
        label_id = _id("pl")
        shipment |= {
            "tracking_code": code,
            "selected_rate": rate,
            "insurance": params.get("insurance"),
            "postage_label": {
                "object": "PostageLabel", "id": label_id, "label_date": _now(),
                "label_file_type": "application/pdf" if pdf else "image/png",
                "label_url": f"{self.url.removesuffix('/v2')}/files/{label_id}"
                             f"{'.pdf' if pdf else '.png'}",
                "label_pdf_url": f"{self.url.removesuffix('/v2')}/files/{label_id}.pdf"
                                 if pdf else None,
                "label_zpl_url": None, "label_epl2_url": None, "label_file": None,
            },
            "updated_at": _now(),
        }  # fmt: skip
        shipment["tracker"] = self._tracker(code, rate["carrier"], shipment_id=shipment["id"])
        self.purchases += 1
        return 200, shipment

    def _convert(self, shipment: dict[str, Any], query: dict[str, str]) -> tuple[int, Any]:
        if shipment["postage_label"] is None:
            return self._refuse(422, "SHIPMENT.POSTAGE.NOT_FOUND", "The shipment has no label.")
        file_format = query.get("file_format", "").upper()
        if file_format not in ("PDF", "ZPL", "EPL2", "PNG"):
            return self._refuse(422, "PARAMETER.INVALID", "file_format is invalid.")
        label = shipment["postage_label"]
        key = f"label_{file_format.lower()}_url" if file_format != "PNG" else "label_url"
        label[key] = f"{self.url.removesuffix('/v2')}/files/{label['id']}.{file_format.lower()}"
        return 200, shipment

    def _refund(self, shipment: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if shipment["postage_label"] is None:
            return self._refuse(
                422, "SHIPMENT.REFUND.NOT_PURCHASED", "The shipment has no postage to refund."
            )
        shipment["refund_status"] = "submitted"
        return 200, shipment

    def _track(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        asked = params.get("tracker") or {}
        code, carrier = asked.get("tracking_code"), asked.get("carrier")
        if not code:
            return self._refuse(
                422,
                "PARAMETER.REQUIRED",
                "Missing required parameter.",
                [{"field": "tracking_code", "message": "cannot be blank"}],
            )
        for tracker in self.trackers.values():  # one tracker per code and carrier
            if tracker["tracking_code"] == code and tracker["carrier"] == (carrier or "USPS"):
                return 200, tracker
        return 201, self._tracker(code, carrier or "USPS", shipment_id=None)

    def _tracker(self, code: str, carrier: str, *, shipment_id: str | None) -> dict[str, Any]:
        start = datetime.now(UTC).replace(microsecond=0)
        tracker: dict[str, Any] = {
            "id": _id("trk"), "object": "Tracker", "mode": "test", "tracking_code": code,
            "status": "pre_transit", "status_detail": "status_update", "carrier": carrier,
            "shipment_id": shipment_id, "signed_by": None, "weight": None,
            "est_delivery_date": None, "created_at": _now(), "updated_at": _now(),
            "tracking_details": [
                _detail("pre_transit", "Shipping Label Created", start),
                _detail("in_transit", "Accepted at Origin Facility", start + timedelta(hours=5),
                        city="HOUSTON"),
            ],
            "public_url": f"https://track.easypost.com/{code}",
        }  # fmt: skip
        self.trackers[tracker["id"]] = tracker
        return tracker


def _detail(status: str, message: str, at: datetime, *, city: str = "") -> dict[str, Any]:
    return {
        "object": "TrackingDetail", "message": message, "description": "", "status": status,
        "status_detail": "status_update", "datetime": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": "USPS", "carrier_code": "",
        "tracking_location": {"object": "TrackingLocation", "city": city or None,
                              "state": "TX" if city else None, "country": None, "zip": None},
    }  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    fake: FakeEasyPost

    def log_message(self, *_: Any) -> None:
        pass

    def _send(self, status: int, raw: bytes, media_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _route(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if method == "GET" and url.path.startswith("/files/"):
            self._send(200, self.fake.label_file(self.headers), "application/pdf")
            return
        if not url.path.startswith("/v2/"):
            self._send(404, json.dumps({"error": NOT_FOUND}).encode(), "application/json")
            return
        query = dict(urllib.parse.parse_qsl(url.query))
        status, answer = self.fake.answer(method, url.path, query, self.headers, body)
        self._send(status, json.dumps(answer).encode(), "application/json; charset=utf-8")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


@contextmanager
def fake_easypost() -> Iterator[FakeEasyPost]:
    fake = FakeEasyPost()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = FakeHttpServer(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v2"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
