"""EasyPost (https://api.easypost.com/v2): one API in front of USPS, UPS, FedEx, DHL and
others. Quotes are EasyPost's rates, one per carrier service ("USPS:Priority"); a shipment
is a Shipment bought at one of its rates; tracking is the Tracker EasyPost keeps for it.

Format (docs.easypost.com; the official client EasyPost/easypost-python, `requestor.py`,
`services/shipment_service.py`, `services/tracker_service.py`, `util.validate_webhook`, and
its recorded exchanges in `tests/cassettes/test_shipment_*.yaml`, `test_tracker_*.yaml`,
`test_error*.yaml`):
- Authentication: the API key as HTTP Basic username, no password (docs, "Authentication";
  the client sends the same key as `Authorization: Bearer`). JSON bodies both ways.
- `POST /shipments` with `{"shipment": {"to_address", "from_address", "parcel", "reference",
  "options", "customs_info"}}`; addresses are `name, company, street1, street2, city, state,
  zip, country, phone, email`; the parcel is `length, width, height` in inches and `weight`
  in ounces; `options` here `currency`, `label_format` "PDF", `cod_amount` (decimal text)
  and `cod_method` (docs, "Options"); `customs_info` {`customs_items`} across borders.
  201 with a Shipment: `id` "shp_…", `rates` [{`id` "rate_…", `carrier`, `service`, `rate`
  (decimal text, "7.42"), `currency`, `delivery_days`, `delivery_date`, `est_delivery_days`}]
  and `messages` (carriers that could not rate it).
- `POST /shipments/{id}/buy` with `{"rate": {"id"}}` (and `insurance`, decimal USD): the
  Shipment with `tracking_code`, `selected_rate`, `postage_label` {`label_url`,
  `label_pdf_url`, …} and its `tracker`. Buying a bought shipment is refused with 422
  `SHIPMENT.POSTAGE.EXISTS` (as integrations handle it; not in EasyPost's own pages).
  `GET /shipments/{id}/label?file_format=PDF` adds the PDF (`label_pdf_url`, a file URL
  fetched without our key).
- `POST /shipments/{id}/refund`: the Shipment with `refund_status` "submitted" (later
  "refunded"): the label voided, its postage refunded.
- Trackers: a Shipment carries its `tracker` {`tracking_code`, `carrier`, `status`,
  `tracking_details` [{`status`, `status_detail`, `message`, `datetime`,
  `tracking_location` {`city`, `state`, `country`, `zip`}}]}; `POST /trackers` with
  `{"tracker": {"tracking_code", "carrier"}}` answers the existing Tracker for a code and
  carrier already tracked (docs, "Trackers": no duplicate is made). Statuses: unknown,
  pre_transit, in_transit, out_for_delivery, delivered, available_for_pickup,
  return_to_sender, failure, cancelled, error.
- Webhooks: an Event `{"object": "Event", "description": "tracker.updated", "result":
  {Tracker}}` POSTed with `X-Hmac-Signature: hmac-sha256-hex=<hex>`, the HMAC-SHA256 of
  the raw body keyed with the webhook secret NFKD-normalised, UTF-8 (`validate_webhook`).
- Errors: `{"error": {"code", "message", "errors"}}`; 401 (our key), 402 (no funds or
  billing: our account), 404 `NOT_FOUND`, 422 (the request), 429, 5xx (docs, "Errors").

Idempotency. EasyPost documents no idempotency header. It documents that a Shipment's
`reference` "may be used in place of id in other API endpoints" (docs, "EasyPost Objects",
"Shipment object"), so `create` first asks `GET /shipments/{reference}`: a bought shipment
is the answer; an unbought one (a crash between create and buy) is bought instead of a new
one; 404 creates one with the reference. Quotes are rated on shipments without a
reference, so only `create` makes shipments the lookup can find. EasyPost does not enforce
unique references: two `create`s of one reference at the same instant could both miss the
lookup, so `create` must not run twice at once for one reference.

Only ambient parcels (EasyPost publishes no cold chain), one parcel per Shipment (several
go as an Order, which only some carriers take: refused here as `Unsupported`). Cash on
delivery is the `cod_amount` option (decimal text, `cod_method` CASH); which carriers
honour it is theirs to say. Insurance is bought with the label for a declared value in USD.
Personal data (names, phones, addresses) goes only into request bodies: never into
exceptions or logs, which carry EasyPost's error code and message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import unicodedata
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import SecretStr

from connectors.carriers.base import (
    CarrierMisconfigured,
    Label,
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
from connectors.money import decimal_text, minor_units
from connectors.outbound import (
    PermanentFailure,
    TransientFailure,
    Transport,
    Unsupported,
    urllib_transport,
)
from connectors.rejections import PayloadRejected

API_URL = "https://api.easypost.com/v2"
SIGNATURE_HEADER = "X-Hmac-Signature"
SIGNATURE_PREFIX = "hmac-sha256-hex="
GRAMS_PER_OUNCE = Decimal("28.349523125")  # avoirdupois ounce, exact
MM_PER_INCH = Decimal("25.4")  # exact
REFUNDING = frozenset({"submitted", "refunded"})

# EasyPost's Tracker and TrackingDetail statuses, normalised. `available_for_pickup`: the
# parcel stopped short of the door and waits for the recipient, which needs attention.
STATUSES: dict[str, TrackingStatus] = {
    "unknown": TrackingStatus.CREATED,
    "pre_transit": TrackingStatus.CREATED,
    "in_transit": TrackingStatus.IN_TRANSIT,
    "out_for_delivery": TrackingStatus.OUT_FOR_DELIVERY,
    "delivered": TrackingStatus.DELIVERED,
    "available_for_pickup": TrackingStatus.EXCEPTION,
    "return_to_sender": TrackingStatus.RETURNED_TO_SENDER,
    "failure": TrackingStatus.EXCEPTION,
    "error": TrackingStatus.EXCEPTION,
    "cancelled": TrackingStatus.CANCELLED,
}


class EasyPostRefused(PermanentFailure):
    """EasyPost refused the request: `status` is the HTTP status, `code` EasyPost's code."""

    def __init__(self, detail: str, *, status: int, code: str) -> None:
        super().__init__(detail)
        self.status, self.code = status, code


def price_minor_units(rate: str, *, currency: str) -> int:
    """An EasyPost rate ("7.58", "10") in the currency's minor units (758, 1000), exactly."""
    try:
        return minor_units(rate, currency=currency, field="rate")
    except PayloadRejected as exc:
        raise PermanentFailure(f"EasyPost rate not a plain amount: {exc.reason}") from None


def ounces(grams: int) -> Decimal:
    """Grams in ounces, rounded up to 0.1 oz (EasyPost's parcel weight unit)."""
    return Decimal(math.ceil(Decimal(grams) * 10 / GRAMS_PER_OUNCE)) / 10


def inches(millimetres: int) -> Decimal:
    """Millimetres in inches, rounded up to 0.1 in (EasyPost's parcel length unit)."""
    return Decimal(math.ceil(Decimal(millimetres) * 10 / MM_PER_INCH)) / 10


def signature(body: bytes, secret: str) -> str:
    """The `X-Hmac-Signature` EasyPost sends with a webhook body (`validate_webhook`)."""
    key = unicodedata.normalize("NFKD", secret).encode()
    return SIGNATURE_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def tracking_status(status: str) -> TrackingStatus:
    """EasyPost's tracking status normalised; one it adds later reads as an exception."""
    return STATUSES.get(status, TrackingStatus.EXCEPTION)


class EasyPost:
    name: ClassVar[str] = "easypost"
    push_received: ClassVar[bytes] = b""  # any 2xx (EasyPost retries otherwise)
    temperatures: ClassVar[frozenset[Temperature]] = frozenset({Temperature.AMBIENT})
    cash_on_delivery: ClassVar[bool] = True

    def __init__(
        self,
        *,
        api_key: SecretStr,
        webhook_secret: SecretStr | None = None,
        api_url: str = API_URL,
        transport: Transport = urllib_transport,
    ) -> None:
        if api_key is None or not api_key.get_secret_value().strip():
            raise CarrierMisconfigured("EasyPost needs an API key")
        if webhook_secret is not None and not webhook_secret.get_secret_value():
            raise CarrierMisconfigured("EasyPost's webhook secret is empty: leave it unset")
        if not api_url.startswith(("https://", "http://")):
            raise CarrierMisconfigured(f"EasyPost API URL must be http(s): {api_url!r}")
        self.api_key, self.webhook_secret = api_key, webhook_secret
        self.api_url, self.transport = api_url.rstrip("/"), transport

    # ------------------------------------------------------------ the four operations

    def quote(self, request: ShipmentRequest) -> list[Quote]:
        if request.temperature not in self.temperatures:
            return []
        shipment = self._call("POST", "/shipments", {"shipment": self._shipment(request)})
        cheapest: dict[str, Quote] = {}
        for rate in shipment.get("rates") or []:
            quote = self._quote(rate, cod=request.cod_amount is not None)
            # Two accounts of one carrier rate the same service: the cheaper one stands.
            if quote.service not in cheapest or quote.price < cheapest[quote.service].price:
                cheapest[quote.service] = quote
        return sorted(cheapest.values(), key=lambda q: (q.price, q.service))

    def create(self, request: ShipmentRequest, service: str) -> Shipment:
        if request.temperature not in self.temperatures:
            raise Unsupported(f"EasyPost keeps no {request.temperature.value} parcels")
        found = self._by_reference(request.reference)
        if found is not None and _bought(found):
            return self._shipment_of(found, request.reference)
        if found is None:
            shipment = self._shipment(request) | {"reference": request.reference}
            found = self._call("POST", "/shipments", {"shipment": shipment})
        rate = next((r for r in found.get("rates") or [] if _service(r) == service), None)
        if rate is None:
            raise PermanentFailure(f"EasyPost offers no {service} for shipment {found['id']}")
        buy: dict[str, Any] = {"rate": {"id": rate["id"]}}
        if request.declared_value and request.currency == "USD":
            buy["insurance"] = decimal_text(request.declared_value, currency="USD")
        try:
            bought = self._call("POST", f"/shipments/{_path(found['id'])}/buy", buy)
        except EasyPostRefused as exc:
            if exc.code != "SHIPMENT.POSTAGE.EXISTS":
                raise
            bought = self._call("GET", f"/shipments/{_path(found['id'])}")  # bought already
        return self._shipment_of(bought, request.reference)

    def cancel(self, shipment: Shipment) -> None:
        path = f"/shipments/{_path(shipment.carrier_id or shipment.reference)}"
        if self._call("GET", path).get("refund_status") in REFUNDING:
            return  # asked before
        refunded = self._call("POST", f"{path}/refund", {})
        if refunded.get("refund_status") not in REFUNDING:
            raise PermanentFailure(
                f"EasyPost refused to void {shipment.tracking_number}: "
                f"refund_status {refunded.get('refund_status')!r}"
            )

    def track(self, shipment: Shipment) -> list[TrackingEvent]:
        if shipment.carrier_id:
            tracker = self._call("GET", f"/shipments/{_path(shipment.carrier_id)}").get("tracker")
        else:
            carrier = shipment.service.partition(":")[0]
            body = {"tracker": {"tracking_code": shipment.tracking_number, "carrier": carrier}}
            tracker = self._call("POST", "/trackers", body)
        return _events(tracker or {}, shipment.tracking_number)

    def parse_push(self, body: bytes, headers: Mapping[str, str]) -> list[TrackingEvent]:
        if self.webhook_secret is None:
            raise PushRefused("no EasyPost webhook secret is set: pushes cannot be verified")
        given = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), "")
        expected = signature(body, self.webhook_secret.get_secret_value())
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise PushRefused("EasyPost webhook signature does not verify")
        try:
            event = json.loads(body)
        except ValueError:
            raise PushRefused("EasyPost webhook body is not JSON") from None
        if not isinstance(event, dict) or event.get("object") != "Event":
            raise PushRefused("EasyPost webhook body is not an Event")
        result = event.get("result")
        if not isinstance(result, dict) or result.get("object") != "Tracker":
            return []  # an Event about something else (a batch, a refund, an invoice)
        return _events(result, str(result.get("tracking_code") or ""))

    # ------------------------------------------------------------ EasyPost's objects

    def _shipment(self, request: ShipmentRequest) -> dict[str, Any]:
        """The Shipment to create for a request (`reference` only where one is bought)."""
        if len(request.parcels) != 1:
            raise Unsupported(
                "EasyPost rates one parcel per Shipment (several go as an Order, which "
                f"only some carriers take): {len(request.parcels)} parcels"
            )
        parcel = request.parcels[0]
        options: dict[str, Any] = {"currency": request.currency, "label_format": "PDF"}
        if request.cod_amount is not None:
            options["cod_amount"] = decimal_text(request.cod_amount, currency=request.currency)
            options["cod_method"] = "CASH"
        shipment: dict[str, Any] = {
            "from_address": _address(request.sender),
            "to_address": _address(request.recipient),
            "parcel": _parcel(parcel),
            "options": options,
        }
        if request.sender.country != request.recipient.country:
            shipment["customs_info"] = _customs(request, parcel)
        return shipment

    def _quote(self, rate: Mapping[str, Any], *, cod: bool) -> Quote:
        currency = str(rate.get("currency") or "USD")
        return Quote(
            carrier=self.name,
            service=_service(rate),
            service_name=f"{rate.get('carrier')} {rate.get('service')}",
            price=price_minor_units(str(rate.get("rate")), currency=currency),
            currency=currency,
            promised_by=_time(rate.get("delivery_date")),
            temperatures=self.temperatures,
            cash_on_delivery=cod,
        )

    def _by_reference(self, reference: str) -> dict[str, Any] | None:
        """The Shipment created with this reference, or None (404)."""
        try:
            found = self._call("GET", f"/shipments/{_path(reference)}")
        except EasyPostRefused as exc:
            if exc.status == 404:
                return None
            raise
        return found if found.get("reference") == reference else None

    def _shipment_of(self, bought: Mapping[str, Any], reference: str) -> Shipment:
        rate = bought.get("selected_rate") or {}
        currency = str(rate.get("currency") or "USD")
        return Shipment(
            carrier=self.name,
            reference=reference,
            tracking_number=str(bought["tracking_code"]),
            service=_service(rate),
            carrier_id=str(bought["id"]),
            price=price_minor_units(str(rate["rate"]), currency=currency) if rate else None,
            currency=currency if rate else None,
            label=Label(media_type="application/pdf", content=self._label_pdf(bought)),
        )

    def _label_pdf(self, bought: Mapping[str, Any]) -> bytes:
        """The label as PDF: converted by EasyPost where it was made in another format."""
        url = (bought.get("postage_label") or {}).get("label_pdf_url")
        if not url:
            converted = self._call("GET", f"/shipments/{_path(bought['id'])}/label?file_format=PDF")
            url = (converted.get("postage_label") or {}).get("label_pdf_url")
        if not url or not str(url).startswith(("https://", "http://")):
            raise TransientFailure(f"EasyPost gave no PDF label for {bought['id']}")
        status, content = self.transport(urllib.request.Request(str(url), method="GET"))
        if status != 200 or not content:
            raise TransientFailure(f"EasyPost label file: HTTP {status}")
        return content

    # ------------------------------------------------------------ HTTP

    def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One authenticated request; the answer's object, or the failure it means."""
        credentials = base64.b64encode(f"{self.api_key.get_secret_value()}:".encode()).decode()
        headers = {
            "Authorization": f"Basic {credentials}",
            "Accept": "application/json",
            "User-Agent": "OrderStream",
        }
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.api_url + path, data=data, method=method, headers=headers
        )
        status, raw = self.transport(request)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = None
        if 200 <= status < 300:
            if not isinstance(answer, dict):
                raise TransientFailure(f"EasyPost {method} {path}: HTTP {status}, not JSON")
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        error = error if isinstance(error, dict) else {}
        code, message = str(error.get("code") or ""), str(error.get("message") or "")[:200]
        said = f"EasyPost {method} {path.split('?')[0]}: HTTP {status} {code}: {message}"
        if status in (401, 402, 403):
            raise CarrierMisconfigured(said)
        if status == 429 or status >= 500:
            raise TransientFailure(said)
        raise EasyPostRefused(said, status=status, code=code)


# ---------------------------------------------------------------- plain conversions


def _address(party: Party) -> dict[str, Any]:
    address = {
        "name": party.name,
        "company": party.company,
        "street1": party.street,
        "street2": party.district,
        "city": party.city,
        "state": party.province,
        "zip": party.postal_code,
        "country": party.country,
        "phone": party.phone,
        "email": party.email,
    }
    return {k: v for k, v in address.items() if v is not None}


def _parcel(parcel: Parcel) -> dict[str, Any]:
    shape: dict[str, Any] = {"weight": float(ounces(parcel.weight_g))}
    if parcel.length_mm and parcel.width_mm and parcel.height_mm:
        shape |= {
            "length": float(inches(parcel.length_mm)),
            "width": float(inches(parcel.width_mm)),
            "height": float(inches(parcel.height_mm)),
        }
    return shape


def _customs(request: ShipmentRequest, parcel: Parcel) -> dict[str, Any]:
    """CustomsInfo for a parcel crossing a border: one item, its declared value."""
    value = decimal_text(request.declared_value or 0, currency=request.currency)
    customs: dict[str, Any] = {
        "contents_type": "merchandise",
        "customs_certify": True,
        "customs_signer": request.sender.company or request.sender.name,
        "non_delivery_option": "return",
        "restriction_type": "none",
        "customs_items": [
            {
                "description": parcel.description,
                "quantity": 1,
                "value": value,
                "currency": request.currency,
                "weight": float(ounces(parcel.weight_g)),
                "origin_country": request.sender.country,
            }
        ],
    }
    if request.sender.country == "US":
        customs["eel_pfc"] = "NOEEI 30.37(a)"  # US exports under $2,500: no EEI filing
    return customs


def _service(rate: Mapping[str, Any]) -> str:
    return f"{rate.get('carrier')}:{rate.get('service')}"


def _bought(shipment: Mapping[str, Any]) -> bool:
    return bool(shipment.get("tracking_code") and shipment.get("postage_label"))


def _path(identifier: str) -> str:
    return urllib.parse.quote(identifier, safe="")


def _time(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        at = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # EasyPost: UTC where no zone is known


def _events(tracker: Mapping[str, Any], tracking_number: str) -> list[TrackingEvent]:
    events = []
    for detail in tracker.get("tracking_details") or []:
        at = _time(detail.get("datetime"))
        if at is None:
            continue  # a scan without a time cannot be put in order
        status = str(detail.get("status") or "unknown")
        location = detail.get("tracking_location") or {}
        place = ", ".join(str(location[k]) for k in ("city", "state", "country") if location.get(k))
        events.append(
            TrackingEvent(
                tracking_number=tracking_number,
                status=tracking_status(status),
                carrier_status=status,
                at=at,
                description=detail.get("message") or None,
                place=place or None,
            )
        )
    return sorted(events, key=lambda e: e.at)
