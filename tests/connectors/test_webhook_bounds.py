"""The HTTP edge's bounds (issue 16), through `oms api`'s own app with a fake publisher: every
crafted input is answered 400, 401 or 413 with a reason — never 500 — after its bytes are on
the dead-letter topic; a body over the limit is kept cut, with its size and digest; parsing runs
off the event loop, within a budget."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors import webhooks
from connectors.base import ChannelEvent, Connector, PayloadRejected
from connectors.limits import MAX_BODY_BYTES
from connectors.samples import SampleLine, SampleOrder
from connectors.webshop import WebshopConnector, sample_payload
from events.models import OrderMode, utc_now
from tests.conftest import FIXTURES
from tests.connectors.conftest import FakePublisher, fake_publisher_app, sign

JSON = {"Content-Type": "application/json"}
Client = TestClient[Any, Any]


def fixture(channel: str, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / channel / name).read_bytes())
    return document


def meituan(**changes: Any) -> bytes:
    return json.dumps(fixture("meituan", "delivery_order.json") | changes).encode()


def eleme(**changes: Any) -> bytes:
    return json.dumps(fixture("eleme", "delivery_order.json") | changes).encode()


def wechat_order(*, number: str = "", **changes: Any) -> bytes:
    """The WeChat fixture changed; a change to `NUMBER` is written as `number`, JSON text that
    `json.dumps` would not write (an integer of 4,301 digits)."""
    document = fixture("wechat", "delivery_paid.json")
    document["order"] |= changes
    return json.dumps(document).encode().replace(b'"NUMBER"', number.encode())


def webshop_order(*, placed_at: datetime, **changes: Any) -> bytes:
    order = SampleOrder(
        external_id="W-EDGE-1", store="S01", placed_at=placed_at, mode=OrderMode.SHIP,
        lines=[SampleLine("TEA", "乌龙", 2, 1200)], customer_name="王伟",
        customer_phone="13800000000", address_text="上海市南京东路1号",
    )  # fmt: skip
    document = json.loads(sample_payload(order)[0]) | changes
    return json.dumps(document, ensure_ascii=False).encode()


async def refused(
    client: Client,
    publisher: FakePublisher,
    channel: str,
    body: bytes,
    *,
    status: int,
    headers: Mapping[str, str] = JSON,
    signed: bool = True,
) -> dict[str, Any]:
    """Post `body` (`signed` as the platform signs it, so that what follows the signature check
    is what is tried); assert it is answered `status` with a reason, its bytes dead-lettered."""
    if signed:
        body, signature = sign(channel, body)
        headers = {**headers, **signature}
    response = await client.post(f"/webhooks/{channel}", data=io.BytesIO(body), headers=headers)
    answer: dict[str, Any] = await response.json()
    assert response.status == status, answer
    assert answer["error"]
    (letter,) = publisher.dead_letters
    assert (letter.source, letter.dead_letter_id) == (channel, answer["dead_letter_id"])
    assert letter.raw == body[:MAX_BODY_BYTES]
    assert not publisher.intake_events
    return answer


# ---- issue 16's "small inputs return 500", each now a 4xx with its bytes on the DLQ


DEEP = b"[" * 100_000 + b"]" * 100_000
CASES = {
    "deep nesting (Meituan)": ("meituan", b'{"detail": ' + DEEP + b"}", 400),
    "deep nesting (web shop)": ("webshop", b'{"id": ' + DEEP + b"}", 400),
    "deep nesting, unclosed": ("eleme", b"[" * 900_000, 400),
    "an integer of 4,301 digits": (
        "wechat",
        wechat_order(create_time="NUMBER", number="9" * 4301),
        400,
    ),
    "an integer of 5,000 digits": ("webshop", b'{"id": ' + b"7" * 5000 + b"}", 400),
    "epoch 10**400 (JSON number)": ("wechat", wechat_order(create_time=10**400), 400),
    "epoch 10**400 (text)": ("meituan", meituan(ctime=str(10**400)), 400),
    "a quantity past 64 bits": (
        "wechat",
        wechat_order(items=[{"name": "水饺", "quantity": 2**63, "price": 100}]),
        400,
    ),
    "an amount past 64 bits": ("webshop", b'{"total_price": "92233720368547758.08"}', 400),
    "a body of 1,000,000 bytes": ("webshop", b"x" * 1_000_000, 413),
    "a body of 1,048,576 bytes": ("meituan", b"{" + b" " * 1_048_574 + b"}", 413),
}


@pytest.mark.parametrize("case", CASES)
async def test_a_crafted_small_input_gets_a_4xx_with_a_reason_and_its_bytes_on_the_dlq(
    case: str, client: Client, publisher: FakePublisher
) -> None:
    channel, body, status = CASES[case]
    # a body over the limit is refused before its signature is read: it is sent unsigned
    await refused(client, publisher, channel, body, status=status, signed=status != 413)


@pytest.mark.parametrize(
    ("channel", "body", "field"),
    [
        ("meituan", meituan(sig="签名不对"), "sig"),
        ("meituan", meituan(sig="\\udcff"), "sig"),
        ("meituan", meituan(sig=["a"]), "sig"),
        ("eleme", eleme(signature="签名"), "signature"),
        ("eleme", eleme(signature=12), "signature"),
    ],
)
async def test_a_non_ascii_signature_in_the_payload_is_401(
    channel: str,
    body: bytes,
    field: str,
    client: Client,
    publisher: FakePublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(f"OMS_{channel.upper()}_SECRET", "s3cret")
    answer = await refused(client, publisher, channel, body, status=401, signed=False)
    assert answer["field"] == field


SIGNED_BY_HEADER = {
    "webshop": ("X-Shopify-Hmac-Sha256", "ship_order.json"),
    "woocommerce": ("X-WC-Webhook-Signature", "ship_order.json"),
    "square": ("x-square-hmacsha256-signature", "pickup_order.json"),
    "wechat": ("Wechatpay-Signature", "delivery_paid.json"),
}


async def post_raw(client: Client, path: str, headers: list[bytes], body: bytes) -> int:
    """POST with header lines as raw bytes (aiohttp's client would not send non-UTF-8 ones)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = [f"POST {path} HTTP/1.1".encode(), b"Host: test", b"Connection: close",
            b"Content-Type: application/json", b"Content-Length: %d" % len(body),
            *headers]  # fmt: skip
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    status_line = await reader.readline()
    await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize("channel", SIGNED_BY_HEADER)
@pytest.mark.parametrize("value", ["签名".encode(), b"\xff\xfe\x80", b"abc\xc3"])
async def test_a_signature_header_that_is_not_ascii_or_not_utf8_is_401(
    channel: str,
    value: bytes,
    client: Client,
    publisher: FakePublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    header, name = SIGNED_BY_HEADER[channel]
    secret = (FIXTURES / "wechat" / "test_platform_public_key.pem").read_text()
    monkeypatch.setenv(f"OMS_{channel.upper()}_SECRET", secret if channel == "wechat" else "k")
    body = (FIXTURES / channel / name).read_bytes()
    headers = [b"Wechatpay-Timestamp: 1795577553", b"Wechatpay-Nonce: 5K82"]
    status = await post_raw(
        client, f"/webhooks/{channel}", [*headers, header.encode() + b": " + value], body
    )
    assert status == 401
    (letter,) = publisher.dead_letters
    assert letter.raw == body


async def test_wechat_timestamp_and_nonce_headers_that_are_not_ascii_are_401(
    client: Client, publisher: FakePublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "OMS_WECHAT_SECRET", (FIXTURES / "wechat" / "test_platform_public_key.pem").read_text()
    )
    body = (FIXTURES / "wechat" / "delivery_paid.json").read_bytes()
    signed = json.loads((FIXTURES / "wechat" / "delivery_paid.headers.json").read_text())
    headers = [f"{k}: {v}".encode() for k, v in signed.items() if k != "Wechatpay-Nonce"]
    status = await post_raw(
        client, "/webhooks/wechat", [*headers, b"Wechatpay-Nonce: \xe4\xb8"], body
    )
    assert status == 401
    assert publisher.dead_letters[0].reason == "Wechatpay-Nonce: not ASCII"


# ---- the body limit


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 1_000_001, 1_048_577, 3 << 20])
async def test_a_body_over_the_limit_is_413_and_kept_cut_with_its_size_and_digest(
    size: int, client: Client, publisher: FakePublisher
) -> None:
    """aiohttp's own limit (client_max_size) does not answer first with a bare 413 that keeps
    nothing: the body is read by the webhook, which dead-letters its head."""
    body = (b'{"id": "' + b"0123456789" * (size // 10))[:size]
    answer = await refused(client, publisher, "webshop", body, status=413)
    assert f"{size:,} bytes" in answer["error"] and f"{MAX_BODY_BYTES:,}" in answer["error"]
    (letter,) = publisher.dead_letters
    assert len(letter.raw) == MAX_BODY_BYTES
    assert f"body of {size:,} bytes" in letter.reason
    assert hashlib.sha256(body).hexdigest() in letter.reason


async def test_a_body_at_the_limit_is_read_and_refused_whole_on_the_dlq(
    client: Client, publisher: FakePublisher
) -> None:
    body = b'{"note": "' + b"x" * (MAX_BODY_BYTES - 12) + b'"}'
    assert len(body) == MAX_BODY_BYTES
    response = await client.post(
        "/webhooks/webshop",
        data=body,
        headers=JSON | {"X-Request-Id": "r" * 8000} | sign("webshop", body)[1],
    )
    assert response.status == 400
    (letter,) = publisher.dead_letters  # it fit: the fake refuses what librdkafka would
    assert letter.raw == body and "sha256" not in letter.reason


async def test_a_body_far_over_the_limit_is_read_only_so_far(
    client: Client, publisher: FakePublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "READ_AT_MOST", 2 << 20)
    answer = await refused(client, publisher, "webshop", b"x" * (6 << 20), status=413)
    assert "a body of at least" in answer["error"]


async def test_an_oversized_form_post_is_413_on_the_form_page(
    client: Client, publisher: FakePublisher
) -> None:
    body = b"ticket=1&notes=" + b"x" * MAX_BODY_BYTES
    response = await client.post(
        "/webhooks/phone",
        data=io.BytesIO(body),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 413
    assert "Not accepted" in await response.text()
    assert publisher.dead_letters[0].raw == body[:MAX_BODY_BYTES]


async def test_a_form_post_that_is_not_its_charset_is_400(
    client: Client, publisher: FakePublisher
) -> None:
    body = b"ticket=\xff\xfe&items=x"
    response = await client.post(
        "/webhooks/phone",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert response.status == 400
    assert "not utf-8 text" in await response.text()
    assert publisher.dead_letters[0].raw == body


async def test_an_order_too_large_for_a_kafka_message_is_413_and_dead_lettered(
    client: Client, publisher: FakePublisher
) -> None:
    """Each line's name is also its SKU (no SKU given): the event is twice the body."""
    title = "宫" * 1000
    lines = [{"title": title, "quantity": 1, "price": "1.00"} for _ in range(180)]
    body = webshop_order(placed_at=utc_now(), line_items=lines)
    assert len(body) < MAX_BODY_BYTES
    answer = await refused(client, publisher, "webshop", body, status=413)
    assert "larger than a Kafka message" in answer["error"]


# ---- times near receipt


@pytest.mark.parametrize(
    ("placed", "status"),
    [(timedelta(days=-31), 400), (timedelta(days=2), 400), (timedelta(days=-29), 200),
     (timedelta(hours=12), 200), (timedelta(0), 200)],
)  # fmt: skip
async def test_an_order_placed_outside_the_window_around_receipt_is_400_naming_the_field(
    placed: timedelta, status: int, client: Client, publisher: FakePublisher
) -> None:
    body = webshop_order(placed_at=utc_now() + placed)
    response = await client.post(
        "/webhooks/webshop", data=body, headers=JSON | sign("webshop", body)[1]
    )
    answer = await response.json()
    assert response.status == status, answer
    if status == 400:
        assert answer["field"] == "placed_at" and "OMS_INTAKE_WINDOW" in answer["error"]
        assert publisher.dead_letters[0].raw == body


@pytest.mark.parametrize("created", ["9999-12-31T23:59:59+00:00", "0001-01-02T00:00:00+00:00"])
async def test_a_time_at_the_ends_of_the_calendar_is_400(
    created: str, client: Client, publisher: FakePublisher
) -> None:
    body = webshop_order(placed_at=utc_now(), created_at=created)
    answer = await refused(client, publisher, "webshop", body, status=400)
    assert answer["field"] == "placed_at"


async def test_the_window_is_read_from_the_environment() -> None:
    with fake_publisher_app(OMS_INTAKE_WINDOW='["PT1H", "PT1M"]') as (app, publisher):
        async with TestClient(TestServer(app)) as client:
            two_hours_ago = webshop_order(placed_at=utc_now() - timedelta(hours=2))
            answer = await refused(client, publisher, "webshop", two_hours_ago, status=400)
    assert answer["field"] == "placed_at"


# ---- parsing off the event loop, within a budget


class HeldConnector(Connector):
    """A fake connector whose parse waits until the test lets it go (then refuses); it takes
    any signature (an unsigned pushed channel is not served)."""

    name = "held"
    signed = True

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        return None

    def __init__(self) -> None:
        super().__init__(secret=None)
        self.started, self.release = threading.Event(), threading.Event()

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        self.started.set()
        self.release.wait(timeout=60)
        raise PayloadRejected("held, then refused")


async def test_a_slow_parse_does_not_stall_other_requests(
    app_and_publisher: tuple[web.Application, FakePublisher], client: Client
) -> None:
    held = app_and_publisher[0][webhooks.CONNECTORS]["held"] = HeldConnector()
    slow = asyncio.create_task(client.post("/webhooks/held", data=b"{}"))
    await asyncio.to_thread(held.started.wait, 60)
    # While the parse is held, the loop serves the health check and another channel's order.
    assert (await client.get("/healthz")).status == 200
    body = webshop_order(placed_at=utc_now())
    order = await client.post("/webhooks/webshop", data=body, headers=sign("webshop", body)[1])
    assert order.status == 200
    assert not slow.done()
    held.release.set()
    assert (await slow).status == 400


async def test_a_parse_over_its_budget_is_503_and_its_bytes_are_dead_lettered() -> None:
    held = HeldConnector()
    with fake_publisher_app() as (app, publisher):
        app[webhooks.CONNECTORS]["held"] = held
        app[webhooks.PARSE_BUDGET] = 0.05  # the parse is held until after the answer
        async with TestClient(TestServer(app)) as client:
            response = await client.post("/webhooks/held", data=b'{"order": 1}')
            held.release.set()
            answer = await response.json()
    assert response.status == 503 and "not parsed within 0.05 s" in answer["error"]
    assert publisher.dead_letters[0].raw == b'{"order": 1}'


def test_the_default_budget_and_the_parser_pool_are_small() -> None:
    assert (webhooks.PARSE_BUDGET_S, webhooks.PARSER_THREADS) == (2.0, 4)


# ---- what the connector makes that cannot be sent on


class MakesWhatCannotBeEncoded(WebshopConnector):
    """A fake connector with a bug: its event holds text that is not Unicode."""

    name = "webshop"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        event = super().parse(raw, received_at=received_at, headers=headers)
        return event.model_copy(update={"notes": "\ud800"})


class Crashes(Connector):
    """A fake connector with a bug that raises (taking any signature)."""

    name = "crashes"
    signed = True

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        return None

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        raise ZeroDivisionError("a bug")


async def test_an_event_the_contract_cannot_carry_is_400_and_dead_lettered(
    app_and_publisher: tuple[web.Application, FakePublisher], client: Client
) -> None:
    app_and_publisher[0][webhooks.CONNECTORS]["webshop"] = MakesWhatCannotBeEncoded()
    body = webshop_order(placed_at=utc_now())
    answer = await refused(client, app_and_publisher[1], "webshop", body, status=400)
    assert "cannot be encoded" in answer["error"]


async def test_a_connector_bug_is_a_500_that_still_keeps_the_bytes(
    app_and_publisher: tuple[web.Application, FakePublisher], client: Client
) -> None:
    app_and_publisher[0][webhooks.CONNECTORS]["crashes"] = Crashes()
    answer = await refused(client, app_and_publisher[1], "crashes", b"{}", status=500)
    assert "ZeroDivisionError" in answer["error"]
