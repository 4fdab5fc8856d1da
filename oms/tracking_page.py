"""`GET /track/{token}`: the page a customer lands on from the QR code of a shipping label
(docs/carriers.md, "The customer's tracking page").

The token is `{order_id}.{mac}`: the order id lets the page find the order in one read of
`order_events` (ordered by order id), and the MAC — the first 22 characters of base64url
HMAC-SHA256 of `order_id|carrier|tracking_number` — makes it unguessable. Its key is derived
from the master key for this one purpose (HKDF), so without a master key no token is made and
none is believed (fail closed), and rotating the session secret does not break printed labels.

A token that does not parse, names an order the read models do not hold, or whose MAC matches
none of the order's shipments is answered 404 with one and the same body: a caller learns
nothing by probing. The page shows the carrier, the tracking number, the promised delivery and
each status in time order (in words, when, where), and of the customer only the masked first
name and the city, as ClickHouse holds them (projections/privacy.py): never a phone, a street,
nor what the carrier wrote about the delivery (it may name who signed for it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import ValidationError

from events.models import ShipmentCreated, ShipmentStatusUpdated
from events.privacy import mask_name
from infra.http import problem
from infra.keystore import MasterKey
from infra.settings import Settings
from projections.queries import tracking_events
from projections.read_api import READ_MODELS
from projections.store import StoreError

log = logging.getLogger(__name__)

MAC_CHARS = 22  # 132 bits of the HMAC
_MAC = re.compile(rf"^[A-Za-z0-9_-]{{{MAC_CHARS}}}$")
_MOST_ORDER_ID_CHARS = 200
NOT_FOUND = "no such tracking page"

STATUS_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "picked_up": "Picked up",
        "in_transit": "In transit",
        "out_for_delivery": "Out for delivery",
        "delivered": "Delivered",
        "exception": "Delivery problem",
        "returned_to_sender": "Returned to sender",
        "cancelled": "Cancelled",
    },
    "zh-CN": {
        "picked_up": "已揽收",
        "in_transit": "运输中",
        "out_for_delivery": "派送中",
        "delivered": "已签收",
        "exception": "派送异常",
        "returned_to_sender": "已退回寄件人",
        "cancelled": "已取消",
    },
}
_LABELS = {
    "en": {
        "title": "Your parcel",
        "carrier": "Carrier",
        "tracking_number": "Tracking number",
        "promised_by": "Delivery promised by",
        "to": "To",
        "none_yet": "No news from the carrier yet.",
        "not_found": "There is no parcel at this address. Please check the link or QR code.",
    },
    "zh-CN": {
        "title": "您的包裹",
        "carrier": "承运商",
        "tracking_number": "运单号",
        "promised_by": "承诺送达",
        "to": "收件人",
        "none_yet": "承运商暂无更新。",
        "not_found": "找不到此包裹，请核对链接或二维码。",
    },
}


# ---------------------------------------------------------------- the token


def tracking_key(settings: Settings) -> bytes:
    """The key tracking tokens are signed with, derived from the master key for this purpose
    alone; `KeyStoreError` without a master key (fail closed)."""
    master = MasterKey.from_settings(settings)
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"orderstream tracking page").derive(
        master.secret
    )


def shipment_mac(key: bytes, *, order_id: str, carrier: str, tracking_number: str) -> str:
    """The MAC part of a shipment's tracking token."""
    signed = f"{order_id}|{carrier}|{tracking_number}".encode()
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:MAC_CHARS]


def parse_token(token: str) -> tuple[str, str] | None:
    """(order id, MAC) of a token that has the token's form, else None."""
    order_id, dot, mac = token.rpartition(".")
    if not dot or not order_id or len(order_id) > _MOST_ORDER_ID_CHARS or not _MAC.match(mac):
        return None
    return order_id, mac


# ---------------------------------------------------------------- the page's contents


@dataclass(frozen=True)
class StatusShown:
    status: str  # normalised (events.shipping.TrackingStatus), or a v1 carrier's own word
    at: datetime
    place: str | None


@dataclass
class TrackedShipment:
    """One shipment of an order as the customer may see it."""

    created: ShipmentCreated
    first_name: str = ""  # masked: the first character and a star
    city: str = ""
    statuses: list[StatusShown] = field(default_factory=list)


def shipments_of(rows: list[tuple[str, str]]) -> list[TrackedShipment]:
    """The order's shipments from its `order_events` rows (event type, payload) in sequence.
    A payload that is empty (expired or erased, projections/privacy.py) or unreadable shows
    nothing."""
    received: dict[str, Any] = {}
    shipments: list[TrackedShipment] = []
    updates: list[ShipmentStatusUpdated] = []
    for event_type, payload in rows:
        if not payload:
            continue
        try:
            if event_type == "ShipmentCreated":
                shipments.append(TrackedShipment(ShipmentCreated.model_validate_json(payload)))
            elif event_type == "ShipmentStatusUpdated":
                updates.append(ShipmentStatusUpdated.model_validate_json(payload))
            else:  # OrderReceived, OrderModified: the customer as the order last stated them
                body = json.loads(payload)
                received["name"] = (body.get("customer") or {}).get("name") or received.get("name")
                received["city"] = (body.get("address") or {}).get("city") or received.get("city")
        except (ValidationError, ValueError, AttributeError):
            log.warning("tracking page: a %s payload cannot be read", event_type)
    for shipment in shipments:
        # Masked again: ClickHouse holds 王*; a platform's own mask (张**) or anything longer
        # still shows one character.
        shipment.first_name = mask_name(str(received.get("name") or ""))
        shipment.city = str(received.get("city") or "")
        created = shipment.created
        shipment.statuses = sorted(
            (
                StatusShown(u.status, u.occurred_at, u.place)
                for u in updates
                if u.tracking_number == created.tracking_number
                and u.carrier in (None, created.carrier)
            ),
            key=lambda s: s.at,
        )
    return shipments


def verified(shipments: list[TrackedShipment], *, key: bytes, mac: str) -> TrackedShipment | None:
    """The shipment `mac` was made for, compared in constant time with each one's."""
    found = None
    for shipment in shipments:
        created = shipment.created
        expected = shipment_mac(
            key,
            order_id=created.order_id,
            carrier=created.carrier,
            tracking_number=created.tracking_number,
        )
        if hmac.compare_digest(expected.encode(), mac.encode()):
            found = shipment
    return found


def _utc(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def page_json(shipment: TrackedShipment, *, locale: str) -> dict[str, Any]:
    created = shipment.created
    words = STATUS_WORDS[locale]
    return {
        "carrier": created.carrier,
        "tracking_number": created.tracking_number,
        "shipped_at": _utc(created.occurred_at),
        "promised_by": _utc(created.promised_by) if created.promised_by else None,
        "recipient": {"first_name": shipment.first_name, "city": shipment.city},
        "statuses": [
            {
                "status": s.status,
                "text": words.get(s.status, s.status),
                "at": _utc(s.at),
                "place": s.place,
            }
            for s in shipment.statuses
        ],
    }


_PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}}
dt{{color:#666}}dd{{margin:0 0 .6rem}}ol{{padding-left:1.2rem}}li{{margin:.5rem 0}}
time,.place{{color:#666;display:block;font-size:.9rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def page_html(shipment: TrackedShipment, *, locale: str, zone: ZoneInfo) -> str:
    """The page; every value escaped."""
    labels, words = _LABELS[locale], STATUS_WORDS[locale]
    created = shipment.created

    def local(at: datetime) -> str:
        return f"{at.astimezone(zone):%Y-%m-%d %H:%M}"

    facts = [
        (labels["carrier"], created.carrier),
        (labels["tracking_number"], created.tracking_number),
    ]
    if created.promised_by is not None:
        facts.append((labels["promised_by"], local(created.promised_by)))
    recipient = " · ".join(x for x in (shipment.first_name, shipment.city) if x)
    if recipient:
        facts.append((labels["to"], recipient))
    listed = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    statuses = "".join(
        f"<li><strong>{escape(words.get(s.status, s.status))}</strong>"
        f'<time datetime="{_utc(s.at)}">{escape(local(s.at))}</time>'
        + (f'<span class="place">{escape(s.place)}</span>' if s.place else "")
        + "</li>"
        for s in shipment.statuses
    )
    history = f"<ol>{statuses}</ol>" if statuses else f"<p>{escape(labels['none_yet'])}</p>"
    return _PAGE.format(
        lang=locale, title=escape(labels["title"]), body=f"<dl>{listed}</dl>{history}"
    )


# ---------------------------------------------------------------- the route


@dataclass(frozen=True)
class TrackingPages:
    key: bytes = field(repr=False)
    locale: str
    zone: ZoneInfo


TRACKING_PAGES = web.AppKey("tracking-pages", TrackingPages)


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _private(response: web.Response) -> web.Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _not_found(request: web.Request, pages: TrackingPages) -> web.Response:
    """One answer for every token that shows nothing (none tells why)."""
    if _wants_json(request):
        return _private(problem(404, NOT_FOUND))
    labels = _LABELS[pages.locale]
    body = f'<p class="error">{escape(labels["not_found"])}</p>'
    page = _PAGE.format(lang=pages.locale, title=escape(labels["title"]), body=body)
    return _private(web.Response(text=page, content_type="text/html", status=404))


async def tracking_page(request: web.Request) -> web.Response:
    pages = request.app[TRACKING_PAGES]
    parsed = parse_token(request.match_info["token"])
    if parsed is None:
        return _not_found(request, pages)
    order_id, mac = parsed
    try:
        rows = await request.app[READ_MODELS].run(lambda store: tracking_events(store, order_id))
    except StoreError as exc:
        return problem(503, f"ClickHouse could not answer: {str(exc).split(' -- in:', 1)[0]}")
    shipment = verified(shipments_of(rows), key=pages.key, mac=mac)
    if shipment is None:
        return _not_found(request, pages)
    if _wants_json(request):
        return _private(web.json_response(page_json(shipment, locale=pages.locale)))
    page = page_html(shipment, locale=pages.locale, zone=pages.zone)
    return _private(web.Response(text=page, content_type="text/html"))


def add_routes(app: web.Application, settings: Settings) -> None:
    """`GET /track/{token}`, over the read API's ClickHouse (add `read_api`'s routes first).
    `KeyStoreError` without a master key (as for the API's publisher: fail closed)."""
    key = tracking_key(settings)
    locale = settings.notify_locale if settings.notify_locale in _LABELS else "en"
    app[TRACKING_PAGES] = TrackingPages(key, locale, ZoneInfo(settings.notify_timezone))
    app.router.add_get("/track/{token}", tracking_page)
