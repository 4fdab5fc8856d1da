"""Webhook authenticity on the real broker: every pushed channel refuses a forged, an unsigned
and (where its platform signs a time) a replayed message with 401, dead-lettered not replayable
with the headers it came with; an exact re-send within the window is the first answer again;
polled channels are not served; `oms api` does not start without the secrets; `oms dlq replay`
never sends on what was refused as not authentic, and verifies everything else again."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from connectors import eleme, meituan, webhooks
from connectors.base import (
    ChannelEvent,
    Connector,
    PayloadRejected,
    SecretMissing,
    SignatureRejected,
)
from connectors.dead_letters import read_dead_letters, replay
from connectors.simulator import PROFILES, sample_order
from connectors.webshop import WebshopConnector
from connectors.wechat import WechatConnector
from events.codec import AvroCodec
from events.models import DeadLetter, OrderReceived, PaymentStatus, utc_now
from infra.kafka import consumer_config
from infra.publisher import Publisher
from infra.settings import Settings, get_settings
from oms.api import create_app
from oms.cli import main as oms_cli
from oms.cli.processes import _check_webhook_secrets
from tests.conftest import ADMIN, FIXTURES, read_topic, settings_env
from tests.connectors.conftest import APIV3_KEY, TEST_SECRETS, sign

PUSHED = ["webshop", "woocommerce", "square", "meituan", "eleme", "wechat"]
SIGNS_A_TIME = ["meituan", "eleme", "wechat"]
SIGNATURE_HEADER = {
    "webshop": "X-Shopify-Hmac-Sha256",
    "woocommerce": "X-WC-Webhook-Signature",
    "square": "x-square-hmacsha256-signature",
    "wechat": "Wechatpay-Signature",
}


def order_body(channel: str, run_id: str) -> bytes:
    """An order placed a minute ago, as the simulator makes them, in the channel's own shape,
    unsigned; its external id is made of `run_id`."""
    profile = PROFILES["retail" if channel in PROFILES["retail"].channels else "restaurant"]
    placed_at = utc_now().replace(microsecond=0) - timedelta(minutes=1)
    order = sample_order(
        random.Random(run_id),
        profile,
        channel=channel,
        number=1,
        placed_at=placed_at,
        run_id=run_id,
    )
    module = importlib.import_module(f"connectors.{channel}")
    if channel == "wechat":  # the payment as WeChat Pay sends it: encrypted
        body: bytes = module.sample_payload(order, apiv3_key=APIV3_KEY)[0]
        return body
    body, _ = module.sample_payload(order)
    return body


def forged(channel: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    """Signed as the platform signs, but with a key the attacker has: not the channel's."""
    now = utc_now()
    if channel == "wechat":
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        body, headers = sign(channel, body, at=now)
        message = (
            f"{headers['Wechatpay-Timestamp']}\n{headers['Wechatpay-Nonce']}\n".encode()
            + body
            + b"\n"
        )
        signature = stranger.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return body, headers | {"Wechatpay-Signature": base64.b64encode(signature).decode()}
    if channel in ("meituan", "eleme"):
        document = json.loads(sign(channel, body, at=now)[0])
        if channel == "meituan":
            url = meituan.PUSH_URL
            document["sig"] = meituan.signature(document, secret="a guess", url=url)
        else:
            document["signature"] = eleme.signature(document, secret="a guess")
        return json.dumps(document, ensure_ascii=False).encode(), {}
    guess = hmac.new(b"a guess", body, hashlib.sha256).digest()
    return body, {SIGNATURE_HEADER[channel]: base64.b64encode(guess).decode()}


def unsigned(channel: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    if channel in ("meituan", "eleme"):
        document = json.loads(sign(channel, body)[0])
        document.pop("sig" if channel == "meituan" else "signature")
        return json.dumps(document, ensure_ascii=False).encode(), {}
    if channel == "wechat":  # the time and nonce, no signature
        _, headers = sign(channel, body)
        return body, {k: v for k, v in headers.items() if k != "Wechatpay-Signature"}
    return body, {}


def intake_count(settings: Settings) -> int:
    topic = settings.topics.intake
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="authenticity-test"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            high - low
            for low, high in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in partitions
            )
        )
    finally:
        consumer.close()


@pytest.fixture
async def client(isolated_settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    get_settings.cache_clear()
    app = create_app(isolated_settings)
    get_settings.cache_clear()
    async with TestClient(TestServer(app), headers=ADMIN) as test_client:
        yield test_client


async def post(
    client: TestClient[Any, Any], channel: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        f"/webhooks/{channel}", data=body, headers={"Content-Type": "application/json"} | headers
    )
    answer: dict[str, Any] = await response.json()
    return response.status, answer


def letter_of(settings: Settings, answer: dict[str, Any]) -> DeadLetter:
    letters = {letter.dead_letter_id: letter for letter in read_dead_letters(settings)}
    return letters[answer["dead_letter_id"]]


# ---- each pushed channel


@pytest.mark.integration
@pytest.mark.parametrize("channel", PUSHED)
async def test_a_signed_order_is_taken_once_and_a_resend_is_the_same_answer(
    channel: str, client: TestClient[Any, Any], isolated_settings: Settings
) -> None:
    body, headers = sign(channel, order_body(channel, f"AUTH-{channel}-1"))
    status, first = await post(client, channel, body, headers)
    assert status == 200, first
    # The platform did not hear the answer and retries the very same message.
    status, again = await post(client, channel, body, headers)
    assert (status, again) == (200, first | {"duplicate": True})
    (message,) = read_topic(isolated_settings, isolated_settings.topics.intake, expect=1)
    event = AvroCodec().decode(message.value())
    assert isinstance(event, OrderReceived) and event.event_id == first["event_id"]
    assert intake_count(isolated_settings) == 1
    if channel == "wechat":  # the payment came encrypted: read from the decrypted resource
        assert event.payment_status is PaymentStatus.PAID


@pytest.mark.integration
@pytest.mark.parametrize("channel", PUSHED)
@pytest.mark.parametrize("attack", ["forged", "unsigned"])
async def test_a_forged_or_unsigned_message_is_401_and_dead_lettered_never_to_be_replayed(
    channel: str, attack: str, client: TestClient[Any, Any], isolated_settings: Settings
) -> None:
    make = forged if attack == "forged" else unsigned
    body, headers = make(channel, order_body(channel, f"AUTH-{channel}-{attack}"))
    status, answer = await post(client, channel, body, headers)
    assert status == 401, answer
    letter = letter_of(isolated_settings, answer)
    assert (letter.source, letter.raw, letter.replayable) == (channel, body, False)
    kept = {header.name.lower(): header.value for header in letter.headers}
    assert kept == {name.lower(): value for name, value in headers.items()}
    assert intake_count(isolated_settings) == 0


@pytest.mark.integration
@pytest.mark.parametrize("channel", SIGNS_A_TIME)
@pytest.mark.parametrize("off", [timedelta(minutes=-6), timedelta(minutes=6)])
async def test_a_message_signed_outside_five_minutes_of_its_receipt_is_a_replay(
    channel: str, off: timedelta, client: TestClient[Any, Any], isolated_settings: Settings
) -> None:
    body, headers = sign(channel, order_body(channel, f"AUTH-{channel}-old"), at=utc_now() + off)
    status, answer = await post(client, channel, body, headers)
    assert status == 401, answer
    assert answer["field"] == "timestamp" and "a replay" in answer["error"]
    letter = letter_of(isolated_settings, answer)
    assert (letter.raw, letter.replayable) == (body, False)
    assert intake_count(isolated_settings) == 0


@pytest.mark.integration
async def test_a_resend_after_the_window_is_refused_though_the_first_was_taken(
    client: TestClient[Any, Any], isolated_settings: Settings
) -> None:
    """The same signed message: taken at first; once its window has closed (here: the window
    made shorter than its age), neither remembered nor accepted."""
    at = utc_now() - timedelta(seconds=30)
    body, headers = sign("wechat", order_body("wechat", "AUTH-wechat-late"), at=at)
    assert (await post(client, "wechat", body, headers))[0] == 200
    client.app[webhooks.SIGNATURE_WINDOW] = timedelta(seconds=10)  # type: ignore[index]
    client.app[webhooks.RECENT] = webhooks.Recent()  # type: ignore[index]
    status, answer = await post(client, "wechat", body, headers)
    assert status == 401 and "a replay" in answer["error"]


# ---- secrets


@pytest.mark.integration
async def test_without_its_secret_a_channel_refuses_all_and_the_letter_replays_once_set(
    client: TestClient[Any, Any], isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMS_WEBSHOP_SECRET")
    body, headers = sign("webshop", order_body("webshop", "AUTH-webshop-nosecret"))
    status, answer = await post(client, "webshop", body, headers)
    assert status == 401 and "OMS_WEBSHOP_SECRET is not set" in answer["error"]
    letter = letter_of(isolated_settings, answer)
    assert letter.replayable  # nothing was judged: verified again when replayed

    forged_body, forged_headers = forged("webshop", order_body("webshop", "AUTH-webshop-forged"))
    monkeypatch.setenv("OMS_WEBSHOP_SECRET", TEST_SECRETS["OMS_WEBSHOP_SECRET"])
    client.app[webhooks.CONNECTORS].clear()  # type: ignore[index]
    status, refused = await post(client, "webshop", forged_body, forged_headers)
    assert status == 401

    report = replay(isolated_settings, source="webshop")
    assert report.replayed == [letter.dead_letter_id]
    (refused_id, reason), *_ = report.refused
    assert (refused_id, len(report.refused)) == (refused["dead_letter_id"], 1)
    assert reason == letter_of(isolated_settings, refused).reason
    (message,) = read_topic(isolated_settings, isolated_settings.topics.intake, expect=1)
    event = AvroCodec().decode(message.value())
    expected = WebshopConnector().parse(letter.raw, received_at=utc_now())
    assert isinstance(event, OrderReceived) and event.event_id == expected.event_id

    # The CLI says the same, and exits 1 for the refused one.
    env = settings_env(isolated_settings) | {
        "OMS_WEBSHOP_SECRET": TEST_SECRETS["OMS_WEBSHOP_SECRET"]
    }
    get_settings.cache_clear()
    result = CliRunner().invoke(oms_cli, ["dlq", "replay", "--source", "webshop"], env=env)
    get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert f"refused         {refused['dead_letter_id']}: not authentic" in result.output
    assert "1 replayed, 0 still rejected, 0 skipped, 1 refused as not authentic" in result.output


@pytest.mark.integration
async def test_a_replay_verifies_again_against_the_current_secret(
    client: TestClient[Any, Any], isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A letter refused for its content (400) replays only if its signature still verifies:
    after the secret changed, it is still rejected, and the CLI says so and exits 1."""
    document = json.loads(order_body("webshop", "AUTH-webshop-bad")) | {"total_price": "1.001"}
    body, headers = sign("webshop", json.dumps(document).encode())
    status, answer = await post(client, "webshop", body, headers)
    assert status == 400, answer
    assert letter_of(isolated_settings, answer).replayable
    monkeypatch.setenv("OMS_WEBSHOP_SECRET", "rotated")
    report = replay(isolated_settings, ids={answer["dead_letter_id"]})
    ((letter_id, reason),) = report.still_rejected
    assert letter_id == answer["dead_letter_id"] and "signature does not match" in reason


# ---- what is not an open webhook


@pytest.mark.integration
@pytest.mark.parametrize("channel", ["tmall", "jd"])
async def test_polled_channels_are_not_served(
    channel: str, client: TestClient[Any, Any], isolated_settings: Settings
) -> None:
    status, answer = await post(client, channel, b"{}", {})
    assert status == 404 and "polled" in answer["error"]
    assert not list(read_dead_letters(isolated_settings))


class Unsigned(Connector):
    """A plug-in that pushes but verifies nothing."""

    name = "unsigned"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        raise AssertionError("never parsed")


@pytest.mark.integration
async def test_a_pushed_channel_that_verifies_no_signature_is_not_served(
    client: TestClient[Any, Any], isolated_settings: Settings
) -> None:
    client.app[webhooks.CONNECTORS]["unsigned"] = Unsigned()  # type: ignore[index]
    status, answer = await post(client, "unsigned", b"{}", {})
    assert status == 404 and "verifies no signature" in answer["error"]
    assert not list(read_dead_letters(isolated_settings))


def test_the_phone_channel_is_declared_staff_only() -> None:
    assert {"phone"} == webhooks.STAFF_ONLY_CHANNELS
    assert {"/webhooks/phone"} == webhooks.STAFF_ONLY_PATHS


# ---- oms api's start check


def test_oms_api_does_not_start_without_the_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMS_MEITUAN_SECRET", "OMS_WECHAT_APIV3_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMS_SQUARE_SECRET", "")  # empty is not set
    result = CliRunner().invoke(oms_cli, ["api", "--port", "1"])
    assert result.exit_code == 1
    assert "OMS_MEITUAN_SECRET, OMS_SQUARE_SECRET, OMS_WECHAT_APIV3_KEY not set" in result.output
    assert "--allow-missing-webhook-secrets" in result.output


def test_the_development_flag_starts_it_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("OMS_ELEME_SECRET")
    with caplog.at_level(logging.WARNING):
        _check_webhook_secrets(allow_missing=True)
    assert "OMS_ELEME_SECRET not set" in caplog.text and "refuse every message" in caplog.text
    assert webhooks.missing_secrets() == {"eleme": ["OMS_ELEME_SECRET"]}


def test_with_every_secret_set_nothing_is_missing() -> None:
    assert webhooks.missing_secrets() == {}


# ---- WeChat Pay's encrypted resource


def test_a_resource_that_does_not_decrypt_is_refused_as_not_authentic() -> None:
    body = order_body("wechat", "AUTH-wechat-key")
    connector = WechatConnector(apiv3_key="another APIv3 key, 32 bytes long")
    with pytest.raises(SignatureRejected, match="does not decrypt"):
        connector.parse(body, received_at=utc_now())
    with pytest.raises(SecretMissing, match="OMS_WECHAT_APIV3_KEY"):
        WechatConnector(apiv3_key="").parse(body, received_at=utc_now())
    document = json.loads(body)
    order_no = document["order"]["order_no"]
    paid_once = {"out_trade_no": order_no, "trade_state": "SUCCESS", "amount": {"total": 1}}
    document["payment"] = paid_once  # in the clear, beside the encrypted one: not the same
    with pytest.raises(PayloadRejected, match="not the transaction"):
        WechatConnector().parse(json.dumps(document).encode(), received_at=utc_now())


def test_a_message_is_remembered_until_its_signed_time_is_a_window_old() -> None:
    """An exact re-send is answered from memory only while the message itself would still be
    taken: a window after the time it signs (or after its receipt, where it signs none)."""
    received = utc_now()
    body = order_body("wechat", "AUTH-wechat-memory")
    connector, window = WechatConnector(), timedelta(minutes=5)
    signed_early = received - timedelta(minutes=4)
    body, headers = sign("wechat", body, at=signed_early)
    good_until = webhooks.check_signed_time(connector, headers, body, received, window)
    assert good_until == signed_early.replace(microsecond=0) + window
    recent = webhooks.Recent(size=2)
    recent.remember("a", {"order_id": "o"}, until=good_until)
    assert recent.get("a", now=good_until) == {"order_id": "o"}
    assert recent.get("a", now=good_until + timedelta(seconds=1)) is None
    for key in ("b", "c"):  # the oldest is forgotten first past `size`
        recent.remember(key, {}, until=good_until)
    assert recent.get("a", now=received) is None and recent.get("c", now=received) == {}


def test_wechat_keys_that_cannot_be_used_are_named_and_refuse_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMS_WECHAT_SECRET", "-----BEGIN PUBLIC KEY-----\nnot a key")
    monkeypatch.setenv("OMS_WECHAT_APIV3_KEY", "too short")
    assert webhooks.missing_secrets() == {
        "wechat": [
            "OMS_WECHAT_SECRET (not an RSA public key in PEM)",
            "OMS_WECHAT_APIV3_KEY (not 32 bytes)",
        ]
    }
    body, headers = sign("wechat", order_body("wechat", "AUTH-wechat-badkey"))
    with pytest.raises(SecretMissing, match="not an RSA public key"):
        WechatConnector().verify(headers, body)


@pytest.mark.integration
def test_a_polled_channels_letter_from_its_old_open_webhook_is_never_replayed(
    isolated_settings: Settings,
) -> None:
    """Tmall was once served unsigned: such a letter is vouched for by nobody."""
    raw = (FIXTURES / "tmall" / "paid_multi_item.json").read_bytes()
    letter = DeadLetter.of(source="tmall", source_ref="webhook:old", reason="why", raw=raw)
    publisher = Publisher(isolated_settings)
    publisher.dead_letter(letter)
    publisher.flush()
    report = replay(isolated_settings, source="tmall")
    assert (report.replayed, [i for i, _ in report.refused]) == ([], [letter.dead_letter_id])
    assert "nothing verified" in report.refused[0][1]
