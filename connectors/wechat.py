"""Orders from the restaurant's own WeChat mini-program, with their WeChat Pay payment.

The mini-program backend forwards one JSON document: `order` as the mini-program submitted it
(amounts in fen, times in Unix milliseconds, the address picked with `wx.chooseLocation`), and
the payment: `notification`, the WeChat Pay API v3 payment notification as it arrived, whose
`resource` is still encrypted, or `payment`, a transaction in the clear (the query-order result
while unpaid), or neither when a dine-in table pays after the meal. `revision` > 0: the customer
changed an unpaid or not-yet-accepted order.

A line's amounts (`_line`): an item states its unit `price` and `quantity` (integers: fen and
portions) and no line amount of its own, so its gross is price x quantity, exact. The order's
`discount` (a coupon, 满减) is not shared out to items: a line's discount is 0 and its total
its gross. What a consumer pays in China includes its VAT and the order states none: tax 0,
inside the price. All in fen: nothing is rounded.

Authenticity, as WeChat Pay v3 publishes it (签名验证: pay.weixin.qq.com/wiki/doc/api_external/
ch/wechatpay/wechatpay4_1.shtml; 回调报文解密: .../wechatpay4_2.shtml and
pay.weixin.qq.com/docs/partner/products/notification/decryption.html). WeChat Pay holds its
own API's signed timestamps to 5 minutes; the notifications' are held to the same here:

- the signature: `Wechatpay-Signature`, base64 RSA-SHA256 (PKCS#1 v1.5) over
  "Wechatpay-Timestamp\\nWechatpay-Nonce\\nbody\\n", verified with the platform public key
  (PEM, `OMS_WECHAT_SECRET`). The timestamp is signed: `signed_at`, held to the webhooks'
  window of five minutes around receipt (connectors/webhooks.py);
- the payment: `resource` is AEAD_AES_256_GCM (RFC 5116) under the merchant's APIv3 key (32
  bytes, `OMS_WECHAT_APIV3_KEY`): base64 `ciphertext` (the tag is its last 16 bytes), the
  12-character `nonce` and `associated_data` (may be empty), all as their UTF-8 bytes. A
  resource that does not decrypt was not written by WeChat Pay: refused like a bad signature.
  The decrypted transaction is the payment; a `payment` in the clear beside it must agree.

Both keys fail closed: without them every message is refused (`oms api` will not start).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field

from connectors.base import (
    CHINA,
    ChannelEvent,
    ChannelPayload,
    Connector,
    PayloadRejected,
    SecretMissing,
    SignatureRejected,
    from_epoch,
    signed_epoch,
)
from connectors.samples import SampleOrder
from events.models import Address, Customer, OrderLine, OrderMode, PaymentStatus

CURRENCY = "CNY"  # WeChat Pay inside mainland China settles in fen of CNY
APIV3_KEY_VARIABLE = "OMS_WECHAT_APIV3_KEY"
_AEAD = "AEAD_AES_256_GCM"
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
    price: Fen  # per portion


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
    diners: int | None = Field(
        default=None, ge=0, le=10_000, description="guests at the table (用餐人数); 0: not said"
    )
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


class _Resource(ChannelPayload):
    """A notification's encrypted `resource`."""

    algorithm: str
    ciphertext: str = Field(max_length=1 << 20)
    nonce: str
    associated_data: str = ""
    original_type: str | None = None


class _Notification(ChannelPayload):
    id: str | None = None
    event_type: str | None = None
    resource: _Resource | None = None


class _Document(ChannelPayload):
    order: _Order
    payment: _Transaction | None = None
    notification: _Notification | None = None


class WechatConnector(Connector):
    name = "wechat"
    signed = True
    kept_headers = (*_SIGNED_HEADERS, "Wechatpay-Serial")

    def __init__(self, *, secret: str | None = None, apiv3_key: str | None = None) -> None:
        super().__init__(secret=secret)
        self.apiv3_key = apiv3_key if apiv3_key is not None else os.environ.get(APIV3_KEY_VARIABLE)

    def missing_settings(self) -> list[str]:
        """The platform key and the APIv3 key, each unset or not usable."""
        missing = []
        if self.secret and self._platform_key() is None:
            missing.append(f"{self.secret_variable()} (not an RSA public key in PEM)")
        if self.apiv3_key and len(self.apiv3_key.encode()) != 32:
            missing.append(f"{APIV3_KEY_VARIABLE} (not 32 bytes)")
        return [
            *super().missing_settings(),
            *missing,
            *([] if self.apiv3_key else [APIV3_KEY_VARIABLE]),
        ]

    def _platform_key(self) -> rsa.RSAPublicKey | None:
        try:
            key = serialization.load_pem_public_key((self.secret or "").encode())
        except (ValueError, TypeError):
            return None
        return key if isinstance(key, rsa.RSAPublicKey) else None

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        self.require_secret()
        given = {k.lower(): v for k, v in headers.items()}
        for header in _SIGNED_HEADERS:
            if not given.get(header.lower()):
                raise SignatureRejected("header missing", field=header)
            # WeChat writes digits, letters and base64: other text (or bytes that are not
            # UTF-8, which aiohttp hands over as surrogates) cannot be signed or decoded.
            if not given[header.lower()].isascii():
                raise SignatureRejected("not ASCII", field=header)
        key = self._platform_key()
        if key is None:  # configured, but nothing can be verified with it: fail closed
            raise SecretMissing(f"{self.secret_variable()} is not an RSA public key in PEM")
        message = _message(given["wechatpay-timestamp"], given["wechatpay-nonce"], body)
        try:
            signature = base64.b64decode(given["wechatpay-signature"], validate=True)
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error):
            raise SignatureRejected(
                "signature does not match", field="Wechatpay-Signature"
            ) from None

    def signed_at(self, headers: Mapping[str, str], body: bytes) -> datetime:
        given = {k.lower(): v for k, v in headers.items()}
        return signed_epoch(given.get("wechatpay-timestamp"), field="Wechatpay-Timestamp")

    def decrypt(self, resource: _Resource) -> _Transaction:
        """The transaction in a notification's `resource`, decrypted with the APIv3 key."""
        key = (self.apiv3_key or "").encode()
        if len(key) != 32:
            raise SecretMissing(
                f"{APIV3_KEY_VARIABLE} is not set (or not 32 bytes): no payment notification "
                "can be read until it is",
                field="notification.resource",
            )
        where = "notification.resource"
        if resource.algorithm != _AEAD:
            raise SignatureRejected(f"{resource.algorithm!r} is not {_AEAD}", field=where)
        try:
            ciphertext = base64.b64decode(resource.ciphertext, validate=True)
            plain = AESGCM(key).decrypt(
                resource.nonce.encode(), ciphertext, resource.associated_data.encode()
            )
        except (InvalidTag, binascii.Error, ValueError):
            raise SignatureRejected("does not decrypt with the APIv3 key", field=where) from None
        try:
            return self.validate(_Transaction, self.load_json(plain))
        except PayloadRejected as rejected:
            raise PayloadRejected(
                rejected.reason, field=f"{where}.{rejected.field or 'plaintext'}"
            ) from None

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        document = self.validate(_Document, self.load_json(raw))
        order, payment = document.order, document.payment
        notification = document.notification
        if notification is not None and notification.resource is not None:
            paid = self.decrypt(notification.resource)
            if payment is not None and payment != paid:
                raise PayloadRejected(
                    "is not the transaction the notification holds", field="payment"
                )
            payment = paid
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
        table = order.table_no if order.mode == "dine_in" and order.table_no else None
        return self.order(
            external_id=order.order_no,
            placed_at=placed_at,
            occurred_at=_at(order.update_time, field="order.update_time") or placed_at,
            received_at=received_at,
            revision=order.revision,
            mode=OrderMode(order.mode),
            currency=CURRENCY,
            lines=[_line(item) for item in order.items],
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
            notes=order.remark or None,
            table=table,
            covers=(order.diners or None) if order.mode == "dine_in" else None,
        )


def _line(item: _Item) -> OrderLine:
    """An item as the mini-program states it: `price` (fen, per portion) times `quantity` is
    its gross. The price includes VAT; the order's discount is not shared out to items."""
    gross = item.price * item.quantity
    return OrderLine(
        sku=item.goods_id or item.name,
        name=item.name,
        quantity=item.quantity,
        unit_price=item.price,
        options=item.specs,
        gross=gross,
        discount=0,
        tax=0,
        total=gross,
        prices_include_tax=True,
    )


def _at(milliseconds: int | None, *, field: str) -> datetime | None:
    return None if milliseconds is None else from_epoch(milliseconds, field=field)


def _message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def _openid(phone: str) -> str:
    """A stable stand-in for the customer's openid (28 characters, like WeChat's)."""
    return "o" + hashlib.sha256(phone.encode()).hexdigest()[:27]


def sample_payload(
    order: SampleOrder,
    *,
    revision: int = 0,
    secret: str | None = None,
    apiv3_key: str | None = None,
    signed_at: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    """`order` as the mini-program backend forwards it, paid (`extras["trade_state"]` to change
    that); signed when `secret` is a PEM RSA *private* key — the platform's side of the key pair
    whose public half the connector takes as its secret — at `signed_at` (default: 21 s after
    the order was placed). With `apiv3_key` the payment travels as WeChat Pay sends it: the
    notification, its `resource` encrypted. `extras["table_no"]` seats a dine-in."""
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
    if apiv3_key is not None:
        document["notification"] = _notification(document.pop("payment"), apiv3_key)
    body = json.dumps(document, ensure_ascii=False).encode()
    if secret is None:
        return body, {}
    key = serialization.load_pem_private_key(secret.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the sample signer needs an RSA private key")
    # WeChat's nonce is random; this one is derived from the body so a sample repeats exactly.
    at = signed_at or order.placed_at + timedelta(seconds=21)
    timestamp, nonce = str(int(at.timestamp())), hashlib.sha256(body).hexdigest()[:32]
    signature = key.sign(_message(timestamp, nonce, body), padding.PKCS1v15(), hashes.SHA256())
    return body, {
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": base64.b64encode(signature).decode(),
        "Wechatpay-Serial": "PUB_KEY_ID_SAMPLE",
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
    }


def _notification(transaction: dict[str, Any], apiv3_key: str) -> dict[str, Any]:
    """A WeChat Pay v3 payment notification carrying `transaction`, encrypted as WeChat Pay
    encrypts it (the resource's nonce, like the signing nonce, derived to repeat exactly)."""
    plain = json.dumps(transaction, ensure_ascii=False).encode()
    nonce = hashlib.sha256(b"resource" + plain).hexdigest()[:12]
    sealed = AESGCM(apiv3_key.encode()).encrypt(nonce.encode(), plain, b"transaction")
    number = hashlib.sha256(plain).hexdigest()
    return {
        "id": f"{number[:8]}-{number[8:12]}-{number[12:16]}-{number[16:20]}-{number[20:32]}",
        "create_time": transaction.get("success_time"),
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": _AEAD,
            "ciphertext": base64.b64encode(sealed).decode(),
            "associated_data": "transaction",
            "nonce": nonce,
        },
    }
