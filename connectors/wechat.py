"""Orders from the restaurant's own WeChat mini-program, with their WeChat Pay payment.

The mini-program backend forwards one JSON document: `order` as the mini-program submitted it
(amounts in fen, times in Unix milliseconds, the address picked with `wx.chooseLocation`),
`payment` — the decrypted `resource` of the WeChat Pay API v3 payment notification, or the
query-order result (same object) while unpaid, absent when a dine-in table pays after the meal —
and `notification`, that notification's envelope (kept for audit, not read). Signed in the WeChat
Pay v3 scheme: base64 RSA-SHA256 (PKCS#1 v1.5) over "timestamp\\nnonce\\nbody\\n"; the connector's
secret is the platform public key (PEM). `revision` > 0: the customer changed an unpaid or
not-yet-accepted order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import Field

from connectors.base import (
    CHINA,
    ChannelEvent,
    ChannelPayload,
    Connector,
    PayloadRejected,
    SignatureRejected,
    from_epoch,
)
from connectors.samples import SampleOrder
from events.models import Address, Customer, OrderLine, OrderMode, PaymentStatus

CURRENCY = "CNY"  # WeChat Pay inside mainland China settles in fen of CNY
_SIGNED_HEADERS = ("Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature")
# trade_state → payment status; REFUND was paid (the refund is an event of its own).
_PAYMENT = {
    "SUCCESS": PaymentStatus.PAID,
    "REFUND": PaymentStatus.PAID,
    "NOTPAY": PaymentStatus.PENDING,
    "USERPAYING": PaymentStatus.PENDING,
    "CLOSED": PaymentStatus.UNPAID,
    "REVOKED": PaymentStatus.UNPAID,
    "PAYERROR": PaymentStatus.UNPAID,
}
TradeState = Literal["SUCCESS", "REFUND", "NOTPAY", "USERPAYING", "CLOSED", "REVOKED", "PAYERROR"]
Fen = Annotated[int, Field(ge=0)]


class _Item(ChannelPayload):
    goods_id: str | None = None
    name: str
    specs: list[str] = []
    quantity: int
    price: Fen


class _Contact(ChannelPayload):
    name: str | None = None
    phone: str | None = None


class _Location(ChannelPayload):
    """wx.chooseLocation's name/address/latitude/longitude, and the house number."""

    name: str | None = None
    address: str
    detail: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class _Order(ChannelPayload):
    order_no: str = Field(min_length=1)
    openid: str
    store_id: str = Field(min_length=1)
    mode: Literal["dine_in", "pickup", "delivery"]
    table_no: str | None = None
    items: list[_Item] = Field(min_length=1)
    delivery_fee: Fen = 0
    packing_fee: Fen = 0
    discount: Fen = 0
    total_fee: Fen
    contact: _Contact = _Contact()
    address: _Location | None = None
    expected_time: int | None = None
    remark: str | None = None
    create_time: int
    revision: int = Field(default=0, ge=0)
    update_time: int | None = None


class _Amount(ChannelPayload):
    total: Fen
    currency: Literal["CNY"] = "CNY"


class _Transaction(ChannelPayload):
    out_trade_no: str
    trade_state: TradeState
    amount: _Amount


class _Document(ChannelPayload):
    order: _Order
    payment: _Transaction | None = None


class WechatConnector(Connector):
    name = "wechat"
    signed = True

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        if self.secret is None:
            return
        given = {k.lower(): v for k, v in headers.items()}
        for header in _SIGNED_HEADERS:
            if not given.get(header.lower()):
                raise SignatureRejected("header missing", field=header)
            # WeChat writes digits, letters and base64: other text (or bytes that are not
            # UTF-8, which aiohttp hands over as surrogates) cannot be signed or decoded.
            if not given[header.lower()].isascii():
                raise SignatureRejected("not ASCII", field=header)
        key = serialization.load_pem_public_key(self.secret.encode())
        if not isinstance(key, rsa.RSAPublicKey):
            raise TypeError("the WeChat Pay platform key must be an RSA public key")
        message = _message(given["wechatpay-timestamp"], given["wechatpay-nonce"], body)
        try:
            signature = base64.b64decode(given["wechatpay-signature"], validate=True)
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error):
            raise SignatureRejected(
                "signature does not match", field="Wechatpay-Signature"
            ) from None

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        document = self.validate(_Document, self.load_json(raw))
        order, payment = document.order, document.payment
        if payment is not None and payment.out_trade_no != order.order_no:
            raise PayloadRejected(
                f"{payment.out_trade_no!r} is not order {order.order_no!r}",
                field="payment.out_trade_no",
            )
        if payment is not None and payment.amount.total != order.total_fee:
            raise PayloadRejected(
                f"paid {payment.amount.total} fen for an order of {order.total_fee}",
                field="payment.amount.total",
            )
        placed_at = from_epoch(order.create_time, field="order.create_time")
        place = order.address
        # The contract has no table number; it leads the notes, where the floor staff read.
        table = f"桌号 {order.table_no}" if order.mode == "dine_in" and order.table_no else None
        return self.order(
            external_id=order.order_no,
            placed_at=placed_at,
            occurred_at=_at(order.update_time, field="order.update_time") or placed_at,
            received_at=received_at,
            revision=order.revision,
            mode=OrderMode(order.mode),
            currency=CURRENCY,
            lines=[
                OrderLine(
                    sku=item.goods_id or item.name,
                    name=item.name,
                    quantity=item.quantity,
                    unit_price=item.price,
                    options=item.specs,
                )
                for item in order.items
            ],
            delivery_fee=order.delivery_fee,
            packaging_fee=order.packing_fee,
            discount=order.discount,
            total=order.total_fee,
            payment_status=_PAYMENT[payment.trade_state] if payment else PaymentStatus.UNPAID,
            customer=Customer(id=order.openid, name=order.contact.name, phone=order.contact.phone),
            address=None
            if place is None
            else Address(
                text=" ".join(p for p in (place.address, place.name, place.detail) if p),
                latitude=place.latitude,
                longitude=place.longitude,
            ),
            location_hint=order.store_id,
            requested_at=_at(order.expected_time, field="order.expected_time"),
            notes="；".join(p for p in (table, order.remark) if p) or None,
        )


def _at(milliseconds: int | None, *, field: str) -> datetime | None:
    return None if milliseconds is None else from_epoch(milliseconds, field=field)


def _message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def _openid(phone: str) -> str:
    """A stable stand-in for the customer's openid (28 characters, like WeChat's)."""
    return "o" + hashlib.sha256(phone.encode()).hexdigest()[:27]


def sample_payload(
    order: SampleOrder, *, revision: int = 0, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """`order` as the mini-program backend forwards it, paid (`extras["trade_state"]` to change
    that); signed when `secret` is a PEM RSA *private* key — the platform's side of the key pair
    whose public half the connector takes as its secret. `extras["table_no"]` seats a dine-in."""
    placed_ms = int(order.placed_at.timestamp()) * 1000
    paid = order.extras.get("trade_state", "SUCCESS")
    items = [
        {
            "goods_id": line.sku,
            "name": line.name,
            "quantity": line.quantity,
            "price": line.unit_price,
        }
        for line in order.lines
    ]
    address = None
    if order.address_text:
        address = {
            "address": order.address_text,
            "latitude": order.latitude,
            "longitude": order.longitude,
        }
    document: dict[str, Any] = {
        "order": {
            "order_no": order.external_id,
            "openid": _openid(order.customer_phone),
            "store_id": order.store,
            "mode": order.mode.value,
            "table_no": order.extras.get("table_no"),
            "items": items,
            "delivery_fee": order.delivery_fee,
            "packing_fee": order.packaging_fee,
            "discount": order.discount,
            "total_fee": order.total,
            "contact": {"name": order.customer_name, "phone": order.customer_phone},
            "address": address,
            "remark": order.notes,
            "create_time": placed_ms,
            "revision": revision,
            "update_time": int(order.revised_at(revision).timestamp()) * 1000 if revision else None,
        },
        "payment": {
            "out_trade_no": order.external_id,
            "trade_type": "JSAPI",
            "trade_state": paid,
            "amount": {"total": order.total, "payer_total": order.total, "currency": CURRENCY},
        },
    }
    if paid == "SUCCESS":
        paid_at = order.placed_at + timedelta(seconds=20)
        document["payment"]["success_time"] = paid_at.astimezone(CHINA).isoformat()
    body = json.dumps(document, ensure_ascii=False).encode()
    if secret is None:
        return body, {}
    key = serialization.load_pem_private_key(secret.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the sample signer needs an RSA private key")
    # WeChat's nonce is random; this one is derived from the body so a sample repeats exactly.
    timestamp, nonce = str(placed_ms // 1000 + 21), hashlib.sha256(body).hexdigest()[:32]
    signature = key.sign(_message(timestamp, nonce, body), padding.PKCS1v15(), hashes.SHA256())
    return body, {
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": base64.b64encode(signature).decode(),
        "Wechatpay-Serial": "PUB_KEY_ID_SAMPLE",
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
    }
