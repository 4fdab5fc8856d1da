"""Webhook intake on the real broker: 2xx only after Kafka acked, 4xx with reasons, DLQ."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.limits import MAX_BODY_BYTES
from events.codec import AvroCodec
from events.models import DeadLetter, OrderReceived
from infra.settings import Settings, get_settings
from oms.api import create_app
from tests.conftest import ADMIN, FIXTURES, read_topic

pytestmark = pytest.mark.integration
BODY = (FIXTURES / "webshop" / "ship_order.json").read_bytes()
WIDE_WINDOW = '["P36500D", "P36500D"]'


@pytest.fixture
async def client(
    isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient]:
    """The app on the isolated topics. Its window around receipt is a century each way: the
    fixtures were placed on fixed dates (the window has tests of its own)."""
    monkeypatch.setenv("OMS_WEBSHOP_SECRET", "hook-secret")
    monkeypatch.setenv("OMS_INTAKE_WINDOW", WIDE_WINDOW)
    get_settings.cache_clear()
    settings = isolated_settings.model_copy(update={"intake_window": Settings().intake_window})
    app = create_app(settings)
    get_settings.cache_clear()
    async with TestClient(TestServer(app), headers=ADMIN) as test_client:
        yield test_client


def signed(body: bytes, secret: str = "hook-secret") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {"X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
            "Content-Type": "application/json"}  # fmt: skip


async def test_a_signed_order_is_acknowledged_after_kafka_has_it(
    client: TestClient, isolated_settings: Settings
) -> None:
    response = await client.post("/webhooks/webshop", data=BODY, headers=signed(BODY))
    assert response.status == 200, await response.text()
    answer = await response.json()
    (message,) = read_topic(isolated_settings, isolated_settings.topics.intake, expect=1)
    event = AvroCodec().decode(message.value())
    assert isinstance(event, OrderReceived)
    assert (answer["order_id"], answer["event_id"]) == (event.order_id, event.event_id)


async def test_a_bad_payload_gets_400_naming_the_field_and_its_bytes_go_to_the_dlq(
    client: TestClient, isolated_settings: Settings
) -> None:
    body = json.dumps(json.loads(BODY) | {"total_price": "12.345"}).encode()
    response = await client.post("/webhooks/webshop", data=body, headers=signed(body))
    assert response.status == 400
    problem = await response.json()
    assert problem["field"] == "total_price" and "decimals" in problem["error"]
    (message,) = read_topic(isolated_settings, isolated_settings.topics.dlq, expect=1)
    letter = AvroCodec().decode(message.value())
    assert isinstance(letter, DeadLetter)
    assert (letter.raw, letter.source, letter.dead_letter_id) == (
        body, "webshop", problem["dead_letter_id"])  # fmt: skip


async def test_a_wrong_signature_gets_401_and_is_dead_lettered(
    client: TestClient, isolated_settings: Settings
) -> None:
    response = await client.post("/webhooks/webshop", data=BODY, headers=signed(BODY, "guess"))
    assert response.status == 401
    assert (await response.json())["field"] == "X-Shopify-Hmac-Sha256"
    (message,) = read_topic(isolated_settings, isolated_settings.topics.dlq, expect=1)
    assert AvroCodec().decode(message.value()).raw == BODY  # type: ignore[union-attr]


async def test_an_unknown_channel_is_404_and_a_huge_body_413(client: TestClient) -> None:
    assert (await client.post("/webhooks/telex", data=b"{}")).status == 404
    huge = io.BytesIO(b"x" * (2 << 20))
    assert (await client.post("/webhooks/webshop", data=huge)).status == 413


@pytest.mark.parametrize("size", [1_000_000, 1_048_576])
async def test_a_body_past_the_brokers_message_size_is_on_the_dlq_cut_with_size_and_digest(
    size: int, client: TestClient, isolated_settings: Settings
) -> None:
    """Between 1,000,000 and 1,048,576 bytes a body passed aiohttp's old limit and failed the
    dead-letter write (a 500, nothing kept): now it is 413 and its head is on the topic."""
    body = (b'{"note": "' + b"\xe5\xae\xab" * size)[:size]
    response = await client.post("/webhooks/webshop", data=io.BytesIO(body))
    assert response.status == 413
    problem = await response.json()
    (message,) = read_topic(isolated_settings, isolated_settings.topics.dlq, expect=1)
    letter = AvroCodec().decode(message.value())
    assert isinstance(letter, DeadLetter)
    assert letter.dead_letter_id == problem["dead_letter_id"]
    assert letter.raw == body[:MAX_BODY_BYTES]
    assert f"body of {size:,} bytes" in letter.reason
    assert hashlib.sha256(body).hexdigest() in letter.reason


async def test_health(client: TestClient) -> None:
    response = await client.get("/healthz")
    assert (response.status, await response.json()) == (200, {"status": "ok"})


async def test_the_phone_form_posts_an_order_and_shows_what_happened(
    client: TestClient, isolated_settings: Settings
) -> None:
    page = await client.get("/phone")
    assert page.status == 200
    text = await page.text()
    assert 'name="items"' in text and 'action="/webhooks/phone"' in text
    form = {"ticket": "P-TEST-1", "store": "S01", "placed_at": "2026-11-25 11:32",
            "mode": "自取", "customer_name": "王伟", "phone": "13800000000",
            "items": "宫保鸡丁饭 x2 @26.00", "total": "52.00", "payment": "已付"}  # fmt: skip
    posted = await client.post("/webhooks/phone", data=form)
    assert posted.status == 200
    assert "received" in await posted.text()
    (message,) = read_topic(isolated_settings, isolated_settings.topics.intake, expect=1)
    assert AvroCodec().decode(message.value()).external_id == "P-TEST-1"  # type: ignore[union-attr]

    rejected = await client.post("/webhooks/phone", data=form | {"items": "宫保鸡丁饭 two"})
    assert rejected.status == 400
    assert "(items)" in await rejected.text()
