"""`oms api` with a fake publisher, for webhook tests that need no broker.

`create_app` builds the whole app (routes, middleware, the webhooks' body reading and parser
threads); only the publisher is swapped for `FakePublisher`, which encodes every message with
the real codec and refuses one larger than the producer's `message.max.bytes`, as librdkafka
does, so "it fits on the topic" is checked the same way.

Every pushed channel verifies its platform's signature and refuses everything without its
secret: the tests here run with `TEST_SECRETS` set, and `sign` signs a body as the channel's
platform would with them (at the time given, now by default).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaError, KafkaException
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import oms.api
from connectors import eleme, meituan
from connectors.meituan import MeituanConnector
from connectors.square import SquareConnector
from events.codec import AvroCodec
from events.models import DeadLetter, Event, OrderModified, OrderReceived, utc_now
from infra.kafka import MAX_MESSAGE_BYTES
from infra.settings import Settings, get_settings
from tests.conftest import ADMIN, FIXTURES

WECHAT_PUBLIC_KEY = (FIXTURES / "wechat" / "test_platform_public_key.pem").read_text()
WECHAT_PRIVATE_KEY = (FIXTURES / "wechat" / "test_platform_private_key.pem").read_text()
APIV3_KEY = "orderstream test APIv3 key 32 by"
TEST_SECRETS = {
    "OMS_WEBSHOP_SECRET": "webshop test secret",
    "OMS_WOOCOMMERCE_SECRET": "woocommerce test secret",
    "OMS_SQUARE_SECRET": "square test signature key",
    "OMS_MEITUAN_SECRET": "meituan test app secret",
    "OMS_ELEME_SECRET": "eleme test app secret",
    "OMS_WECHAT_SECRET": WECHAT_PUBLIC_KEY,
    "OMS_WECHAT_APIV3_KEY": APIV3_KEY,
}
_HMAC_HEADER = {
    "webshop": "X-Shopify-Hmac-Sha256",
    "woocommerce": "X-WC-Webhook-Signature",
    "square": "x-square-hmacsha256-signature",
}


@pytest.fixture(autouse=True)
def webhook_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test secrets, set for every test here (a test may set another or unset one)."""
    for name, value in TEST_SECRETS.items():
        monkeypatch.setenv(name, value)


def _hmac(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def sign(channel: str, body: bytes, *, at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    """`body` as the channel's platform sends it signed with `TEST_SECRETS` at `at` (now): the
    headers to send, and for Meituan and Ele.me, which sign fields of the body (including its
    time), the body signed again. A body that is not one JSON object is sent as it is."""
    at = at or utc_now()
    if channel in _HMAC_HEADER:
        secret = TEST_SECRETS[f"OMS_{channel.upper()}_SECRET"]
        signed = SquareConnector().notification_url.encode() + body if channel == "square" else body
        return body, {_HMAC_HEADER[channel]: _hmac(secret, signed)}
    if channel == "wechat":
        key = serialization.load_pem_private_key(WECHAT_PRIVATE_KEY.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        timestamp, nonce = str(int(at.timestamp())), uuid.uuid4().hex.upper()
        message = f"{timestamp}\n{nonce}\n".encode() + body + b"\n"
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return body, {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": base64.b64encode(signature).decode(),
            "Wechatpay-Serial": "PUB_KEY_ID_TEST",
        }
    if channel in ("meituan", "eleme"):
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return body, {}
        if not isinstance(document, dict):
            return body, {}
        secret = TEST_SECRETS[f"OMS_{channel.upper()}_SECRET"]
        if channel == "meituan":
            document["timestamp"] = str(int(at.timestamp()))
            url = MeituanConnector().push_url
            document["sig"] = meituan.signature(document, secret=secret, url=url)
        else:
            document["timestamp"] = int(at.timestamp() * 1000)
            document["signature"] = eleme.signature(document, secret=secret)
        return json.dumps(document, ensure_ascii=False).encode(), {}
    return body, {}


# librdkafka counts the key, the value and at most this much framing against the limit
# (measured: 36 bytes for one record).
RECORD_FRAMING = 64


class FakePublisher:
    """What `AsyncPublisher` does up to the broker: encode, refuse what is too large, keep."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.codec = AvroCodec()
        self.intake_events: list[OrderReceived | OrderModified] = []
        self.dead_letters: list[DeadLetter] = []

    def _fit(self, key: str, value: bytes) -> None:
        if len(key.encode()) + len(value) + RECORD_FRAMING > MAX_MESSAGE_BYTES:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))

    async def intake(self, event: OrderReceived | OrderModified) -> None:
        self._fit(event.aggregate_id, self.codec.encode(event))
        self.intake_events.append(event)

    async def dead_letter(self, letter: DeadLetter) -> None:
        self._fit(letter.source_ref, self.codec.encode(letter))
        self.dead_letters.append(letter)

    async def publish(self, topic: str, event: Event) -> None:
        self.codec.encode(event)

    def close(self) -> None:
        return None


@contextmanager
def fake_publisher_app(**env: str) -> Iterator[tuple[web.Application, FakePublisher]]:
    """`oms api`'s app whose publisher is a `FakePublisher`; `env` (e.g. OMS_INTAKE_WINDOW) is
    set while it is made."""
    made: list[FakePublisher] = []

    def publisher(settings: Settings) -> FakePublisher:
        made.append(FakePublisher(settings))
        return made[0]

    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setattr(oms.api, "AsyncPublisher", publisher)
        get_settings.cache_clear()
        app = oms.api.create_app(Settings())
    get_settings.cache_clear()
    yield app, made[0]


@pytest.fixture
def app_and_publisher() -> Iterator[tuple[web.Application, FakePublisher]]:
    with fake_publisher_app() as made:
        yield made


@pytest.fixture
async def client(
    app_and_publisher: tuple[web.Application, FakePublisher],
) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app_and_publisher[0]), headers=ADMIN) as test_client:
        yield test_client


@pytest.fixture
def publisher(app_and_publisher: tuple[web.Application, FakePublisher]) -> FakePublisher:
    return app_and_publisher[1]
