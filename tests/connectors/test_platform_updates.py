"""Inbound sync: Meituan's and Ele.me's cancellation, refund and rider pushes, from samples in
their published formats (tests/fixtures/<channel>/updates/), become events with the platform as
actor; over HTTP they are signed and time-checked as orders are, and go to the order-commands
topic (real broker)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors import eleme, meituan
from connectors.base import PayloadRejected, SignatureRejected
from connectors.eleme import ElemeConnector
from connectors.meituan import MeituanConnector
from events.codec import AvroCodec
from events.models import (
    ActorKind,
    CancelledBy,
    CourierStatusUpdated,
    OrderCancelled,
    RefundRequestClosed,
    RefundRequested,
    utc_now,
)
from infra.settings import Settings, get_settings
from oms.api import create_app
from tests.conftest import ADMIN, FIXTURES, read_topic
from tests.connectors.conftest import TEST_SECRETS

AT = datetime(2026, 11, 25, 4, 2, tzinfo=UTC)  # the samples' pushes were sent around 12:02
MEITUAN = MeituanConnector()
ELEME = ElemeConnector()


def sample(channel: str, name: str) -> bytes:
    return (FIXTURES / channel / "updates" / name).read_bytes()


def meituan_update(name: str, kind: str) -> Any:
    return MEITUAN.parse_update(sample("meituan", name), kind=kind, received_at=AT)


def eleme_update(name: str) -> Any:
    return ELEME.parse_update(sample("eleme", name), kind=None, received_at=AT)


def signed(
    channel: str, body: bytes, *, kind: str | None = None, at: datetime | None = None
) -> bytes:
    """`body` signed as the platform signs that callback (Meituan: with its own URL)."""
    document = json.loads(body)
    secret = TEST_SECRETS[f"OMS_{channel.upper()}_SECRET"]
    when = at or utc_now()
    if channel == "meituan":
        document["timestamp"] = str(int(when.timestamp()))
        url = MeituanConnector().update_url(kind) if kind else MeituanConnector().push_url
        document["sig"] = meituan.signature(document, secret=secret, url=url)
    else:
        document["timestamp"] = int(when.timestamp() * 1000)
        document["signature"] = eleme.signature(document, secret=secret)
    return json.dumps(document, ensure_ascii=False).encode()


# ---- parsing the published formats


def test_a_meituan_cancellation_keeps_its_code_and_text_with_meituan_as_actor() -> None:
    event = meituan_update("cancel.json", "cancel")
    assert isinstance(event, OrderCancelled)
    assert (event.actor.kind, event.actor.id) == (ActorKind.CHANNEL, "meituan")
    assert event.order_id == MEITUAN.order_id("27061900338318741")
    assert (event.reason_code, event.reason) == ("meituan:1102", "用户取消，商家确认前取消")
    assert event.cancelled_by is CancelledBy.CUSTOMER  # 11xx: the customer's


def test_meituan_refund_steps_become_a_request_and_its_outcome() -> None:
    asked = meituan_update("refund_apply.json", "refund")
    agreed = meituan_update("refund_agree.json", "refund")
    assert isinstance(asked, RefundRequested) and isinstance(agreed, RefundRequestClosed)
    assert asked.refund_id == agreed.refund_id == "69113802311"
    assert (asked.kind, asked.partial, asked.reason) == ("refund", False, "不想要了")
    assert (agreed.outcome, agreed.partial) == ("agreed", False)
    assert asked.event_id != agreed.event_id


def test_a_meituan_partial_refund_names_its_dishes_and_amount_in_fen() -> None:
    event = meituan_update("partial_refund.json", "partial-refund")
    assert isinstance(event, RefundRequested) and event.partial
    assert (event.amount, event.currency) == (1550, "CNY")
    assert [(line.sku, line.quantity) for line in event.lines] == [("SOUP-01", 1)]


def test_a_meituan_rider_status_is_read_without_the_riders_name_or_phone() -> None:
    event = meituan_update("logistics_picked_up.json", "logistics")
    assert isinstance(event, CourierStatusUpdated)
    assert (event.status, event.platform_status) == ("picked_up", "meituan:20")
    assert event.occurred_at == datetime.fromtimestamp(1795580398, UTC)
    assert "王师傅" not in event.model_dump_json() and "13800001234" not in event.model_dump_json()


def test_ele_me_messages_are_told_apart_by_their_type() -> None:
    cancelled = eleme_update("invalid_15.json")
    assert isinstance(cancelled, OrderCancelled) and cancelled.reason_code == "eleme:15"
    asked = eleme_update("cancel_request_20.json")
    assert isinstance(asked, RefundRequested) and (asked.kind, asked.partial) == ("cancel", False)
    agreed = eleme_update("cancel_agreed_23.json")
    assert isinstance(agreed, RefundRequestClosed) and agreed.outcome == "agreed"
    refund = eleme_update("refund_30_part.json")
    assert isinstance(refund, RefundRequested) and refund.kind == "refund" and refund.partial
    assert refund.amount == 1550 and [line.sku for line in refund.lines] == ["酸辣汤"]
    rider = eleme_update("delivery_55.json")
    assert isinstance(rider, CourierStatusUpdated) and rider.status == "picked_up"
    assert rider.order_id == ELEME.order_id("3024061900338318741")
    # The order message itself is no update: `parse` reads it.
    order = (FIXTURES / "eleme").glob("*.json")
    assert ELEME.parse_update(next(iter(sorted(order))).read_bytes(), kind=None,
                              received_at=AT) is None  # fmt: skip


def test_the_same_push_is_the_same_event_and_a_later_status_another() -> None:
    first = meituan_update("logistics_picked_up.json", "logistics")
    again = meituan_update("logistics_picked_up.json", "logistics")
    document = json.loads(sample("meituan", "logistics_picked_up.json"))
    document |= {"logistics_status": "40", "time": "1795581000"}
    delivered = MEITUAN.parse_update(json.dumps(document).encode(), kind="logistics",
                                     received_at=AT)  # fmt: skip
    assert first.event_id == again.event_id != delivered.event_id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "kind", "change", "field"),
    [
        ("refund_apply.json", "refund", {"notify_type": "maybe"}, "notify_type"),
        ("logistics_picked_up.json", "logistics", {"logistics_status": "33"}, "logistics_status"),
        ("logistics_picked_up.json", "logistics", {"logistics_status": "骑手"}, "logistics_status"),
        ("cancel.json", "cancel", {"order_id": None}, "order_id"),
        ("partial_refund.json", "partial-refund", {"money": "lots"}, "money"),
    ],
)
def test_a_push_wrong_on_its_face_is_refused_naming_the_field(
    name: str, kind: str, change: dict[str, Any], field: str
) -> None:
    document = json.loads(sample("meituan", name)) | change
    with pytest.raises(PayloadRejected) as refused:
        MEITUAN.parse_update(json.dumps(document).encode(), kind=kind, received_at=AT)
    assert (refused.value.field or "").split(".")[0] == field


def test_each_meituan_callback_is_verified_with_its_own_url() -> None:
    connector = MeituanConnector(secret=TEST_SECRETS["OMS_MEITUAN_SECRET"])
    body = sample("meituan", "cancel.json")
    document = json.loads(body)
    secret = TEST_SECRETS["OMS_MEITUAN_SECRET"]
    document["sig"] = meituan.signature(document, secret=secret, url=connector.update_url("cancel"))
    good = json.dumps(document).encode()
    connector.verify_update("cancel", {}, good)
    with pytest.raises(SignatureRejected):
        connector.verify_update("refund", {}, good)  # signed for another callback
    with pytest.raises(SignatureRejected):
        connector.verify({}, good)  # nor is it an order push


# ---- over HTTP, on the real broker


@pytest.fixture
async def client(isolated_settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    get_settings.cache_clear()
    app = create_app(isolated_settings)
    get_settings.cache_clear()
    async with TestClient(TestServer(app), headers=ADMIN) as test_client:
        yield test_client


async def post(client: TestClient[Any, Any], path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    return response.status, await response.json()


@pytest.mark.integration
async def test_signed_updates_go_to_the_order_commands_once_and_bad_ones_are_dead_lettered(
    client: TestClient[Any, Any], isolated_settings: Settings
) -> None:
    cancel = signed("meituan", sample("meituan", "cancel.json"), kind="cancel")
    status, first = await post(client, "/webhooks/meituan/cancel", cancel)
    assert (status, first["event_type"]) == (200, "OrderCancelled"), first
    status, again = await post(client, "/webhooks/meituan/cancel", cancel)  # the platform retries
    assert (status, again) == (200, first | {"duplicate": True})
    rider = signed("eleme", sample("eleme", "delivery_55.json"))
    status, answer = await post(client, "/webhooks/eleme", rider)
    assert (status, answer["event_type"]) == (200, "CourierStatusUpdated"), answer

    # Signed for the order URL, not this callback; signed ten minutes ago; not a push at all.
    wrong_url = signed("meituan", sample("meituan", "cancel.json"))
    assert (await post(client, "/webhooks/meituan/cancel", wrong_url))[0] == 401
    old = signed("meituan", sample("meituan", "cancel.json"), kind="cancel",
                 at=utc_now() - timedelta(minutes=10))  # fmt: skip
    status, stale = await post(client, "/webhooks/meituan/cancel", old)
    assert status == 401 and stale["field"] == "timestamp"
    bad = json.loads(sample("meituan", "logistics_picked_up.json")) | {"logistics_status": "33"}
    status, refused = await post(
        client, "/webhooks/meituan/logistics",
        signed("meituan", json.dumps(bad).encode(), kind="logistics"),
    )  # fmt: skip
    assert status == 400 and refused["field"] == "logistics_status" and refused["dead_letter_id"]
    assert (await post(client, "/webhooks/meituan/reviews", cancel))[0] == 404
    assert (await post(client, "/webhooks/eleme/cancel", rider))[0] == 404

    codec = AvroCodec()
    commands = [codec.decode(m.value()) for m in read_topic(
        isolated_settings, isolated_settings.topics.order_commands, expect=2)]  # fmt: skip
    # Two orders, so two partitions: read back in no particular order.
    assert sorted(e.event_type for e in commands) == ["CourierStatusUpdated", "OrderCancelled"]
    assert commands[0].event_id == first["event_id"]
    letters = read_topic(isolated_settings, isolated_settings.topics.dlq, expect=3)
    assert len(letters) == 3
    assert read_topic(isolated_settings, isolated_settings.topics.intake, expect=0) == []
